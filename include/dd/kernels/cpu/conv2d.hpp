#pragma once
// Conv2d on the CPU: im2col over blocks of output rows + GEMM (kernels/cpu/gemm.hpp). The work is
// a list of (image, row block) items spread over the threads (kernels/cpu/work_split.hpp), each
// item one single-threaded GEMM on a col block small enough to stay in L2, built in scratch that
// lives as long as the thread: no allocation, page fault or zero fill per call, and never
// Eigen's own threaded GEMM, which on the U-Nets' 16-64 output rows spends its time waiting.
// Stride-1 input gradients are the convolution of dy with the flipped, transposed weights, so
// they run through the same forward path and write dx (no col2im scatter, no zero-filled dx).
// The input may be spread over several tensors (ChannelParts: a channel concat that is never
// materialised, as the U-Net decoder's [skip, up]). Weight layout [Cout, Cin, K, K] as in PyTorch.
#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "dd/core/error.hpp"
#include "dd/core/parallel.hpp"
#include "dd/kernels/cpu/gemm.hpp"
#include "dd/kernels/cpu/scratch.hpp"
#include "dd/kernels/cpu/work_split.hpp"

namespace dd::cpu {

struct Conv2dGeometry {
  std::int64_t n, cin, h, w;
  std::int64_t cout, k, pad, stride, dilation;

  std::int64_t out_h() const { return (h + 2 * pad - dilation * (k - 1) - 1) / stride + 1; }
  std::int64_t out_w() const { return (w + 2 * pad - dilation * (k - 1) - 1) / stride + 1; }
  std::int64_t patch() const { return cin * k * k; }
  bool pointwise() const { return k == 1 && stride == 1 && pad == 0; }
  // dL/dx is a stride-1 convolution of dy with the flipped weights (pad' = dilation*(k-1) - pad).
  bool input_gradient_is_conv() const { return stride == 1 && pad <= dilation * (k - 1); }
};

// The channels of an NCHW activation held by up to four tensors one after the other: part p has
// channels[p] channels of every image (T = float or const float).
template <class T>
struct ChannelParts {
  static constexpr int max_parts = 4;
  std::array<T*, max_parts> data{};
  std::array<std::int64_t, max_parts> channels{};
  int count = 0;

