#pragma once
// A copy between two 4-D strided views, as geometry: the shape and each side's strides, reduced to
// the fewest dimensions before anything moves (size-1 dimensions dropped, neighbours that are
// contiguous on both sides merged), so a dense copy is one block and a channel slice is rows.
// The host runs it here (copy_on_host: blocks of one type by memcpy, everything else element by
// element, converting between element types); the GPU runs the same reduced geometry in its
// kernels (kernels/cuda/copy_plan.hpp, src/cuda/elementwise.cu).
// No dd dependencies beyond dtype.hpp: nvcc compiles it for the kernels' index arithmetic.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "dd/core/dtype.hpp"

#ifndef DD_HOST_DEVICE
#if defined(__CUDACC__)
#define DD_HOST_DEVICE __host__ __device__
#else
#define DD_HOST_DEVICE
#endif
#endif

namespace dd {

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

// The geometry with size-1 dimensions dropped, the rest ordered by destination stride (largest
// outermost, so consecutive elements are written to neighbouring addresses in either memory
// order), and neighbours that are contiguous on both sides merged: a dense copy has one
// dimension, a channel slice two. Outermost first; dims >= 1 (a single element is one dimension of one).
struct CopyDims {
  int dims = 1;
  std::int64_t shape[4] = {1, 1, 1, 1};
  std::int64_t dst[4] = {0, 0, 0, 0};
  std::int64_t src[4] = {0, 0, 0, 0};
  std::int64_t total = 0;

  // Element offsets on both sides of the i-th element, i < total. D == dims; I the index type
  // (32-bit where total allows: on the GPU the divisions are the cost); offsets are 64-bit either way.
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

namespace detail {

// Calls f(dst_offset, src_offset, length) for each run along the innermost reduced dimension,
// in memory order of the destination (an odometer over the outer dimensions: no divisions).
template <class F>
void for_each_run(const CopyDims& d, F&& f) {
  const int last = d.dims - 1;
  const std::int64_t len = d.shape[last];
  std::int64_t idx[4] = {0, 0, 0, 0}, od = 0, os = 0;
  for (std::int64_t r = 0, runs = d.total / len; r < runs; ++r) {
    f(od, os, len);
    for (int k = last - 1; k >= 0; --k) {
      od += d.dst[k], os += d.src[k];
      if (++idx[k] < d.shape[k]) break;
      od -= d.dst[k] * d.shape[k], os -= d.src[k] * d.shape[k], idx[k] = 0;
    }
  }
}

// Element-wise runs from S to D, each value through convert.
template <class D, class S, class Convert>
void copy_elements(const CopyDims& d, D* dst, const S* src, Convert convert) {
  const std::int64_t ds = d.dst[d.dims - 1], ss = d.src[d.dims - 1];
  for_each_run(d, [&](std::int64_t od, std::int64_t os, std::int64_t len) {
    D* o = dst + od;
    const S* s = src + os;
    if (ds == 1 && ss == 1) {  // a dense run (conversions): a loop the compiler can vectorise
      for (std::int64_t i = 0; i < len; ++i) o[i] = convert(s[i]);
    } else {
      for (std::int64_t i = 0; i < len; ++i) o[i * ds] = convert(s[i * ss]);
    }
  });
}

}  // namespace detail

// The host copy: dst (type dt) = src (type st) over geometry g, rounding to nearest even when
// narrowing. Runs contiguous on both sides in one type are memcpy'd (a dense copy is one call,
// a channel slice one per row); everything else goes element by element. Views must not overlap.
inline void copy_on_host(void* dst, DType dt, const void* src, DType st, const StridedCopy& g) {
  const CopyDims d = reduce_dims(g);
  if (d.total <= 0) return;
  const int last = d.dims - 1;
  auto* o = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  // f32 memory holds floats, half memory the 16-bit patterns of half_bits: each is read as what it
  // holds (moves of floats keep every bit pattern, NaNs included).
  using half = std::uint16_t;
  auto* oh = reinterpret_cast<half*>(o);
  const auto* sh = reinterpret_cast<const half*>(s);
  if (dt == st) {
    const auto es = static_cast<std::int64_t>(dtype_size(dt));
    if (d.dst[last] == 1 && d.src[last] == 1) {  // runs contiguous on both sides: one memcpy each
      detail::for_each_run(d, [&](std::int64_t od, std::int64_t os, std::int64_t len) {
        std::memcpy(o + od * es, s + os * es, static_cast<std::size_t>(len * es));
      });
      return;
    }
    const auto same = [](auto v) { return v; };
    if (dt == DType::f32)
      detail::copy_elements(d, reinterpret_cast<float*>(o), reinterpret_cast<const float*>(s), same);
    else
      detail::copy_elements(d, oh, sh, same);
    return;
  }
  const auto from_bf16 = [](half h) { return half_bits::from_bf16(h); };
  const auto from_f16 = [](half h) { return half_bits::from_f16(h); };
  const auto to_bf16 = [](float f) { return half_bits::to_bf16(f); };
  const auto to_f16 = [](float f) { return half_bits::to_f16(f); };
  if (st == DType::f32) {  // narrowing, one conversion per type so each loop inlines its own
    const auto* sf = reinterpret_cast<const float*>(s);
    dt == DType::bf16 ? detail::copy_elements(d, oh, sf, to_bf16) : detail::copy_elements(d, oh, sf, to_f16);
  } else if (dt == DType::f32) {
    auto* of = reinterpret_cast<float*>(o);
    st == DType::bf16 ? detail::copy_elements(d, of, sh, from_bf16) : detail::copy_elements(d, of, sh, from_f16);
  } else if (st == DType::bf16) {  // bf16 <-> f16: through the exact float value, one rounding
    detail::copy_elements(d, oh, sh, [](half h) { return half_bits::to_f16(half_bits::from_bf16(h)); });
  } else {
    detail::copy_elements(d, oh, sh, [](half h) { return half_bits::to_bf16(half_bits::from_f16(h)); });
  }
}

}  // namespace dd
