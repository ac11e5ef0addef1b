#pragma once
#include "dd/layers/layer.hpp"
#include "dd/ops/max_pool.hpp"

namespace dd {

// 2x2 max pooling, stride 2: output pixel o sees input pixels 2o and 2o+1.
struct MaxPool2 : ChannelPreserving {
  static constexpr int downsampling = 2;
  static constexpr Interval depends(Interval o) { return {2 * o.lo, 2 * o.hi + 1}; }
  static Var forward(Context&, const Var& x, std::size_t, std::size_t) { return max_pool2x2(x); }
};

}  // namespace dd
