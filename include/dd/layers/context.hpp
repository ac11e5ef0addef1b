#pragma once
// What a layer's forward reads besides its input: the flat parameter / gradient / buffer tensors
// of the network (layers know their offsets at compile time and take views), the mode, and the
// generator for dropout. Layers themselves are stateless types.
#include <cstddef>

#include "dd/autograd/var.hpp"
#include "dd/core/rng.hpp"

namespace dd {

struct Context {
  Tensor params;   // [P,1,1,1]
  Tensor grads;    // [P,1,1,1], or undefined when no gradients are wanted
  Tensor buffers;  // [B,1,1,1]: running statistics
  bool training = true;
  Rng* rng = nullptr;

  Var param(std::size_t offset, Shape s) const {
    const auto n = s.numel();
    Tensor v = params.slice(0, static_cast<std::int64_t>(offset), n).reshape(s);
    Tensor g = grads.defined() && GradMode::enabled() ? grads.slice(0, static_cast<std::int64_t>(offset), n).reshape(s)
                                                      : Tensor{};
    return Var::parameter(std::move(v), std::move(g));
  }
  Tensor buffer(std::size_t offset, Shape s) const {
    return buffers.slice(0, static_cast<std::int64_t>(offset), s.numel()).reshape(s);
  }
  Rng& generator() const {
    DD_CHECK(rng != nullptr, "dd::Context: no random generator bound (needed by dropout in training)");
    return *rng;
  }
};

}  // namespace dd
