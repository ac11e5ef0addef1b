#pragma once
// Launchers of the library's own CUDA kernels (everything cuDNN does not do). Declared here with
// plain types so host code compiles with the C++ compiler; defined in src/cuda/*.cu, which nvcc
// compiles into the dd_cuda_kernels library (CMake option DD_CUDA). Every launcher enqueues on the
// given stream and returns at once, except those that return a value to the host (they wait).
// Pointers are device pointers unless a parameter says "host". Element counts are int64.
//
// Activation arrays (void*) hold elements of the DType given as `t` (all of a call's activation
// arrays the same type): f32, or bf16 / f16 in mixed precision with half activations; arithmetic
// is in float (sums in double), each result rounded once when stored. Parameters, statistics,
// scales and per-channel results are float.
#include <cuda_runtime.h>

#include <cstdint>

#include "dd/core/dtype.hpp"
#include "dd/kernels/cuda/copy_plan.hpp"
#include "dd/training/step_state.hpp"

namespace dd::cuda::kernels {

// ---- element-wise ----
void fill(void* x, std::int64_t n, float value, DType t, cudaStream_t s);
void axpy(void* y, const void* x, std::int64_t n, float a, DType t, cudaStream_t s);  // y += a * x
void scale(void* x, std::int64_t n, float a, DType t, cudaStream_t s);                 // x *= a
// y = x element by element, converting from type xt to yt (rounding to nearest even when narrowing).
void convert(const void* x, DType xt, void* y, DType yt, std::int64_t n, cudaStream_t s);

// dst[n,c,h,w] = src[n,c,h,w] (StridedCopy: core/strided_copy.hpp; the plans: copy_plan.hpp),
// converting from type st to dt when they differ (rounded once when narrowing); add_strided:
// dst += src, in float, rounded once when stored.
void copy_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& geometry, cudaStream_t s);
void add_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& geometry, cudaStream_t s);

void relu_forward(const void* x, std::int64_t n, void* y, DType t, cudaStream_t s);
void relu_backward(const void* y, const void* dy, std::int64_t n, void* dx, DType t,
                   cudaStream_t s);  // dx = y > 0 ? dy : 0

// y[p, i] = x[p, i] * scale[p] for planes p of `plane` elements (dropout2d; scale is a device array).
void scale_planes(const float* x, const float* scale, std::int64_t planes, std::int64_t plane, float* y,
                  cudaStream_t s);

// Conv-block tail in place: y = relu(y) * scale[p] (scale may be null: relu only), and its backward
// from the output: dx = y > 0 ? dy * scale[p] : 0 (scale null: 1). Same float arithmetic as the CPU.
void relu_scale_planes(float* y, const float* scale, std::int64_t planes, std::int64_t plane, cudaStream_t s);
void relu_scale_planes_backward(const float* y, const float* dy, const float* scale, std::int64_t planes,
                                std::int64_t plane, float* dx, cudaStream_t s);

// Channels-last twins of the three above: x, y, dy, dx are [n, plane, c] (NHWC), scale [n, c].
void scale_planes_nhwc(const void* x, const float* scale, std::int64_t n, std::int64_t c, std::int64_t plane,
                       void* y, DType t, cudaStream_t s);
void relu_scale_planes_nhwc(void* y, const float* scale, std::int64_t n, std::int64_t c, std::int64_t plane,
                            DType t, cudaStream_t s);
void relu_scale_planes_nhwc_backward(const void* y, const void* dy, const float* scale, std::int64_t n,
                                     std::int64_t c, std::int64_t plane, void* dx, DType t, cudaStream_t s);

// ---- pooling: 2x2, stride 2, odd trailing rows/columns dropped; first maximum wins on ties ----
// argmax holds the winner's offset in its window (0..3: row * 2 + column), one byte per output.
void maxpool2x2_forward(const float* x, std::int64_t planes, std::int64_t h, std::int64_t w, float* y,
                        std::uint8_t* argmax, cudaStream_t s);
// Writes EVERY element of dx (zero where no window chose it), or with `accumulate` adds each window's
// gradient to its winner in dx and leaves the other elements as they are.
void maxpool2x2_backward(const float* dy, const std::uint8_t* argmax, std::int64_t planes, std::int64_t h,
                         std::int64_t w, float* dx, bool accumulate, cudaStream_t s);

