#pragma once
#include "dd/kernels/cpu/batchnorm.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/batchnorm.hpp"
#endif

namespace dd {

struct BatchNormOptions {
  bool training = true;
  float momentum = 0.1f, eps = 1e-5f;
};

// BatchNorm2d. running_mean / running_var are [C,1,1,1] tensors updated in place in training
// (pass undefined tensors to skip the update); in eval they are the statistics used.
inline Var batch_norm(const Var& x, const Var& gamma, const Var& beta, const Tensor& running_mean,
                      const Tensor& running_var, BatchNormOptions o = {}) {
  detail::require_same_device("batch_norm", {&x, &gamma, &beta});
  const Tensor X = x.value().contiguous();
  detail::require_nonempty(X, "batch_norm");
  const bool gpu = detail::on_gpu(X);
  const Device dev = X.device();
  const Shape s = X.shape();
  DD_CHECK(gamma.shape().numel() == s.c && beta.shape().numel() == s.c,
           "dd::batch_norm: input has {} channels but gamma/beta have {}/{}", s.c, gamma.shape().numel(),
           beta.shape().numel());
  const cpu::BatchNormGeometry g{s.n, s.c, s.h * s.w};
  DD_CHECK(!o.training || g.count() > 1,
           "dd::batch_norm: training needs more than one value per channel, input is {}", s);
  Tensor Y = Tensor::empty(s, dev);
  Tensor mean = Tensor::empty({s.c, 1, 1, 1}, dev), invstd = Tensor::empty({s.c, 1, 1, 1}, dev);
  if (o.training) {
    float* rm = running_mean.defined() ? running_mean.data() : nullptr;
    float* rv = running_var.defined() ? running_var.data() : nullptr;
    DD_CHECK(!rm || (running_mean.device() == dev && running_var.device() == dev),
             "dd::batch_norm: running statistics on another device than the input");
    if (gpu)
      DD_GPU(batchnorm_forward_train(X.data(), gamma.value().data(), beta.value().data(), g, o.eps, o.momentum,
                                     Y.data(), mean.data(), invstd.data(), rm, rv));
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
      DD_GPU(batchnorm_forward_eval(X.data(), gamma.value().data(), beta.value().data(), running_mean.data(),
                                    running_var.data(), g, o.eps, Y.data()));
    } else {
      for (std::int64_t c = 0; c < s.c; ++c) invstd.data()[c] = 1.0f / std::sqrt(running_var.data()[c] + o.eps);
      cpu::batchnorm_forward_eval(X.data(), gamma.value().data(), beta.value().data(), running_mean.data(),
                                  running_var.data(), g, o.eps, Y.data());
    }
  }
  const bool rec = detail::should_record({&x, &gamma, &beta});
  Var y(std::move(Y), rec);
  if (rec)
    Tape::current().record([x, gamma, beta, y, g, X, mean, invstd, training = o.training, gpu] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = x.requires_grad() ? Tensor::empty(x.shape(), X.device()) : Tensor{};
      float* dgamma = gamma.requires_grad() ? detail::grad_buffer(gamma).data() : nullptr;
      float* dbeta = beta.requires_grad() ? detail::grad_buffer(beta).data() : nullptr;
      if (gpu)
        DD_GPU(batchnorm_backward(X.data(), dy.contiguous().data(), gamma.value().data(), mean.data(), invstd.data(),
                                  g, training, dx.data(), dgamma, dbeta));
      else
        cpu::batchnorm_backward(X.data(), dy.contiguous().data(), gamma.value().data(), mean.data(), invstd.data(), g,
                                training, dx.data(), dgamma, dbeta);
      if (dx.defined()) x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
