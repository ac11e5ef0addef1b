#pragma once
#include <vector>

#include "dd/kernels/cpu/conv2d.hpp"
#include "dd/ops/concat.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/conv2d.hpp"
#endif

namespace dd {

struct Conv2dOptions {
  std::int64_t pad = 0, stride = 1, dilation = 1;
  // y = max(0, conv(x, w) + b), the ReLU applied where the bias is added (no pass of its own). For
  // inference (dd::conv2d_batch_norm_relu): a convolution that records gradients refuses it.
  bool relu = false;
};

namespace detail {

inline cpu::Conv2dGeometry conv2d_geometry(const Shape& xs, std::int64_t cin, const Var& w, const Var& b,
                                           const Conv2dOptions& o) {
  const Shape ws = w.shape();
  DD_CHECK(ws.h == ws.w, "dd::conv2d: kernel {}x{} is not square", ws.h, ws.w);
  DD_CHECK(cin == ws.c, "dd::conv2d: input has {} channels but the weight {} expects {}", cin, ws, ws.c);
  DD_CHECK(!b.defined() || b.shape().numel() == ws.n, "dd::conv2d: bias of shape {} for {} output channels",
           b.shape(), ws.n);
  DD_CHECK(!o.relu || b.defined(), "dd::conv2d: the fused ReLU (Conv2dOptions::relu) needs a bias");
  const cpu::Conv2dGeometry g{xs.n, cin, xs.h, xs.w, ws.n, ws.h, o.pad, o.stride, o.dilation};
  DD_CHECK(g.out_h() > 0 && g.out_w() > 0, "dd::conv2d: a {}x{} kernel (pad {}, dilation {}) does not fit a {}x{} input",
           ws.h, ws.w, o.pad, o.dilation, xs.h, xs.w);
  return g;
}

// The fused ReLU has no backward: training runs the convolution and the activation as their own ops.
inline void refuse_recorded_relu(bool relu, bool recorded) {
  DD_CHECK(!relu || !recorded,
           "dd::conv2d: the fused ReLU (Conv2dOptions::relu) is for inference; with gradients recorded use "
           "conv2d and relu (or batch_norm_relu_dropout)");
}

// The CPU convolution of the channel concatenation of `xs` (contiguous values, one or more).
inline Var conv2d_cpu(const std::vector<Var>& xs, const std::vector<Tensor>& X, const Var& w, const Var& b,
                      const cpu::Conv2dGeometry& g, bool relu) {
  bool rec = detail::should_record({&w, &b});
  for (const Var& x : xs) rec = rec || detail::should_record({&x});
  refuse_recorded_relu(relu, rec);
  cpu::InputParts in;
  for (const Tensor& t : X) in.add(t.data(), t.shape().c);
  Tensor Y = Tensor::empty({g.n, g.cout, g.out_h(), g.out_w()});
  const Tensor W = w.value().contiguous();
  cpu::conv2d_forward(in, W.data(), b.defined() ? b.value().data() : nullptr, g, Y.data(), relu);

  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([xs, X, w, b, y, g, W, in] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      // Every part gets a place in the kernel's output once one needs its gradient (all of
      // them do in training); only those that need it receive it.
      std::vector<Tensor> dx(xs.size());
      cpu::OutputParts out;
      bool any = false;
      for (const Var& x : xs) any = any || x.requires_grad();
      if (any)
        for (std::size_t i = 0; i < xs.size(); ++i) {
          dx[i] = Tensor::empty(xs[i].shape());  // written by the kernel
          out.add(dx[i].data(), xs[i].shape().c);
        }
      float* dw = w.requires_grad() ? detail::grad_buffer(w).data() : nullptr;
      float* db = b.requires_grad() ? detail::grad_buffer(b).data() : nullptr;
      cpu::conv2d_backward(in, W.data(), dy.contiguous().data(), g, out, dw, db);
      for (std::size_t i = 0; i < xs.size(); ++i)
        if (xs[i].requires_grad()) xs[i].accumulate_grad(std::move(dx[i]));
    });
  return y;
}

#if DD_WITH_CUDA
// A GPU tensor's memory as the convolution kernels take it (null for an undefined tensor).
inline cuda::DeviceArray device_array(const Tensor& t) { return {t.raw(), t.dtype()}; }
#endif

// The memory order a convolution takes and gives: NCHW on the CPU; on the GPU the one
// cuda::conv_settings() asks for (channels-last by default).
inline MemoryFormat conv_format([[maybe_unused]] const Tensor& x) {
#if DD_WITH_CUDA
  if (on_gpu(x)) return gpu::activation_format();
#endif
  return MemoryFormat::nchw;
}

// The input a convolution reads: on the GPU x in the convolution's memory order and its own element
// type (the convolution converts what cuDNN needs), on the CPU f32 NCHW.
inline Tensor conv_input(const Tensor& x, MemoryFormat f) { return on_gpu(x) ? x.as_format(f) : kernel_input(x); }

// The element type of a convolution's output of `channels` channels from input x: on the GPU half
// with cuda::ConvSettings::half_activations (gpu::activation_dtype), else f32.
inline DType conv_output_dtype([[maybe_unused]] const Tensor& x, [[maybe_unused]] std::int64_t channels) {
#if DD_WITH_CUDA
  if (on_gpu(x)) return gpu::activation_dtype(channels);
#endif
  return DType::f32;
}

}  // namespace detail

