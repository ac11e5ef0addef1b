#pragma once
// Model<Net>: one network instance. Parameters, gradients and buffers each live in ONE flat
// tensor (layers take views at compile-time offsets), so an optimizer step, a gradient
// all-reduce or a checkpoint is one operation on one buffer.
#include <cmath>

#include "dd/layers/layer.hpp"

namespace dd {

template <Layer Net>
class Model {
 public:
  using Network = Net;
  static constexpr std::size_t param_count = Net::param_count;
  static constexpr std::size_t buffer_count = Net::buffer_count;

  // He-initialised weights from `seed`: same seed, same weights.
  explicit Model(std::uint64_t seed = 0)
      : params_(Tensor::zeros({static_cast<std::int64_t>(param_count), 1, 1, 1})),
        grads_(Tensor::zeros(params_.shape())),
        buffers_(Tensor::zeros({static_cast<std::int64_t>(buffer_count), 1, 1, 1})),
        dropout_rng_(seed ^ 0xD5A5D5A5D5A5D5A5ull) {
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

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }

  void zero_grad() { grads_.fill(0.0f); }
  double grad_norm() const {
    double s = 0;
    for (std::int64_t i = 0; i < grads_.numel(); ++i) s += double(grads_.data()[i]) * grads_.data()[i];
    return std::sqrt(s);
  }
  // Restarts the dropout generator (e.g. to replay a forward pass exactly).
  void reseed_dropout(std::uint64_t seed) { dropout_rng_.reseed(seed); }
  std::string dropout_state() const { return dropout_rng_.state(); }
  void set_dropout_state(const std::string& s) { dropout_rng_.set_state(s); }

  const Tensor& parameters() const { return params_; }
  const Tensor& gradients() const { return grads_; }
  const Tensor& buffers() const { return buffers_; }

 private:
  Tensor params_, grads_, buffers_;
  Rng dropout_rng_;
  bool training_ = true;
};

}  // namespace dd
