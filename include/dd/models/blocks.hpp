#pragma once
// The U-Net's named building blocks (PAPER_NOTES section 1).
#include "dd/layers/activation.hpp"
#include "dd/layers/batchnorm.hpp"
#include "dd/layers/conv.hpp"
#include "dd/layers/conv_block.hpp"
#include "dd/layers/dropout.hpp"
#include "dd/layers/norm_activation.hpp"
#include "dd/layers/pooling.hpp"
#include "dd/layers/seq.hpp"
#include "dd/layers/upconv.hpp"
#include "dd/ops/concat.hpp"

namespace dd {

// (Conv3x3 without bias -> BatchNorm -> ReLU -> Dropout2d) twice. In training BatchNorm -> ReLU ->
// Dropout2d run as one fused layer (same results, half the kept activations); in inference the
// batch norm is folded into the convolution (layers/conv_block.hpp).
template <int In, int Out, float P = 0.1f>
struct DoubleConv : Seq<ConvBatchNormReLU<In, Out, 3, false, P>, ConvBatchNormReLU<Out, Out, 3, false, P>> {};

// Encoder step: halve the size, then a DoubleConv.
template <int In, int Out, float P = 0.1f>
struct Down : Seq<MaxPool2, DoubleConv<In, Out, P>> {};

// Decoder step with two inputs: up-sample the coarser map, concatenate [skip, up] and fuse.
template <int In, int Out, float P = 0.1f>
struct Up {
  using Upsample = UpConv<In, Out>;
  using Fuse = DoubleConv<2 * Out, Out, P>;
  static constexpr int in_channels = In, out_channels = Out, skip_channels = Out;
  static constexpr std::size_t param_count = Upsample::param_count + Fuse::param_count;
  static constexpr std::size_t buffer_count = Upsample::buffer_count + Fuse::buffer_count;

  static void init(Rng& rng, float* p, float* b) {
    Upsample::init(rng, p, b);
    Fuse::init(rng, p + Upsample::param_count, b + Upsample::buffer_count);
  }
  static Var forward(Context& ctx, const Var& below, const Var& skip, std::size_t po, std::size_t bo) {
    const Var up = Upsample::forward(ctx, below, po, bo);
    // [skip, up] as parts: the first convolution reads both without a concatenated copy.
    return Fuse::forward(ctx, std::vector<Var>{skip, up}, po + Upsample::param_count, bo + Upsample::buffer_count);
  }
};

}  // namespace dd
