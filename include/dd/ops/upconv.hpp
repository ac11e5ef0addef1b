#pragma once
#include "dd/kernels/cpu/upconv.hpp"
#include "dd/ops/conv2d.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/upconv.hpp"
#endif

namespace dd {

// ConvTranspose2d, kernel 2, stride 2: w is [Cin, Cout, 2, 2], b (optional) [Cout,1,1,1].
inline Var upconv2x2(const Var& x, const Var& w, const Var& b) {
  detail::require_same_device("upconv2x2", {&x, &w, &b});
  const MemoryFormat f = detail::conv_format(x.value());
  const Tensor X = detail::conv_input(x.value(), f);
  detail::require_nonempty(X, "upconv2x2");
  const bool gpu = detail::on_gpu(X), nhwc = f == MemoryFormat::nhwc;
  const Shape xs = X.shape(), ws = w.shape();
  DD_CHECK(ws.h == 2 && ws.w == 2, "dd::upconv2x2: weight {} is not [Cin, Cout, 2, 2]", ws);
  DD_CHECK(xs.c == ws.n, "dd::upconv2x2: input has {} channels but the weight {} expects {}", xs.c, ws, ws.n);
  const cpu::UpConvGeometry g{xs.n, xs.c, xs.h, xs.w, ws.c};
  Tensor Y = Tensor::empty({xs.n, ws.c, 2 * xs.h, 2 * xs.w}, X.device(), f, detail::conv_output_dtype(X, ws.c));
  const Tensor W = w.value().contiguous();
  const float* bias = b.defined() ? b.value().data() : nullptr;
  if (gpu)
    DD_GPU(upconv2x2_forward(detail::device_array(X), W.data(), bias, g, detail::device_array(Y), nhwc));
  else
    cpu::upconv2x2_forward(X.data(), W.data(), bias, g, Y.data());
  const bool rec = detail::should_record({&x, &w, &b});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, w, b, y, g, X, W, gpu, f, nhwc] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = x.requires_grad() ? Tensor::empty(x.shape(), X.device(), f, X.dtype()) : Tensor{};
      float* dw = w.requires_grad() ? detail::grad_buffer(w).data() : nullptr;
      float* db = b.requires_grad() ? detail::grad_buffer(b).data() : nullptr;
      if (gpu)
        DD_GPU(upconv2x2_backward(detail::device_array(X), W.data(), detail::device_array(dy.as_format(f)), g,
                                  detail::device_array(dx), dw, db, nhwc));
      else
        cpu::upconv2x2_backward(X.data(), W.data(), detail::kernel_input(dy).data(), g, dx.data(), dw, db);
      if (dx.defined()) x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