// Channels-last twins: x and dx are NHWC [n, h, w, c], y, dy and argmax NHWC [n, h/2, w/2, c].
void maxpool2x2_nhwc_forward(const void* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, void* y,
                             std::uint8_t* argmax, DType t, cudaStream_t s);
void maxpool2x2_nhwc_backward(const void* dy, const std::uint8_t* argmax, std::int64_t n, std::int64_t c,
                              std::int64_t h, std::int64_t w, void* dx, bool accumulate, DType t, cudaStream_t s);

// ---- softmax over channels of NCHW (one distribution per pixel) ----
void softmax_channels(const float* x, std::int64_t n, std::int64_t c, std::int64_t plane, float* p, cudaStream_t s);
// dx = p * (dp - sum_k dp_k p_k), per pixel.
void softmax_channels_backward(const float* p, const float* dp, std::int64_t n, std::int64_t c, std::int64_t plane,
                               float* dx, cudaStream_t s);

// ---- losses; labels are [N,1,H,W] class indices stored as floats ----
// Enqueues, without waiting: *loss (device) = mean over pixels of -log(max(p[label], 1e-30))
// (summed in double in a deterministic order, rounded once), and *invalid_labels (PINNED host
// memory, written when the stream gets there) = the number of labels that are not integers in [0, c).
void cross_entropy_mean(const float* p, const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane,
                        float* loss, std::int64_t* invalid_labels, cudaStream_t s);
// dx = k * (p - onehot(label)), k = *dl / (n * plane) with dl the loss's gradient on the device.
void cross_entropy_backward(const float* p, const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane,
                            const float* dl, float* dx, cudaStream_t s);
// Enqueues, without waiting, one piece's per-class sums into sums (device, 2c doubles): sums[k] =
// sum of p[k] over the pixels labelled k (the intersection), sums[c + k] = sum of p[k] over all
// pixels + the count of pixels labelled k (the denominator); *invalid_labels (PINNED host memory)
// = the number of labels that are not integers in [0, c). Deterministic order.
void dice_sums(const float* p, const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane, double* sums,
               std::int64_t* invalid_labels, cudaStream_t s);
// The Dice loss of `pieces` pieces' sums ([pieces][2c] doubles, device, as dice_sums writes them),
// added in piece order: *loss = mean_k (1 - 2 I_k / max(S_k, 1e-7)) and the factors of dL/dp,
// scale[k] = 2 I_k / (S_k^2 c) (0 where S_k is clamped) and target[k] = -2 / (S_k c); the same
// double arithmetic as dd::dice_loss on the CPU. One thread: c and pieces are small.
void dice_loss_finish(const double* sums, std::int64_t pieces, std::int64_t c, float* loss, float* scale, float* target,
                      cudaStream_t s);
// dP[b,k,i] = g * scale[k] + (label(b,i) == k ? g * target[k] : 0), g = *dl; scale, target (c floats
// each) and dl in device memory.
void dice_grad_probs(const float* labels, std::int64_t n, std::int64_t c, std::int64_t plane, const float* scale,
                     const float* target, const float* dl, float* dP, cudaStream_t s);

// ---- batch norm pieces cuDNN does not cover ----
// invstd[c] = 1 / sqrt(var[c] + eps)
void batchnorm_invstd(const float* var, std::int64_t c, float eps, float* invstd, cudaStream_t s);
// dd::cpu::fold_batchnorm's float arithmetic (an eval-mode batch norm folded into the convolution
// before it): w_out = w * scale per output channel, b_out = b * scale + shift (b may be null).
void fold_batchnorm(const float* w, const float* b, const float* gamma, const float* beta, const float* mean,
                    const float* var, std::int64_t c, std::int64_t per_output, float eps, float* w_out, float* b_out,
                    cudaStream_t s);
// Backward with constant statistics (eval mode): dx = dy * gamma * invstd (dx may be null);
// dgamma += sum dy * (x - mean) * invstd, dbeta += sum dy (each may be null), per channel.
// channels_last: x, dy, dx are NHWC.
void batchnorm_backward_eval(const void* x, const void* dy, const float* gamma, const float* mean,
                             const float* invstd, std::int64_t n, std::int64_t c, std::int64_t plane, void* dx,
                             float* dgamma, float* dbeta, bool channels_last, DType t, cudaStream_t s);

