// Per-channel work on channels-last (NHWC) memory: batch-norm training forward and backward, bias
// gradients and bias addition. cuDNN's legacy batch norm on NHWC fp32 runs a kernel per channel that
// strides through memory (85 % of a U-Net training step); these read every array in order.
//
// Reductions: the grid's thread count is a multiple of c, so thread g always sees channel g % c of
// the flat [rows, c] array and every warp reads consecutive addresses. Each block sums its threads
// per channel in a fixed order into one partial, and a second kernel sums the partials in block
// order: sizes alone fix the summation order (deterministic). Accumulation is in double.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

// The block holds whole channel groups: c * floor(256 / c) threads (c itself beyond 256).
struct ChannelGrid {
  int block, grid;
};
ChannelGrid channel_grid(i64 total, i64 c) {
  const i64 block = c >= 256 ? c : c * (256 / c);
  const i64 per_thread = 8;  // elements per thread, about, before the grid is capped
  const i64 grid = std::clamp<i64>((total + block * per_thread - 1) / (block * per_thread), 1, 1024);
  return {static_cast<int>(block), static_cast<int>(grid)};
}

enum class Sum { x_and_squares, dy_and_dy_centered, dy };

// The gradient batch norm's backward sees at element i (channel ch): dy itself, or, behind the conv
// block's ReLU and dropout (the fused op; y its output, k its factors per [sample, channel] or null,
// sample = h * w * c elements), what the separate ReLU-dropout backward would have handed on.
// T is the activations' element type (dy, y); the factors k are float.
template <class T>
struct GradIn {
  const T* dy;
  const T* y = nullptr;
  const float* k = nullptr;
  i64 sample = 1;
  template <class I>
  __device__ float at(I i, I ch, I c) const {
    return y ? relu_tail_grad(load(y + i), load(dy + i), k, i, ch, c, static_cast<I>(sample)) : load(dy + i);
  }
};

// part[block][k][ch] for k = 0, 1: the block's sums for channel ch. Blocks of up to 1024 threads
// (one per channel up to 1024): the bound keeps the compiler within the registers that allows.
template <Sum S, class T>
__global__ void __launch_bounds__(1024)
    partial_sums(const T* x, GradIn<T> gin, const float* mean, i64 c, i64 total, double* part) {
  double* sh = dynamic_shared<double>(2 * blockDim.x);
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  const i64 first = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  const i64 ch = threadIdx.x % c;
  const float m = S == Sum::dy_and_dy_centered ? mean[ch] : 0.0f;
  double a = 0.0, b = 0.0;
  for (i64 i = first; i < total; i += stride) {
    if constexpr (S == Sum::x_and_squares) {
      const double v = load(x + i);
      a += v;
      b += v * v;  // exact in double (a float squared has 48 significant bits)
    } else if constexpr (S == Sum::dy_and_dy_centered) {
      const float d = gin.at(i, ch, c);
      a += d;
      b += d * (load(x + i) - m);
    } else {
      a += load(gin.dy + i);
    }
  }
  sh[threadIdx.x] = a;
  sh[blockDim.x + threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.x < c) {
    double sa = 0.0, sb = 0.0;
    for (unsigned k = threadIdx.x; k < blockDim.x; k += static_cast<unsigned>(c)) sa += sh[k], sb += sh[blockDim.x + k];
    part[(2 * static_cast<i64>(blockIdx.x)) * c + ch] = sa;
    part[(2 * static_cast<i64>(blockIdx.x) + 1) * c + ch] = sb;
  }
}

// Channel ch's totals over the partials, by the whole block (one block per channel): each thread
// sums a fixed subset, then the fixed-order tree of block_sum. Every thread gets the totals.
__device__ void block_totals(const double* part, int blocks, i64 c, i64 ch, double& a, double& b) {
  __shared__ double sh[kBlock];
  a = 0.0, b = 0.0;
  for (int k = threadIdx.x; k < blocks; k += kBlock) a += part[2 * k * c + ch], b += part[(2 * k + 1) * c + ch];
  a = block_sum(a, sh);
  b = block_sum(b, sh);
}

