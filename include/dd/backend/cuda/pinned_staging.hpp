#pragma once
// Small pinned (page-locked) host buffers for traffic between host and GPU in stream order.
// - A copy to the GPU from a pinned buffer never waits: from pageable memory the driver may
//   synchronise with the stream to stage it, and a training step copies dropout masks and loss
//   factors every layer.
// - A copy from the GPU into a pinned buffer can be read later without waiting: a count the GPU
//   finds (labels that are not class indices) is checked once the stream has passed it, and a
//   failed check is reported at the library's next wait for the GPU (synchronize, a copy to the
//   host), as CUDA reports errors of asynchronous work. A loss then costs no round trip.
// A buffer is lent until the stream passes the event recorded after its last use, then reused.
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "dd/backend/cuda/check.hpp"

namespace dd::cuda {

class PinnedStaging {
 public:
  static constexpr std::size_t kMaxBytes = std::size_t{1} << 20;  // larger copies stay pageable
  // Reads a buffer once the GPU is done with it; returns an error message, or "" when all is well.
  using Check = std::function<std::string(const void*)>;

  // Never destroyed: statics that outlive main may still copy (the driver frees pinned memory at exit).
  static PinnedStaging& instance() {
    static auto* p = new PinnedStaging;
    return *p;
  }

  // A buffer of at least `bytes` (at most kMaxBytes), for work about to be enqueued.
  void* acquire(std::size_t bytes) {
    DD_CHECK(bytes <= kMaxBytes, "dd::cuda::PinnedStaging: {} bytes requested; at most {}", bytes, kMaxBytes);
    const std::size_t k = size_class(bytes);
    std::lock_guard lock(m_);
    reclaim_locked();
    auto& free = free_[k];
    if (!free.empty()) {
      void* p = free.back();
      free.pop_back();
      return p;
    }
    void* p = nullptr;
    DD_CUDA_CHECK(cudaHostAlloc(&p, kMinBytes << k, cudaHostAllocPortable));  // any device may copy it
    return p;
  }

  // Lends p (from acquire, of `bytes`) to stream s until s passes everything enqueued on it so far;
  // then `check`, if given, reads it. On failure to record the event, waits for s instead.
  void release_after(void* p, std::size_t bytes, cudaStream_t s, Check check = {}) {
    cudaEvent_t done = nullptr;
    if (cudaEventCreateWithFlags(&done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(done, s) != cudaSuccess) {
      if (done) (void)cudaEventDestroy(done);
      (void)cudaGetLastError();
      DD_CUDA_CHECK(cudaStreamSynchronize(s));  // the buffer must not be reused while the stream reads it
      done = nullptr;
    }
    std::lock_guard lock(m_);
    lent_.push_back({done, p, size_class(bytes), std::move(check)});
  }

  // Takes back the buffers the GPU is done with and runs their checks; throws the first failure
  // found since the last call. Called where the library waits for the GPU.
  void poll() {
    std::string failure;
    {
      std::lock_guard lock(m_);
      reclaim_locked();
      if (failures_.empty()) return;
      failure = failures_.front();
      failures_.clear();
    }
    fail("{}", failure);
  }

 private:
  static constexpr std::size_t kMinBytes = 256, kClasses = 13;  // 256 B .. 1 MiB
  static std::size_t size_class(std::size_t bytes) {
    std::size_t k = 0;
    while ((kMinBytes << k) < bytes) ++k;
    return k;
  }

  struct Loan {
    cudaEvent_t done;  // null: the stream had already finished with the buffer
    void* p;
    std::size_t size_class;
    Check check;
  };

  void reclaim_locked() {
    for (std::size_t i = 0; i < lent_.size();) {
      Loan& l = lent_[i];
      const cudaError_t r = l.done ? cudaEventQuery(l.done) : cudaSuccess;
      if (r == cudaErrorNotReady) {
        ++i;
        continue;
      }
      if (r != cudaSuccess)  // an earlier asynchronous failure: what the GPU wrote is not to be read
        failures_.push_back(std::string("dd::cuda: asynchronous GPU error: ") + cudaGetErrorString(r));
      else if (l.check)
        if (std::string msg = l.check(l.p); !msg.empty()) failures_.push_back(std::move(msg));
      if (l.done) (void)cudaEventDestroy(l.done);
      free_[l.size_class].push_back(l.p);
      if (&l != &lent_.back()) l = std::move(lent_.back());
      lent_.pop_back();
    }
  }

  std::mutex m_;
  std::array<std::vector<void*>, kClasses> free_;
  std::vector<Loan> lent_;
  std::vector<std::string> failures_;
};

}  // namespace dd::cuda
