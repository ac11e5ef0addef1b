#pragma once
// Conv2d on the CPU: im2col over blocks of output rows + Eigen GEMM (the col buffer stays a few
// MB however large the image), 1x1 stride-1 convolutions skip im2col. Work is split over images
// when there are enough of them (one single-threaded GEMM per thread), otherwise the GEMM and the
// im2col of one image are threaded. Weight layout [Cout, Cin, K, K] as in PyTorch.
#include <algorithm>
#include <cstring>
#include <vector>

#include "dd/core/parallel.hpp"
#include "dd/core/tensor.hpp"
#include "dd/kernels/cpu/gemm.hpp"

namespace dd::cpu {

struct Conv2dGeometry {
  std::int64_t n, cin, h, w;
  std::int64_t cout, k, pad, stride, dilation;

  std::int64_t out_h() const { return (h + 2 * pad - dilation * (k - 1) - 1) / stride + 1; }
  std::int64_t out_w() const { return (w + 2 * pad - dilation * (k - 1) - 1) / stride + 1; }
  std::int64_t patch() const { return cin * k * k; }
  bool pointwise() const { return k == 1 && stride == 1 && pad == 0; }
  // Output rows per block so that one col block holds about 1M floats (4 MB).
  std::int64_t rows_per_block() const {
    const std::int64_t per_row = std::max<std::int64_t>(1, patch() * out_w());
    return std::clamp<std::int64_t>((std::int64_t{1} << 20) / per_row, 1, out_h());
  }
};

namespace detail {

// Fills col[(ci*K+ky)*K+kx][(oy-row0)*Wo+ox] = x[ci][oy*s-p+ky*d][ox*s-p+kx*d] (0 outside).
inline void im2col(const float* x, const Conv2dGeometry& g, std::int64_t row0, std::int64_t rows, float* col,
                   bool threaded) {
  const std::int64_t Wo = g.out_w(), cols = rows * Wo, kk = g.k * g.k;
  auto fill_row = [&](std::int64_t r) {
    const std::int64_t ci = r / kk, ky = (r / g.k) % g.k, kx = r % g.k;
    float* dst = col + r * cols;
    const float* plane = x + ci * g.h * g.w;
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
  };
  const std::int64_t patch = g.patch();
  if (threaded)
    parallel_for(patch, fill_row);
  else
    for (std::int64_t r = 0; r < patch; ++r) fill_row(r);
}

// Adjoint of im2col: dx[ci][iy][ix] += dcol[...]. Threads split over input channels, so no two
// threads write the same plane.
inline void col2im(const float* dcol, const Conv2dGeometry& g, std::int64_t row0, std::int64_t rows, float* dx,
                   bool threaded) {
  const std::int64_t Wo = g.out_w(), cols = rows * Wo;
  auto channel = [&](std::int64_t ci) {
    float* plane = dx + ci * g.h * g.w;
    for (std::int64_t ky = 0; ky < g.k; ++ky)
      for (std::int64_t kx = 0; kx < g.k; ++kx) {
        const float* src = dcol + ((ci * g.k + ky) * g.k + kx) * cols;
        const std::int64_t ix0 = kx * g.dilation - g.pad;
        for (std::int64_t oy = row0; oy < row0 + rows; ++oy) {
          const std::int64_t iy = oy * g.stride - g.pad + ky * g.dilation;
          if (iy < 0 || iy >= g.h) continue;
          const float* s = src + (oy - row0) * Wo;
          float* d = plane + iy * g.w;
          if (g.stride == 1) {
            const std::int64_t lo = std::clamp<std::int64_t>(-ix0, 0, Wo);
            const std::int64_t hi = std::clamp<std::int64_t>(g.w - ix0, lo, Wo);
            float* dd = d + ix0;
#pragma omp simd
            for (std::int64_t ox = lo; ox < hi; ++ox) dd[ox] += s[ox];
          } else {
            for (std::int64_t ox = 0; ox < Wo; ++ox) {
              const std::int64_t ix = ox * g.stride + ix0;
              if (ix >= 0 && ix < g.w) d[ix] += s[ox];
            }
          }
        }
      }
  };
  if (threaded)
    parallel_for(g.cin, channel);
  else
    for (std::int64_t ci = 0; ci < g.cin; ++ci) channel(ci);
}

// True when there are enough images to give each thread whole images.
inline bool split_over_images(std::int64_t n) {
  return n >= num_threads() && num_threads() > 1 && !in_parallel_region();
}

}  // namespace detail

// y[n, Cout, Ho, Wo] = conv(x, w) + b. b may be null.
inline void conv2d_forward(const float* x, const float* w, const float* b, const Conv2dGeometry& g, float* y) {
  const std::int64_t Ho = g.out_h(), Wo = g.out_w(), P = Ho * Wo, patch = g.patch();
  const std::int64_t rpb = g.pointwise() ? Ho : g.rows_per_block();
  const auto W = matrix(w, g.cout, patch, patch);

  auto image = [&](std::int64_t n, std::vector<float>& col, bool threaded) {
    const float* xi = x + n * g.cin * g.h * g.w;
    float* yi = y + n * g.cout * P;
    for (std::int64_t r0 = 0; r0 < Ho; r0 += rpb) {
      const std::int64_t rows = std::min(rpb, Ho - r0), cols = rows * Wo;
      auto Y = matrix(yi + r0 * Wo, g.cout, cols, P);
      if (g.pointwise()) {
        Y.noalias() = W * matrix(xi + r0 * Wo, g.cin, cols, g.h * g.w);
      } else {
        col.resize(static_cast<std::size_t>(patch * cols));
        detail::im2col(xi, g, r0, rows, col.data(), threaded);
        Y.noalias() = W * matrix(col.data(), patch, cols, cols);
      }
      if (b)
        for (std::int64_t co = 0; co < g.cout; ++co) Y.row(co).array() += b[co];
    }
  };

  if (detail::split_over_images(g.n)) {
#pragma omp parallel
    {
      std::vector<float> col;
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < g.n; ++n) image(n, col, false);
    }
  } else {
    std::vector<float> col;
    for (std::int64_t n = 0; n < g.n; ++n) image(n, col, true);
  }
}

