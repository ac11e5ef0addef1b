#pragma once
// Dynamic loss scaling for fp16 training. fp16 gradients underflow below 6e-8, so the loss is
// multiplied by a large scale before backward and the gradients divided by it before the step.
// When a step's gradients overflow (inf/NaN), the step is skipped and the scale halved; after
// `growth_interval` clean steps it doubles again. Works on any device: the check is one norm, and
// on the GPU the check, the scale and the verdict stay on the device (unscale_gate + Adam::step(gate)),
// so a scaled training step never waits for the GPU.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "dd/autograd/var.hpp"
#include "dd/core/device_value.hpp"
#include "dd/core/tensor.hpp"
#include "dd/training/step_state.hpp"

namespace dd {

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions o = {}) : o_(o) {
    DD_CHECK(o.initial_scale > 0 && o.growth >= 1 && o.backoff > 0 && o.backoff < 1 && o.growth_interval >= 1 &&
                 o.min_scale > 0,
             "dd::LossScaler: options need initial_scale > 0, growth >= 1, 0 < backoff < 1, growth_interval >= 1 and "
             "min_scale > 0 (got {}, {}, {}, {}, {})",
             o.initial_scale, o.growth, o.backoff, o.growth_interval, o.min_scale);
  }

  // loss.backward() with the loss multiplied by the current scale.
  void backward(const Var& loss) {
    const Device d = loss.value().device();
    DeviceValue<LossScaleState>& st = state_on(d);
    if (d == Device::cpu) return loss.backward(Tensor::full(loss.shape(), st.read().scale));
    Tensor seed = Tensor::empty(loss.shape(), d);
    DD_GPU(loss_scale_fill(seed.data(), seed.numel(), st.get()));
    loss.backward(seed);
  }

  // Unscales the gradients in place and returns the step's gate: one value on their device, 1 when
  // they were finite (the optimizer steps: Adam::step(gate)), 0 when they overflowed (the step is to
  // be skipped; the gradients are left as they are and the scale backs off). On the GPU the host
  // waits for none of it.
  Tensor unscale_gate(const Tensor& grads) {
    DD_CHECK(grads.dtype() == DType::f32 && grads.is_contiguous(),
             "dd::LossScaler: needs contiguous f32 gradients (got {}, {})", dtype_name(grads.dtype()),
             grads.is_contiguous() ? "contiguous" : "strided");
    DeviceValue<LossScaleState>& st = state_on(grads.device());
    if (grads.device() == Device::cpu) {
      LossScaleState s = st.read();
      const double norm = l2_norm(grads);
      if (!std::isfinite(norm)) {
        s.scale = std::max(o_.min_scale, s.scale * o_.backoff);
        s.clean_steps = 0;
        ++s.skipped;
        s.gate = 0.0f;
      } else {
        grads.scale_(1.0f / s.scale);
        s.gate = 1.0f;
        if (++s.clean_steps >= o_.growth_interval) s.scale *= o_.growth, s.clean_steps = 0;
      }
      st.write(s);
    } else {
      DD_GPU(loss_scale_unscale(grads.data(), grads.numel(), st.get(), o_));
    }
    return gate();
  }

  // unscale_gate, waited for: false when the gradients overflowed (the caller skips the step).
  bool unscale(const Tensor& grads) { return unscale_gate(grads).item() != 0.0f; }

  // The current scale and the steps skipped so far (on the GPU, reading them waits for it).
  float scale() const { return state().scale; }
  std::int64_t skipped_steps() const { return state().skipped; }

  // The whole state (for checkpoints; on the GPU reading it waits), and restoring it.
  LossScaleState state() const {
    if (state_) return state_->read();
    LossScaleState s;
    s.scale = o_.initial_scale;
    return s;
  }
  void set_state(const LossScaleState& s) {
    DD_CHECK(s.scale > 0 && std::isfinite(s.scale) && s.clean_steps >= 0 && s.skipped >= 0,
             "dd::LossScaler: a state needs a finite scale > 0 and counts >= 0 (got scale {}, {} clean steps, {} "
             "skipped)",
             s.scale, s.clean_steps, s.skipped);
    if (state_)
      state_->write(s);
    else
      state_.emplace(s, Device::cpu);  // moves to the gradients' device on first use
  }

 private:
  // The state on device d: made on first use, moved when the gradients move.
  DeviceValue<LossScaleState>& state_on(Device d) {
    if (!state_) {
      LossScaleState s;
      s.scale = o_.initial_scale;
      state_.emplace(s, d);
    } else if (state_->device() != d) {
      const LossScaleState s = state_->read();
      state_.emplace(s, d);
    }
    return *state_;
  }
  // A view of the state's gate (a float at offset 1).
  Tensor gate() const {
    static_assert(offsetof(LossScaleState, gate) == sizeof(float));
    return state_->memory().slice(3, 1, 1);
  }

  LossScalerOptions o_;
  std::optional<DeviceValue<LossScaleState>> state_;
};

}  // namespace dd
