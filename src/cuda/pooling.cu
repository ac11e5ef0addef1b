// 2x2 / stride-2 max pooling (odd trailing rows/columns dropped), mirroring dd::cpu pooling.hpp.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

// One thread per output; the comparisons are the CPU's, in its order (first maximum wins, NaN never wins).
__global__ void maxpool_forward_kernel(const float* x, i64 h, i64 w, i64 ho, i64 wo, i64 total, float* y,
                                       std::uint8_t* argmax) {
  for (i64 o = first_index(); o < total; o += grid_stride()) {
    const i64 r = o / wo, j = o - r * wo, p = r / ho, i = r - p * ho;
    const float* r0 = x + p * h * w + 2 * i * w + 2 * j;
    const float* r1 = r0 + w;
    float best = r0[0];
    std::uint8_t at = 0;
    if (r0[1] > best) best = r0[1], at = 1;
    if (r1[0] > best) best = r1[0], at = 2;
    if (r1[1] > best) best = r1[1], at = 3;
    y[o] = best;
    argmax[o] = at;
  }
}

// One thread per input element (a gather, so no atomics and every element of dx is written; with
// `accumulate` only the winners are, added to what dx holds, as the CPU kernel does).
__global__ void maxpool_backward_kernel(const float* dy, const std::uint8_t* argmax, i64 h, i64 w, i64 ho,
                                        i64 wo, i64 total, float* dx, bool accumulate) {
  for (i64 e = first_index(); e < total; e += grid_stride()) {
    const i64 r = e / w, col = e - r * w, p = r / h, row = r - p * h;
    const i64 i = row >> 1, j = col >> 1;
    float v = 0.0f;
    if (i < ho && j < wo) {
      const i64 o = (p * ho + i) * wo + j;
      if (argmax[o] == ((row & 1) << 1 | (col & 1))) {
        if (accumulate) {
          dx[e] += dy[o];
          continue;
        }
        v = dy[o] + 0.0f;  // + 0.0f: the CPU adds dy into a zeroed dx, which turns -0 into +0
      }
    }
    if (!accumulate) dx[e] = v;
  }
}

// Channels-last twins: output o = ((p * ho + i) * wo + j) * c + ch over samples p; a window's four
// inputs are c and w * c apart. Same comparisons in the same order, on the loaded floats (the winner
// is stored back unchanged: it came from a T).
// T is the element type, I the index type (32-bit where the tensor allows: the divisions are the cost).
template <class T, class I>
__global__ void maxpool_nhwc_forward_kernel(const T* x, I c, I h, I w, I ho, I wo, I total, T* y,
                                            std::uint8_t* argmax) {
  for (I o = static_cast<I>(first_index()); o < total; o += static_cast<I>(grid_stride())) {
    const I ch = o % c, r = o / c, j = r % wo, r2 = r / wo, i = r2 % ho, p = r2 / ho;
    const T* r0 = x + ((p * h + 2 * i) * w + 2 * j) * static_cast<i64>(c) + ch;
    const T* r1 = r0 + w * c;
    const float v1 = load(r0 + c), v2 = load(r1), v3 = load(r1 + c);
    float best = load(r0);
    std::uint8_t at = 0;
    if (v1 > best) best = v1, at = 1;
    if (v2 > best) best = v2, at = 2;
    if (v3 > best) best = v3, at = 3;
    store(best, y + o);
    argmax[o] = at;
  }
}
template <class T, class I>
__global__ void maxpool_nhwc_backward_kernel(const T* dy, const std::uint8_t* argmax, I c, I h, I w, I ho, I wo,
                                             I total, T* dx, bool accumulate) {
  for (I e = static_cast<I>(first_index()); e < total; e += static_cast<I>(grid_stride())) {
    const I ch = e % c, r = e / c, col = r % w, r2 = r / w, row = r2 % h, p = r2 / h;
    const I i = row >> 1, j = col >> 1;
    float v = 0.0f;
    if (i < ho && j < wo) {
      const I o = ((p * ho + i) * wo + j) * c + ch;
      if (argmax[o] == ((row & 1) << 1 | (col & 1))) {
        if (accumulate) {
          store(load(dx + e) + load(dy + o), dx + e);
          continue;
        }
        v = load(dy + o) + 0.0f;
      }
    }
    if (!accumulate) store(v, dx + e);
  }
}

}  // namespace

void maxpool2x2_nhwc_forward(const void* x, i64 n, i64 c, i64 h, i64 w, void* y, std::uint8_t* argmax, DType t,
                             cudaStream_t s) {
  const i64 ho = h / 2, wo = w / 2, total = n * c * ho * wo;
  if (total <= 0) return;
  by_types(t, n * c * h * w, [&](auto element, auto index) {  // the input's size: the kernel indexes it
    using T = decltype(element);
    using I = decltype(index);
    launch(maxpool_nhwc_forward_kernel<T, I>, grid_for(total), kBlock, 0, s, static_cast<const T*>(x), I(c), I(h), I(w),
           I(ho), I(wo), I(total), static_cast<T*>(y), argmax);
  });
}
void maxpool2x2_nhwc_backward(const void* dy, const std::uint8_t* argmax, i64 n, i64 c, i64 h, i64 w, void* dx,
                              bool accumulate, DType t, cudaStream_t s) {
  const i64 total = n * c * h * w;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(maxpool_nhwc_backward_kernel<T, I>, grid_for(total), kBlock, 0, s, static_cast<const T*>(dy), argmax, I(c),
           I(h), I(w), I(h / 2), I(w / 2), I(total), static_cast<T*>(dx), accumulate);
  });
}

void maxpool2x2_forward(const float* x, i64 planes, i64 h, i64 w, float* y, std::uint8_t* argmax,
                        cudaStream_t s) {
  const i64 ho = h / 2, wo = w / 2, total = planes * ho * wo;
  if (planes > 0 && ho > 0 && wo > 0)
    launch(maxpool_forward_kernel, grid_for(total), kBlock, 0, s, x, h, w, ho, wo, total, y, argmax);
}

void maxpool2x2_backward(const float* dy, const std::uint8_t* argmax, i64 planes, i64 h, i64 w, float* dx,
                         bool accumulate, cudaStream_t s) {
  const i64 total = planes * h * w;
  if (planes > 0 && h > 0 && w > 0)
    launch(maxpool_backward_kernel, grid_for(total), kBlock, 0, s, dy, argmax, h, w, h / 2, w / 2, total, dx,
           accumulate);
}

}  // namespace dd::cuda::kernels
