#pragma once
#include <memory>
#include <vector>

#include "dd/core/rng.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

// Dropout2d: in training each (sample, channel) map is zeroed with probability p and survivors
// are scaled by 1/(1-p); in eval it is the identity. The mask comes from rng, so a seeded rng
// gives the same mask.
inline Var dropout2d(const Var& x, float p, Rng& rng, bool training) {
  DD_CHECK(p >= 0.0f && p < 1.0f, "dd::dropout2d: probability {} is not in [0, 1)", p);
  if (!training || p == 0.0f) return x;
  const Tensor X = x.value().contiguous();
  const Shape s = X.shape();
  auto scale = std::make_shared<std::vector<float>>(static_cast<std::size_t>(s.n * s.c));
  for (auto& v : *scale) v = rng.bernoulli(p) ? 0.0f : 1.0f / (1.0f - p);
  Tensor Y = Tensor::empty(s);
  const std::int64_t plane = s.h * s.w;
  parallel_for(s.n * s.c, [&](std::int64_t nc) {
    const float k = (*scale)[static_cast<std::size_t>(nc)];
    for (std::int64_t i = 0; i < plane; ++i) Y.data()[nc * plane + i] = X.data()[nc * plane + i] * k;
  });
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, y, scale, plane] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      const Tensor D = dy.contiguous();
      Tensor dx = Tensor::empty(x.shape());
      parallel_for(static_cast<std::int64_t>(scale->size()), [&](std::int64_t nc) {
        const float k = (*scale)[static_cast<std::size_t>(nc)];
        for (std::int64_t i = 0; i < plane; ++i) dx.data()[nc * plane + i] = D.data()[nc * plane + i] * k;
      });
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
