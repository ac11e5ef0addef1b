#pragma once
#include "dd/kernels/cpu/conv2d.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/conv2d.hpp"
#endif

namespace dd {

struct Conv2dOptions {
  std::int64_t pad = 0, stride = 1, dilation = 1;
};

// y = conv(x, w) + b; w is [Cout, Cin, K, K], b (optional, may be an undefined Var) is [Cout,1,1,1].
inline Var conv2d(const Var& x, const Var& w, const Var& b, Conv2dOptions o = {}) {
  detail::require_same_device("conv2d", {&x, &w, &b});
  const Tensor X = x.value().contiguous();
  detail::require_nonempty(X, "conv2d");
  const bool gpu = detail::on_gpu(X);
  const Shape xs = X.shape(), ws = w.shape();
  DD_CHECK(ws.h == ws.w, "dd::conv2d: kernel {}x{} is not square", ws.h, ws.w);
  DD_CHECK(xs.c == ws.c, "dd::conv2d: input has {} channels but the weight {} expects {}", xs.c, ws, ws.c);
  DD_CHECK(!b.defined() || b.shape().numel() == ws.n, "dd::conv2d: bias of shape {} for {} output channels",
           b.shape(), ws.n);
  const cpu::Conv2dGeometry g{xs.n, xs.c, xs.h, xs.w, ws.n, ws.h, o.pad, o.stride, o.dilation};
  DD_CHECK(g.out_h() > 0 && g.out_w() > 0, "dd::conv2d: a {}x{} kernel (pad {}, dilation {}) does not fit a {}x{} input",
           ws.h, ws.w, o.pad, o.dilation, xs.h, xs.w);
  Tensor Y = Tensor::empty({xs.n, ws.n, g.out_h(), g.out_w()}, X.device());
  const Tensor W = w.value().contiguous();
  const float* bias = b.defined() ? b.value().data() : nullptr;
  if (gpu)
    DD_GPU(conv2d_forward(X.data(), W.data(), bias, g, Y.data()));
  else
    cpu::conv2d_forward(X.data(), W.data(), bias, g, Y.data());

  const bool rec = detail::should_record({&x, &w, &b});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, w, b, y, g, X, W, gpu] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      // The CPU kernel accumulates into dx, the GPU one writes it.
      Tensor dx = !x.requires_grad() ? Tensor{} : gpu ? Tensor::empty(x.shape(), X.device()) : Tensor::zeros(x.shape());
      float* dw = w.requires_grad() ? detail::grad_buffer(w).data() : nullptr;
      float* db = b.requires_grad() ? detail::grad_buffer(b).data() : nullptr;
      if (gpu)
        DD_GPU(conv2d_backward(X.data(), W.data(), dy.contiguous().data(), g, dx.data(), dw, db));
      else
        cpu::conv2d_backward(X.data(), W.data(), dy.contiguous().data(), g, dx.data(), dw, db);
      if (dx.defined()) x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
