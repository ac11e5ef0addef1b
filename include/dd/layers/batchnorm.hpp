#pragma once
// BatchNorm over C channels: gamma, beta as parameters; running mean and variance as buffers.
#include "dd/layers/layer.hpp"
#include "dd/ops/batch_norm.hpp"

namespace dd {

template <int C>
struct BatchNorm {
  static_assert(C > 0, "dd::BatchNorm: channel count must be positive");
  static constexpr int in_channels = C, out_channels = C;
  static constexpr std::size_t param_count = 2 * C;   // gamma, beta
  static constexpr std::size_t buffer_count = 2 * C;  // running mean, running var
  static constexpr float momentum = 0.1f, eps = 1e-5f;

  static constexpr Interval depends(Interval o) { return o; }

  static void init(Rng&, float* p, float* b) {
    for (int c = 0; c < C; ++c) p[c] = 1.0f, p[C + c] = 0.0f, b[c] = 0.0f, b[C + c] = 1.0f;
  }

  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) {
    return batch_norm(x, ctx.param(po, {C, 1, 1, 1}), ctx.param(po + C, {C, 1, 1, 1}), ctx.buffer(bo, {C, 1, 1, 1}),
                      ctx.buffer(bo + C, {C, 1, 1, 1}), {ctx.training, momentum, eps});
  }
};

}  // namespace dd
