#pragma once
// A conv block in inference (convolution, eval-mode batch norm, ReLU; dropout is the identity in
// eval) as one convolution: the batch norm folded into the weights and bias (w * scale per output
// channel, b * scale + shift), the ReLU applied where the bias is added. The output is written once,
// where the separate ops pass over it again (the GPU's fused batch-norm tail) or twice (the CPU's
// normalisation, then ReLU). Equal to them within float rounding (the folded weights are rounded
// once more). Records nothing: training, or a forward whose gradients are wanted, runs the separate
// ops (layers choose with folds_batch_norm, layers/conv_block.hpp).
#include <vector>

#include "dd/kernels/cpu/batchnorm.hpp"
#include "dd/ops/conv2d.hpp"

namespace dd {

// max(0, batch_norm_eval(conv(concat(parts), w) + b)); b may be undefined (no convolution bias).
inline Var conv2d_batch_norm_relu(const std::vector<Var>& parts, const Var& w, const Var& b, const Var& gamma,
                                  const Var& beta, const Tensor& running_mean, const Tensor& running_var, float eps,
                                  Conv2dOptions o = {}) {
  DD_CHECK(!parts.empty(), "dd::conv2d_batch_norm_relu: no input");
  bool rec = detail::should_record({&w, &b, &gamma, &beta});
  for (const Var& p : parts) rec = rec || detail::should_record({&p});
  DD_CHECK(!rec,
           "dd::conv2d_batch_norm_relu: for inference only (it records no gradients); with gradients wanted use "
           "conv2d and batch_norm_relu_dropout");
  detail::require_same_device("conv2d_batch_norm_relu", {&w, &b, &gamma, &beta});
  const Shape ws = w.shape();
  const std::int64_t C = ws.n;
  DD_CHECK(gamma.shape().numel() == C && beta.shape().numel() == C && running_mean.defined() && running_var.defined() &&
               running_mean.shape().numel() == C && running_var.shape().numel() == C,
           "dd::conv2d_batch_norm_relu: a convolution with {} outputs followed by a batch norm of {} channels "
           "({} running means, {} running variances)",
           C, gamma.shape().numel(), running_mean.defined() ? running_mean.shape().numel() : 0,
           running_var.defined() ? running_var.shape().numel() : 0);
  DD_CHECK(!b.defined() || b.shape().numel() == C, "dd::conv2d_batch_norm_relu: bias of shape {} for {} outputs",
           b.shape(), C);
  const Device dev = w.value().device();
  DD_CHECK(running_mean.device() == dev && running_var.device() == dev,
           "dd::conv2d_batch_norm_relu: running statistics on {}, weights on {}", device_name(running_mean.device()),
           device_name(dev));

  const Tensor W0 = w.value().contiguous(), G = gamma.value().contiguous(), Be = beta.value().contiguous();
  const Tensor M = running_mean.contiguous(), V = running_var.contiguous();
  const Tensor B0 = b.defined() ? b.value().contiguous() : Tensor{};
  const float* bias = B0.defined() ? B0.data() : nullptr;
  Tensor W = Tensor::empty(ws, dev), B = Tensor::empty({C, 1, 1, 1}, dev);
  const std::int64_t per_output = ws.c * ws.h * ws.w;
  if (detail::on_gpu(W))
    DD_GPU(fold_batchnorm(W0.data(), bias, G.data(), Be.data(), M.data(), V.data(), C, per_output, eps, W.data(),
                          B.data()));
  else
    cpu::fold_batchnorm(W0.data(), bias, G.data(), Be.data(), M.data(), V.data(), C, per_output, eps, W.data(),
                        B.data());
  o.relu = true;
  return conv2d(parts, Var(std::move(W)), Var(std::move(B)), o);
}

}  // namespace dd
