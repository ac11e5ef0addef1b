#pragma once
#include <memory>
#include <vector>

#include "dd/kernels/cpu/pooling.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

// 2x2 max pooling with stride 2.
inline Var max_pool2x2(const Var& x) {
  const Tensor X = detail::kernel_input(x.value(), detail::channels_last(x.value()));  // half: NHWC kernels only
  detail::require_nonempty(X, "max_pool2x2");
  const Shape s = X.shape();
  DD_CHECK(s.h >= 2 && s.w >= 2, "dd::max_pool2x2: input {} is smaller than the 2x2 window", s);
  const bool gpu = detail::on_gpu(X), nhwc = detail::channels_last(X);
  const MemoryFormat f = nhwc ? MemoryFormat::nhwc : MemoryFormat::nchw;
  const DType t = X.dtype();
  Tensor Y = Tensor::empty({s.n, s.c, s.h / 2, s.w / 2}, X.device(), f, t);
  const Tensor argmax = detail::byte_buffer(Y.numel(), X.device());  // the winner of each window, in Y's order
  if (nhwc)
    DD_GPU(maxpool2x2_nhwc_forward(X.raw(), s.n, s.c, s.h, s.w, Y.raw(), detail::bytes(argmax), t));
  else if (gpu)
    DD_GPU(maxpool2x2_forward(X.data(), s.n * s.c, s.h, s.w, Y.data(), detail::bytes(argmax)));
  else
    cpu::maxpool2x2_forward(X.data(), s.n * s.c, s.h, s.w, Y.data(), detail::bytes(argmax));
  const bool rec = detail::should_record({&x});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, y, argmax, s, gpu, nhwc, f, t] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      // x's gradient so far (the skip connection's, in a U-Net encoder) when its memory is laid out
      // as the kernels write: the winners are added to it in place (no temporary, no extra pass).
      const Tensor& g = x.grad();
      const bool into = g.defined() && g.is_dense(f) && g.dtype() == t;
      // A new gradient: the GPU kernels write all of it, the CPU kernel adds into zeros.
      Tensor dx = into ? g : gpu ? Tensor::empty(s, argmax.device(), f, t) : Tensor::zeros(s);
      if (nhwc)
        DD_GPU(maxpool2x2_nhwc_backward(dy.as_format(f).raw(), detail::bytes(argmax), s.n, s.c, s.h, s.w, dx.raw(),
                                        into, t));
      else if (gpu)
        DD_GPU(maxpool2x2_backward(dy.contiguous().data(), detail::bytes(argmax), s.n * s.c, s.h, s.w, dx.data(), into));
      else
        cpu::maxpool2x2_backward(dy.contiguous().data(), detail::bytes(argmax), s.n * s.c, s.h, s.w, dx.data());
      if (!into) x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
