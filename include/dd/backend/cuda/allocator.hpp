#pragma once
// Caching device allocator. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks are kept in a pool per stream and handed out again: a training
// step after the first allocates nothing from the driver. A block is only reused by work on the
// stream it was freed from (stream order makes that safe); work that crosses streams is fenced by
// stream_wait (runtime.hpp). Counters: bytes held by tensors now and at peak, and bytes reserved
// from the driver; the benchmarks read them.
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "dd/backend/cuda/runtime.hpp"

namespace dd::cuda {

struct AllocatorStats {
  std::int64_t allocated = 0, peak_allocated = 0, reserved = 0, peak_reserved = 0;
  std::int64_t driver_allocations = 0;  // cudaMalloc calls so far
};

class CachingAllocator {
 public:
  static CachingAllocator& instance() {
    static auto* a = new CachingAllocator();  // never destroyed: tensors in statics free into it at exit
    return *a;
  }

  void* allocate(std::size_t bytes) {
    const std::size_t size = round(bytes);
    const cudaStream_t stream = current_stream();
    std::lock_guard lock(m_);
    auto& pool = pools_[stream];
    // Best fit, but never a block more than twice the request (large blocks stay for large tensors).
    auto it = pool.lower_bound(size);
    void* p = nullptr;
    std::size_t got = size;
    if (it != pool.end() && it->first <= 2 * size) {
      p = it->second;
      got = it->first;
      pool.erase(it);
    } else {
      p = driver_malloc(size);
    }
    live_[p] = Block{got, stream};
    stats_.allocated += static_cast<std::int64_t>(got);
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
    return p;
  }

  void release(void* p) {
    if (!p) return;
    std::lock_guard lock(m_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    stats_.allocated -= static_cast<std::int64_t>(it->second.size);
    pools_[it->second.stream].emplace(it->second.size, p);
    live_.erase(it);
  }

  // Returns every cached block to the driver (after the device is idle).
  void empty_cache() {
    std::lock_guard lock(m_);
    free_cached();
  }

  AllocatorStats stats() const {
    std::lock_guard lock(m_);
    return stats_;
  }
  // Starts a new peak measurement from the current level.
  void reset_peak() {
    std::lock_guard lock(m_);
    stats_.peak_allocated = stats_.allocated;
    stats_.peak_reserved = stats_.reserved;
  }

 private:
  struct Block {
    std::size_t size;
    cudaStream_t stream;
  };
  CachingAllocator() = default;

  // 512-byte granules for small tensors, 2 MiB for large ones (fewer distinct sizes to cache).
  static std::size_t round(std::size_t bytes) {
    constexpr std::size_t small = 512, large = std::size_t{2} << 20;
    if (bytes == 0) bytes = 1;
    const std::size_t g = bytes < (std::size_t{1} << 20) ? small : large;
    return (bytes + g - 1) / g * g;
  }

  void* driver_malloc(std::size_t size) {
    void* p = nullptr;
    cudaError_t st = cudaMalloc(&p, size);
    if (st == cudaErrorMemoryAllocation) {  // out of memory: give the cache back and try once more
      (void)cudaGetLastError();
      free_cached();
      st = cudaMalloc(&p, size);
    }
    if (st != cudaSuccess) {
      (void)cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      fail("dd::cuda: cannot allocate {:.1f} MiB on the GPU ({}): {:.1f} MiB held by tensors, {:.1f} MiB free of "
           "{:.1f} MiB",
           double(size) / 1048576.0, cudaGetErrorString(st), double(stats_.allocated) / 1048576.0,
           double(free_b) / 1048576.0, double(total_b) / 1048576.0);
    }
    stats_.reserved += static_cast<std::int64_t>(size);
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    ++stats_.driver_allocations;
    return p;
  }
  void free_cached() {
    if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
    for (auto& [stream, pool] : pools_)
      for (auto& [size, p] : pool) {
        (void)cudaFree(p);
        stats_.reserved -= static_cast<std::int64_t>(size);
      }
    pools_.clear();
  }

  mutable std::mutex m_;
  std::unordered_map<cudaStream_t, std::multimap<std::size_t, void*>> pools_;
  std::unordered_map<void*, Block> live_;
  AllocatorStats stats_;
};

}  // namespace dd::cuda
