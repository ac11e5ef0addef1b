#pragma once
// CommNet<F, Layers, Kernel>: the DDU-Net's communication network (PAPER_NOTES section 2):
// Layers x (Conv KxK with bias -> BatchNorm -> ReLU -> Dropout2d) on F channels, size-preserving.
#include <utility>

#include "dd/layers/activation.hpp"
#include "dd/layers/batchnorm.hpp"
#include "dd/layers/conv.hpp"
#include "dd/layers/conv_block.hpp"
#include "dd/layers/dropout.hpp"
#include "dd/layers/norm_activation.hpp"
#include "dd/layers/seq.hpp"

namespace dd {

template <int F, int K, float P>
struct CommLayer : ConvBatchNormReLU<F, F, K, true, P> {};

namespace detail {
template <int F, int K, float P, class Indices>
struct CommLayers;
template <int F, int K, float P, std::size_t... I>
struct CommLayers<F, K, P, std::index_sequence<I...>> {
  template <std::size_t>
  using Layer = CommLayer<F, K, P>;
  using type = Seq<Layer<I>...>;
};
}  // namespace detail

template <int F, int Layers = 3, int Kernel = 5, float DropP = 0.1f>
struct CommNet : detail::CommLayers<F, Kernel, DropP, std::make_index_sequence<Layers>>::type {
  static_assert(F > 0, "dd::CommNet: F (communicated feature maps) must be positive; use dd::NoComm for F = 0");
  static_assert(Layers > 0, "dd::CommNet: needs at least one layer");
  static constexpr int channels = F;
};

// F = 0: no communication network; the bottleneck passes unchanged.
struct NoComm {
  static constexpr int channels = 0, in_channels = 0, out_channels = 0;
  static constexpr std::size_t param_count = 0, buffer_count = 0;
  static constexpr Interval depends(Interval o) { return o; }
  static void init(Rng&, float*, float*) {}
  static Var forward(Context&, const Var& x, std::size_t, std::size_t) { return x; }
};

}  // namespace dd
