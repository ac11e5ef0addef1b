#pragma once
// How the CPU kernels split their work over threads: row blocks of images as the work items, and
// weight gradients summed per thread over the items, then over the threads in thread order
// (deterministic for a given thread count).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "dd/core/parallel.hpp"
#include "dd/kernels/cpu/scratch.hpp"

namespace dd::cpu {

// The (image, first row, rows) items of a kernel working on `rows` output rows of n images, with
// `per_row` floats of working data per row. Blocks hold about 256K floats (1 MB: L2-resident
// while a GEMM packs them), and every image has at least min_blocks of them, so batch-1 layers
// use the cores. The cut depends on the geometry alone, never on the thread count or on running
// inside a parallel region: a GEMM's rounding depends on its shape, and a subimage must give the
// same bits whether a clone runs it on a worker or predict_tiled runs it alone.
class RowBlocks {
 public:
  static constexpr std::int64_t block_floats = std::int64_t{1} << 18, min_blocks = 4;

  RowBlocks(std::int64_t n, std::int64_t rows, std::int64_t per_row) : n_(n), rows_(std::max<std::int64_t>(rows, 1)) {
    per_row = std::max<std::int64_t>(per_row, 1);
    const std::int64_t blocks = std::max((rows_ * per_row + block_floats - 1) / block_floats, min_blocks);
    rpb_ = std::max<std::int64_t>(1, (rows_ + blocks - 1) / blocks);
    blocks_ = (rows_ + rpb_ - 1) / rpb_;
  }
  std::int64_t count() const { return n_ * blocks_; }
  struct Item {
    std::int64_t image, row0, rows;
  };
  Item operator[](std::int64_t i) const {
    const std::int64_t r0 = (i % blocks_) * rpb_;
    return {i / blocks_, r0, std::min(rpb_, rows_ - r0)};
  }

 private:
  std::int64_t n_, rows_, rpb_ = 1, blocks_ = 1;
};

// Runs body(i, dw_acc, db_acc) for the items i in [0, items): it adds item i's weight gradient
// contribution to dw_acc[0, wn) and db_acc[0, bn) (each null when the matching gradient is).
// dw and db are ACCUMULATED into, as shared weights need.
template <class Body>
void accumulate_over_threads(std::int64_t items, float* dw, std::int64_t wn, float* db, std::int64_t bn, Body&& body) {
  if (!dw) wn = 0;
  if (!db) bn = 0;
  if (wn + bn == 0 || items <= 0) return;
  // The call's whole contribution is summed from zero and added to dw/db once: the result must
  // not depend on what they held before (one process accumulating two images must give the
  // bits of two ranks each computing one, then summed).
  auto add_to_gradients = [&](std::int64_t lo, std::int64_t hi, auto&& value) {
    for (std::int64_t e = lo; e < std::min(hi, wn); ++e) dw[e] += value(e);
    for (std::int64_t e = std::max(lo, wn); e < hi; ++e) db[e - wn] += value(e);
  };
  const int T = in_parallel_region() ? 1 : static_cast<int>(std::min<std::int64_t>(num_threads(), items));
  if (T <= 1) {
    float* sum = thread_scratch(Scratch::partial, wn + bn);
    std::fill_n(sum, wn + bn, 0.0f);
    for (std::int64_t i = 0; i < items; ++i) body(i, dw ? sum : nullptr, db ? sum + wn : nullptr);
    add_to_gradients(0, wn + bn, [&](std::int64_t e) { return sum[e]; });
    return;
  }
  std::vector<const float*> partial(static_cast<std::size_t>(T));
#pragma omp parallel num_threads(T)
  {
    float* mine = thread_scratch(Scratch::partial, wn + bn);
    std::fill_n(mine, wn + bn, 0.0f);
    partial[static_cast<std::size_t>(omp_get_thread_num())] = mine;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < items; ++i) body(i, dw ? mine : nullptr, db ? mine + wn : nullptr);
  }
  // The partials stay valid after the region: pool threads keep their scratch.
  constexpr std::int64_t chunk = 4096;
  parallel_for((wn + bn + chunk - 1) / chunk, [&](std::int64_t c) {
    add_to_gradients(c * chunk, std::min(wn + bn, (c + 1) * chunk), [&](std::int64_t e) {
      float s = 0;
      for (const float* p : partial) s += p[e];
      return s;
    });
  });
}

// Sum of n floats (a bias gradient's share of one row).
inline float sum_of(const float* p, std::int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

}  // namespace dd::cpu
