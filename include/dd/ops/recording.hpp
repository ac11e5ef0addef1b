#pragma once
// What every differentiable op shares: whether to record, how to make its output, and where
// parameter gradients go.
#include <initializer_list>

#include "dd/autograd/var.hpp"
#include "dd/core/config.hpp"

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
  if (!v.grad().defined()) v.accumulate_grad(Tensor::zeros(v.shape(), v.value().device()));
  return v.grad();
}

inline bool on_gpu(const Tensor& t) { return t.device() == Device::cuda; }

// Whether t is (or views) channels-last GPU memory; kernel_input keeps that order.
inline bool channels_last(const Tensor& t) { return on_gpu(t) && t.format() == MemoryFormat::nhwc; }

// The memory an element-wise or per-channel kernel reads: on the GPU the tensor's own dense order
// (NCHW or channels-last, see cuda::ConvSettings::channels_last), on the CPU f32 NCHW.
// GPU views at addresses cuDNN's vector loads cannot take (is_vector_aligned) are copied too.
// Half elements (bf16 / f16 activations) stay half where the op's kernels take them (half_ok),
// and are widened to f32 here everywhere else: the one place that keeps f32 kernels off half memory.
inline Tensor kernel_input(const Tensor& t, bool half_ok = false) {
  if (!on_gpu(t)) return t.host_f32();
  Tensor d = t.dense();
  if (!half_ok) d = d.to(DType::f32);
  return is_vector_aligned(d.raw()) ? d : d.clone();
}

// Every defined input of an op must live where the first one does.
inline void require_same_device(const char* op, std::initializer_list<const Var*> inputs) {
  const Var* first = nullptr;
  for (const Var* v : inputs) {
    if (!v || !v->defined()) continue;
    if (!first) first = v;
    DD_CHECK(v->value().device() == first->value().device(), "dd::{}: inputs on different devices ({} and {}); "
             "move the model and the data to one device", op, device_name(first->value().device()),
             device_name(v->value().device()));
  }
}

// n bytes of scratch on a device, kept alive by the returned tensor (e.g. max-pool winners).
inline Tensor byte_buffer(std::int64_t n, Device d) { return Tensor::empty({(n + 3) / 4, 1, 1, 1}, d); }
inline std::uint8_t* bytes(const Tensor& t) { return reinterpret_cast<std::uint8_t*>(t.data()); }

inline void require_contiguous(const Tensor& t, const char* op) {
  DD_CHECK(t.defined(), "dd::{}: undefined input", op);
  DD_CHECK(t.is_contiguous(), "dd::{}: input of shape {} is a strided view; call contiguous() first", op,
           t.shape());
}

inline void require_nonempty(const Tensor& t, const char* op) {
  DD_CHECK(t.defined() && t.numel() > 0, "dd::{}: empty input (shape {})", op, t.defined() ? t.shape() : Shape{});
}

}  // namespace dd::detail
