#pragma once
// Conv: a 2-D convolution with an odd square kernel. Default padding keeps the size ("same").
#include <cmath>

#include "dd/layers/layer.hpp"
#include "dd/ops/conv2d.hpp"

namespace dd {

template <int In, int Out, int K = 3, bool Bias = true, int Stride = 1, int Dilation = 1,
          int Pad = Dilation * (K / 2)>
struct Conv {
  static_assert(In > 0 && Out > 0, "dd::Conv: channel counts must be positive");
  static_assert(K > 0 && K % 2 == 1, "dd::Conv: the kernel size must be odd");
  static_assert(Stride > 0 && Dilation > 0 && Pad >= 0, "dd::Conv: stride and dilation must be positive");

  static constexpr int in_channels = In, out_channels = Out;
  static constexpr std::size_t weight_count = std::size_t{Out} * In * K * K;
  static constexpr std::size_t param_count = weight_count + (Bias ? Out : 0);
  static constexpr std::size_t buffer_count = 0;

  static constexpr Interval depends(Interval o) {
    return {o.lo * Stride - Pad, o.hi * Stride - Pad + (K - 1) * Dilation};
  }

  // He (Kaiming) normal initialisation, fan-in mode; zero bias.
  static void init(Rng& rng, float* p, float*) {
    const float std = std::sqrt(2.0f / static_cast<float>(In * K * K));
    for (std::size_t i = 0; i < weight_count; ++i) p[i] = std * rng.normal();
    for (std::size_t i = weight_count; i < param_count; ++i) p[i] = 0.0f;
  }

  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t) {
    const Var w = ctx.param(po, {Out, In, K, K});
    const Var b = Bias ? ctx.param(po + weight_count, {Out, 1, 1, 1}) : Var{};
    return conv2d(x, w, b, {Pad, Stride, Dilation});
  }
  // Over the channel concatenation of `parts`, without building it (see dd::conv2d).
  static Var forward(Context& ctx, const std::vector<Var>& parts, std::size_t po, std::size_t) {
    const Var w = ctx.param(po, {Out, In, K, K});
    const Var b = Bias ? ctx.param(po + weight_count, {Out, 1, 1, 1}) : Var{};
    return conv2d(parts, w, b, {Pad, Stride, Dilation});
  }
};

}  // namespace dd