  ChannelParts() = default;
  ChannelParts(T* p, std::int64_t c) : count(1) { data[0] = p, channels[0] = c; }
  void add(T* p, std::int64_t c) {
    DD_CHECK(count < max_parts, "dd::cpu::ChannelParts: more than {} parts", max_parts);
    data[static_cast<std::size_t>(count)] = p;
    channels[static_cast<std::size_t>(count++)] = c;
  }
  // The plane (H*W = hw floats) of channel c of image n.
  T* plane(std::int64_t n, std::int64_t c, std::int64_t hw) const {
    int p = 0;
    while (p + 1 < count && c >= channels[static_cast<std::size_t>(p)]) c -= channels[static_cast<std::size_t>(p++)];
    return data[static_cast<std::size_t>(p)] + (n * channels[static_cast<std::size_t>(p)] + c) * hw;
  }
};
using InputParts = ChannelParts<const float>;
using OutputParts = ChannelParts<float>;

namespace detail {

inline RowBlocks row_blocks(const Conv2dGeometry& g) {
  return RowBlocks(g.n, g.out_h(), (g.pointwise() ? g.cout : g.patch()) * g.out_w());
}

// Fills col[(ci*K+ky)*K+kx][(oy-row0)*Wo+ox] = x[n][ci][oy*s-p+ky*d][ox*s-p+kx*d] (0 outside).
inline void im2col(const InputParts& x, const Conv2dGeometry& g, std::int64_t n, std::int64_t row0, std::int64_t rows,
                   float* col) {
  const std::int64_t Wo = g.out_w(), cols = rows * Wo, kk = g.k * g.k;
  for (std::int64_t r = 0; r < g.patch(); ++r) {
    const std::int64_t ci = r / kk, ky = (r / g.k) % g.k, kx = r % g.k;
    float* dst = col + r * cols;
    const float* plane = x.plane(n, ci, g.h * g.w);
    const std::int64_t ix0 = kx * g.dilation - g.pad;
    for (std::int64_t oy = row0; oy < row0 + rows; ++oy) {
      float* d = dst + (oy - row0) * Wo;
      const std::int64_t iy = oy * g.stride - g.pad + ky * g.dilation;
      if (iy < 0 || iy >= g.h) {
        std::fill_n(d, Wo, 0.0f);
        continue;
      }
      const float* src = plane + iy * g.w;
      if (g.stride == 1) {
        const std::int64_t lo = std::clamp<std::int64_t>(-ix0, 0, Wo);
        const std::int64_t hi = std::clamp<std::int64_t>(g.w - ix0, lo, Wo);
        std::fill_n(d, lo, 0.0f);
        std::memcpy(d + lo, src + lo + ix0, sizeof(float) * static_cast<std::size_t>(hi - lo));
        std::fill_n(d + hi, Wo - hi, 0.0f);
      } else {
        for (std::int64_t ox = 0; ox < Wo; ++ox) {
          const std::int64_t ix = ox * g.stride + ix0;
          d[ox] = (ix >= 0 && ix < g.w) ? src[ix] : 0.0f;
        }
      }
    }
  }
}

// The [patch x cols] GEMM operand of one item: the input rows themselves for a 1x1 convolution of
// one tensor, else a col block in this thread's scratch.
inline GemmOperand patches(const InputParts& x, const Conv2dGeometry& g, const RowBlocks::Item& it, bool transposed) {
  const std::int64_t Wo = g.out_w(), cols = it.rows * Wo;
  if (g.pointwise() && x.count == 1) return {x.plane(it.image, 0, g.h * g.w) + it.row0 * Wo, g.h * g.w, transposed};
  float* col = thread_scratch(Scratch::col, g.patch() * cols);
  im2col(x, g, it.image, it.row0, it.rows, col);
  return {col, cols, transposed};
}

// Y = W * patches for one item (W [cout x patch] row-major), the rows of Y (output channels) going
// to y's parts in order.
inline void gemm_into_parts(const float* w, const GemmOperand& b, const Conv2dGeometry& g, const OutputParts& y,
                            const RowBlocks::Item& it) {
  const std::int64_t Wo = g.out_w(), P = g.out_h() * Wo, cols = it.rows * Wo, patch = g.patch();
  std::int64_t first = 0;
  for (int p = 0; p < y.count; ++p) {
    const std::int64_t c = y.channels[static_cast<std::size_t>(p)];
    gemm(c, cols, patch, {w + first * patch, patch}, b, y.plane(it.image, first, P) + it.row0 * Wo, P, false);
    first += c;
  }
}

// Adjoint of im2col for one image: dx[ci][iy][ix] += dcol[...], threads over input channels.
// Only for strided convolutions (the others take the flipped-weight path).
inline void col2im(const float* dcol, const Conv2dGeometry& g, std::int64_t n, const OutputParts& dx) {
  const std::int64_t Wo = g.out_w(), cols = g.out_h() * Wo;
  parallel_for(g.cin, [&](std::int64_t ci) {
    float* plane = dx.plane(n, ci, g.h * g.w);
    for (std::int64_t ky = 0; ky < g.k; ++ky)
      for (std::int64_t kx = 0; kx < g.k; ++kx) {
        const float* src = dcol + ((ci * g.k + ky) * g.k + kx) * cols;
        const std::int64_t ix0 = kx * g.dilation - g.pad;
        for (std::int64_t oy = 0; oy < g.out_h(); ++oy) {
          const std::int64_t iy = oy * g.stride - g.pad + ky * g.dilation;
          if (iy < 0 || iy >= g.h) continue;
          const float* s = src + oy * Wo;
          float* d = plane + iy * g.w;
          for (std::int64_t ox = 0; ox < Wo; ++ox) {
            const std::int64_t ix = ox * g.stride + ix0;
            if (ix >= 0 && ix < g.w) d[ix] += s[ox];
          }
        }
      }
  });
}

inline void input_gradient_strided(const float* w, const float* dy, const Conv2dGeometry& g, const OutputParts& dx) {
  const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch();
  for (std::int64_t n = 0; n < g.n; ++n)
    for (std::int64_t c = 0; c < g.cin; ++c) std::fill_n(dx.plane(n, c, g.h * g.w), g.h * g.w, 0.0f);
  std::vector<float> col(static_cast<std::size_t>(patch * P));
  for (std::int64_t n = 0; n < g.n; ++n) {
    gemm(patch, P, g.cout, {w, patch, true}, {dy + n * g.cout * P, P}, col.data(), P, false);
    col2im(col.data(), g, n, dx);
  }
}

// conv(x, w) + b into y's parts (then max(0, .) with relu); the forward pass and the stride-1 input
// gradient. Bias and ReLU run on each row block right after its GEMM, while it is in cache.
inline void conv2d_forward_parts(const InputParts& x, const float* w, const float* b, const Conv2dGeometry& g,
                                 const OutputParts& y, bool relu = false) {
  const std::int64_t Wo = g.out_w(), P = g.out_h() * Wo;
  const auto blocks = row_blocks(g);
  parallel_for(blocks.count(), [&](std::int64_t i) {
    const auto it = blocks[i];
    gemm_into_parts(w, patches(x, g, it, false), g, y, it);
    if (!b && !relu) return;
    for (std::int64_t co = 0; co < g.cout; ++co) {
      const float bc = b ? b[co] : 0.0f;
      float* q = y.plane(it.image, co, P) + it.row0 * Wo;
      const std::int64_t m = it.rows * Wo;
      if (relu) {
#pragma omp simd
        for (std::int64_t j = 0; j < m; ++j) {
          const float v = q[j] + bc;
          q[j] = v > 0.0f ? v : 0.0f;  // as dd::relu: NaN gives 0
        }
      } else {
#pragma omp simd
        for (std::int64_t j = 0; j < m; ++j) q[j] += bc;
      }
    }
  });
}

}  // namespace detail

// y[n, Cout, Ho, Wo] = conv(x, w) + b, x the channel concatenation of its parts. b may be null.
// relu: y = max(0, conv(x, w) + b) (a batch norm folded into w and b, dd::conv2d_batch_norm_relu).
inline void conv2d_forward(const InputParts& x, const float* w, const float* b, const Conv2dGeometry& g, float* y,
                           bool relu = false) {
  detail::conv2d_forward_parts(x, w, b, g, OutputParts(y, g.cout), relu);
}
inline void conv2d_forward(const float* x, const float* w, const float* b, const Conv2dGeometry& g, float* y) {
  conv2d_forward(InputParts(x, g.cin), w, b, g, y);
}

// dL/dx WRITTEN into dx's parts (none: no input gradient); dL/dw and dL/db ACCUMULATED into dw
// and db (may be null), which is what shared weights need (summed per thread, then in thread order).
inline void conv2d_backward(const InputParts& x, const float* w, const float* dy, const Conv2dGeometry& g,
                            const OutputParts& dx, float* dw, float* db) {
  const std::int64_t Ho = g.out_h(), Wo = g.out_w(), P = Ho * Wo, patch = g.patch();
  if (dx.count > 0) {
    if (g.input_gradient_is_conv()) {  // 1x1 too: then wf is W^T and dy needs no im2col
      // wf[ci][co][ky][kx] = w[co][ci][K-1-ky][K-1-kx]
      const std::int64_t kk = g.k * g.k;
      std::vector<float> wf(static_cast<std::size_t>(g.cin * g.cout * kk));
      for (std::int64_t co = 0; co < g.cout; ++co)
        for (std::int64_t ci = 0; ci < g.cin; ++ci)
          for (std::int64_t t = 0; t < kk; ++t)
            wf[static_cast<std::size_t>((ci * g.cout + co) * kk + t)] = w[(co * g.cin + ci) * kk + (kk - 1 - t)];
      const Conv2dGeometry back{g.n, g.cout, Ho, Wo, g.cin, g.k, g.dilation * (g.k - 1) - g.pad, 1, g.dilation};
      detail::conv2d_forward_parts(InputParts(dy, g.cout), wf.data(), nullptr, back, dx);
    } else {
      detail::input_gradient_strided(w, dy, g, dx);
    }
  }
  const auto blocks = detail::row_blocks(g);
  accumulate_over_threads(blocks.count(), dw, g.cout * patch, db, g.cout, [&](std::int64_t i, float* dW, float* dB) {
    const auto it = blocks[i];
    const std::int64_t cols = it.rows * Wo;
    const float* dY = dy + it.image * g.cout * P + it.row0 * Wo;
    if (dW) gemm(g.cout, patch, cols, {dY, P}, detail::patches(x, g, it, true), dW, patch, true);
    if (dB)
      for (std::int64_t co = 0; co < g.cout; ++co) dB[co] += sum_of(dY + co * P, cols);
  });
}
inline void conv2d_backward(const float* x, const float* w, const float* dy, const Conv2dGeometry& g, float* dx,
                            float* dw, float* db) {
  conv2d_backward(InputParts(x, g.cin), w, dy, g, dx ? OutputParts(dx, g.cin) : OutputParts{}, dw, db);
}

}  // namespace dd::cpu
