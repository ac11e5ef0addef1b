#pragma once
#include "dd/kernels/cpu/activation.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

inline Var relu(const Var& x) {
  const Tensor X = x.value().contiguous();
  Tensor Y = Tensor::empty(X.shape());
  cpu::relu_forward(X.data(), X.numel(), Y.data());
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    // Only the output is kept: relu's backward needs y > 0, not x.
    Tape::current().record([x, y] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::empty(x.shape());
      cpu::relu_backward(y.value().data(), dy.contiguous().data(), dx.numel(), dx.data());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
