#pragma once
#include <memory>
#include <vector>

#include "dd/core/rng.hpp"
#include "dd/kernels/cpu/activation.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

namespace detail {
// Dropout2d's factor per (sample, channel) plane: 0 with probability p, else 1/(1-p). Drawn on the
// host from rng (same seed, same mask on every device), then moved to device d.
inline Tensor dropout_scales(std::int64_t planes, float p, Rng& rng, Device d) {
  Tensor scale = Tensor::empty({planes, 1, 1, 1});
  for (std::int64_t i = 0; i < planes; ++i) scale.data()[i] = rng.bernoulli(p) ? 0.0f : 1.0f / (1.0f - p);
  return scale.to(d);
}
}  // namespace detail

// Dropout2d: in training each (sample, channel) map is zeroed with probability p and survivors
// are scaled by 1/(1-p); in eval it is the identity. The mask comes from rng, so a seeded rng
// gives the same mask.
inline Var dropout2d(const Var& x, float p, Rng& rng, bool training) {
  DD_CHECK(p >= 0.0f && p < 1.0f, "dd::dropout2d: probability {} is not in [0, 1)", p);
  if (!training || p == 0.0f) return x;
  const Tensor X = detail::kernel_input(x.value(), detail::channels_last(x.value()));  // half: NHWC kernel only
  const Shape s = X.shape();
  const Tensor scale = detail::dropout_scales(s.n * s.c, p, rng, X.device());
  const std::int64_t plane = s.h * s.w;
  // y = x * scale per (sample, channel) plane; in and out share X's memory order.
  auto apply = [s, plane](const Tensor& in, const Tensor& k, const Tensor& out) {
    if (detail::channels_last(in))
      DD_GPU(scale_planes_nhwc(in.raw(), k.data(), s.n, s.c, plane, out.raw(), in.dtype()));
    else if (detail::on_gpu(in))
      DD_GPU(scale_planes(in.data(), k.data(), k.numel(), plane, out.data()));
    else
      cpu::scale_planes(in.data(), k.data(), k.numel(), plane, out.data());
  };
  Tensor Y = Tensor::empty_like(X);
  apply(X, scale, Y);
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, y, scale, apply] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::empty_like(y.value());
      apply(dy.dense_like(y.value()), scale, dx);
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
