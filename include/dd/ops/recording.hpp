#pragma once
// What every differentiable op shares: whether to record, how to make its output, and where
// parameter gradients go.
#include <initializer_list>

#include "dd/autograd/var.hpp"

namespace dd::detail {

// Record iff grad mode is on and some input needs a gradient.
inline bool should_record(std::initializer_list<const Var*> inputs) {
  if (!GradMode::enabled()) return false;
  for (const Var* v : inputs)
    if (v && v->requires_grad()) return true;
  return false;
}

// The gradient buffer of v, zero-filled on first use; kernels accumulate into it directly.
inline const Tensor& grad_buffer(const Var& v) {
  if (!v.grad().defined()) v.accumulate_grad(Tensor::zeros(v.shape()));
  return v.grad();
}

inline void require_contiguous(const Tensor& t, const char* op) {
  DD_CHECK(t.defined(), "dd::{}: undefined input", op);
  DD_CHECK(t.is_contiguous(), "dd::{}: input of shape {} is a strided view; call contiguous() first", op,
           t.shape());
}

inline void require_nonempty(const Tensor& t, const char* op) {
  DD_CHECK(t.defined() && t.numel() > 0, "dd::{}: empty input (shape {})", op, t.defined() ? t.shape() : Shape{});
}

}  // namespace dd::detail
