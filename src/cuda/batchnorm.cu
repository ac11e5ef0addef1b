// Batch-norm pieces cuDNN does not cover: invstd from a variance, and the eval-mode backward
// (constant statistics), mirroring dd::cpu::batchnorm_backward with batch_stats = false.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

constexpr i64 kPartials = 2048;  // blocks of the first pass, about, over all channels

// Explicitly rounded ops: the same IEEE float result as the CPU's 1.0f / std::sqrt(var + eps).
__global__ void invstd_kernel(const float* var, i64 c, float eps, float* invstd) {
  for (i64 i = first_index(); i < c; i += grid_stride())
    invstd[i] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var[i], eps)));
}

// One thread per weight; the first thread of each output channel writes its bias. Explicitly rounded
// ops: the CPU's float expressions, never contracted.
__global__ void fold_kernel(const float* w, const float* b, const float* gamma, const float* beta, const float* mean,
                            const float* var, i64 c, i64 per_output, float eps, float* w_out, float* b_out) {
  for (i64 i = first_index(); i < c * per_output; i += grid_stride()) {
    const i64 k = i / per_output;
    const float scale = __fdiv_rn(gamma[k], __fsqrt_rn(__fadd_rn(var[k], eps)));
    w_out[i] = __fmul_rn(w[i], scale);
    if (i == k * per_output) {
      const float shift = __fsub_rn(beta[k], __fmul_rn(mean[k], scale));
      b_out[k] = b ? __fadd_rn(__fmul_rn(b[k], scale), shift) : shift;
    }
  }
}

// Grid (chunks, channels). Block (x, ch) visits its share of channel ch's count = n * plane values,
// writes dx = (gamma * invstd) * dy when dx is given, and, when part is given, the partial sums
// part[ch][x] = sum dy and part[c + ch][x] = sum dy * (x - mean) (x is read only if with_x).
// T is the element type of x, dy and dx.
template <class T>
__global__ void backward_eval_kernel(const T* x, const T* dy, const float* gamma, const float* mean,
                                     const float* invstd, i64 c, i64 plane, i64 count, T* dx, double* part, bool with_x,
                                     bool nhwc) {
  __shared__ double sh[kBlock];
  const i64 chunks = gridDim.x;
  for (i64 ch = blockIdx.y; ch < c; ch += gridDim.y) {
    const float m = with_x ? mean[ch] : 0.0f;
    const float k = dx ? gamma[ch] * invstd[ch] : 0.0f;
    double sum_dy = 0.0, sum_dyx = 0.0;
    for (i64 t = static_cast<i64>(blockIdx.x) * kBlock + threadIdx.x; t < count; t += chunks * kBlock) {
      const i64 b = t / plane, idx = nhwc ? t * c + ch : (b * c + ch) * plane + (t - b * plane);
      const float d = load(dy + idx);
      if (dx) store(k * d, dx + idx);
      sum_dy += d;
      if (with_x) sum_dyx += d * (load(x + idx) - m);  // a float product, as the CPU's
    }
    if (part) {  // uniform over the block, so the barriers in block_sum are safe
      sum_dy = block_sum(sum_dy, sh);
      sum_dyx = block_sum(sum_dyx, sh);
      if (threadIdx.x == 0)
        part[ch * chunks + blockIdx.x] = sum_dy, part[(c + ch) * chunks + blockIdx.x] = sum_dyx;
    }
  }
}

// One block per channel: reduces the chunks' partials in a fixed order and accumulates.
__global__ void backward_eval_finish(const double* part, const float* invstd, i64 c, i64 chunks,
                                     float* dgamma, float* dbeta) {
  __shared__ double sh[kBlock];
  for (i64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double sum_dy = 0.0, sum_dyx = 0.0;
    for (i64 j = threadIdx.x; j < chunks; j += kBlock)
      sum_dy += part[ch * chunks + j], sum_dyx += part[(c + ch) * chunks + j];
    sum_dy = block_sum(sum_dy, sh);
    sum_dyx = block_sum(sum_dyx, sh);
    if (threadIdx.x == 0) {
      if (dgamma) dgamma[ch] += static_cast<float>(sum_dyx * invstd[ch]);
      if (dbeta) dbeta[ch] += static_cast<float>(sum_dy);
    }
  }
}

}  // namespace

void fold_batchnorm(const float* w, const float* b, const float* gamma, const float* beta, const float* mean,
                    const float* var, i64 c, i64 per_output, float eps, float* w_out, float* b_out, cudaStream_t s) {
  const i64 n = c * per_output;
  if (n > 0)
    launch(fold_kernel, grid_for(n), kBlock, 0, s, w, b, gamma, beta, mean, var, c, per_output, eps, w_out, b_out);
}

void batchnorm_invstd(const float* var, i64 c, float eps, float* invstd, cudaStream_t s) {
  if (c > 0) launch(invstd_kernel, grid_for(c), kBlock, 0, s, var, c, eps, invstd);
}

void batchnorm_backward_eval(const void* x, const void* dy, const float* gamma, const float* mean, const float* invstd,
                             i64 n, i64 c, i64 plane, void* dx, float* dgamma, float* dbeta, bool channels_last,
                             DType t, cudaStream_t s) {
  const i64 count = n * plane;
  if (n <= 0 || c <= 0 || plane <= 0 || (!dx && !dgamma && !dbeta)) return;
  // The chunk count depends only on the sizes, so the summation order is fixed.
  const i64 chunks = std::min<i64>((count + kBlock - 1) / kBlock, std::max<i64>(1, kPartials / c));
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min<i64>(c, 65535)));
  const auto first_pass = [&](double* part, bool with_x) {
    by_dtype(t, [&](auto element) {
      using T = decltype(element);
      launch(backward_eval_kernel<T>, grid, kBlock, 0, s, static_cast<const T*>(x), static_cast<const T*>(dy), gamma,
             mean, invstd, c, plane, count, static_cast<T*>(dx), part, with_x, channels_last);
    });
  };
  if (!dgamma && !dbeta) {
    first_pass(nullptr, false);
    return;
  }
  Scratch scratch(static_cast<std::size_t>(2 * c * chunks) * sizeof(double), s, "batchnorm_backward_eval");
  auto* part = static_cast<double*>(scratch.p);
  first_pass(part, dgamma != nullptr);
  launch(backward_eval_finish, static_cast<unsigned>(std::min<i64>(c, 65535)), kBlock, 0, s, part, invstd, c, chunks,
         dgamma, dbeta);
}

}  // namespace dd::cuda::kernels
