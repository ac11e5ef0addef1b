#pragma once
// Adam on a model's flat parameter and gradient tensors: one loop over one buffer.
#include <cmath>
#include <vector>

#include "dd/core/tensor.hpp"

namespace dd {

struct AdamOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};

class Adam {
 public:
  Adam(Tensor params, Tensor grads, AdamOptions o = {})
      : params_(std::move(params)), grads_(std::move(grads)), o_(o),
        m_(static_cast<std::size_t>(params_.numel()), 0.0f), v_(m_.size(), 0.0f) {
    DD_CHECK(params_.shape() == grads_.shape(), "dd::Adam: parameters {} and gradients {} differ", params_.shape(),
             grads_.shape());
  }

  void step() {
    ++t_;
    const double bc1 = 1.0 - std::pow(double(o_.beta1), double(t_)), bc2 = 1.0 - std::pow(double(o_.beta2), double(t_));
    const float step = static_cast<float>(o_.lr / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
    float* p = params_.data();
    const float* g = grads_.data();
    const std::int64_t n = params_.numel();
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = g[i] + o_.weight_decay * p[i];
      m_[static_cast<std::size_t>(i)] = o_.beta1 * m_[static_cast<std::size_t>(i)] + (1.0f - o_.beta1) * gi;
      v_[static_cast<std::size_t>(i)] = o_.beta2 * v_[static_cast<std::size_t>(i)] + (1.0f - o_.beta2) * gi * gi;
      p[i] -= step * m_[static_cast<std::size_t>(i)] / (std::sqrt(v_[static_cast<std::size_t>(i)] * inv_bc2) + o_.eps);
    }
  }

  // Restores the moments and step count saved from another run (for --resume).
  void load_state(std::vector<float> m, std::vector<float> v, std::int64_t steps) {
    DD_CHECK(m.size() == m_.size() && v.size() == v_.size(),
             "dd::Adam: saved moments hold {} and {} values, the model has {} parameters", m.size(), v.size(), m_.size());
    m_ = std::move(m), v_ = std::move(v), t_ = steps;
  }

  float lr() const { return o_.lr; }
  void set_lr(float lr) { o_.lr = lr; }
  std::int64_t steps() const { return t_; }
  const std::vector<float>& first_moment() const { return m_; }
  const std::vector<float>& second_moment() const { return v_; }

 private:
  Tensor params_, grads_;
  AdamOptions o_;
  std::vector<float> m_, v_;
  std::int64_t t_ = 0;
};

// Scales gradients so their global L2 norm is at most max_norm; returns the norm before clipping.
inline double clip_grad_norm(const Tensor& grads, double max_norm) {
  const double norm = l2_norm(grads);
  if (norm > max_norm && norm > 0) {
    const auto k = static_cast<float>(max_norm / (norm + 1e-6));
    for (std::int64_t i = 0; i < grads.numel(); ++i) grads.data()[i] *= k;
  }
  return norm;
}

}  // namespace dd
