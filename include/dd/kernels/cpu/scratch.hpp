#pragma once
// Scratch owned by the calling thread, grown on demand, never zeroed and never freed while the
// thread lives (OpenMP's pool threads live as long as the process): kernels call it per block
// without allocations, page faults or zero fills. One buffer per purpose, so a kernel can hold
// a col block while the GEMM uses its packing buffers.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace dd::cpu {

enum class Scratch { col, partial, gemm_lhs, gemm_rhs, count_ };

inline float* thread_scratch(Scratch which, std::int64_t count) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  struct Buffer {
    std::unique_ptr<float, Free> data;
    std::int64_t size = 0;
  };
  thread_local Buffer buffers[static_cast<int>(Scratch::count_)];
  Buffer& b = buffers[static_cast<int>(which)];
  if (b.size < count) {
    b.data.reset();  // free first: never hold both
    // 64-byte aligned: Eigen's GEMM reads its packing buffers with aligned AVX-512 loads.
    const std::size_t bytes = (static_cast<std::size_t>(count) * sizeof(float) + 63) / 64 * 64;
    b.data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!b.data) throw std::bad_alloc();
    b.size = count;
  }
  return b.data.get();
}

}  // namespace dd::cpu
