#pragma once
// BatchNorm2d, and the fused conv-block tail BatchNorm -> ReLU -> Dropout2d. The fused op keeps only
// the normalisation's input and the block's output for backward (instead of four tensors), which
// halves the activation memory of a U-Net; its results equal the three separate ops bit for bit
// (with f32 activations; with half ones it rounds once where the separate ops round twice).
#include "dd/kernels/cpu/activation.hpp"
#include "dd/kernels/cpu/batchnorm.hpp"
#include "dd/ops/dropout.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/batchnorm.hpp"
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

struct BatchNormOptions {
  bool training = true;
  float momentum = 0.1f, eps = 1e-5f;
};

namespace detail {

// What the normalisation's backward needs from its forward.
struct BatchNormSaved {
  Tensor X, mean, invstd;
  cpu::BatchNormGeometry g;
  bool training;
  bool nhwc;  // X is channels-last GPU memory (so are y and the gradients the kernels see)
};

// Whether the GPU kernels normalise x in its own element type: our channels-last kernels take
// half activations; cuDNN's paths (NCHW, more than 1024 channels) get a widened copy.
inline bool batch_norm_takes_half([[maybe_unused]] const Tensor& x) {
#if DD_WITH_CUDA
  return channels_last(x) && cuda::kernels::channels_last_supported(x.shape().c);
#else
  return false;
#endif
}

// tail (the fused op's, may be null): see cpu::BatchNormTail.
inline Tensor batch_norm_forward(const Var& x, const Var& gamma, const Var& beta, const Tensor& running_mean,
                                 const Tensor& running_var, const BatchNormOptions& o, BatchNormSaved& saved,
                                 [[maybe_unused]] cpu::BatchNormTail* tail = nullptr) {
  require_same_device("batch_norm", {&x, &gamma, &beta});
  const Tensor X = kernel_input(x.value(), batch_norm_takes_half(x.value()));
  require_nonempty(X, "batch_norm");
  [[maybe_unused]] const DType t = X.dtype();
  const bool gpu = on_gpu(X), nhwc = channels_last(X);
  const Device dev = X.device();
  const Shape s = X.shape();
  DD_CHECK(gamma.shape().numel() == s.c && beta.shape().numel() == s.c,
           "dd::batch_norm: input has {} channels but gamma/beta have {}/{}", s.c, gamma.shape().numel(),
           beta.shape().numel());
  const cpu::BatchNormGeometry g{s.n, s.c, s.h * s.w};
  DD_CHECK(!o.training || g.count() > 1,
           "dd::batch_norm: training needs more than one value per channel, input is {}", s);
  Tensor Y = Tensor::empty_like(X);
  Tensor mean = Tensor::empty({s.c, 1, 1, 1}, dev), invstd = Tensor::empty({s.c, 1, 1, 1}, dev);
  if (o.training) {
    float* rm = running_mean.defined() ? running_mean.data() : nullptr;
    float* rv = running_var.defined() ? running_var.data() : nullptr;
    DD_CHECK(!rm || (running_mean.device() == dev && running_var.device() == dev),
             "dd::batch_norm: running statistics on another device than the input");
    if (gpu)
      DD_GPU(batchnorm_forward_train(X.raw(), gamma.value().data(), beta.value().data(), g, o.eps, o.momentum,
                                     Y.raw(), mean.data(), invstd.data(), rm, rv, nhwc, tail, t));
    else
      cpu::batchnorm_forward_train(X.data(), gamma.value().data(), beta.value().data(), g, o.eps, o.momentum,
                                   Y.data(), mean.data(), invstd.data(), rm, rv);
  } else {
    DD_CHECK(running_mean.defined() && running_var.defined(), "dd::batch_norm: eval mode needs running statistics");
    DD_CHECK(running_mean.device() == dev && running_var.device() == dev,
             "dd::batch_norm: running statistics on another device than the input");
    mean.copy_from(running_mean.reshape({s.c, 1, 1, 1}));
    if (gpu) {
      DD_GPU(batchnorm_invstd(running_var.data(), s.c, o.eps, invstd.data()));
      DD_GPU(batchnorm_forward_eval(X.raw(), gamma.value().data(), beta.value().data(), running_mean.data(),
                                    running_var.data(), g, o.eps, Y.raw(), nhwc, tail, invstd.data(), t));
    } else {
      for (std::int64_t c = 0; c < s.c; ++c) invstd.data()[c] = 1.0f / std::sqrt(running_var.data()[c] + o.eps);
      cpu::batchnorm_forward_eval(X.data(), gamma.value().data(), beta.value().data(), running_mean.data(),
                                  running_var.data(), g, o.eps, Y.data());
    }
  }
  saved = {X, std::move(mean), std::move(invstd), g, o.training, nhwc};
  return Y;
}

// Backward of the normalisation from dL/dY (dense in the order of sv.X): gradients into x, gamma, beta.
// tail (GPU only, may be null): dy is the fused op's output gradient, see cpu::BatchNormTail.
inline void batch_norm_backward(const BatchNormSaved& sv, const Tensor& dy, const Var& x, const Var& gamma,
                                const Var& beta, [[maybe_unused]] const cpu::BatchNormTail* tail = nullptr) {
  Tensor dx = x.requires_grad() ? Tensor::empty_like(sv.X) : Tensor{};
  float* dgamma = gamma.requires_grad() ? grad_buffer(gamma).data() : nullptr;
  float* dbeta = beta.requires_grad() ? grad_buffer(beta).data() : nullptr;
  if (on_gpu(sv.X))
    DD_GPU(batchnorm_backward(sv.X.raw(), dy.raw(), gamma.value().data(), sv.mean.data(), sv.invstd.data(), sv.g,
                              sv.training, dx.raw(), dgamma, dbeta, sv.nhwc, tail, sv.X.dtype()));
  else
    cpu::batchnorm_backward(sv.X.data(), dy.data(), gamma.value().data(), sv.mean.data(), sv.invstd.data(), sv.g,
                            sv.training, dx.data(), dgamma, dbeta);
  if (dx.defined()) x.accumulate_grad(std::move(dx));
}

}  // namespace detail

