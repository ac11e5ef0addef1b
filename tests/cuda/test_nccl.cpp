// NCCL communicators on one GPU: a 1-rank clique must leave every buffer unchanged, and the
// bounded wait must both return on finished work and end a collective whose peer never came.
// Raw cudaMalloc on purpose: this tests the communicator, not the tensor/allocator layers.
#include <doctest/doctest.h>

#include <chrono>
#include <vector>

#include "dd/backend/cuda/nccl.hpp"

namespace {

using dd::cuda::NcclCommunicator;
using namespace std::chrono_literals;

struct DeviceBuffer {
  float* p = nullptr;
  explicit DeviceBuffer(std::size_t n) { DD_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float))); }
  ~DeviceBuffer() { (void)cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

std::vector<float> ramp(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 0.25f * static_cast<float>(i) - 7.0f;
  return v;
}

void upload(float* dst, const std::vector<float>& v) {
  DD_CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
}
std::vector<float> download(const float* src, std::size_t n) {
  std::vector<float> v(n);
  DD_CUDA_CHECK(cudaMemcpy(v.data(), src, n * sizeof(float), cudaMemcpyDeviceToHost));
  return v;
}

bool have_gpu() {
  if (dd::cuda::device_count() > 0) return true;
  MESSAGE("no CUDA device: NCCL test skipped");
  return false;
}

}  // namespace

TEST_CASE("nccl: one-rank clique from all_local leaves buffers unchanged") {
  if (!have_gpu()) return;
  DD_CUDA_CHECK(cudaSetDevice(0));
  auto comms = NcclCommunicator::all_local({0});
  REQUIRE(comms.size() == 1);
  NcclCommunicator& comm = comms[0];
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  const cudaStream_t s = dd::cuda::current_stream();

  const std::size_t n = 1000;
  const auto host = ramp(n);
  DeviceBuffer a(n), b(n);
  upload(a.p, host);

  SUBCASE("all_gather") {
    comm.all_gather(a.p, b.p, n, s);
    comm.wait(s, 60s);
    CHECK(download(b.p, n) == host);
  }
  SUBCASE("all_reduce_sum") {
    comm.all_reduce_sum(a.p, n, s);
    comm.wait(s, 60s);
    CHECK(download(a.p, n) == host);
  }
  SUBCASE("broadcast") {
    comm.broadcast(a.p, n, 0, s);
    comm.wait(s, 60s);
    CHECK(download(a.p, n) == host);
  }
  SUBCASE("bucketed all-reduce over 3 buckets") {
    comm.all_reduce_buckets(a.p, n, 400 * sizeof(float), s);  // 400 + 400 + 200
    comm.wait(s, 60s);
    CHECK(download(a.p, n) == host);
  }
  SUBCASE("wait on an idle stream returns") {
    DD_CUDA_CHECK(cudaStreamSynchronize(s));
    const auto t0 = std::chrono::steady_clock::now();
    comm.wait(s, 1s);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    CHECK_FALSE(comm.aborted());
  }
}

TEST_CASE("nccl: non-blocking communicator from a unique id, grouped calls") {
  if (!have_gpu()) return;
  const std::string id = NcclCommunicator::unique_id();
  CHECK(id.size() == sizeof(ncclUniqueId));
  NcclCommunicator comm(id, 1, 0, 0, 60s);
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  const cudaStream_t s = dd::cuda::current_stream();

  const std::size_t n = 4096;
  const auto host = ramp(n);
  DeviceBuffer a(n), b(n);
  upload(a.p, host);
  NcclCommunicator::group_start();
  comm.all_reduce_sum(a.p, n, s);
  comm.all_reduce_buckets(a.p, n, 1024 * sizeof(float), s);  // nested group: 4 buckets
  NcclCommunicator::group_end();
  comm.all_gather(a.p, b.p, n, s);
  comm.wait(s, 60s);
  CHECK(download(a.p, n) == host);
  CHECK(download(b.p, n) == host);

  NcclCommunicator moved = std::move(comm);
  CHECK(comm.aborted());  // moved-from holds nothing
  moved.all_reduce_sum(a.p, n, s);
  moved.wait(s, 60s);
  CHECK(download(a.p, n) == host);
}

TEST_CASE("nccl: a peer that never joins ends init with an error, not a hang") {
  if (!have_gpu()) return;
  const std::string id = NcclCommunicator::unique_id();
  const auto t0 = std::chrono::steady_clock::now();
  // Rank 1 of 2 never arrives: init must give up after the timeout and abort.
  CHECK_THROWS_AS(NcclCommunicator(id, 2, 0, 0, 2s), dd::Error);
  CHECK(std::chrono::steady_clock::now() - t0 < 60s);
}
