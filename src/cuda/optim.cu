// Adam step (dd::Adam::step's float arithmetic, its step counter on the device), dynamic loss
// scaling's check and update on the device, and the deterministic whole-buffer reductions behind
// gradient norms (and their clipping, on the device) and non-finite checks.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

constexpr i64 kPartials = 1024;  // blocks of the first reduction pass, at most

// The step counter and the bias corrections of the next step, as dd::Adam::step computes them on
// the host (double, then rounded to float once); a gate reading 0 skips the step.
__global__ void adam_count_kernel(AdamCounter* c, const float* gate, double lr, double b1, double b2) {
  if (gate && *gate == 0.0f) {
    c->skip = 1;
    return;
  }
  c->t += 1;
  const double t = static_cast<double>(c->t);
  c->step = static_cast<float>(lr / (1.0 - pow(b1, t)));
  c->inv_bc2 = static_cast<float>(1.0 / (1.0 - pow(b2, t)));
  c->skip = 0;
}

// Explicitly rounded (never fused) ops: the IEEE float result of the CPU source, expression by
// expression, whatever contraction nvcc would otherwise choose.
__global__ void adam_kernel(float* p, const float* g, float* m, float* v, i64 n, const AdamCounter* counter, float b1,
                            float b2, float eps, float wd) {
  if (counter->skip) return;
  const float step = counter->step, inv_bc2 = counter->inv_bc2;
  const float c1 = 1.0f - b1, c2 = 1.0f - b2;
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    const float pi = p[i];
    const float gi = __fadd_rn(g[i], __fmul_rn(wd, pi));
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(c1, gi));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(c2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step, mi), __fadd_rn(__fsqrt_rn(__fmul_rn(vi, inv_bc2)), eps)));
  }
}

struct Square {
  __device__ double operator()(float x) const { return static_cast<double>(x) * static_cast<double>(x); }
};
struct NonFinite {  // exponent all ones: NaN or +-inf (a bit test, immune to fast-math flags)
  __device__ i64 operator()(float x) const { return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u; }
};

template <class T, class F>
__global__ void partials_kernel(const float* x, i64 n, F f, T* part) {
  __shared__ T sh[kBlock];
  T acc = 0;
  for (i64 i = first_index(); i < n; i += grid_stride()) acc += f(x[i]);
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// Gradient-norm clipping with the norm read on the device (so the host never waits for it).
__global__ void clip_kernel(float* x, i64 n, const double* sum_squares, double max_norm) {
  const double norm = sqrt(*sum_squares);
  if (!(norm > max_norm && norm > 0)) return;  // a NaN norm clips nothing, as on the CPU
  const float k = static_cast<float>(max_norm / (norm + 1e-6));
  for (i64 i = first_index(); i < n; i += grid_stride()) x[i] = __fmul_rn(x[i], k);
}

// Dynamic loss scaling (dd::LossScaler's float arithmetic) with its state on the device.
__global__ void loss_scale_fill_kernel(float* dst, i64 n, const LossScaleState* st) {
  const float v = st->scale;
  for (i64 i = first_index(); i < n; i += grid_stride()) dst[i] = v;
}
// One thread: the verdict on the gradients' sum of squares and the next scale. inv_scale receives
// 1 / scale of this step (the factor the gradients are unscaled by).
__global__ void loss_scale_update_kernel(LossScaleState* st, const double* sum_squares, LossScalerOptions o,
                                         float* inv_scale) {
  const double norm = sqrt(*sum_squares);
  if (!(norm <= 1.7976931348623157e308)) {  // inf or NaN: the step is skipped, the scale backs off
    const float backed = __fmul_rn(st->scale, o.backoff);
    st->scale = o.min_scale < backed ? backed : o.min_scale;  // std::max(min_scale, backed)
    st->clean_steps = 0;
    st->skipped += 1;
    st->gate = 0.0f;
    return;
  }
  *inv_scale = __fdiv_rn(1.0f, st->scale);
  st->gate = 1.0f;
  if (++st->clean_steps >= o.growth_interval) {
    st->scale = __fmul_rn(st->scale, o.growth);
    st->clean_steps = 0;
  }
}
__global__ void loss_scale_apply_kernel(float* g, i64 n, const LossScaleState* st, const float* inv_scale) {
  if (st->gate == 0.0f) return;
  const float k = *inv_scale;
  for (i64 i = first_index(); i < n; i += grid_stride()) g[i] = __fmul_rn(g[i], k);
}

i64 partial_blocks(i64 n) {
  return std::min<i64>((n + kBlock - 1) / kBlock, kPartials);
}

// Enqueues the sum of f(x[i]) over [0, n > 0) into part[partial_blocks(n)]: fixed per-block partials
// (the block count depends on n alone) in part, then one block.
template <class T, class F>
void enqueue_sum(const float* x, i64 n, F f, T* part, cudaStream_t s) {
  const i64 blocks = partial_blocks(n);
  launch(partials_kernel<T, F>, static_cast<unsigned>(blocks), kBlock, 0, s, x, n, f, part);
  reduce_rows(part, 1, blocks, part + blocks, s);
}

// The same sum, waited for.
template <class T, class F>
T reduce_all(const float* x, i64 n, F f, cudaStream_t s, const char* who) {
  if (n <= 0) return 0;
  const i64 blocks = partial_blocks(n);
  Scratch scratch(static_cast<std::size_t>(blocks + 1) * sizeof(T), s, who);
  T* part = static_cast<T*>(scratch.p);
  enqueue_sum(x, n, f, part, s);
  T result = 0;
  check(cudaMemcpyAsync(&result, part + blocks, sizeof(T), cudaMemcpyDeviceToHost, s), who);
  check(cudaStreamSynchronize(s), who);
  return result;
}

}  // namespace

