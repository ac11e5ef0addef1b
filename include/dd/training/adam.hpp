#pragma once
// Adam on a model's flat parameter and gradient tensors: one loop over one buffer (one kernel on
// the GPU), the moments and, on the GPU, the step count on the parameters' device.
#include <cmath>
#include <vector>

#include "dd/core/device_value.hpp"
#include "dd/core/tensor.hpp"
#include "dd/training/step_state.hpp"
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
      : params_(std::move(params)),
        grads_(std::move(grads)),
        o_(o),
        m_(Tensor::zeros(params_.shape(), params_.device())),
        v_(Tensor::zeros(params_.shape(), params_.device())),
        counter_(AdamCounter{}, params_.device()) {
    DD_CHECK(params_.shape() == grads_.shape(), "dd::Adam: parameters {} and gradients {} differ", params_.shape(),
             grads_.shape());
    DD_CHECK(params_.device() == grads_.device() && params_.is_contiguous() && grads_.is_contiguous(),
             "dd::Adam: parameters and gradients must be contiguous and on one device");
  }

  void step() { step_if(nullptr); }

  // The step unless `gate` (one value on the parameters' device: LossScaler::unscale_gate) is 0, in
  // which case nothing changes, the step count included. On the GPU the gate is read there: the
  // host does not wait for it.
  void step(const Tensor& gate) {
    DD_CHECK(gate.numel() == 1 && gate.dtype() == DType::f32 && gate.device() == params_.device(),
             "dd::Adam::step: the gate must be one f32 value on the parameters' device (got {} {} values on the {})",
             gate.numel(), dtype_name(gate.dtype()), device_name(gate.device()));
    gated_ = true;
    step_if(gate.data());
  }

  // Restores the moments and step count saved from another run (for --resume).
  void load_state(std::vector<float> m, std::vector<float> v, std::int64_t steps) {
    const auto n = static_cast<std::size_t>(m_.numel());
    DD_CHECK(m.size() == n && v.size() == n, "dd::Adam: saved moments hold {} and {} values, the model has {} parameters",
             m.size(), v.size(), n);
    m_.copy_from(Tensor::from(m_.shape(), m));
    v_.copy_from(Tensor::from(v_.shape(), v));
    AdamCounter c;
    c.t = steps;
    counter_.write(c);
    t_ = steps;
    gated_ = false;
  }

  float lr() const { return o_.lr; }
  void set_lr(float lr) { o_.lr = lr; }
  // Steps taken. The host counts them, unless a gated step ran on the GPU: then the count is read
  // from the device (a wait).
  std::int64_t steps() const { return gated_ && params_.device() != Device::cpu ? counter_.read().t : t_; }
  // Host copies of the moments (for checkpoints).
  std::vector<float> first_moment() const { return m_.to_vector(); }
  std::vector<float> second_moment() const { return v_.to_vector(); }

 private:
  // One step unless *gate == 0 (gate: a value in the parameters' memory, or null).
  void step_if(const float* gate) {
    float* p = params_.data();
    const float* g = grads_.data();
    float *m = m_.data(), *v = v_.data();
    const std::int64_t n = params_.numel();
    if (params_.device() != Device::cpu) {
      // The counter and the bias corrections live on the device (a gate there may skip the step).
      DD_GPU(adam_step_counted(p, g, m, v, n, counter_.get(), gate, double(o_.lr), o_.beta1, o_.beta2, o_.eps,
                               o_.weight_decay));
      ++t_;
      return;
    }
    if (gate && *gate == 0.0f) return;
    ++t_;
    const double bc1 = 1.0 - std::pow(double(o_.beta1), double(t_)), bc2 = 1.0 - std::pow(double(o_.beta2), double(t_));
    const float step = static_cast<float>(o_.lr / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = g[i] + o_.weight_decay * p[i];
      m[i] = o_.beta1 * m[i] + (1.0f - o_.beta1) * gi;
      v[i] = o_.beta2 * v[i] + (1.0f - o_.beta2) * gi * gi;
      p[i] -= step * m[i] / (std::sqrt(v[i] * inv_bc2) + o_.eps);
    }
  }

  Tensor params_, grads_;
  AdamOptions o_;
  Tensor m_, v_;
  DeviceValue<AdamCounter> counter_;  // the step count on the GPU (unused on the CPU)
  std::int64_t t_ = 0;                // steps enqueued (exact unless a gated step ran on the GPU)
  bool gated_ = false;
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
