#pragma once
// How a strided copy between two 4-D views runs on the GPU: decided on the host, its index
// arithmetic shared with the kernels (src/cuda/elementwise.cu). Plain C++ without CUDA headers,
// so the CPU tests check the plans and replay them element by element.
//
// A dense block of one type is a cudaMemcpyAsync. Then two kernels: a copy of rows that are
// contiguous on both sides (a channel slice of channels-last memory or a concat part: most copies
// of a step) moves up to 16 bytes at a time with one 32-bit division per move; every other copy,
// including those that convert or add, goes element by element through the geometry reduced to
// its fewest dimensions.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define DD_HOST_DEVICE __host__ __device__
#else
#define DD_HOST_DEVICE
#endif

namespace dd::cuda::kernels {

// dst[n,c,h,w] = src[n,c,h,w] for a 4-D shape; strides in elements, either side may be a view.
struct StridedCopy {
  std::int64_t shape[4];
  std::int64_t dst_strides[4];
  std::int64_t src_strides[4];
};

// n consecutive elements on both sides.
inline StridedCopy dense_copy(std::int64_t n) {
  return {{n, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1}};
}

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

// The geometry with size-1 dimensions dropped, the rest ordered by destination stride (largest
// outermost, so neighbouring threads write neighbouring addresses in either memory order), and
// neighbours that are contiguous on both sides merged: a dense copy has one dimension, a channel
// slice two. Outermost first; dims >= 1 (a single element is one dimension of one).
struct CopyDims {
  int dims = 1;
  std::int64_t shape[4] = {1, 1, 1, 1};
  std::int64_t dst[4] = {0, 0, 0, 0};
  std::int64_t src[4] = {0, 0, 0, 0};
  std::int64_t total = 0;

  // Element offsets on both sides of the i-th element, i < total. D == dims; I the index type
  // (32-bit where total allows: the divisions are the cost); offsets are 64-bit either way.
  template <int D, class I>
  DD_HOST_DEVICE void offsets(I i, std::int64_t& od, std::int64_t& os) const {
    I r = i;
    od = 0, os = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = D - 1; k > 0; --k) {
      const I n = static_cast<I>(shape[k]);
      const I q = r / n, x = r - q * n;
      od += static_cast<std::int64_t>(x) * dst[k];
      os += static_cast<std::int64_t>(x) * src[k];
      r = q;
    }
    od += static_cast<std::int64_t>(r) * dst[0];
    os += static_cast<std::int64_t>(r) * src[0];
  }
};

inline CopyDims reduce_dims(const StridedCopy& g) {
  CopyDims d;
  int order[4], m = 0;
  d.total = 1;
  for (int k = 0; k < 4; ++k) {
    d.total *= g.shape[k];
    if (g.shape[k] != 1) order[m++] = k;
  }
  std::stable_sort(order, order + m, [&](int a, int b) { return g.dst_strides[a] > g.dst_strides[b]; });
  int n = 0;
  for (int i = 0; i < m; ++i) {
    const int k = order[i];
    const std::int64_t len = g.shape[k];
    if (n > 0 && d.dst[n - 1] == g.dst_strides[k] * len && d.src[n - 1] == g.src_strides[k] * len) {
      d.shape[n - 1] *= len;
      d.dst[n - 1] = g.dst_strides[k];
      d.src[n - 1] = g.src_strides[k];
    } else {
      d.shape[n] = len, d.dst[n] = g.dst_strides[k], d.src[n] = g.src_strides[k];
      ++n;
    }
  }
  if (n == 0) d.dst[0] = d.src[0] = 1;  // a single element: a dense block of one
  d.dims = n > 0 ? n : 1;
  return d;
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

#undef DD_HOST_DEVICE