// y = conv(x, w) + b; w is [Cout, Cin, K, K], b (optional, may be an undefined Var) is [Cout,1,1,1].
inline Var conv2d(const Var& x, const Var& w, const Var& b, Conv2dOptions o = {}) {
  detail::require_same_device("conv2d", {&x, &w, &b});
  const MemoryFormat f = detail::conv_format(x.value());
  const Tensor X = detail::conv_input(x.value(), f);
  detail::require_nonempty(X, "conv2d");
  const cpu::Conv2dGeometry g = detail::conv2d_geometry(X.shape(), X.shape().c, w, b, o);
  if (!detail::on_gpu(X)) return detail::conv2d_cpu({x}, {X}, w, b, g, o.relu);

#if DD_WITH_CUDA
  const bool nhwc = f == MemoryFormat::nhwc;
  Tensor Y = Tensor::empty({g.n, g.cout, g.out_h(), g.out_w()}, X.device(), f, detail::conv_output_dtype(X, g.cout));
  const Tensor W = w.value().contiguous();
  const bool rec = detail::should_record({&x, &w, &b});
  detail::refuse_recorded_relu(o.relu, rec);
  DD_GPU(conv2d_forward(detail::device_array(X), W.data(), b.defined() ? b.value().data() : nullptr, g,
                        detail::device_array(Y), nhwc, o.relu));
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, w, b, y, g, X, W, f, nhwc] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      // written by the kernel, in x's element type
      Tensor dx = x.requires_grad() ? Tensor::empty(x.shape(), X.device(), f, X.dtype()) : Tensor{};
      float* dw = w.requires_grad() ? detail::grad_buffer(w).data() : nullptr;
      float* db = b.requires_grad() ? detail::grad_buffer(b).data() : nullptr;
      DD_GPU(conv2d_backward(detail::device_array(X), W.data(), detail::device_array(dy.as_format(f)), g,
                             detail::device_array(dx), dw, db, nhwc));
      if (dx.defined()) x.accumulate_grad(std::move(dx));
    });
  return y;
#else
  detail::no_cuda();
#endif
}

// conv(concat(parts, channels), w) + b without building the concatenation: the U-Net decoder's
// first convolution over [skip, up] keeps both inputs for backward (they are kept anyway) instead
// of a copy of twice the size. On the GPU (and beyond four parts) the parts are concatenated.
inline Var conv2d(const std::vector<Var>& parts, const Var& w, const Var& b, Conv2dOptions o = {}) {
  DD_CHECK(!parts.empty(), "dd::conv2d: no input");
  if (parts.size() == 1) return conv2d(parts[0], w, b, o);
  if (detail::on_gpu(parts[0].value()) || parts.size() > static_cast<std::size_t>(cpu::InputParts::max_parts))
    return conv2d(concat(parts, 1), w, b, o);
  std::vector<Tensor> X;
  std::int64_t cin = 0;
  for (const Var& p : parts) {
    detail::require_same_device("conv2d", {&parts[0], &p, &w, &b});
    X.push_back(detail::kernel_input(p.value()));  // f32 NCHW
    detail::require_nonempty(X.back(), "conv2d");
    const Shape s = X.back().shape(), s0 = X.front().shape();
    DD_CHECK(s.n == s0.n && s.h == s0.h && s.w == s0.w, "dd::conv2d: input parts {} and {} differ outside the channels",
             s0, s);
    cin += s.c;
  }
  return detail::conv2d_cpu(parts, X, w, b, detail::conv2d_geometry(X.front().shape(), cin, w, b, o), o.relu);
}

}  // namespace dd