void adam_step_counted(float* p, const float* g, float* m, float* v, i64 n, AdamCounter* counter, const float* gate,
                       double lr, float beta1, float beta2, float eps, float weight_decay, cudaStream_t s) {
  launch(adam_count_kernel, 1, 1, 0, s, counter, gate, lr, double(beta1), double(beta2));
  if (n > 0) launch(adam_kernel, grid_for(n), kBlock, 0, s, p, g, m, v, n, counter, beta1, beta2, eps, weight_decay);
}

void loss_scale_fill(float* dst, i64 n, const LossScaleState* state, cudaStream_t s) {
  if (n > 0) launch(loss_scale_fill_kernel, grid_for(n), kBlock, 0, s, dst, n, state);
}

void loss_scale_unscale(float* g, i64 n, LossScaleState* state, const LossScalerOptions& o, cudaStream_t s) {
  const i64 blocks = partial_blocks(std::max<i64>(n, 1));
  // The partials, their sum and 1 / scale (a float after the doubles)
  Scratch scratch(static_cast<std::size_t>(blocks + 2) * sizeof(double), s, "loss_scale_unscale");
  auto* part = static_cast<double*>(scratch.p);
  auto* inv_scale = reinterpret_cast<float*>(part + blocks + 1);
  if (n > 0)
    enqueue_sum(g, n, Square{}, part, s);
  else
    check(cudaMemsetAsync(part + blocks, 0, sizeof(double), s), "loss_scale_unscale");
  launch(loss_scale_update_kernel, 1, 1, 0, s, state, part + blocks, o, inv_scale);
  if (n > 0) launch(loss_scale_apply_kernel, grid_for(n), kBlock, 0, s, g, n, state, inv_scale);
}

double sum_squares(const float* x, i64 n, cudaStream_t s) {
  return reduce_all<double>(x, n, Square{}, s, "sum_squares");
}

void clip_by_norm(float* x, i64 n, double max_norm, cudaStream_t s) {
  if (n <= 0) return;
  const i64 blocks = partial_blocks(n);
  Scratch scratch(static_cast<std::size_t>(blocks + 1) * sizeof(double), s, "clip_by_norm");
  auto* part = static_cast<double*>(scratch.p);
  enqueue_sum(x, n, Square{}, part, s);
  launch(clip_kernel, grid_for(n), kBlock, 0, s, x, n, part + blocks, max_norm);
}

i64 count_nonfinite(const float* x, i64 n, cudaStream_t s) {
  return reduce_all<i64>(x, n, NonFinite{}, s, "count_nonfinite");
}

}  // namespace dd::cuda::kernels
