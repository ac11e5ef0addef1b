#pragma once
// Seq<L...>: layers applied in order. Parameter and buffer offsets of each layer are prefix sums
// known at compile time; channel counts are checked between neighbours at compile time.
#include <array>
#include <tuple>
#include <utility>
#include <vector>

#include "dd/layers/layer.hpp"

namespace dd {

namespace detail {

// Instantiated once per neighbouring pair. On a mismatch the compiler prints this type with the
// position and both channel counts next to the message.
template <std::size_t LayerIndex, int ProducedChannels, int ExpectedChannels>
struct SeqChannelCheck {
  static constexpr bool ok =
      ProducedChannels == any_channels || ExpectedChannels == any_channels || ProducedChannels == ExpectedChannels;
  static_assert(ok,
                "dd::Seq: channel mismatch: the layer at position LayerIndex expects ExpectedChannels input "
                "channels but the layers before it produce ProducedChannels (read the numbers off "
                "dd::detail::SeqChannelCheck<LayerIndex, ProducedChannels, ExpectedChannels> in this error)");
};

template <std::size_t N>
constexpr std::array<std::size_t, N + 1> prefix_sums(const std::array<std::size_t, N>& a) {
  std::array<std::size_t, N + 1> s{};
  for (std::size_t i = 0; i < N; ++i) s[i + 1] = s[i] + a[i];
  return s;
}

}  // namespace detail

template <Layer... Ls>
struct Seq {
  static_assert(sizeof...(Ls) > 0, "dd::Seq: needs at least one layer");
  static constexpr std::size_t size = sizeof...(Ls);
  using Layers = std::tuple<Ls...>;

  static constexpr auto param_offsets = detail::prefix_sums<size>({Ls::param_count...});
  static constexpr auto buffer_offsets = detail::prefix_sums<size>({Ls::buffer_count...});
  static constexpr std::size_t param_count = param_offsets[size];
  static constexpr std::size_t buffer_count = buffer_offsets[size];

 private:
  static constexpr std::array<int, size> ins{Ls::in_channels...};
  static constexpr std::array<int, size> outs{Ls::out_channels...};
  // Channels entering layer i (any_channels until some layer fixes them).
  static constexpr std::array<int, size + 1> produced = [] {
    std::array<int, size + 1> p{};
    p[0] = any_channels;
    for (std::size_t i = 0; i < size; ++i) p[i + 1] = outs[i] == any_channels ? p[i] : outs[i];
    return p;
  }();
  template <std::size_t... I>
  static constexpr bool check_channels(std::index_sequence<I...>) {
    return (detail::SeqChannelCheck<I, produced[I], ins[I]>::ok && ...);
  }
  static_assert(check_channels(std::make_index_sequence<size>{}));

 public:
  static constexpr int in_channels = [] {
    for (std::size_t i = 0; i < size; ++i)
      if (ins[i] != any_channels) return ins[i];
    return any_channels;
  }();
  static constexpr int out_channels = produced[size];

  static constexpr Interval depends(Interval o) {
    constexpr Interval (*maps[])(Interval) = {&Ls::depends...};
    for (std::size_t i = size; i-- > 0;) o = maps[i](o);
    return o;
  }

  static void init(Rng& rng, float* p, float* b) { init_all(rng, p, b, std::make_index_sequence<size>{}); }

  static Var forward(Context& ctx, const Var& x, std::size_t po, std::size_t bo) {
    return run(ctx, x, po, bo, std::make_index_sequence<size>{});
  }
  // The first layer takes the channel concatenation of `parts` (a convolution reads it without
  // building it), the others follow as usual.
  static Var forward(Context& ctx, const std::vector<Var>& parts, std::size_t po, std::size_t bo)
    requires requires { std::tuple_element_t<0, Layers>::forward(ctx, parts, po, bo); }
  {
    const Var x = std::tuple_element_t<0, Layers>::forward(ctx, parts, po, bo);
    return run_rest(ctx, x, po, bo, std::make_index_sequence<size - 1>{});
  }

 private:
  template <std::size_t... I>
  static void init_all(Rng& rng, float* p, float* b, std::index_sequence<I...>) {
    (Ls::init(rng, p + param_offsets[I], b + buffer_offsets[I]), ...);
  }
  template <std::size_t... I>
  static Var run(Context& ctx, Var x, std::size_t po, std::size_t bo, std::index_sequence<I...>) {
    ((x = Ls::forward(ctx, x, po + param_offsets[I], bo + buffer_offsets[I])), ...);
    return x;
  }
  template <std::size_t... I>
  static Var run_rest(Context& ctx, Var x, std::size_t po, std::size_t bo, std::index_sequence<I...>) {
    ((x = std::tuple_element_t<I + 1, Layers>::forward(ctx, x, po + param_offsets[I + 1], bo + buffer_offsets[I + 1])),
     ...);
    return x;
  }
};

}  // namespace dd