// Mean, invstd and the running statistics from the sums of x and x^2 (one pass over x). The CPU
// (kernels/cpu/batchnorm.hpp) sums squared deviations in a second pass; in double the two agree to
// float rounding unless |mean| / std exceeds ~1e4 (cancellation), far beyond normalised activations.
__global__ void finish_statistics(const double* part, int blocks, i64 c, double count, float eps, float momentum,
                                  float* mean, float* invstd, float* running_mean, float* running_var) {
  for (i64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double sum, sum_sq;
    block_totals(part, blocks, c, ch, sum, sum_sq);
    if (threadIdx.x != 0) continue;
    const double m = sum / count, sq = fmax(sum_sq - sum * m, 0.0);  // sum of squared deviations
    const double var = sq / count;
    mean[ch] = static_cast<float>(m);
    invstd[ch] = static_cast<float>(1.0 / sqrt(var + eps));
    if (running_mean) {
      const double unbiased = count > 1.0 ? sq / (count - 1.0) : var;
      running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * m);
      running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
    }
  }
}

// dgamma += sum dy * xhat, dbeta += sum dy (each may be null); coef[ch] = sum dy / M and
// coef[c + ch] = (sum dy * xhat / M) * invstd for the input gradient (coef may be null).
__global__ void finish_backward(const double* part, int blocks, i64 c, double count, const float* invstd,
                                float* dgamma, float* dbeta, float* coef) {
  for (i64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double sum_dy, sum_dy_centered;
    block_totals(part, blocks, c, ch, sum_dy, sum_dy_centered);
    if (threadIdx.x != 0) continue;
    const float is = invstd ? invstd[ch] : 1.0f;
    const double sum_dy_xhat = sum_dy_centered * is;
    if (dgamma) dgamma[ch] += static_cast<float>(sum_dy_xhat);
    if (dbeta) dbeta[ch] += static_cast<float>(sum_dy);
    if (coef) coef[ch] = static_cast<float>(sum_dy / count), coef[c + ch] = static_cast<float>(sum_dy_xhat / count) * is;
  }
}

// Element-wise passes; T is the element type, I the index type (32-bit where the array allows: i % c
// is the cost). With relu: the conv block's tail in the same pass (relu, then the dropout factor of
// the sample and channel when k is given; sample = h * w * c elements), the arithmetic of the
// separate ops, rounded to T once at the end.
template <class T, class I>
__global__ void normalize(const T* x, const float* gamma, const float* beta, const float* mean, const float* invstd,
                          I c, I total, T* y, bool relu, const float* k, I sample) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride())) {
    const I ch = i % c;
    const float scale = gamma[ch] * invstd[ch], shift = beta[ch] - mean[ch] * scale;
    const float v = load(x + i) * scale + shift;
    store(relu ? relu_tail(v, k, i, ch, c, sample) : v, y + i);
  }
}
// coef null: constant statistics (dx = gamma * invstd * dy).
template <class T, class I>
__global__ void input_gradient(const T* x, GradIn<T> gin, const float* gamma, const float* mean, const float* invstd,
                               const float* coef, I c, I total, T* dx) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride())) {
    const I ch = i % c;
    const float k = gamma[ch] * invstd[ch], d = gin.at(i, ch, c);
    store(coef ? k * (d - coef[ch] - (load(x + i) - mean[ch]) * coef[c + ch]) : k * d, dx + i);
  }
}
template <class T, class I>
__global__ void add_bias(const float* b, I c, I total, bool relu, T* y) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride())) {
    const float v = load(y + i) + b[i % c];
    store(relu ? (v > 0.0f ? v : 0.0f) : v, y + i);  // as dd::relu: NaN gives 0
  }
}

template <Sum S, class T>
void sums(const T* x, const GradIn<T>& gin, const float* mean, i64 c, i64 total, const ChannelGrid& g, double* part,
          cudaStream_t s) {
  launch(partial_sums<S, T>, g.grid, g.block, 2 * g.block * sizeof(double), s, x, gin, mean, c, total, part);
}

unsigned channel_blocks(i64 c) { return static_cast<unsigned>(std::min<i64>(c, 65535)); }  // one per channel

}  // namespace

bool channels_last_supported(std::int64_t c) { return c >= 1 && c <= 1024; }

