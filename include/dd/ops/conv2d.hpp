#pragma once
#include "dd/kernels/cpu/conv2d.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

struct Conv2dOptions {
  std::int64_t pad = 0, stride = 1, dilation = 1;
};

// y = conv(x, w) + b; w is [Cout, Cin, K, K], b (optional, may be an undefined Var) is [Cout,1,1,1].
inline Var conv2d(const Var& x, const Var& w, const Var& b, Conv2dOptions o = {}) {
  const Tensor X = x.value().contiguous();
  detail::require_nonempty(X, "conv2d");
  const Shape xs = X.shape(), ws = w.shape();
  DD_CHECK(ws.h == ws.w, "dd::conv2d: kernel {}x{} is not square", ws.h, ws.w);
  DD_CHECK(xs.c == ws.c, "dd::conv2d: input has {} channels but the weight {} expects {}", xs.c, ws, ws.c);
  DD_CHECK(!b.defined() || b.shape().numel() == ws.n, "dd::conv2d: bias of shape {} for {} output channels",
           b.shape(), ws.n);
  const cpu::Conv2dGeometry g{xs.n, xs.c, xs.h, xs.w, ws.n, ws.h, o.pad, o.stride, o.dilation};
  DD_CHECK(g.out_h() > 0 && g.out_w() > 0, "dd::conv2d: a {}x{} kernel (pad {}, dilation {}) does not fit a {}x{} input",
           ws.h, ws.w, o.pad, o.dilation, xs.h, xs.w);
  Tensor Y = Tensor::empty({xs.n, ws.n, g.out_h(), g.out_w()});
  const Tensor W = w.value().contiguous();
  cpu::conv2d_forward(X.data(), W.data(), b.defined() ? b.value().data() : nullptr, g, Y.data());

  const bool rec = detail::should_record({&x, &w, &b});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, w, b, y, g, X, W] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = x.requires_grad() ? Tensor::zeros(x.shape()) : Tensor{};
      float* dw = w.requires_grad() ? detail::grad_buffer(w).data() : nullptr;
      float* db = b.requires_grad() ? detail::grad_buffer(b).data() : nullptr;
      cpu::conv2d_backward(X.data(), W.data(), dy.contiguous().data(), g, dx.data(), dw, db);
      if (dx.defined()) x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
