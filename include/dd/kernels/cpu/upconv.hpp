#pragma once
// ConvTranspose 2x2 stride 2 (the U-Net's UpConv). Each input pixel owns a disjoint 2x2 output
// block, so the op is one GEMM: Z[Cout*4, HW] = W^T[Cout*4, Cin] * X[Cin, HW], followed by a
// scatter of Z into the output. Weight layout [Cin, Cout, 2, 2] as in PyTorch.
#include <vector>

#include "dd/core/parallel.hpp"
#include "dd/kernels/cpu/gemm.hpp"

namespace dd::cpu {

struct UpConvGeometry {
  std::int64_t n, cin, h, w, cout;
};

inline void upconv2x2_forward(const float* x, const float* w, const float* b, const UpConvGeometry& g, float* y) {
  const std::int64_t HW = g.h * g.w, W2 = 2 * g.w, rows = g.cout * 4;
  const auto Wt = matrix(w, g.cin, rows, rows).transpose();
  std::vector<float> z(static_cast<std::size_t>(rows * HW));
  for (std::int64_t n = 0; n < g.n; ++n) {
    matrix(z.data(), rows, HW, HW).noalias() = Wt * matrix(x + n * g.cin * HW, g.cin, HW, HW);
    float* yn = y + n * g.cout * 4 * HW;
    parallel_for(g.cout, [&](std::int64_t co) {
      const float bias = b ? b[co] : 0.0f;
      float* yp = yn + co * 4 * HW;
      for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 2; ++c) {
          const float* zp = z.data() + (co * 4 + a * 2 + c) * HW;
          for (std::int64_t i = 0; i < g.h; ++i)
            for (std::int64_t j = 0; j < g.w; ++j) yp[(2 * i + a) * W2 + 2 * j + c] = zp[i * g.w + j] + bias;
        }
    });
  }
}

// dx written (may be null); dw, db accumulated (may be null).
inline void upconv2x2_backward(const float* x, const float* w, const float* dy, const UpConvGeometry& g, float* dx,
                               float* dw, float* db) {
  const std::int64_t HW = g.h * g.w, W2 = 2 * g.w, rows = g.cout * 4;
  std::vector<float> dz(static_cast<std::size_t>(rows * HW));
  const auto Wm = matrix(w, g.cin, rows, rows);
  for (std::int64_t n = 0; n < g.n; ++n) {
    const float* dyn = dy + n * g.cout * 4 * HW;
    parallel_for(g.cout, [&](std::int64_t co) {
      const float* dp = dyn + co * 4 * HW;
      for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 2; ++c) {
          float* zp = dz.data() + (co * 4 + a * 2 + c) * HW;
          for (std::int64_t i = 0; i < g.h; ++i)
            for (std::int64_t j = 0; j < g.w; ++j) zp[i * g.w + j] = dp[(2 * i + a) * W2 + 2 * j + c];
        }
    });
    const auto dZ = matrix(dz.data(), rows, HW, HW);
    if (dx) matrix(dx + n * g.cin * HW, g.cin, HW, HW).noalias() = Wm * dZ;
    if (dw) matrix(dw, g.cin, rows, rows).noalias() += matrix(x + n * g.cin * HW, g.cin, HW, HW) * dZ.transpose();
    if (db)
      for (std::int64_t co = 0; co < g.cout; ++co) db[co] += dZ.middleRows(co * 4, 4).sum();
  }
}

}  // namespace dd::cpu
