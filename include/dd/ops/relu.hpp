#pragma once
#include "dd/kernels/cpu/activation.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

inline Var relu(const Var& x) {
  const Tensor X = detail::kernel_input(x.value(), /*half_ok=*/true);  // the GPU kernels take any element type
  const bool gpu = detail::on_gpu(X);
  Tensor Y = Tensor::empty_like(X);  // element-wise: any dense order
  if (gpu)
    DD_GPU(relu_forward(X.raw(), X.numel(), Y.raw(), X.dtype()));
  else
    cpu::relu_forward(X.data(), X.numel(), Y.data());
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    // Only the output is kept: relu's backward needs y > 0, not x.
    Tape::current().record([x, y, gpu] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::empty_like(y.value());
      const Tensor D = dy.dense_like(y.value());
      if (gpu)
        DD_GPU(relu_backward(y.value().raw(), D.raw(), dx.numel(), dx.raw(), dx.dtype()));
      else
        cpu::relu_backward(y.value().data(), D.data(), dx.numel(), dx.data());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
