#pragma once
// Skip<Inner>: concat([x, Inner(x)]) along channels, skip first (the U-Net's skip connection as
// one construct). x is used twice, so its gradient is the sum of both paths.
#include "dd/layers/layer.hpp"
#include "dd/ops/concat.hpp"

namespace dd {

template <Layer Inner>
struct Skip {
  static_assert(Inner::in_channels != any_channels && Inner::out_channels != any_channels,
                "dd::Skip: the inner block must fix its input and output channel counts");
  static constexpr int in_channels = Inner::in_channels;
  static constexpr int out_channels = Inner::in_channels + Inner::out_channels;
  static constexpr std::size_t param_count = Inner::param_count;
  static constexpr std::size_t buffer_count = Inner::buffer_count;

  static constexpr Interval depends(Interval o) { return hull(o, Inner::depends(o)); }
  static void init(Rng& rng, float* p, float* b) { Inner::init(rng, p, b); }
  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) {
    return concat({x, Inner::forward(ctx, x, po, bo)}, 1);
  }
};

}  // namespace dd
