#pragma once
#include "dd/layers/layer.hpp"
#include "dd/ops/dropout.hpp"

namespace dd {

// Dropout2d with probability P (whole channels); identity in eval mode.
template <float P = 0.1f>
struct Dropout : ChannelPreserving {
  static_assert(P >= 0.0f && P < 1.0f, "dd::Dropout: probability must be in [0, 1)");
  static constexpr Interval depends(Interval o) { return o; }
  static Var forward(Context& ctx, const Var& x, std::size_t, std::size_t) {
    if (!ctx.training || P == 0.0f) return x;
    return dropout2d(x, P, ctx.generator(), true);
  }
};

}  // namespace dd
