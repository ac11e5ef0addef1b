#pragma once
// Storage: aligned host memory (from the caching HostAllocator) with a process-wide byte counter of
// live tensors (current and peak), which the memory benchmarks read, or device memory from the
// CUDA caching allocator (its own counters).
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "dd/core/config.hpp"
#include "dd/core/error.hpp"
#include "dd/core/host_allocator.hpp"
#if DD_WITH_CUDA
#include "dd/backend/cuda/allocator.hpp"
#endif

namespace dd {

enum class Device { cpu, cuda };

inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// GPU kernels that load 16 bytes at a time (cuDNN's channels-last and tensor-core ones) need
// 16-byte aligned pointers. Allocations are; views at other float offsets (a parameter in a model's
// flat buffer, a slice) need not be, and are copied or staged before such a kernel sees them.
inline bool is_vector_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

class MemoryStats {
 public:
  static std::int64_t current() { return current_.load(std::memory_order_relaxed); }
  static std::int64_t peak() { return peak_.load(std::memory_order_relaxed); }
  // Starts a new peak measurement from the current level.
  static void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

  static void add(std::int64_t bytes) {
    const std::int64_t now = current_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::int64_t p = peak_.load(std::memory_order_relaxed);
    while (now > p && !peak_.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
  static void sub(std::int64_t bytes) { current_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  static inline std::atomic<std::int64_t> current_{0};
  static inline std::atomic<std::int64_t> peak_{0};
};

// One contiguous buffer of `bytes` bytes (elements of any DType; Tensor knows which). Tensors share
// it through shared_ptr; views keep it alive.
class Storage {
 public:
  static constexpr std::size_t alignment = HostAllocator::alignment;

  explicit Storage(std::size_t bytes, Device device = Device::cpu) : size_(bytes), device_(device) {
    if (device == Device::cuda) {
#if DD_WITH_CUDA
      data_ = cuda::CachingAllocator::instance().allocate(bytes);
      return;
#else
      detail::no_cuda();
#endif
    }
    const std::size_t rounded = HostAllocator::rounded(bytes);
    data_ = HostAllocator::instance().allocate(rounded);
    bytes_ = static_cast<std::int64_t>(rounded);
    MemoryStats::add(bytes_);
  }
  ~Storage() {
#if DD_WITH_CUDA
    if (device_ == Device::cuda) {
      cuda::CachingAllocator::instance().release(data_);
      return;
    }
#endif
    HostAllocator::instance().release(data_, static_cast<std::size_t>(bytes_));
    MemoryStats::sub(bytes_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return size_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  std::int64_t bytes_ = 0;  // host: what the allocator handed out (counted in MemoryStats)
  Device device_;
};

}  // namespace dd
