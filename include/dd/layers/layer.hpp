#pragma once
// The layer contract. A layer is a stateless type with
//   in_channels, out_channels  (any_channels where the layer keeps whatever it gets)
//   param_count, buffer_count  (floats it owns in the network's flat buffers)
//   depends(Interval)          (receptive-field map, see interval.hpp)
//   init(Rng&, float* params, float* buffers)
//   forward(Context&, const Var&, param_offset, buffer_offset) -> Var
#include <concepts>
#include <cstddef>

#include "dd/layers/context.hpp"
#include "dd/layers/interval.hpp"

namespace dd {

inline constexpr int any_channels = -1;

template <class L>
concept Layer = requires(Context& ctx, const Var& x, Rng& rng, float* p, Interval i) {
  { L::in_channels } -> std::convertible_to<int>;
  { L::out_channels } -> std::convertible_to<int>;
  { L::param_count } -> std::convertible_to<std::size_t>;
  { L::buffer_count } -> std::convertible_to<std::size_t>;
  { L::depends(i) } -> std::same_as<Interval>;
  L::init(rng, p, p);
  { L::forward(ctx, x, std::size_t{}, std::size_t{}) } -> std::same_as<Var>;
};

// Channel-free layers (ReLU, pooling, dropout) share these defaults.
struct ChannelPreserving {
  static constexpr int in_channels = any_channels;
  static constexpr int out_channels = any_channels;
  static constexpr std::size_t param_count = 0;
  static constexpr std::size_t buffer_count = 0;
  static void init(Rng&, float*, float*) {}
};

template <class Net>
inline constexpr std::size_t param_count = Net::param_count;

// Counts of typed networks (static members) and dynamic ones (member functions) alike.
template <class T>
std::size_t params_of(const T& t) {
  if constexpr (requires { T::param_count + 0; }) return T::param_count;
  else return t.param_count();
}
template <class T>
std::size_t buffers_of(const T& t) {
  if constexpr (requires { T::buffer_count + 0; }) return T::buffer_count;
  else return t.buffer_count();
}
template <class T>
inline constexpr bool is_typed_network = requires { T::param_count + 0; };

namespace detail {
template <class Net>
constexpr std::int64_t receptive_extent(bool want_max) {
  // Positions modulo 2^10 cover every network with up to 10 down-samplings; the offset keeps
  // the arithmetic away from negative numbers.
  constexpr std::int64_t base = std::int64_t{1} << 24;
  std::int64_t best = want_max ? 0 : INT64_MAX;
  for (std::int64_t q = base; q < base + 1024; ++q) {
    const std::int64_t s = Net::depends(Interval{q, q}).size();
    best = want_max ? std::max(best, s) : std::min(best, s);
  }
  return best;
}
}  // namespace detail

// Input extent (pixels, per axis) that every output pixel of Net depends on.
template <class Net>
inline constexpr std::int64_t receptive_field = detail::receptive_extent<Net>(false);
// The largest extent any output pixel depends on (output positions differ because of pooling).
template <class Net>
inline constexpr std::int64_t receptive_field_max = detail::receptive_extent<Net>(true);

}  // namespace dd
