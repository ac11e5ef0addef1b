#pragma once
// dd::gpu: the library's own CUDA kernels behind the same interface as their dd::cpu twins (same
// names, same arguments), enqueued on the current stream and checked. Ops pick one or the other by
// the tensor's device (DD_GPU in core/config.hpp); cuDNN-backed twins live beside this header.
#include <cstdint>
#include <exception>
#include <string>

#include "dd/backend/cuda/runtime.hpp"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::gpu {

namespace detail {
// Runs a launcher on the current stream; launch errors and failures inside it become dd::Error.
template <class Launcher, class... Args>
auto launch(const char* what, Launcher launcher, Args... args) {
  try {
    if constexpr (std::is_void_v<decltype(launcher(args..., cuda::current_stream()))>) {
      launcher(args..., cuda::current_stream());
      DD_CUDA_CHECK(cudaGetLastError());
    } else {
      auto r = launcher(args..., cuda::current_stream());
      DD_CUDA_CHECK(cudaGetLastError());
      return r;
    }
  } catch (const dd::Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("dd::gpu::{}: {}", what, e.what());
  }
}
}  // namespace detail

namespace k = cuda::kernels;

// Activation arrays are void* with their element type t (Tensor::raw(), Tensor::dtype()).
inline void fill(void* x, std::int64_t n, float v, DType t = DType::f32) {
  if (n > 0) detail::launch("fill", k::fill, x, n, v, t);
}
inline void axpy(void* y, const void* x, std::int64_t n, float a, DType t = DType::f32) {
  if (n > 0) detail::launch("axpy", k::axpy, y, x, n, a, t);
}
inline void scale(void* x, std::int64_t n, float a, DType t = DType::f32) {
  if (n > 0) detail::launch("scale", k::scale, x, n, a, t);
}
inline void convert(const void* x, DType xt, void* y, DType yt, std::int64_t n) {
  if (n > 0) detail::launch("convert", k::convert, x, xt, y, yt, n);
}
// dst = src between views of one shape, converting from st to dt; add_strided: dst += src.
inline void copy_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& g) {
  if (g.shape[0] * g.shape[1] * g.shape[2] * g.shape[3] > 0)
    detail::launch("copy_strided", k::copy_strided, dst, dt, src, st, g);
}
inline void add_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& g) {
  if (g.shape[0] * g.shape[1] * g.shape[2] * g.shape[3] > 0)
    detail::launch("add_strided", k::add_strided, dst, dt, src, st, g);
}

inline void relu_forward(const void* x, std::int64_t n, void* y, DType t) {
  detail::launch("relu", k::relu_forward, x, n, y, t);
}
inline void relu_backward(const void* y, const void* dy, std::int64_t n, void* dx, DType t) {
  detail::launch("relu_backward", k::relu_backward, y, dy, n, dx, t);
}
inline void scale_planes(const float* x, const float* scale, std::int64_t planes, std::int64_t plane, float* y) {
  detail::launch("scale_planes", k::scale_planes, x, scale, planes, plane, y);
}
inline void relu_scale_planes(float* y, const float* scale, std::int64_t planes, std::int64_t plane) {
  if (planes * plane > 0) detail::launch("relu_scale_planes", k::relu_scale_planes, y, scale, planes, plane);
}
inline void relu_scale_planes_backward(const float* y, const float* dy, const float* scale, std::int64_t planes,
                                       std::int64_t plane, float* dx) {
  if (planes * plane > 0)
    detail::launch("relu_scale_planes_backward", k::relu_scale_planes_backward, y, dy, scale, planes, plane, dx);
}

// Channels-last twins (x, y, dx, dy NHWC; scale per [sample, channel]).
inline void scale_planes_nhwc(const void* x, const float* scale, std::int64_t n, std::int64_t c, std::int64_t plane,
                              void* y, DType t) {
  detail::launch("scale_planes_nhwc", k::scale_planes_nhwc, x, scale, n, c, plane, y, t);
}
inline void relu_scale_planes_nhwc(void* y, const float* scale, std::int64_t n, std::int64_t c, std::int64_t plane,
                                   DType t) {
  if (n * c * plane > 0)
    detail::launch("relu_scale_planes_nhwc", k::relu_scale_planes_nhwc, y, scale, n, c, plane, t);
}
inline void relu_scale_planes_nhwc_backward(const void* y, const void* dy, const float* scale, std::int64_t n,
                                            std::int64_t c, std::int64_t plane, void* dx, DType t) {
  if (n * c * plane > 0)
    detail::launch("relu_scale_planes_nhwc_backward", k::relu_scale_planes_nhwc_backward, y, dy, scale, n, c, plane,
                   dx, t);
}
inline void maxpool2x2_nhwc_forward(const void* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                                    void* y, std::uint8_t* argmax, DType t) {
  detail::launch("maxpool2x2_nhwc", k::maxpool2x2_nhwc_forward, x, n, c, h, w, y, argmax, t);
}
// accumulate: add into dx (as the CPU kernel always does) instead of writing all of it.
inline void maxpool2x2_nhwc_backward(const void* dy, const std::uint8_t* argmax, std::int64_t n, std::int64_t c,
                                     std::int64_t h, std::int64_t w, void* dx, bool accumulate, DType t) {
  detail::launch("maxpool2x2_nhwc_backward", k::maxpool2x2_nhwc_backward, dy, argmax, n, c, h, w, dx, accumulate, t);
}

