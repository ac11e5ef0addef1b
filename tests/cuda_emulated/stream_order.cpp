// The emulated GPU's streams as the GPU suite runs them (deferred: runtime.cpp): work runs only when
// the host or another stream waits for it, so a consumer that was never ordered after its producer
// reads what was there before. These cases pin that down with the raw runtime (and the copies'
// documented host semantics), since the GPU suite's power to catch a missing stream wait rests on it.
// Part of dd_emulated_cuda_tests.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "dd/backend/cuda/check.hpp"
#include "emulated_runtime.hpp"

namespace emu = dd::cuda::emulation;

namespace {

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { DD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};
struct Event {
  cudaEvent_t e = nullptr;
  Event() { DD_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { (void)cudaEventDestroy(e); }
};

constexpr std::size_t kBytes = 64;

// The bytes at device address d, copied into pageable memory on stream s (the call returns when done).
std::vector<std::uint8_t> read(const void* d, cudaStream_t s) {
  std::vector<std::uint8_t> h(kBytes);
  DD_CUDA_CHECK(cudaMemcpyAsync(h.data(), d, kBytes, cudaMemcpyDeviceToHost, s));
  return h;
}
bool all(const std::vector<std::uint8_t>& v, std::uint8_t x) {
  for (const std::uint8_t b : v)
    if (b != x) return false;
  return true;
}

}  // namespace

TEST_CASE("emulated streams: work waits for whoever waits for it; stream waits order it") {
  if (!emu::streams_deferred()) {
    MESSAGE("DD_EMULATED_EAGER set: streams run eagerly, nothing to check");
    return;
  }
  Stream a, b;
  void* d = nullptr;
  DD_CUDA_CHECK(cudaMalloc(&d, kBytes));
  DD_CUDA_CHECK(cudaMemsetAsync(d, 1, kBytes, a.s));
  DD_CUDA_CHECK(cudaStreamSynchronize(a.s));
  const std::int64_t pending = emu::pending_work();
  DD_CUDA_CHECK(cudaMemsetAsync(d, 2, kBytes, a.s));
  CHECK(emu::pending_work() == pending + 1);
  // b never waited for a: its copy runs first and sees a's earlier value.
  CHECK(all(read(d, b.s), 1));
  // Ordered through an event, b's copy runs after a's memset.
  Event e;
  DD_CUDA_CHECK(cudaEventRecord(e.e, a.s));
  DD_CUDA_CHECK(cudaStreamWaitEvent(b.s, e.e, 0));
  DD_CUDA_CHECK(cudaMemsetAsync(d, 3, kBytes, a.s));  // after the event: b must not wait for it
  CHECK(all(read(d, b.s), 2));
  DD_CUDA_CHECK(cudaStreamSynchronize(a.s));
  CHECK(all(read(d, b.s), 3));
  CHECK(emu::pending_work() == pending);
  DD_CUDA_CHECK(cudaFree(d));
}

TEST_CASE("emulated streams: pageable sources are staged when the copy is made, pinned ones read when it runs") {
  if (!emu::streams_deferred()) {
    MESSAGE("DD_EMULATED_EAGER set: streams run eagerly, nothing to check");
    return;
  }
  Stream a;
  void* d = nullptr;
  DD_CUDA_CHECK(cudaMalloc(&d, kBytes));
  std::vector<std::uint8_t> pageable(kBytes, 5);
  DD_CUDA_CHECK(cudaMemcpyAsync(d, pageable.data(), kBytes, cudaMemcpyHostToDevice, a.s));
  pageable.assign(kBytes, 6);  // CUDA: the call returned once the bytes were staged
  CHECK(all(read(d, a.s), 5));
  void* pinned = nullptr;
  DD_CUDA_CHECK(cudaMallocHost(&pinned, kBytes));
  std::memset(pinned, 7, kBytes);
  DD_CUDA_CHECK(cudaMemcpyAsync(d, pinned, kBytes, cudaMemcpyHostToDevice, a.s));
  std::memset(pinned, 8, kBytes);  // too early: the copy has not run (reusing a staging buffer so is a bug)
  CHECK(all(read(d, a.s), 8));
  DD_CUDA_CHECK(cudaFreeHost(pinned));
  DD_CUDA_CHECK(cudaFree(d));
}
