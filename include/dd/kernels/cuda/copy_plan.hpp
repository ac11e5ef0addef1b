#pragma once
// How a strided copy between two 4-D views (core/strided_copy.hpp: the geometry and its reduction)
// runs on the GPU: decided on the host, its index arithmetic shared with the kernels
// (src/cuda/elementwise.cu). Plain C++ without CUDA headers, so the CPU tests check the plans and
// replay them element by element.
//
// A dense block of one type is a cudaMemcpyAsync. Then two kernels: a copy of rows that are
// contiguous on both sides (a channel slice of channels-last memory or a concat part: most copies
// of a step) moves up to 16 bytes at a time with one 32-bit division per move; every other copy,
// including those that convert or add, goes element by element through the geometry reduced to
// its fewest dimensions.
#include <cstddef>
#include <cstdint>

#include "dd/core/strided_copy.hpp"

namespace dd::cuda::kernels {

// The copy between a [k, c, r, s] filter in KCRS memory (our weights) and KRSC (cuDNN's NHWC filter).
inline StridedCopy filter_order(std::int64_t k, std::int64_t c, std::int64_t r, std::int64_t s, bool to_krsc) {
  const std::int64_t kcrs[4] = {c * r * s, r * s, s, 1}, krsc[4] = {r * s * c, 1, s * c, c};
  StridedCopy g{{k, c, r, s}, {}, {}};
  for (int i = 0; i < 4; ++i) {
    g.dst_strides[i] = to_krsc ? krsc[i] : kcrs[i];
    g.src_strides[i] = to_krsc ? kcrs[i] : krsc[i];
  }
  return g;
}

// A copy of `rows` rows of `row_units` units of `unit` bytes, consecutive on both sides; row r
// starts at unit r * dst_row (dst) and r * src_row (src). unit == 0: the copy is not of that form.
struct RowCopy {
  int unit = 0;
  std::int64_t rows = 0, row_units = 0, dst_row = 0, src_row = 0;

  std::int64_t total() const { return rows * row_units; }
  // Unit offsets of the i-th unit, i < total().
  template <class I>
  DD_HOST_DEVICE void offsets(I i, std::int64_t& od, std::int64_t& os) const {
    const I n = static_cast<I>(row_units);
    const I r = i / n, c = i - r * n;
    od = static_cast<std::int64_t>(r) * dst_row + c;
    os = static_cast<std::int64_t>(r) * src_row + c;
  }
};

// The row form of a same-type copy of element_size-byte elements between dst and src (addresses):
// at most two dimensions with the inner one contiguous on both sides. The unit is the widest of
// 16, 8, 4 and 2 bytes (never below the element) that the row length, both row strides and both
// addresses allow; a single row is a dense block (the launcher copies it with cudaMemcpyAsync).
inline RowCopy plan_rows(const CopyDims& d, std::size_t element_size, std::uintptr_t dst, std::uintptr_t src) {
  RowCopy p;
  if (d.total <= 0 || d.dims > 2 || d.dst[d.dims - 1] != 1 || d.src[d.dims - 1] != 1) return p;
  const auto es = static_cast<std::int64_t>(element_size);
  const bool one_row = d.dims == 1;
  const std::int64_t len = (one_row ? d.shape[0] : d.shape[1]) * es;  // bytes per row
  const std::int64_t dst_row = one_row ? 0 : d.dst[0] * es, src_row = one_row ? 0 : d.src[0] * es;
  for (const std::int64_t unit : {16, 8, 4, 2}) {
    if (unit < es) break;
    const auto u = static_cast<std::uintptr_t>(unit);
    if (len % unit == 0 && dst_row % unit == 0 && src_row % unit == 0 && dst % u == 0 && src % u == 0) {
      p.unit = static_cast<int>(unit);
      break;
    }
  }
  if (p.unit == 0) return p;  // an address not aligned to its element: the element-wise kernel
  p.rows = one_row ? 1 : d.shape[0];
  p.row_units = len / p.unit;
  p.dst_row = dst_row / p.unit;
  p.src_row = src_row / p.unit;
  return p;
}

}  // namespace dd::cuda::kernels
