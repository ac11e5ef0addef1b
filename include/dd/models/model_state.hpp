#pragma once
// What every model instance holds: parameters, gradients and buffers each in ONE flat tensor
// (layers take views at their offsets), the train/eval mode and the dropout generator. An
// optimizer step, a gradient all-reduce or a checkpoint is one operation on one buffer.
#include <string>

#include "dd/core/rng.hpp"
#include "dd/core/tensor.hpp"

namespace dd {

class ModelState {
 public:
  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }

  void zero_grad() { grads_.fill(0.0f); }
  double grad_norm() const { return l2_norm(grads_); }

  // Restarts the dropout generator (e.g. to replay a forward pass exactly).
  void reseed_dropout(std::uint64_t seed) { dropout_rng_.reseed(seed); }
  std::string dropout_state() const { return dropout_rng_.state(); }
  void set_dropout_state(const std::string& s) { dropout_rng_.set_state(s); }

  // Moves parameters, gradients and buffers to device d. Do it before making an optimizer: it
  // holds views of the parameters where they are.
  void to(Device d) {
    params_ = params_.to(d), grads_ = grads_.to(d), buffers_ = buffers_.to(d);
  }
  Device device() const { return params_.device(); }

  const Tensor& parameters() const { return params_; }
  const Tensor& gradients() const { return grads_; }
  const Tensor& buffers() const { return buffers_; }

 protected:
  ModelState(std::size_t params, std::size_t buffers, std::uint64_t seed)
      : params_(Tensor::zeros({static_cast<std::int64_t>(params), 1, 1, 1})),
        grads_(Tensor::zeros(params_.shape())),
        buffers_(Tensor::zeros({static_cast<std::int64_t>(buffers), 1, 1, 1})),
        dropout_rng_(seed ^ 0xD5A5D5A5D5A5D5A5ull) {}

  Tensor params_, grads_, buffers_;
  Rng dropout_rng_;
  bool training_ = true;
};

}  // namespace dd
