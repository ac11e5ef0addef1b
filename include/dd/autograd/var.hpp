#pragma once
// Var: a tensor in the autograd graph. Copies share one node (value + gradient). Gradients
// ACCUMULATE into a node, so a value used twice (a skip connection) gets the sum of both uses.
#include <memory>

#include "dd/autograd/tape.hpp"
#include "dd/core/tensor.hpp"

namespace dd {

class Var {
 public:
  struct Node {
    Tensor value;
    Tensor grad;  // undefined until the first gradient arrives (or a view given at creation)
    bool requires_grad = false;
  };

  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false)
      : node_(std::make_shared<Node>(Node{std::move(value), Tensor{}, requires_grad})) {}

  // A parameter: its value and gradient are views into a model's flat buffers.
  static Var parameter(Tensor value, Tensor grad) {
    Var v(std::move(value), grad.defined());
    v.node_->grad = std::move(grad);
    return v;
  }

  bool defined() const { return node_ != nullptr; }
  const Tensor& value() const { return node_->value; }
  const Shape& shape() const { return node_->value.shape(); }
  bool requires_grad() const { return node_ && node_->requires_grad; }
  // dL/d(this); undefined if no gradient reached this Var.
  const Tensor& grad() const { return node_->grad; }
  Node* node() const { return node_.get(); }
  const std::shared_ptr<Node>& node_ptr() const { return node_; }

  // grad += g (g must have this Var's shape). Takes g over when nothing has accumulated yet. The
  // gradient has the value's element type (g is converted when it differs: an op that ran on a
  // widened copy of a half activation hands back f32).
  void accumulate_grad(Tensor g) const {
    DD_CHECK(g.shape() == shape(), "dd::Var: gradient of shape {} for a value of shape {}", g.shape(), shape());
    DD_CHECK(g.device() == value().device(), "dd::Var: gradient on {} for a value on {}", device_name(g.device()),
             device_name(value().device()));
    if (g.dtype() != value().dtype()) g = g.to(value().dtype());
    if (!node_->grad.defined()) {
      // Kept as it comes when dense (NCHW or channels-last); a view is copied in the value's order,
      // and so is a GPU view at an address GPU kernels cannot load vectors from (16-byte alignment).
      const bool keep = g.is_dense(g.format()) && (g.device() == Device::cpu || is_vector_aligned(g.raw()));
      node_->grad = keep ? std::move(g) : g.clone_as(value().format());
    } else {
      node_->grad.add_(g.dense_like(node_->grad));
    }
  }
  void zero_grad() const {
    if (node_->grad.defined()) node_->grad.fill(0.0f);
  }

  // Reverse pass over the current tape from this Var: seeds dL/dL = 1 (this must be a single
  // value) or the given output gradient, then replays and clears the tape.
  void backward() const {
    DD_CHECK(value().numel() == 1, "dd::Var::backward: output of shape {} is not a scalar; pass its gradient",
             shape());
    backward(Tensor::full(shape(), 1.0f, value().device()));
  }
  void backward(const Tensor& output_grad) const {
    DD_CHECK(requires_grad(), "dd::Var::backward: this value does not require a gradient (was it computed "
                              "under NoGrad, or from inputs without gradients?)");
    accumulate_grad(output_grad.to(value().device()).clone());
    Tape::current().backward();
  }

 private:
  std::shared_ptr<Node> node_;
};

}  // namespace dd
