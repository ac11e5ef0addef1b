#pragma once
// Model<Net>: one instance of a typed network, its state in flat buffers (model_state.hpp).
#include "dd/layers/layer.hpp"
#include "dd/models/model_state.hpp"

namespace dd {

template <Layer Net>
class Model : public ModelState {
 public:
  using Network = Net;
  static constexpr std::size_t param_count = Net::param_count;
  static constexpr std::size_t buffer_count = Net::buffer_count;

  // He-initialised weights from `seed`: same seed, same weights.
  explicit Model(std::uint64_t seed = 0) : ModelState(param_count, buffer_count, seed) {
    Rng init_rng(seed);
    Net::init(init_rng, params_.data(), buffers_.data());
  }

  Var forward(const Var& x) {
    check_input(x.shape());
    Context ctx = context();
    return Net::forward(ctx, x, 0, 0);
  }
  Var operator()(const Var& x) { return forward(x); }

  static void check_input(const Shape& s) {
    if constexpr (requires { Net::check_input(s); }) {
      Net::check_input(s);
    } else {
      DD_CHECK(s.numel() > 0, "dd::Model: empty input (shape {})", s);
      DD_CHECK(Net::in_channels == any_channels || s.c == Net::in_channels,
               "dd::Model: input has {} channels but the network expects {}", s.c, Net::in_channels);
    }
  }

  // What layers need to run this model: its buffers, mode and dropout generator.
  Context context() { return Context{params_, grads_, buffers_, training_, &dropout_rng_}; }
};

}  // namespace dd
