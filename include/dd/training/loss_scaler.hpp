#pragma once
// Dynamic loss scaling for fp16 training. fp16 gradients underflow below 6e-8, so the loss is
// multiplied by a large scale before backward and the gradients divided by it before the step.
// When a step's gradients overflow (inf/NaN), the step is skipped and the scale halved; after
// `growth_interval` clean steps it doubles again. Works on any device (the check is one norm).
#include <cmath>
#include <cstdint>

#include "dd/autograd/var.hpp"
#include "dd/core/tensor.hpp"

namespace dd {

struct LossScalerOptions {
  float initial_scale = 65536.0f, growth = 2.0f, backoff = 0.5f;
  int growth_interval = 2000;
  float min_scale = 1.0f;
};

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions o = {}) : o_(o), scale_(o.initial_scale) {}

  // loss.backward() with the loss multiplied by the current scale.
  void backward(const Var& loss) const { loss.backward(Tensor::full(loss.shape(), scale_, loss.value().device())); }

  // Unscales the gradients in place; returns false (and backs off) when they are not finite, in
  // which case the caller skips the optimizer step.
  bool unscale(const Tensor& grads) {
    const double norm = l2_norm(grads);
    if (!std::isfinite(norm)) {
      scale_ = std::max(o_.min_scale, scale_ * o_.backoff);
      clean_steps_ = 0;
      ++skipped_;
      return false;
    }
    grads.scale_(1.0f / scale_);
    if (++clean_steps_ >= o_.growth_interval) scale_ *= o_.growth, clean_steps_ = 0;
    return true;
  }

  float scale() const { return scale_; }
  std::int64_t skipped_steps() const { return skipped_; }

 private:
  LossScalerOptions o_;
  float scale_;
  int clean_steps_ = 0;
  std::int64_t skipped_ = 0;
};

}  // namespace dd
