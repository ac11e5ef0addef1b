#pragma once
// UpConv: ConvTranspose 2x2 stride 2 with bias; doubles height and width.
#include <cmath>

#include "dd/layers/layer.hpp"
#include "dd/ops/upconv.hpp"

namespace dd {

template <int In, int Out>
struct UpConv {
  static_assert(In > 0 && Out > 0, "dd::UpConv: channel counts must be positive");
  static constexpr int in_channels = In, out_channels = Out;
  static constexpr std::size_t weight_count = std::size_t{In} * Out * 4;
  static constexpr std::size_t param_count = weight_count + Out;
  static constexpr std::size_t buffer_count = 0;

  // Output pixel o comes from input pixel floor(o / 2) alone.
  static constexpr Interval depends(Interval o) { return {floor_div(o.lo, 2), floor_div(o.hi, 2)}; }

  // He normal with the fan-in of one output pixel (In weights contribute to it).
  static void init(Rng& rng, float* p, float*) {
    const float std = std::sqrt(2.0f / static_cast<float>(In));
    for (std::size_t i = 0; i < weight_count; ++i) p[i] = std * rng.normal();
    for (std::size_t i = weight_count; i < param_count; ++i) p[i] = 0.0f;
  }

  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t) {
    return upconv2x2(x, ctx.param(po, {In, Out, 2, 2}), ctx.param(po + weight_count, {Out, 1, 1, 1}));
  }
};

}  // namespace dd
