// Adam step (dd::Adam::step's float arithmetic) and the deterministic whole-buffer reductions
// behind gradient norms (and their clipping, on the device) and non-finite checks.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

constexpr i64 kPartials = 1024;  // blocks of the first reduction pass, at most

// Explicitly rounded (never fused) ops: the IEEE float result of the CPU source, expression by
// expression, whatever contraction nvcc would otherwise choose.
__global__ void adam_kernel(float* p, const float* g, float* m, float* v, i64 n, float step, float b1,
                            float b2, float eps, float wd, float inv_bc2) {
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

void adam_step(float* p, const float* g, float* m, float* v, i64 n, float step, float beta1, float beta2,
               float eps, float weight_decay, float inv_bc2, cudaStream_t s) {
  if (n > 0)
    launch(adam_kernel, grid_for(n), kBlock, 0, s, p, g, m, v, n, step, beta1, beta2, eps, weight_decay, inv_bc2);
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
