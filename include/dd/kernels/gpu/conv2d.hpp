#pragma once
// Conv2d on the GPU through cuDNN, with the CPU kernel's interface and conventions (weight layout
// [Cout, Cin, K, K]; dx written, dw and db accumulated). Precision, determinism and algorithm
// search follow dd::cuda::conv_settings(). Device pointers; activations (x, y, dy, dx) are
// cuda::DeviceArrays of any element type, weights and their gradients f32; work goes to the
// current stream.
#include "dd/backend/cuda/convolution.hpp"
#include "dd/core/tensor.hpp"
#include "dd/kernels/cpu/conv2d.hpp"

namespace dd::gpu {

namespace detail {
inline cuda::ConvProblem conv2d_problem(const cpu::Conv2dGeometry& g, bool nhwc) {
  return {g.n, g.cin, g.h, g.w, g.cout, g.k, g.k, g.pad, g.stride, g.dilation, nhwc};
}
}  // namespace detail

// The memory order GPU convolutions give their outputs (and want their inputs in).
inline MemoryFormat activation_format() {
  return cuda::conv_settings().channels_last ? MemoryFormat::nhwc : MemoryFormat::nchw;
}

// The element type GPU convolutions give an output of `channels` channels: the precision's half
// type with ConvSettings::half_activations (bf16/fp16, channels-last, at most 1024 channels: where
// the per-channel kernels after a convolution take half), else f32.
inline DType activation_dtype(std::int64_t channels) {
  const cuda::ConvSettings& s = cuda::conv_settings();
  const bool half = s.half_activations && cuda::is_half(s.precision) && s.channels_last &&
                    cuda::kernels::channels_last_supported(channels);
  return half ? cuda::compute_dtype(s.precision) : DType::f32;
}

// y[n, Cout, Ho, Wo] = conv(x, w) + b. b may be null. nhwc: x and y channels-last.
// relu (needs b): y = max(0, conv(x, w) + b), a batch norm folded into w and b.
inline void conv2d_forward(cuda::DeviceArray x, const float* w, const float* b, const cpu::Conv2dGeometry& g,
                           cuda::DeviceArray y, bool nhwc = false, bool relu = false) {
  DD_CHECK(!relu || b, "dd::gpu::conv2d_forward: the fused ReLU needs a bias");
  const cuda::ConvProblem p = detail::conv2d_problem(g, nhwc);
  const std::int64_t Ho = p.out_h(), Wo = p.out_w();
  if (g.n <= 0 || g.cout <= 0 || Ho <= 0 || Wo <= 0) return;
  if (p.input_count() <= 0) {
    // Nothing to convolve (no input channels or an all-padding input): the output is the bias.
    cuda::zero_fill(y, p.output_count());
  } else {
    cuda::Convolution conv(p);
    const cuda::ConvOperand xo = conv.operand(x, p.input_count()), wo = conv.filter(w);
    conv.forward(xo.get(), wo.get(), y);
  }
  if (b) cuda::add_channel_bias(b, g.n, g.cout, Ho, Wo, y, nhwc, relu);
}

// dx (may be null) is written with dL/dx; dw and db (may be null) are ACCUMULATED into.
inline void conv2d_backward(cuda::DeviceArray x, const float* w, cuda::DeviceArray dy, const cpu::Conv2dGeometry& g,
                            cuda::DeviceArray dx, float* dw, float* db, bool nhwc = false) {
  const cuda::ConvProblem p = detail::conv2d_problem(g, nhwc);
  const std::int64_t Ho = p.out_h(), Wo = p.out_w();
  if (g.n <= 0 || g.cout <= 0 || Ho <= 0 || Wo <= 0) {
    cuda::zero_fill(dx, p.input_count());  // no output, so no gradient reaches x
    return;
  }
  if (db) cuda::accumulate_channel_bias_grad(dy, g.n, g.cout, Ho, Wo, db, nhwc);
  if (p.input_count() <= 0 || (!dx && !dw)) return;

  cuda::Convolution conv(p);
  const cuda::ConvOperand dyo = conv.operand(dy, p.output_count());
  if (dx) {
    const cuda::ConvOperand wo = conv.filter(w);
    conv.backward_data(wo.get(), dyo.get(), dx);
  }
  if (dw) {
    const cuda::ConvOperand xo = conv.operand(x, p.input_count());
    conv.backward_filter(xo.get(), dyo.get(), dw);
  }
}

}  // namespace dd::gpu
