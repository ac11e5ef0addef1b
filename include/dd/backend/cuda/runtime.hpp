#pragma once
// The CUDA runtime as the rest of the library sees it: checked calls, the current stream (one per
// thread, switched by StreamScope so each clone of a DDU-Net issues its work on its own stream),
// and fork/join of streams through events. Host code only: compiled by the C++ compiler.
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "dd/backend/cuda/check.hpp"
#include "dd/backend/cuda/pinned_staging.hpp"

namespace dd::cuda {

inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}
inline bool available() { return device_count() > 0; }

// The library's default stream: non-blocking, created on first use, never destroyed (it outlives
// every static that might still enqueue work at exit).
inline cudaStream_t main_stream() {
  static cudaStream_t s = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      fail("dd::cuda: no usable CUDA device ({}); run on a machine with an NVIDIA GPU or use the CPU",
           e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
    }
    cudaStream_t st = nullptr;
    DD_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    return st;
  }();
  return s;
}

namespace detail {
inline cudaStream_t& current_stream_slot() {
  thread_local cudaStream_t s = nullptr;
  return s;
}
}  // namespace detail

// Where kernels called from this thread are enqueued.
inline cudaStream_t current_stream() {
  cudaStream_t s = detail::current_stream_slot();
  return s ? s : main_stream();
}

// Makes `s` the current stream of this thread for the scope's lifetime.
class StreamScope {
 public:
  explicit StreamScope(cudaStream_t s) : previous_(detail::current_stream_slot()) { detail::current_stream_slot() = s; }
  ~StreamScope() { detail::current_stream_slot() = previous_; }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t previous_;
};

// A pool of streams, one per clone of a DDU-Net, created on demand and kept for the process.
inline cudaStream_t clone_stream(std::size_t k) {
  static std::mutex m;
  static std::vector<cudaStream_t> streams;
  std::lock_guard lock(m);
  while (streams.size() <= k) {
    cudaStream_t st = nullptr;
    DD_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    streams.push_back(st);
  }
  return streams[k];
}

// `waiter` runs its later work only after everything enqueued on `source` so far.
inline void stream_wait(cudaStream_t waiter, cudaStream_t source) {
  if (waiter == source) return;
  cudaEvent_t e = nullptr;
  DD_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  DD_CUDA_CHECK(cudaEventRecord(e, source));
  DD_CUDA_CHECK(cudaStreamWaitEvent(waiter, e, 0));
  DD_CUDA_CHECK(cudaEventDestroy(e));  // released once the wait has been satisfied
}

// Work of the current stream forked onto clone streams and joined back. fork(k): clone stream k,
// after the caller's work so far. join(), and the destructor when a clone's work threw: the caller
// waits for every forked stream, so nothing it does next overtakes clone work; in particular a block
// a clone still reads or writes is not handed out again from the caller's pool (allocator.hpp).
class StreamFork {
 public:
  StreamFork() : caller_(current_stream()) {}
  StreamFork(const StreamFork&) = delete;
  StreamFork& operator=(const StreamFork&) = delete;
  ~StreamFork() {
    for (cudaStream_t s : forked_) {
      try {
        stream_wait(caller_, s);
      } catch (...) {  // a wait that cannot be enqueued becomes a host wait
        (void)cudaStreamSynchronize(s);
      }
    }
  }

  cudaStream_t fork(std::size_t k) {
    const cudaStream_t s = clone_stream(k);
    stream_wait(s, caller_);
    if (s != caller_) forked_.push_back(s);
    return s;
  }
  void join() {
    while (!forked_.empty()) {
      stream_wait(caller_, forked_.back());
      forked_.pop_back();
    }
  }

 private:
  cudaStream_t caller_;
  std::vector<cudaStream_t> forked_;
};

// Waits for all work on the current stream (and reports asynchronous kernel errors, and failed
// checks of earlier work: PinnedStaging).
inline void synchronize() {
  DD_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
  PinnedStaging::instance().poll();
}
inline void synchronize_device() {
  DD_CUDA_CHECK(cudaDeviceSynchronize());
  PinnedStaging::instance().poll();
}

// Copies between host and device on the current stream; returns when the copy is done.
inline void copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, current_stream()));
  DD_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
  PinnedStaging::instance().poll();
}
// Returns at once (the caller may free src): a small copy goes through a pinned buffer, so the host
// never waits for the stream (dropout masks are copied every layer); a large one is staged by the
// driver, which may wait.
inline void copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t s = current_stream();
  if (bytes > PinnedStaging::kMaxBytes) {
    DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    return;
  }
  PinnedStaging& staging = PinnedStaging::instance();
  void* pinned = staging.acquire(bytes);
  std::memcpy(pinned, src, bytes);
  const cudaError_t e = cudaMemcpyAsync(dst, pinned, bytes, cudaMemcpyHostToDevice, s);
  staging.release_after(pinned, bytes, s);
  DD_CUDA_CHECK(e);
}
inline void copy_on_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()));
}

}  // namespace dd::cuda
