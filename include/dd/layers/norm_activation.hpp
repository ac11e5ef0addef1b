#pragma once
// BatchNorm -> ReLU -> Dropout2d as one layer: the tail of every conv block of the U-Net and of the
// communication network. Parameters and buffers are laid out exactly as BatchNorm<C>'s; the fused op
// keeps half the activations of the three layers (ops/batch_norm.hpp).
#include "dd/layers/batchnorm.hpp"
#include "dd/ops/batch_norm.hpp"

namespace dd {

template <int C, float P = 0.1f>
struct BatchNormReLUDropout : BatchNorm<C> {
  static_assert(P >= 0.0f && P < 1.0f, "dd::BatchNormReLUDropout: probability must be in [0, 1)");
  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) {
    using BN = BatchNorm<C>;
    return batch_norm_relu_dropout(x, ctx.param(po, {C, 1, 1, 1}), ctx.param(po + C, {C, 1, 1, 1}),
                                   ctx.buffer(bo, {C, 1, 1, 1}), ctx.buffer(bo + C, {C, 1, 1, 1}),
                                   {ctx.training, BN::momentum, BN::eps}, P, ctx.training && P > 0.0f ? ctx.rng : nullptr);
  }
};

}  // namespace dd
