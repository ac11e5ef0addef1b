#pragma once
// Concatenation and slicing along any NCHW dimension: channel concat for skip connections,
// spatial concat/slice for stitching subimages. Both are copies through tensor views.
#include <vector>

#include "dd/ops/recording.hpp"

namespace dd {

namespace detail {
inline std::int64_t& extent(Shape& s, int dim) { return dim == 0 ? s.n : dim == 1 ? s.c : dim == 2 ? s.h : s.w; }
inline std::int64_t extent(const Shape& s, int dim) { return extent(const_cast<Shape&>(s), dim); }
}  // namespace detail

// Joins parts along dim (0=N, 1=C, 2=H, 3=W); all other extents must agree.
inline Var concat(const std::vector<Var>& parts, int dim) {
  DD_CHECK(!parts.empty(), "dd::concat: nothing to concatenate");
  DD_CHECK(dim >= 0 && dim < 4, "dd::concat: dimension {} is not one of 0..3", dim);
  Shape ref = parts[0].shape(), out = ref;
  detail::extent(ref, dim) = 0;
  detail::extent(out, dim) = 0;
  for (const Var& p : parts) {
    Shape s = p.shape();
    detail::extent(s, dim) = 0;
    DD_CHECK(s == ref, "dd::concat: part of shape {} does not match {} outside dimension {}", p.shape(),
             parts[0].shape(), "NCHW"[dim]);
    detail::extent(out, dim) += detail::extent(p.shape(), dim);
  }
  const Device dev = parts[0].value().device();
  for (const Var& p : parts)
    DD_CHECK(p.value().device() == dev, "dd::concat: parts on {} and {}", device_name(dev), device_name(p.value().device()));
  // Channels-last when a part is (GPU activations, see cuda::ConvSettings::channels_last).
  MemoryFormat f = MemoryFormat::nchw;
  for (const Var& p : parts)
    if (detail::on_gpu(p.value()) && p.value().format() == MemoryFormat::nhwc) f = MemoryFormat::nhwc;
  DType t = parts[0].value().dtype();  // half activations stay half
  for (const Var& p : parts) t = common_dtype(t, p.value().dtype());
  Tensor Y = Tensor::empty(out, dev, f, t);
  std::int64_t at = 0;
  for (const Var& p : parts) {
    const std::int64_t len = detail::extent(p.shape(), dim);
    Y.slice(dim, at, len).copy_from(p.value());
    at += len;
  }
  bool rec = false;
  for (const Var& p : parts) rec = rec || detail::should_record({&p});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([parts, y, dim] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      std::int64_t at = 0;
      for (const Var& p : parts) {
        const std::int64_t len = detail::extent(p.shape(), dim);
        if (p.requires_grad()) p.accumulate_grad(dy.slice(dim, at, len));  // a contiguous slice is not copied
        at += len;
      }
    });
  return y;
}

// [start, start+len) of x along dim, as a new dense value (in x's memory order).
inline Var slice(const Var& x, int dim, std::int64_t start, std::int64_t len) {
  Tensor Y = x.value().slice(dim, start, len).clone();
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, y, dim, start, len] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::zeros(x.shape(), dy.device(), x.value().format(), x.value().dtype());
      dx.slice(dim, start, len).copy_from(dy);
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
