#pragma once
#include <memory>
#include <vector>

#include "dd/kernels/cpu/pooling.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

// 2x2 max pooling with stride 2.
inline Var max_pool2x2(const Var& x) {
  const Tensor X = x.value().contiguous();
  detail::require_nonempty(X, "max_pool2x2");
  const Shape s = X.shape();
  DD_CHECK(s.h >= 2 && s.w >= 2, "dd::max_pool2x2: input {} is smaller than the 2x2 window", s);
  Tensor Y = Tensor::empty({s.n, s.c, s.h / 2, s.w / 2});
  auto argmax = std::make_shared<std::vector<std::uint8_t>>(static_cast<std::size_t>(Y.numel()));
  cpu::maxpool2x2_forward(X.data(), s.n * s.c, s.h, s.w, Y.data(), argmax->data());
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, y, argmax, s] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::zeros(s);
      cpu::maxpool2x2_backward(dy.contiguous().data(), argmax->data(), s.n * s.c, s.h, s.w, dx.data());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