inline void maxpool2x2_forward(const float* x, std::int64_t planes, std::int64_t h, std::int64_t w, float* y,
                               std::uint8_t* argmax) {
  detail::launch("maxpool2x2", k::maxpool2x2_forward, x, planes, h, w, y, argmax);
}
inline void maxpool2x2_backward(const float* dy, const std::uint8_t* argmax, std::int64_t planes, std::int64_t h,
                                std::int64_t w, float* dx, bool accumulate = false) {
  detail::launch("maxpool2x2_backward", k::maxpool2x2_backward, dy, argmax, planes, h, w, dx, accumulate);
}

inline void softmax_channels(const float* x, std::int64_t n, std::int64_t c, std::int64_t plane, float* p) {
  detail::launch("softmax", k::softmax_channels, x, n, c, plane, p);
}
inline void softmax_channels_backward(const float* p, const float* dp, std::int64_t n, std::int64_t c,
                                      std::int64_t plane, float* dx) {
  detail::launch("softmax_backward", k::softmax_channels_backward, p, dp, n, c, plane, dx);
}

inline double sum_squares(const float* x, std::int64_t n) {
  return n > 0 ? detail::launch("sum_squares", k::sum_squares, x, n) : 0.0;
}
inline std::int64_t count_nonfinite(const float* x, std::int64_t n) {
  return n > 0 ? detail::launch("count_nonfinite", k::count_nonfinite, x, n) : 0;
}

inline void batchnorm_invstd(const float* var, std::int64_t c, float eps, float* invstd) {
  detail::launch("batchnorm_invstd", k::batchnorm_invstd, var, c, eps, invstd);
}
// An eval-mode batch norm folded into the convolution before it (dd::cpu::fold_batchnorm).
inline void fold_batchnorm(const float* w, const float* b, const float* gamma, const float* beta, const float* mean,
                           const float* var, std::int64_t c, std::int64_t per_output, float eps, float* w_out,
                           float* b_out) {
  detail::launch("fold_batchnorm", k::fold_batchnorm, w, b, gamma, beta, mean, var, c, per_output, eps, w_out, b_out);
}
// Scales x so its L2 norm is at most max_norm, the norm never leaving the device.
inline void clip_by_norm(float* x, std::int64_t n, double max_norm) {
  if (n > 0) detail::launch("clip_by_norm", k::clip_by_norm, x, n, max_norm);
}
inline void adam_step_counted(float* p, const float* g, float* m, float* v, std::int64_t n, AdamCounter* counter,
                              const float* gate, double lr, float beta1, float beta2, float eps, float weight_decay) {
  detail::launch("adam_step", k::adam_step_counted, p, g, m, v, n, counter, gate, lr, beta1, beta2, eps, weight_decay);
}
inline void loss_scale_fill(float* dst, std::int64_t n, const LossScaleState* state) {
  if (n > 0) detail::launch("loss_scale_fill", k::loss_scale_fill, dst, n, state);
}
inline void loss_scale_unscale(float* g, std::int64_t n, LossScaleState* state, const LossScalerOptions& o) {
  detail::launch("loss_scale_unscale", k::loss_scale_unscale, g, n, state, o);
}

namespace detail {
// Runs enqueue(invalid) with `invalid` a pinned counter of labels that are not class indices in
// [0, c), written by the GPU and checked at the library's next wait for it (PinnedStaging): `op`'s
// error then, as CUDA reports asynchronous errors.
template <class Enqueue>
void with_label_check(const char* op, std::int64_t c, Enqueue enqueue) {
  auto& staging = cuda::PinnedStaging::instance();
  auto* invalid = static_cast<std::int64_t*>(staging.acquire(sizeof(std::int64_t)));
  try {
    enqueue(invalid);
  } catch (...) {  // the buffer goes back unread: the launch's own error is the report
    staging.release_after(invalid, sizeof *invalid, cuda::current_stream());
    throw;
  }
  staging.release_after(invalid, sizeof *invalid, cuda::current_stream(), [op, c](const void* v) {
    const std::int64_t bad = *static_cast<const std::int64_t*>(v);
    return bad == 0 ? std::string()
                    : fmt::format(
                          "dd::{}: {} labels are not class indices in [0, {}) (found on the GPU, reported at the "
                          "next wait for it)",
                          op, bad, c);
  });
}
}  // namespace detail

// Losses: the parts of cross entropy and Dice that touch every pixel (see ops/loss.hpp, dice_loss.hpp).
// Nothing waits: results stay on the device, bad labels are reported at the next wait.
// The mean cross entropy into *loss (device).
inline void cross_entropy_mean(const float* p, const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane,
                               float* loss) {
  detail::with_label_check("cross_entropy", c, [&](std::int64_t* invalid) {
    detail::launch("cross_entropy", k::cross_entropy_mean, p, labels, n, c, plane, loss, invalid);
  });
}
inline void cross_entropy_backward(const float* p, const float* labels, std::int64_t n, std::int64_t c,
                                   std::int64_t plane, const float* dl, float* dx) {
  detail::launch("cross_entropy_backward", k::cross_entropy_backward, p, labels, n, c, plane, dl, dx);
}
// One piece's Dice sums into sums (device, 2c doubles).
inline void dice_sums(const float* p, const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane,
                      double* sums) {
  detail::with_label_check("dice_loss", c, [&](std::int64_t* invalid) {
    detail::launch("dice_loss", k::dice_sums, p, labels, n, c, plane, sums, invalid);
  });
}
inline void dice_loss_finish(const double* sums, std::int64_t pieces, std::int64_t c, float* loss, float* scale,
                             float* target) {
  detail::launch("dice_loss", k::dice_loss_finish, sums, pieces, c, loss, scale, target);
}
inline void dice_grad_probs(const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane, const float* scale,
                            const float* target, const float* dl, float* dP) {
  detail::launch("dice_loss_backward", k::dice_grad_probs, labels, n, c, plane, scale, target, dl, dP);
}
}  // namespace dd::gpu
