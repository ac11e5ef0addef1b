#pragma once
// Host memory for tensors. A training step allocates the same shapes every iteration; fetching
// them fresh from the OS each time made every step page-fault its activations in again (a quarter
// of a U-Net(4) 1024^2 CPU step). So:
//  - blocks from 256 KiB to 8 MiB that a tensor frees are kept, by size, for the next tensor of
//    that size (bounded: DD_HOST_CACHE_MB, default 256; 0 turns the cache off);
//  - blocks of 8 MiB and more are mapped directly on 2 MiB boundaries with the advice to use
//    transparent huge pages (one fault per 2 MiB instead of per 4 KiB) and unmapped when freed,
//    so the resident memory is what the live tensors hold (caching them cost 20 % more peak
//    memory for a 10 % shorter step).
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

namespace dd {

class HostAllocator {
 public:
  static constexpr std::size_t alignment = 64;  // a cache line; also enough for AVX-512 loads
  static constexpr std::size_t min_cached = std::size_t{1} << 18;
  static constexpr std::size_t huge_page = std::size_t{1} << 21, huge_min = std::size_t{1} << 23;

  // Leaked on purpose: tensors in static objects may be freed after any other static destructor.
  static HostAllocator& instance() {
    static HostAllocator* a = new HostAllocator();
    return *a;
  }

  // The size allocate() really takes for `bytes` (what release() must be given back).
  static std::size_t rounded(std::size_t bytes) {
    const std::size_t unit = bytes >= huge_min ? huge_page : bytes >= min_cached ? 4096 : alignment;
    return std::max(unit, (bytes + unit - 1) / unit * unit);
  }

  void* allocate(std::size_t bytes) {
    if (cacheable(bytes)) {
      std::lock_guard lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= static_cast<std::int64_t>(bytes);
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = fresh(bytes);
    if (!p) {
      empty_cache();  // a cached block of another size may be what stands in the way
      p = fresh(bytes);
      if (!p) throw std::bad_alloc();
    }
    return p;
  }

  void release(void* p, std::size_t bytes) {
    if (cacheable(bytes)) {
      std::lock_guard lock(mutex_);
      if (cached_ + static_cast<std::int64_t>(bytes) <= limit_) {
        free_[bytes].push_back(p);
        cached_ += static_cast<std::int64_t>(bytes);
        return;
      }
    }
    give_back(p, bytes);
  }

  // Hands every cached block back to the OS.
  void empty_cache() {
    std::lock_guard lock(mutex_);
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) give_back(p, size);
    free_.clear();
    cached_ = 0;
  }

  void set_cache_limit(std::int64_t bytes) {
    {
      std::lock_guard lock(mutex_);
      limit_ = bytes;
    }
    if (cached() > bytes) empty_cache();
  }
  std::int64_t cache_limit() const {
    std::lock_guard lock(mutex_);
    return limit_;
  }
  std::int64_t cached() const {
    std::lock_guard lock(mutex_);
    return cached_;
  }
  std::int64_t hits() const {
    std::lock_guard lock(mutex_);
    return hits_;
  }
  std::int64_t misses() const {
    std::lock_guard lock(mutex_);
    return misses_;
  }

 private:
  HostAllocator() {
    if (const char* env = std::getenv("DD_HOST_CACHE_MB")) {
      try {
        limit_ = std::stoll(env) << 20;
      } catch (...) {
        // a malformed value keeps the default
      }
    }
  }

  static bool cacheable(std::size_t bytes) { return bytes >= min_cached && bytes < huge_min; }

  // Large blocks are mapped directly (never from malloc's heap, whose freed chunks stay resident)
  // on 2 MiB boundaries, with the advice to use huge pages.
  static void* fresh(std::size_t bytes) {
    if (bytes < huge_min) return std::aligned_alloc(alignment, bytes);
    const std::size_t span = bytes + huge_page;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t start = (base + huge_page - 1) & ~(std::uintptr_t{huge_page} - 1);
    if (start > base) ::munmap(raw, start - base);  // trim to the aligned block
    if (const std::size_t tail = base + span - (start + bytes); tail > 0)
      ::munmap(reinterpret_cast<void*>(start + bytes), tail);
    void* p = reinterpret_cast<void*>(start);
#ifdef MADV_HUGEPAGE
    ::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
    return p;
  }
  static void give_back(void* p, std::size_t bytes) {
    if (bytes < huge_min)
      std::free(p);
    else
      ::munmap(p, bytes);
  }

  mutable std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  std::int64_t cached_ = 0, limit_ = std::int64_t{256} << 20, hits_ = 0, misses_ = 0;
};

}  // namespace dd