// Gradients of conv2d. dx (zero-filled by the caller, may be null) receives dL/dx;
// dw and db (may be null) are ACCUMULATED into, which is what shared weights need.
inline void conv2d_backward(const float* x, const float* w, const float* dy, const Conv2dGeometry& g, float* dx,
                            float* dw, float* db) {
  const std::int64_t Ho = g.out_h(), Wo = g.out_w(), P = Ho * Wo, patch = g.patch();
  const std::int64_t rpb = g.pointwise() ? Ho : g.rows_per_block();
  const auto W = matrix(w, g.cout, patch, patch);

  // dW_acc, dB_acc: where this image's weight gradients go (per-thread when split over images).
  auto image = [&](std::int64_t n, std::vector<float>& col, float* dW_acc, float* dB_acc, bool threaded) {
    const float* xi = x + n * g.cin * g.h * g.w;
    const float* dyi = dy + n * g.cout * P;
    float* dxi = dx ? dx + n * g.cin * g.h * g.w : nullptr;
    for (std::int64_t r0 = 0; r0 < Ho; r0 += rpb) {
      const std::int64_t rows = std::min(rpb, Ho - r0), cols = rows * Wo;
      const auto dY = matrix(dyi + r0 * Wo, g.cout, cols, P);
      if (g.pointwise()) {
        const auto X = matrix(xi + r0 * Wo, g.cin, cols, g.h * g.w);
        if (dW_acc) matrix(dW_acc, g.cout, patch, patch).noalias() += dY * X.transpose();
        if (dxi) matrix(dxi + r0 * Wo, g.cin, cols, g.h * g.w).noalias() = W.transpose() * dY;
      } else {
        col.resize(static_cast<std::size_t>(patch * cols));
        auto C = matrix(col.data(), patch, cols, cols);
        if (dW_acc) {
          detail::im2col(xi, g, r0, rows, col.data(), threaded);
          matrix(dW_acc, g.cout, patch, patch).noalias() += dY * C.transpose();
        }
        if (dxi) {
          C.noalias() = W.transpose() * dY;
          detail::col2im(col.data(), g, r0, rows, dxi, threaded);
        }
      }
      if (dB_acc)
        for (std::int64_t co = 0; co < g.cout; ++co) dB_acc[co] += dY.row(co).sum();
    }
  };

  if (detail::split_over_images(g.n)) {
    // Per-thread partial weight gradients, summed in thread order: deterministic for a given
    // thread count.
    const int T = num_threads();
    const std::int64_t wn = dw ? g.cout * patch : 0, bn = db ? g.cout : 0;
    std::vector<std::vector<float>> part(static_cast<std::size_t>(T));
#pragma omp parallel num_threads(T)
    {
      auto& mine = part[static_cast<std::size_t>(omp_get_thread_num())];
      mine.assign(static_cast<std::size_t>(wn + bn), 0.0f);
      std::vector<float> col;
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < g.n; ++n)
        image(n, col, dw ? mine.data() : nullptr, db ? mine.data() + wn : nullptr, false);
    }
    for (const auto& p : part) {
      if (p.empty()) continue;
      for (std::int64_t i = 0; i < wn; ++i) dw[i] += p[static_cast<std::size_t>(i)];
      for (std::int64_t i = 0; i < bn; ++i) db[i] += p[static_cast<std::size_t>(wn + i)];
    }
  } else {
    std::vector<float> col;
    for (std::int64_t n = 0; n < g.n; ++n) image(n, col, dw, db, true);
  }
}

}  // namespace dd::cpu
