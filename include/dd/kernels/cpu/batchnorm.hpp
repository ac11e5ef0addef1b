#pragma once
// BatchNorm2d on the CPU, threaded over channels. Training normalises with the batch statistics
// (biased variance) and moves the running statistics with the unbiased variance, as PyTorch does.
#include <cmath>
#include <cstdint>

#include "dd/core/parallel.hpp"

namespace dd::cpu {

struct BatchNormGeometry {
  std::int64_t n, c, plane;  // plane = H*W
  std::int64_t count() const { return n * plane; }
};

// The conv block's ReLU and dropout factors after a batch norm (the fused op), for a forward kernel
// to apply in its own pass where it can (the GPU's channels-last one); `applied` says whether it
// did, else the caller applies them (the CPU kernels here never do).
// In the backward (GPU only), y is the block's output and the gradient given is its gradient.
struct BatchNormTail {
  const float* scale = nullptr;  // per [sample, channel]; null: ReLU only
  bool applied = false;
  const void* y = nullptr;  // backward only (GPU: elements of the activations' type)
};

// Training forward. Writes y, the per-channel batch mean and 1/sqrt(var+eps) (kept for backward),
// and updates running_mean/var in place when they are given.
inline void batchnorm_forward_train(const float* x, const float* gamma, const float* beta, const BatchNormGeometry& g,
                                    float eps, float momentum, float* y, float* save_mean, float* save_invstd,
                                    float* running_mean, float* running_var) {
  const std::int64_t M = g.count();
  parallel_for(g.c, [&](std::int64_t c) {
    double sum = 0, sq = 0;
    for (std::int64_t n = 0; n < g.n; ++n) {
      const float* p = x + (n * g.c + c) * g.plane;
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (std::int64_t i = 0; i < g.plane; ++i) s += p[i];
      sum += s;
    }
    const double mean = sum / static_cast<double>(M);
    for (std::int64_t n = 0; n < g.n; ++n) {
      const float* p = x + (n * g.c + c) * g.plane;
      const float m = static_cast<float>(mean);
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (std::int64_t i = 0; i < g.plane; ++i) s += (p[i] - m) * (p[i] - m);
      sq += s;
    }
    const double var = sq / static_cast<double>(M);
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    save_mean[c] = static_cast<float>(mean);
    save_invstd[c] = invstd;
    if (running_mean) {
      const double unbiased = M > 1 ? sq / static_cast<double>(M - 1) : var;
      running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
      running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
    const float scale = gamma[c] * invstd, shift = beta[c] - static_cast<float>(mean) * scale;
    for (std::int64_t n = 0; n < g.n; ++n) {
      const float* p = x + (n * g.c + c) * g.plane;
      float* q = y + (n * g.c + c) * g.plane;
#pragma omp simd
      for (std::int64_t i = 0; i < g.plane; ++i) q[i] = p[i] * scale + shift;
    }
  });
}

// Evaluation forward with given statistics: y = gamma * (x - mean) / sqrt(var + eps) + beta.
inline void batchnorm_forward_eval(const float* x, const float* gamma, const float* beta, const float* mean,
                                   const float* var, const BatchNormGeometry& g, float eps, float* y) {
  parallel_for(g.n * g.c, [&](std::int64_t nc) {
    const std::int64_t c = nc % g.c;
    const float scale = gamma[c] / std::sqrt(var[c] + eps), shift = beta[c] - mean[c] * scale;
    const float* p = x + nc * g.plane;
    float* q = y + nc * g.plane;
#pragma omp simd
    for (std::int64_t i = 0; i < g.plane; ++i) q[i] = p[i] * scale + shift;
  });
}

// An eval-mode batch norm after a convolution folded into the convolution: with
// scale = gamma / sqrt(var + eps) and shift = beta - mean * scale (batchnorm_forward_eval's floats),
// w_out[k] = w[k] * scale[k] (each of the `per_output` weights of output channel k) and
// b_out[k] = b[k] * scale[k] + shift[k] (b may be null: no convolution bias).
inline void fold_batchnorm(const float* w, const float* b, const float* gamma, const float* beta, const float* mean,
                           const float* var, std::int64_t c, std::int64_t per_output, float eps, float* w_out,
                           float* b_out) {
  for (std::int64_t k = 0; k < c; ++k) {
    const float scale = gamma[k] / std::sqrt(var[k] + eps), shift = beta[k] - mean[k] * scale;
    for (std::int64_t i = k * per_output; i < (k + 1) * per_output; ++i) w_out[i] = w[i] * scale;
    b_out[k] = b ? b[k] * scale + shift : shift;
  }
}

// Backward. mean/invstd are the statistics the forward used (batch ones in training, running ones
// in eval). batch_stats says whether the statistics depend on x (training) or are constants (eval).
// dx is written (may be null); dgamma/dbeta are accumulated.
inline void batchnorm_backward(const float* x, const float* dy, const float* gamma, const float* mean,
                               const float* invstd, const BatchNormGeometry& g, bool batch_stats, float* dx,
                               float* dgamma, float* dbeta) {
  const double M = static_cast<double>(g.count());
  parallel_for(g.c, [&](std::int64_t c) {
    const float m = mean[c], is = invstd[c];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (std::int64_t n = 0; n < g.n; ++n) {
      const float* p = x + (n * g.c + c) * g.plane;
      const float* d = dy + (n * g.c + c) * g.plane;
      float a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
      for (std::int64_t i = 0; i < g.plane; ++i) {
        a += d[i];
        b += d[i] * (p[i] - m);
      }
      sum_dy += a;
      sum_dy_xhat += static_cast<double>(b) * is;
    }
    if (dgamma) dgamma[c] += static_cast<float>(sum_dy_xhat);
    if (dbeta) dbeta[c] += static_cast<float>(sum_dy);
    if (!dx) return;
    const float k = gamma[c] * is;
    const float a = batch_stats ? static_cast<float>(sum_dy / M) : 0.0f;
    const float b = batch_stats ? static_cast<float>(sum_dy_xhat / M) * is : 0.0f;
    for (std::int64_t n = 0; n < g.n; ++n) {
      const float* p = x + (n * g.c + c) * g.plane;
      const float* d = dy + (n * g.c + c) * g.plane;
      float* q = dx + (n * g.c + c) * g.plane;
#pragma omp simd
      for (std::int64_t i = 0; i < g.plane; ++i) q[i] = k * (d[i] - a - (p[i] - m) * b);
    }
  });
}

}  // namespace dd::cpu
