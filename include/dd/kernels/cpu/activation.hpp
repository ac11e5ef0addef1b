#pragma once
// Element-wise activations on the CPU.
#include <cstdint>

#include "dd/core/parallel.hpp"

namespace dd::cpu {

namespace detail {
// Splits [0, n) into blocks of 64K elements so small tensors stay on one thread.
template <class Fn>
void blocked(std::int64_t n, Fn&& fn) {
  constexpr std::int64_t block = 1 << 16;
  const std::int64_t blocks = (n + block - 1) / block;
  parallel_for(blocks, [&](std::int64_t b) { fn(b * block, std::min(n, (b + 1) * block)); });
}
}  // namespace detail

inline void relu_forward(const float* x, std::int64_t n, float* y) {
  detail::blocked(n, [&](std::int64_t lo, std::int64_t hi) {
#pragma omp simd
    for (std::int64_t i = lo; i < hi; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}

// dx = dy where the forward output was positive (y > 0 iff x > 0).
inline void relu_backward(const float* y, const float* dy, std::int64_t n, float* dx) {
  detail::blocked(n, [&](std::int64_t lo, std::int64_t hi) {
#pragma omp simd
    for (std::int64_t i = lo; i < hi; ++i) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  });
}

}  // namespace dd::cpu
