#pragma once
// ConvTranspose 2x2 stride 2 (the U-Net's UpConv) on the GPU through cuDNN, with the CPU kernel's
// interface (weight [Cin, Cout, 2, 2]; dx written, dw and db accumulated).
//
// A transposed convolution is the adjoint of a convolution, so everything maps onto the
// convolution C with input [N, Cout, 2H, 2W], filter [K = Cin, C = Cout, 2, 2] (exactly our weight
// layout), pad 0, stride 2, output [N, Cin, H, W]:
//   y  = C backward-data (w, "dy" = x)
//   dx = C forward (dy, w)
//   dw += C backward-filter ("x" = dy, "dy" = x)
// Precision etc. follow dd::cuda::conv_settings(). Device pointers (activations as cuda::DeviceArrays
// of any element type); work goes to the current stream.
#include "dd/backend/cuda/convolution.hpp"
#include "dd/kernels/cpu/upconv.hpp"

namespace dd::gpu {

namespace detail {
inline cuda::ConvProblem upconv_problem(const cpu::UpConvGeometry& g, bool nhwc) {
  return {g.n, g.cout, 2 * g.h, 2 * g.w, g.cin, 2, 2, 0, 2, 1, nhwc};
}
}  // namespace detail

// y[n, Cout, 2H, 2W] = convT(x, w) + b. b may be null. nhwc: x and y channels-last.
inline void upconv2x2_forward(cuda::DeviceArray x, const float* w, const float* b, const cpu::UpConvGeometry& g,
                              cuda::DeviceArray y, bool nhwc = false) {
  const cuda::ConvProblem p = detail::upconv_problem(g, nhwc);  // the upconv's y is C's input
  if (p.input_count() <= 0) return;
  if (p.output_count() <= 0) {
    cuda::zero_fill(y, p.input_count());  // no input channels: the output is the bias
  } else {
    cuda::Convolution conv(p);
    const cuda::ConvOperand xo = conv.operand(x, p.output_count()), wo = conv.filter(w);
    conv.backward_data(wo.get(), xo.get(), y);
  }
  if (b) cuda::add_channel_bias(b, g.n, g.cout, 2 * g.h, 2 * g.w, y, nhwc);
}

// dx (may be null) is written; dw and db (may be null) are ACCUMULATED into.
inline void upconv2x2_backward(cuda::DeviceArray x, const float* w, cuda::DeviceArray dy, const cpu::UpConvGeometry& g,
                               cuda::DeviceArray dx, float* dw, float* db, bool nhwc = false) {
  const cuda::ConvProblem p = detail::upconv_problem(g, nhwc);
  if (p.input_count() <= 0) {
    cuda::zero_fill(dx, p.output_count());  // no output, so no gradient reaches x
    return;
  }
  if (db) cuda::accumulate_channel_bias_grad(dy, g.n, g.cout, 2 * g.h, 2 * g.w, db, nhwc);
  if (p.output_count() <= 0 || (!dx && !dw)) return;

  cuda::Convolution conv(p);
  const cuda::ConvOperand dyo = conv.operand(dy, p.input_count());
  if (dx) {
    const cuda::ConvOperand wo = conv.filter(w);
    conv.forward(dyo.get(), wo.get(), dx);
  }
  if (dw) {
    const cuda::ConvOperand xo = conv.operand(x, p.output_count());
    conv.backward_filter(dyo.get(), xo.get(), dw);
  }
}

}  // namespace dd::gpu
