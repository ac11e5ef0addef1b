#pragma once
// ConvTranspose 2x2 stride 2 (the U-Net's UpConv). Each input pixel owns a disjoint 2x2 output
// block, so a block of input rows is one GEMM, Z[Cout*4, cols] = W^T[Cout*4, Cin] * X[Cin, cols],
// whose rows are then scattered into the output (backward: gathered from it). Row blocks of the
// images are spread over the threads (kernels/cpu/work_split.hpp). Weight layout [Cin, Cout, 2, 2]
// as in PyTorch.
#include "dd/core/parallel.hpp"
#include "dd/kernels/cpu/gemm.hpp"
#include "dd/kernels/cpu/scratch.hpp"
#include "dd/kernels/cpu/work_split.hpp"

namespace dd::cpu {

struct UpConvGeometry {
  std::int64_t n, cin, h, w, cout;
};

namespace detail {
inline RowBlocks row_blocks(const UpConvGeometry& g) { return RowBlocks(g.n, g.h, 4 * g.cout * g.w); }

// Z row (co*4 + a*2 + c), column (i - row0)*w + j  <->  output (co, 2i + a, 2j + c).
template <class Move>
void for_each_tap(const UpConvGeometry& g, const RowBlocks::Item& it, Move&& move) {
  const std::int64_t cols = it.rows * g.w, plane = 4 * g.h * g.w, W2 = 2 * g.w;
  for (std::int64_t co = 0; co < g.cout; ++co)
    for (int a = 0; a < 2; ++a)
      for (int c = 0; c < 2; ++c)
        for (std::int64_t i = 0; i < it.rows; ++i)
          move(co, (co * 4 + a * 2 + c) * cols + i * g.w, co * plane + (2 * (it.row0 + i) + a) * W2 + c);
}
}  // namespace detail

inline void upconv2x2_forward(const float* x, const float* w, const float* b, const UpConvGeometry& g, float* y) {
  const std::int64_t HW = g.h * g.w, rows = g.cout * 4;
  const auto blocks = detail::row_blocks(g);
  parallel_for(blocks.count(), [&](std::int64_t i) {
    const auto it = blocks[i];
    const std::int64_t cols = it.rows * g.w;
    float* z = thread_scratch(Scratch::col, rows * cols);
    gemm(rows, cols, g.cin, {w, rows, true}, {x + it.image * g.cin * HW + it.row0 * g.w, HW}, z, cols, false);
    float* yn = y + it.image * g.cout * 4 * HW;
    detail::for_each_tap(g, it, [&](std::int64_t co, std::int64_t zi, std::int64_t yi) {
      const float bias = b ? b[co] : 0.0f;
      const float* zp = z + zi;
      float* yp = yn + yi;
      for (std::int64_t j = 0; j < g.w; ++j) yp[2 * j] = zp[j] + bias;
    });
  });
}

// dx written (may be null); dw, db accumulated (may be null).
inline void upconv2x2_backward(const float* x, const float* w, const float* dy, const UpConvGeometry& g, float* dx,
                               float* dw, float* db) {
  const std::int64_t HW = g.h * g.w, rows = g.cout * 4;
  const auto blocks = detail::row_blocks(g);
  auto item = [&](std::int64_t i, float* dW, float* dB) {
    const auto it = blocks[i];
    const std::int64_t cols = it.rows * g.w, offset = it.image * g.cin * HW + it.row0 * g.w;
    float* dz = thread_scratch(Scratch::col, rows * cols);
    const float* dyn = dy + it.image * g.cout * 4 * HW;
    detail::for_each_tap(g, it, [&](std::int64_t, std::int64_t zi, std::int64_t yi) {
      float* zp = dz + zi;
      const float* dp = dyn + yi;
      for (std::int64_t j = 0; j < g.w; ++j) zp[j] = dp[2 * j];
    });
    if (dx) gemm(g.cin, cols, rows, {w, rows}, {dz, cols}, dx + offset, HW, false);
    if (dW) gemm(g.cin, rows, cols, {x + offset, HW}, {dz, cols, true}, dW, rows, true);
    if (dB)
      for (std::int64_t co = 0; co < g.cout; ++co) dB[co] += sum_of(dz + co * 4 * cols, 4 * cols);
  };
  if (dw || db)
    accumulate_over_threads(blocks.count(), dw, g.cin * rows, db, g.cout, item);
  else if (dx)
    parallel_for(blocks.count(), [&](std::int64_t i) { item(i, nullptr, nullptr); });
}

}  // namespace dd::cpu