// ---- per-channel work on channels-last memory (x, y, dy, dx are [rows = n*h*w, c]) ----
// For c in [1, 1024] (channels_last_supported); deterministic, sums in double.
bool channels_last_supported(std::int64_t c);
// Batch statistics (biased variance; running statistics moved with the unbiased one when given),
// then y = x * (gamma * invstd) + (beta - mean * gamma * invstd). With tail.relu, in the same pass,
// y = relu(y) * tail.scale[sample, channel] (scale may be null: relu only; plane = h * w).
// In the backward, dy is the gradient of the block's output y (the forward's result with the tail),
// and the kernels take the ReLU and dropout factors back out of it.
struct ReluTail {
  bool relu = false;
  const float* scale = nullptr;
  std::int64_t plane = 1;
  const void* y = nullptr;  // backward only; the activations' type
};
void batchnorm_nhwc_forward_train(const void* x, const float* gamma, const float* beta, std::int64_t rows,
                                  std::int64_t c, float eps, float momentum, void* y, float* save_mean,
                                  float* save_invstd, float* running_mean, float* running_var, const ReluTail& tail,
                                  DType t, cudaStream_t s);
void batchnorm_nhwc_forward_eval(const void* x, const float* gamma, const float* beta, const float* mean,
                                 const float* invstd, std::int64_t rows, std::int64_t c, void* y,
                                 const ReluTail& tail, DType t, cudaStream_t s);
// dx written (may be null), dgamma/dbeta accumulated (may be null); batch_stats as in
// dd::cpu::batchnorm_backward.
void batchnorm_nhwc_backward(const void* x, const void* dy, const float* gamma, const float* mean,
                             const float* invstd, std::int64_t rows, std::int64_t c, bool batch_stats, void* dx,
                             float* dgamma, float* dbeta, const ReluTail& tail, DType t, cudaStream_t s);
void bias_grad_nhwc(const void* dy, std::int64_t rows, std::int64_t c, float* db, DType t,
                    cudaStream_t s);                                                            // db += sum dy
// y += b; with relu y = max(0, y + b) (NaN gives 0, as dd::relu)
void add_bias_nhwc(const float* b, std::int64_t rows, std::int64_t c, void* y, DType t, cudaStream_t s,
                   bool relu = false);

// ---- optimizer and reductions ----
// One Adam step with its counter on the device: unless gate (may be null) reads 0, t += 1 and, with
// the bias corrections of t folded in, g' = g + wd * p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
// p -= step * m / (sqrt(v * inv_bc2) + eps) (dd::Adam's CPU float arithmetic); else nothing changes.
void adam_step_counted(float* p, const float* g, float* m, float* v, std::int64_t n, AdamCounter* counter,
                       const float* gate, double lr, float beta1, float beta2, float eps, float weight_decay,
                       cudaStream_t s);
// dst[i] = state->scale for i < n (the seed gradient of a scaled backward pass).
void loss_scale_fill(float* dst, std::int64_t n, const LossScaleState* state, cudaStream_t s);
// dd::LossScaler::unscale without waiting: when sqrt(sum g^2) is finite, g *= 1 / scale and the
// scale grows after growth_interval such steps; else g is left, the scale backs off and gate = 0.
void loss_scale_unscale(float* g, std::int64_t n, LossScaleState* state, const LossScalerOptions& o, cudaStream_t s);
double sum_squares(const float* x, std::int64_t n, cudaStream_t s);        // waits; deterministic
// Enqueues, without waiting: norm = sqrt(sum_squares(x)); when norm > max_norm (and > 0),
// x *= float(max_norm / (norm + 1e-6)) (dd::clip_grad_norm's arithmetic).
void clip_by_norm(float* x, std::int64_t n, double max_norm, cudaStream_t s);
std::int64_t count_nonfinite(const float* x, std::int64_t n, cudaStream_t s);  // waits; NaN and +-inf

}  // namespace dd::cuda::kernels
