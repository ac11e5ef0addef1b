#pragma once
// Losses and reductions that end a forward pass in a scalar.
#include <cmath>

#include "dd/kernels/cpu/softmax.hpp"
#include "dd/ops/recording.hpp"

namespace dd {

// Softmax over channels, differentiable.
inline Var softmax(const Var& x) {
  const Tensor X = x.value().contiguous();
  const Shape s = X.shape();
  Tensor P = Tensor::empty(s);
  cpu::softmax_channels(X.data(), s.n, s.c, s.h * s.w, P.data());
  const bool rec = detail::should_record({&x});
  Var y(std::move(P), rec);
  if (rec)
    Tape::current().record([x, y, s] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = Tensor::empty(s);
      cpu::softmax_channels_backward(y.value().data(), dy.contiguous().data(), s.n, s.c, s.h * s.w, dx.data());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

namespace detail {
// Class index of each pixel of an [N,1,H,W] label tensor, checked against the class count.
inline std::int64_t label_at(const Tensor& labels, std::int64_t i, std::int64_t classes) {
  const float v = labels.data()[i];
  const auto k = static_cast<std::int64_t>(v);
  DD_CHECK(static_cast<float>(k) == v && k >= 0 && k < classes,
           "dd::cross_entropy: label {} at pixel {} is not a class index in [0, {})", v, i, classes);
  return k;
}

// What every softmax-based segmentation loss starts from: checked labels and the probabilities.
struct SoftmaxTargets {
  Shape shape;
  Tensor labels, probs;
};
inline SoftmaxTargets softmax_targets(const Var& logits, const Tensor& labels, const char* op) {
  const Tensor X = logits.value().contiguous();
  require_nonempty(X, op);
  const Shape s = X.shape();
  DD_CHECK(labels.shape() == (Shape{s.n, 1, s.h, s.w}), "dd::{}: labels of shape {} for logits {}; expected {}", op,
           labels.shape(), s, Shape{s.n, 1, s.h, s.w});
  Tensor P = Tensor::empty(s);
  cpu::softmax_channels(X.data(), s.n, s.c, s.h * s.w, P.data());
  return {s, labels.contiguous(), std::move(P)};
}
}  // namespace detail

// Mean over pixels of -log softmax(logits)[label]. labels: [N,1,H,W] class indices as floats.
inline Var cross_entropy(const Var& logits, const Tensor& labels) {
  auto [s, L, P] = detail::softmax_targets(logits, labels, "cross_entropy");
  const std::int64_t plane = s.h * s.w, pixels = s.n * plane;
  double total = 0;
  for (std::int64_t b = 0; b < s.n; ++b)
    for (std::int64_t i = 0; i < plane; ++i) {
      const std::int64_t k = detail::label_at(L, b * plane + i, s.c);
      total -= std::log(std::max(P.data()[(b * s.c + k) * plane + i], 1e-30f));
    }
  const bool rec = detail::should_record({&logits});
  Var loss(Tensor::full({1, 1, 1, 1}, static_cast<float>(total / static_cast<double>(pixels))), rec);
  if (rec)
    Tape::current().record([logits, loss, P, L, s, plane, pixels] {
      const Tensor& dl = loss.grad();
      if (!dl.defined()) return;
      const float k = dl.item() / static_cast<float>(pixels);
      Tensor dx = Tensor::empty(s);
      for (std::int64_t i = 0; i < dx.numel(); ++i) dx.data()[i] = P.data()[i] * k;
      for (std::int64_t b = 0; b < s.n; ++b)
        for (std::int64_t i = 0; i < plane; ++i) {
          const auto c = static_cast<std::int64_t>(L.data()[b * plane + i]);
          dx.data()[(b * s.c + c) * plane + i] -= k;
        }
      logits.accumulate_grad(std::move(dx));
    });
  return loss;
}

// sum_i x_i * weights_i (in double); a generic scalar head for gradient checks.
inline Var weighted_sum(const Var& x, const Tensor& weights) {
  DD_CHECK(weights.shape() == x.shape(), "dd::weighted_sum: weights {} for a value of shape {}", weights.shape(),
           x.shape());
  const Tensor X = x.value().contiguous(), Wt = weights.contiguous();
  double total = 0;
  for (std::int64_t i = 0; i < X.numel(); ++i) total += static_cast<double>(X.data()[i]) * Wt.data()[i];
  const bool rec = detail::should_record({&x});
  Var y(Tensor::full({1, 1, 1, 1}, static_cast<float>(total)), rec);
  if (rec)
    Tape::current().record([x, y, Wt] {
      const Tensor& dl = y.grad();
      if (!dl.defined()) return;
      Tensor dx = Wt.clone();
      const float k = dl.item();
      for (std::int64_t i = 0; i < dx.numel(); ++i) dx.data()[i] *= k;
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