void batchnorm_nhwc_forward_train(const void* x, const float* gamma, const float* beta, i64 rows, i64 c, float eps,
                                  float momentum, void* y, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, const ReluTail& tail, DType t, cudaStream_t s) {
  const i64 total = rows * c;
  if (total <= 0) return;
  const ChannelGrid g = channel_grid(total, c);
  Scratch part(static_cast<std::size_t>(2 * g.grid * c) * sizeof(double), s, "batchnorm_nhwc_forward_train");
  auto* p = static_cast<double*>(part.p);
  const double count = static_cast<double>(rows);
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    sums<Sum::x_and_squares>(static_cast<const T*>(x), GradIn<T>{nullptr}, nullptr, c, total, g, p, s);
  });
  launch(finish_statistics, channel_blocks(c), kBlock, 0, s, p, g.grid, c, count, eps, momentum, save_mean, save_invstd,
         running_mean, running_var);
  batchnorm_nhwc_forward_eval(x, gamma, beta, save_mean, save_invstd, rows, c, y, tail, t, s);
}

void batchnorm_nhwc_forward_eval(const void* x, const float* gamma, const float* beta, const float* mean,
                                 const float* invstd, i64 rows, i64 c, void* y, const ReluTail& tail, DType t,
                                 cudaStream_t s) {
  const i64 total = rows * c;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(normalize<T, I>, grid_for(total), kBlock, 0, s, static_cast<const T*>(x), gamma, beta, mean, invstd, I(c),
           I(total), static_cast<T*>(y), tail.relu, tail.scale, I(tail.plane * c));
  });
}

void batchnorm_nhwc_backward(const void* x, const void* dy, const float* gamma, const float* mean, const float* invstd,
                             i64 rows, i64 c, bool batch_stats, void* dx, float* dgamma, float* dbeta,
                             const ReluTail& tail, DType t, cudaStream_t s) {
  const i64 total = rows * c;
  if (total <= 0 || (!dx && !dgamma && !dbeta)) return;
  const ChannelGrid g = channel_grid(total, c);
  const bool coef_needed = dx && batch_stats;
  Scratch part(static_cast<std::size_t>(2 * g.grid * c) * sizeof(double) + (coef_needed ? 2 * c * sizeof(float) : 0),
               s, "batchnorm_nhwc_backward");
  auto* p = static_cast<double*>(part.p);
  float* coef = coef_needed ? reinterpret_cast<float*>(p + 2 * g.grid * c) : nullptr;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    const auto* xs = static_cast<const T*>(x);
    const GradIn<T> gin{static_cast<const T*>(dy), tail.relu ? static_cast<const T*>(tail.y) : nullptr, tail.scale,
                        tail.plane * c};
    if (dgamma || dbeta || coef_needed) {
      sums<Sum::dy_and_dy_centered>(xs, gin, mean, c, total, g, p, s);
      launch(finish_backward, channel_blocks(c), kBlock, 0, s, p, g.grid, c, static_cast<double>(rows), invstd, dgamma,
             dbeta, coef);
    }
    if (!dx) return;
    by_index_type(total, [&](auto index) {
      using I = decltype(index);
      launch(input_gradient<T, I>, grid_for(total), kBlock, 0, s, xs, gin, gamma, mean, invstd, coef, I(c), I(total),
             static_cast<T*>(dx));
    });
  });
}

void bias_grad_nhwc(const void* dy, i64 rows, i64 c, float* db, DType t, cudaStream_t s) {
  const i64 total = rows * c;
  if (total <= 0) return;
  const ChannelGrid g = channel_grid(total, c);
  Scratch part(static_cast<std::size_t>(2 * g.grid * c) * sizeof(double), s, "bias_grad_nhwc");
  auto* p = static_cast<double*>(part.p);
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    sums<Sum::dy>(static_cast<const T*>(nullptr), GradIn<T>{static_cast<const T*>(dy)}, nullptr, c, total, g, p, s);
  });
  launch(finish_backward, channel_blocks(c), kBlock, 0, s, p, g.grid, c, 1.0, nullptr, nullptr, db, nullptr);
}

void add_bias_nhwc(const float* b, i64 rows, i64 c, void* y, DType t, cudaStream_t s, bool relu) {
  const i64 total = rows * c;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(add_bias<T, I>, grid_for(total), kBlock, 0, s, b, I(c), I(total), relu, static_cast<T*>(y));
  });
}

}  // namespace dd::cuda::kernels
