#pragma once
// Losses and reductions that end a forward pass in a scalar.
#include <algorithm>
#include <cmath>

#include "dd/kernels/cpu/softmax.hpp"
#include "dd/ops/recording.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

namespace detail {
// Softmax over channels of a contiguous tensor, and its backward, on the tensor's device.
inline Tensor softmax_of(const Tensor& X) {
  const Shape s = X.shape();
  Tensor P = Tensor::empty(s, X.device());
  if (on_gpu(X))
    DD_GPU(softmax_channels(X.data(), s.n, s.c, s.h * s.w, P.data()));
  else
    cpu::softmax_channels(X.data(), s.n, s.c, s.h * s.w, P.data());
  return P;
}
inline Tensor softmax_backward_of(const Tensor& P, const Tensor& dP) {
  const Shape s = P.shape();
  Tensor dx = Tensor::empty(s, P.device());
  if (on_gpu(P))
    DD_GPU(softmax_channels_backward(P.data(), dP.data(), s.n, s.c, s.h * s.w, dx.data()));
  else
    cpu::softmax_channels_backward(P.data(), dP.data(), s.n, s.c, s.h * s.w, dx.data());
  return dx;
}
}  // namespace detail

// Softmax over channels, differentiable.
inline Var softmax(const Var& x) {
  const Tensor X = x.value().contiguous().to(DType::f32);  // half logits are read widened
  const Shape s = X.shape();
  Tensor P = detail::softmax_of(X);
  const bool rec = detail::should_record({&x});
  Var y(std::move(P), rec);
  if (rec)
    Tape::current().record([x, y, s] {
      const Tensor& dy = y.grad();
      if (!dy.defined()) return;
      Tensor dx = detail::softmax_backward_of(y.value(), dy.contiguous());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

namespace detail {
// Class index of each pixel of an [N,1,H,W] label tensor, checked against the class count (op: the
// loss that reads it, for the message).
inline std::int64_t label_at(const Tensor& labels, std::int64_t i, std::int64_t classes, const char* op) {
  const float v = labels.data()[i];
  const auto k = static_cast<std::int64_t>(v);
  DD_CHECK(static_cast<float>(k) == v && k >= 0 && k < classes,
           "dd::{}: label {} at pixel {} is not a class index in [0, {})", op, v, i, classes);
  return k;
}

// What every softmax-based segmentation loss starts from: checked labels and the probabilities.
struct SoftmaxTargets {
  Shape shape;
  Tensor labels, probs;
};
inline SoftmaxTargets softmax_targets(const Var& logits, const Tensor& labels, const char* op) {
  const Tensor X = logits.value().contiguous().to(DType::f32);  // half logits are read widened
  require_nonempty(X, op);
  const Shape s = X.shape();
  DD_CHECK(labels.shape() == (Shape{s.n, 1, s.h, s.w}), "dd::{}: labels of shape {} for logits {}; expected {}", op,
           labels.shape(), s, Shape{s.n, 1, s.h, s.w});
  DD_CHECK(labels.device() == X.device(), "dd::{}: labels on {} for logits on {}", op, device_name(labels.device()),
           device_name(X.device()));
  return {s, labels.contiguous().to(DType::f32), softmax_of(X)};
}
}  // namespace detail

// Mean over pixels of -log softmax(logits)[label]. labels: [N,1,H,W] class indices as floats.
// On the GPU nothing waits for the device, forward or backward: the loss stays there (read it with
// item() when needed) and labels that are not class indices are reported at the next wait.
inline Var cross_entropy(const Var& logits, const Tensor& labels) {
  auto [s, L, P] = detail::softmax_targets(logits, labels, "cross_entropy");
  const std::int64_t plane = s.h * s.w, pixels = s.n * plane;
  const bool gpu = detail::on_gpu(P);
  Tensor value;
  if (gpu) {
    value = Tensor::empty({1, 1, 1, 1}, P.device());
    DD_GPU(cross_entropy_mean(P.data(), L.data(), s.n, s.c, plane, value.data()));
  } else {
    double total = 0;
    for (std::int64_t b = 0; b < s.n; ++b)
      for (std::int64_t i = 0; i < plane; ++i) {
        const std::int64_t k = detail::label_at(L, b * plane + i, s.c, "cross_entropy");
        total -= std::log(std::max(P.data()[(b * s.c + k) * plane + i], 1e-30f));
      }
    value = Tensor::full({1, 1, 1, 1}, static_cast<float>(total / static_cast<double>(pixels)));
  }
  const bool rec = detail::should_record({&logits});
  Var loss(std::move(value), rec);
  if (rec)
    Tape::current().record([logits, loss, P, L, s, plane, pixels, gpu] {
      const Tensor& grad = loss.grad();
      if (!grad.defined()) return;
      const Tensor dl = grad.contiguous().to(DType::f32);
      Tensor dx = Tensor::empty(s, P.device());
      if (gpu) {
        DD_GPU(cross_entropy_backward(P.data(), L.data(), s.n, s.c, plane, dl.data(), dx.data()));
        logits.accumulate_grad(std::move(dx));
        return;
      }
      const float k = dl.item() / static_cast<float>(pixels);
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
  const Device dev = x.value().device();
  const Tensor Wt = weights.to(dev).contiguous();
  // A checking head, not a hot path: GPU values are summed on the host.
  const Tensor X = x.value().host_f32(), Wh = Wt.host_f32();
  double total = 0;
  for (std::int64_t i = 0; i < X.numel(); ++i) total += static_cast<double>(X.data()[i]) * Wh.data()[i];
  const bool rec = detail::should_record({&x});
  Var y(Tensor::full({1, 1, 1, 1}, static_cast<float>(total), dev), rec);
  if (rec)
    Tape::current().record([x, y, Wt] {
      const Tensor& dl = y.grad();
      if (!dl.defined()) return;
      Tensor dx = Wt.clone();
      dx.scale_(dl.item());
      x.accumulate_grad(std::move(dx));
    });
  return y;
}

}  // namespace dd
