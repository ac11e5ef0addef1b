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

// Local restrict copies of the pointers: through the lambda's captures the compiler must assume the
// stores alias them, reloads every element and does not vectorise (measured 10x slower).
inline void relu_forward(const float* x, std::int64_t n, float* y) {
  detail::blocked(n, [x, y](std::int64_t lo, std::int64_t hi) {
    const float* __restrict in = x;
    float* __restrict out = y;
#pragma omp simd
    for (std::int64_t i = lo; i < hi; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  });
}

// dx = dy where the forward output was positive (y > 0 iff x > 0).
inline void relu_backward(const float* y, const float* dy, std::int64_t n, float* dx) {
  detail::blocked(n, [y, dy, dx](std::int64_t lo, std::int64_t hi) {
    const float* __restrict out = y;
    const float* __restrict g = dy;
    float* __restrict gx = dx;
#pragma omp simd
    for (std::int64_t i = lo; i < hi; ++i) gx[i] = out[i] > 0.0f ? g[i] : 0.0f;
  });
}

// y[p, i] = x[p, i] * scale[p] for planes p of `plane` elements (dropout2d).
inline void scale_planes(const float* x, const float* scale, std::int64_t planes, std::int64_t plane, float* y) {
  parallel_for(planes, [&](std::int64_t p) {
    const float* in = x + p * plane;
    float* out = y + p * plane;
    const float k = scale[p];
    for (std::int64_t i = 0; i < plane; ++i) out[i] = in[i] * k;
  });
}

// The activation tail of a conv block, in place: y = relu(y) * scale[plane] (dropout2d's kept-plane
// factor; scale may be null: relu only). planes of `plane` elements each.
inline void relu_scale_planes(float* y, const float* scale, std::int64_t planes, std::int64_t plane) {
  parallel_for(planes, [&](std::int64_t p) {
    float* q = y + p * plane;
    const float k = scale ? scale[p] : 1.0f;
    if (scale) {
#pragma omp simd
      for (std::int64_t i = 0; i < plane; ++i) q[i] = (q[i] > 0.0f ? q[i] : 0.0f) * k;
    } else {
#pragma omp simd
      for (std::int64_t i = 0; i < plane; ++i) q[i] = q[i] > 0.0f ? q[i] : 0.0f;
    }
  });
}

// Its backward from the OUTPUT alone: dx = y > 0 ? dy * scale : 0. A dropped plane has y = 0 and a
// kept one (scale > 0) has y > 0 exactly where relu passed, so the relu input need not be kept.
inline void relu_scale_planes_backward(const float* y, const float* dy, const float* scale, std::int64_t planes,
                                       std::int64_t plane, float* dx) {
  parallel_for(planes, [&](std::int64_t p) {
    const float* yp = y + p * plane;
    const float* d = dy + p * plane;
    float* q = dx + p * plane;
    const float k = scale ? scale[p] : 1.0f;
#pragma omp simd
    for (std::int64_t i = 0; i < plane; ++i) q[i] = yp[i] > 0.0f ? d[i] * k : 0.0f;
  });
}

}  // namespace dd::cpu
