#pragma once
// Conv -> BatchNorm -> ReLU -> Dropout2d, the conv block of the U-Net and of the communication
// network, as one layer with exactly the parameters and buffers of Seq<Conv, BatchNormReLUDropout>.
// Training (or any forward that records gradients) runs the two layers; inference (eval mode,
// gradients off) runs dd::conv2d_batch_norm_relu, the batch norm folded into the convolution.
#include <vector>

#include "dd/layers/context.hpp"
#include "dd/layers/conv.hpp"
#include "dd/layers/norm_activation.hpp"
#include "dd/layers/seq.hpp"
#include "dd/ops/conv_batch_norm.hpp"

namespace dd {

// Whether a model's forward may fold its batch norms: eval mode without gradient recording.
inline bool folds_batch_norm(const Context& ctx) {
  return !ctx.training && !GradMode::enabled();
}

template <int In, int Out, int K = 3, bool Bias = false, float P = 0.1f>
struct ConvBatchNormReLU : Seq<Conv<In, Out, K, Bias>, BatchNormReLUDropout<Out, P>> {
  using Separate = Seq<Conv<In, Out, K, Bias>, BatchNormReLUDropout<Out, P>>;

  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) {
    if (!folds_batch_norm(ctx)) return Separate::forward(ctx, x, po, bo);
    return folded(ctx, {x}, po, bo);
  }
  // Over the channel concatenation of `parts` (the U-Net decoder's [skip, up]).
  static Var forward(Context& ctx, const std::vector<Var>& parts, std::size_t po, std::size_t bo) {
    if (!folds_batch_norm(ctx)) return Separate::forward(ctx, parts, po, bo);
    return folded(ctx, parts, po, bo);
  }

 private:
  using C = Conv<In, Out, K, Bias>;
  static Var folded(Context& ctx, const std::vector<Var>& parts, std::size_t po, std::size_t bo) {
    const std::size_t bn = po + C::param_count;
    return conv2d_batch_norm_relu(
        parts, ctx.param(po, {Out, In, K, K}), Bias ? ctx.param(po + C::weight_count, {Out, 1, 1, 1}) : Var{},
        ctx.param(bn, {Out, 1, 1, 1}), ctx.param(bn + Out, {Out, 1, 1, 1}), ctx.buffer(bo, {Out, 1, 1, 1}),
        ctx.buffer(bo + Out, {Out, 1, 1, 1}), BatchNorm<Out>::eps, {K / 2, 1, 1});
  }
};

}  // namespace dd