// BatchNorm2d. running_mean / running_var are [C,1,1,1] tensors updated in place in training
// (pass undefined tensors to skip the update); in eval they are the statistics used.
inline Var batch_norm(const Var& x, const Var& gamma, const Var& beta, const Tensor& running_mean,
                      const Tensor& running_var, BatchNormOptions o = {}) {
  detail::BatchNormSaved saved;
  Tensor Y = detail::batch_norm_forward(x, gamma, beta, running_mean, running_var, o, saved);
  const bool rec = detail::should_record({&x, &gamma, &beta});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, gamma, beta, y, saved] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      detail::batch_norm_backward(saved, dy.dense_like(saved.X), x, gamma, beta);
    });
  return y;
}

// dropout2d(relu(batch_norm(x)), p) in one op: the same values and gradients as the three ops
// (the same dropout draws from rng too), with the normalised map overwritten in place. rng is read
// only in training with p > 0.
inline Var batch_norm_relu_dropout(const Var& x, const Var& gamma, const Var& beta, const Tensor& running_mean,
                                   const Tensor& running_var, BatchNormOptions o, float p, Rng* rng) {
  DD_CHECK(p >= 0.0f && p < 1.0f, "dd::batch_norm_relu_dropout: probability {} is not in [0, 1)", p);
  const Shape s = x.shape();
  Tensor scale;  // dropout's factor per (sample, channel) plane; undefined: no dropout
  if (o.training && p > 0.0f) {
    DD_CHECK(rng != nullptr, "dd::batch_norm_relu_dropout: dropout in training needs a random generator");
    scale = detail::dropout_scales(s.n * s.c, p, *rng, x.value().device());
  }
  const float* k = scale.defined() ? scale.data() : nullptr;
  // The GPU's channels-last batch norm applies ReLU and dropout in its own pass.
  cpu::BatchNormTail tail{k};
  detail::BatchNormSaved saved;
  Tensor Y = detail::batch_norm_forward(x, gamma, beta, running_mean, running_var, o, saved, &tail);
  if (!tail.applied) {
    if (saved.nhwc)
      DD_GPU(relu_scale_planes_nhwc(Y.raw(), k, s.n, s.c, s.h * s.w, Y.dtype()));
    else if (detail::on_gpu(Y))
      DD_GPU(relu_scale_planes(Y.data(), k, s.n * s.c, s.h * s.w));
    else
      cpu::relu_scale_planes(Y.data(), k, s.n * s.c, s.h * s.w);
  }
  const bool rec = detail::should_record({&x, &gamma, &beta});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, gamma, beta, y, saved, scale, s] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      const Tensor D = dy.dense_like(y.value());
      const float* k = scale.defined() ? scale.data() : nullptr;
      if (detail::on_gpu(D)) {  // the GPU backward takes ReLU and dropout back out itself (no dz)
        const cpu::BatchNormTail tail{k, false, y.value().raw()};
        detail::batch_norm_backward(saved, D, x, gamma, beta, &tail);
        return;
      }
      Tensor dz = Tensor::empty_like(y.value());
      cpu::relu_scale_planes_backward(y.value().data(), D.data(), k, s.n * s.c, s.h * s.w, dz.data());
      detail::batch_norm_backward(saved, dz, x, gamma, beta);
    });
  return y;
}

}  // namespace dd
