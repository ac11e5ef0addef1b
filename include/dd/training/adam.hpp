#pragma once
// Adam on a model's flat parameter and gradient tensors: one loop over one buffer (one kernel on
// the GPU), the moments on the parameters' device.
#include <cmath>
#include <vector>

#include "dd/core/tensor.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

struct AdamOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};

class Adam {
 public:
  Adam(Tensor params, Tensor grads, AdamOptions o = {})
      : params_(std::move(params)), grads_(std::move(grads)), o_(o),
        m_(Tensor::zeros(params_.shape(), params_.device())), v_(Tensor::zeros(params_.shape(), params_.device())) {
    DD_CHECK(params_.shape() == grads_.shape(), "dd::Adam: parameters {} and gradients {} differ", params_.shape(),
             grads_.shape());
    DD_CHECK(params_.device() == grads_.device() && params_.is_contiguous() && grads_.is_contiguous(),
             "dd::Adam: parameters and gradients must be contiguous and on one device");
  }

  void step() {
    ++t_;
    const double bc1 = 1.0 - std::pow(double(o_.beta1), double(t_)), bc2 = 1.0 - std::pow(double(o_.beta2), double(t_));
    const float step = static_cast<float>(o_.lr / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
    float* p = params_.data();
    const float* g = grads_.data();
    float *m = m_.data(), *v = v_.data();
    const std::int64_t n = params_.numel();
    if (params_.device() != Device::cpu) {
      DD_GPU(detail::launch("adam_step", cuda::kernels::adam_step, p, g, m, v, n, step, o_.beta1, o_.beta2, o_.eps,
                            o_.weight_decay, inv_bc2));
      return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = g[i] + o_.weight_decay * p[i];
      m[i] = o_.beta1 * m[i] + (1.0f - o_.beta1) * gi;
      v[i] = o_.beta2 * v[i] + (1.0f - o_.beta2) * gi * gi;
      p[i] -= step * m[i] / (std::sqrt(v[i] * inv_bc2) + o_.eps);
    }
  }

  // Restores the moments and step count saved from another run (for --resume).
  void load_state(std::vector<float> m, std::vector<float> v, std::int64_t steps) {
    const auto n = static_cast<std::size_t>(m_.numel());
    DD_CHECK(m.size() == n && v.size() == n, "dd::Adam: saved moments hold {} and {} values, the model has {} parameters",
             m.size(), v.size(), n);
    m_.copy_from(Tensor::from(m_.shape(), m));
    v_.copy_from(Tensor::from(v_.shape(), v));
    t_ = steps;
  }

  float lr() const { return o_.lr; }
  void set_lr(float lr) { o_.lr = lr; }
  std::int64_t steps() const { return t_; }
  // Host copies of the moments (for checkpoints).
  std::vector<float> first_moment() const { return m_.to_vector(); }
  std::vector<float> second_moment() const { return v_.to_vector(); }

 private:
  Tensor params_, grads_;
  AdamOptions o_;
  Tensor m_, v_;
  std::int64_t t_ = 0;
};

// Scales gradients so their global L2 norm is at most max_norm; returns the norm before clipping.
inline double clip_grad_norm(const Tensor& grads, double max_norm) {
  const double norm = l2_norm(grads);
  if (norm > max_norm && norm > 0) {
    grads.scale_(static_cast<float>(max_norm / (norm + 1e-6)));
  }
  return norm;
}

// clip_grad_norm without returning the norm: on the GPU the norm stays on the device and the host
// does not wait for it (the same arithmetic, the same result).
inline void clip_gradients(const Tensor& grads, double max_norm) {
  if (grads.device() == Device::cpu) {
    (void)clip_grad_norm(grads, max_norm);
    return;
  }
  DD_CHECK(grads.dtype() == DType::f32 && grads.is_contiguous(),
           "dd::clip_gradients: needs contiguous f32 gradients (got {}, {})", dtype_name(grads.dtype()),
           grads.is_contiguous() ? "contiguous" : "strided");
  DD_GPU(clip_by_norm(grads.data(), grads.numel(), max_norm));
}

}  // namespace dd
