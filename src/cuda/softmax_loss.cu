// Softmax over channels, cross entropy and Dice sums/gradients, mirroring dd::cpu softmax.hpp,
// dd::cross_entropy (ops/loss.hpp) and dd::dice_loss (ops/dice_loss.hpp). Losses and their sums stay
// on the device (nothing here waits) and are deterministic: fixed grids write per-block partials,
// reduced in a fixed tree order.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

constexpr i64 kPartials = 1024;  // blocks of a first reduction pass, at most

// A label is a class index iff it is an integer in [0, c); NaN fails the range test.
__device__ bool label_index(float v, i64 c, i64& k) {
  if (!(v >= 0.0f && static_cast<double>(v) < static_cast<double>(c))) return false;
  k = static_cast<i64>(v);
  return static_cast<float>(k) == v && k < c;
}

// One thread per pixel, channels strided by plane (pixels are the contiguous axis: coalesced).
// Same steps as the CPU: max (std::max semantics), exp, float sum in channel order, divide.
__global__ void softmax_kernel(const float* x, i64 c, i64 plane, i64 pixels, float* p) {
  for (i64 t = first_index(); t < pixels; t += grid_stride()) {
    const i64 b = t / plane, off = b * c * plane + (t - b * plane);
    const float* xb = x + off;
    float* pb = p + off;
    float mx = xb[0];
    for (i64 k = 1; k < c; ++k) {
      const float v = xb[k * plane];
      mx = mx < v ? v : mx;
    }
    float sum = 0.0f;
    for (i64 k = 0; k < c; ++k) sum += expf(xb[k * plane] - mx);
    // Recomputing exp (deterministic) reads x again instead of writing and re-reading p.
    for (i64 k = 0; k < c; ++k) pb[k * plane] = expf(xb[k * plane] - mx) / sum;
  }
}

__global__ void softmax_backward_kernel(const float* p, const float* dp, i64 c, i64 plane, i64 pixels,
                                        float* dx) {
  for (i64 t = first_index(); t < pixels; t += grid_stride()) {
    const i64 b = t / plane, off = b * c * plane + (t - b * plane);
    float dot = 0.0f;
    for (i64 k = 0; k < c; ++k) dot += p[off + k * plane] * dp[off + k * plane];
    for (i64 k = 0; k < c; ++k) dx[off + k * plane] = p[off + k * plane] * (dp[off + k * plane] - dot);
  }
}

// Per-block partial of sum -log(max(p[label], 1e-30)) and of the invalid-label count.
__global__ void cross_entropy_partials(const float* p, const float* labels, i64 c, i64 plane, i64 pixels,
                                       double* part_sum, i64* part_bad) {
  __shared__ double shd[kBlock];
  __shared__ i64 shl[kBlock];
  double acc = 0.0;
  i64 bad = 0;
  for (i64 t = first_index(); t < pixels; t += grid_stride()) {
    i64 k;
    if (!label_index(labels[t], c, k)) {
      ++bad;
      continue;
    }
    const i64 b = t / plane;
    const float v = p[(b * c + k) * plane + (t - b * plane)];
    acc -= logf(v < 1e-30f ? 1e-30f : v);  // std::max(v, 1e-30f), NaN kept as the CPU does
  }
  acc = block_sum(acc, shd);
  bad = block_sum(bad, shl);
  if (threadIdx.x == 0) part_sum[blockIdx.x] = acc, part_bad[blockIdx.x] = bad;
}

// loss = sum / pixels, rounded to float once (as the CPU).
__global__ void mean_kernel(const double* sum, double pixels, float* loss) {
  if (threadIdx.x == 0) *loss = static_cast<float>(*sum / pixels);
}

// dx = p * k, minus k at the label's channel, k = dl / pixels (the loss's gradient read on the
// device, so the host never waits for it): two roundings, as the CPU's two loops (never fused).
__global__ void cross_entropy_backward_kernel(const float* p, const float* labels, i64 c, i64 plane, i64 total,
                                              const float* dl, float pixels, float* dx) {
  const float k = *dl / pixels;
  for (i64 e = first_index(); e < total; e += grid_stride()) {
    const i64 r = e / plane, i = e - r * plane, b = r / c, ch = r - b * c;
    float v = __fmul_rn(p[e], k);
    i64 label;
    if (label_index(labels[b * plane + i], c, label) && label == ch) v -= k;
    dx[e] = v;
  }
}

// Grid (chunks, channels): block (x, ch) sums, over its share of the pixels, p[ch] (every pixel),
// p[ch] over the pixels labelled ch and their count, and (ch == 0 only) the invalid labels.
// part_d: [2c][chunks] (sum p rows, then inter rows); part_l: [c + 1][chunks] (counts, then invalid).
__global__ void dice_partials(const float* p, const float* labels, i64 c, i64 plane, i64 pixels,
                              double* part_d, i64* part_l) {
  __shared__ double shd[kBlock];
  __shared__ i64 shl[kBlock];
  const i64 chunks = gridDim.x;
  for (i64 ch = blockIdx.y; ch < c; ch += gridDim.y) {
    double sp = 0.0, si = 0.0;
    i64 cnt = 0, bad = 0;
    for (i64 t = static_cast<i64>(blockIdx.x) * kBlock + threadIdx.x; t < pixels; t += chunks * kBlock) {
      const i64 b = t / plane;
      const float v = p[(b * c + ch) * plane + (t - b * plane)];
      sp += v;
      i64 k;
      if (label_index(labels[t], c, k)) {
        if (k == ch) si += v, ++cnt;
      } else if (ch == 0) {
        ++bad;
      }
    }
    sp = block_sum(sp, shd);
    si = block_sum(si, shd);
    cnt = block_sum(cnt, shl);
    bad = block_sum(bad, shl);
    if (threadIdx.x == 0) {
      part_d[ch * chunks + blockIdx.x] = sp;
      part_d[(c + ch) * chunks + blockIdx.x] = si;
      part_l[ch * chunks + blockIdx.x] = cnt;
      if (ch == 0) part_l[c * chunks + blockIdx.x] = bad;
    }
  }
}

// Per piece sums [2c]: the intersections (reduced row c + k), then the denominators (sum of p[k],
// row k, plus the count of pixels labelled k).
__global__ void dice_piece_kernel(const double* sum_d, const i64* sum_l, i64 c, double* sums) {
  if (threadIdx.x != 0) return;
  for (i64 k = 0; k < c; ++k) sums[k] = sum_d[c + k], sums[c + k] = sum_d[k] + static_cast<double>(sum_l[k]);
}

// The CPU's loop of dd::dice_loss, expression by expression (no product feeds a sum: nothing to contract).
__global__ void dice_finish_kernel(const double* sums, i64 pieces, i64 c, float* loss, float* scale, float* target) {
  if (threadIdx.x != 0) return;
  double total = 0.0;
  for (i64 k = 0; k < c; ++k) {
    double inter = 0.0, denom = 0.0;
    for (i64 q = 0; q < pieces; ++q) inter += sums[q * 2 * c + k], denom += sums[q * 2 * c + c + k];
    const bool clamped = denom < 1e-7;
    const double S = clamped ? 1e-7 : denom;
    total += 1.0 - 2.0 * inter / S;
    target[k] = static_cast<float>(-2.0 / S / static_cast<double>(c));
    scale[k] = clamped ? 0.0f : static_cast<float>(2.0 * inter / (S * S) / static_cast<double>(c));
  }
  *loss = static_cast<float>(total / static_cast<double>(c));
}

__global__ void dice_grad_kernel(const float* labels, i64 c, i64 plane, i64 total, const float* scale,
                                 const float* target, const float* dl, float* dP) {
  const float g = *dl;
  for (i64 e = first_index(); e < total; e += grid_stride()) {
    const i64 r = e / plane, i = e - r * plane, b = r / c, ch = r - b * c;
    // The CPU stores g * scale first, then adds g * target (two statements).
    float v = __fmul_rn(g, scale[ch]);
    i64 label;
    if (label_index(labels[b * plane + i], c, label) && label == ch) v = __fadd_rn(v, __fmul_rn(g, target[ch]));
    dP[e] = v;
  }
}

}  // namespace

void softmax_channels(const float* x, i64 n, i64 c, i64 plane, float* p, cudaStream_t s) {
  const i64 pixels = n * plane;
  if (n > 0 && c > 0 && plane > 0) launch(softmax_kernel, grid_for(pixels), kBlock, 0, s, x, c, plane, pixels, p);
}

void softmax_channels_backward(const float* p, const float* dp, i64 n, i64 c, i64 plane, float* dx,
                               cudaStream_t s) {
  const i64 pixels = n * plane;
  if (n > 0 && c > 0 && plane > 0)
    launch(softmax_backward_kernel, grid_for(pixels), kBlock, 0, s, p, dp, c, plane, pixels, dx);
}

void cross_entropy_mean(const float* p, const float* labels, i64 n, i64 c, i64 plane, float* loss, i64* invalid_labels,
                        cudaStream_t s) {
  const char* who = "cross_entropy_mean";
  const i64 pixels = n * plane;
  // (The ops never pass these.) No pixel: the loss is 0 / 0, a NaN as on the CPU; no class: no label is valid.
  if (n <= 0 || plane <= 0 || c <= 0) {
    *invalid_labels = c <= 0 ? std::max<i64>(pixels, 0) : 0;
    return check(cudaMemsetAsync(loss, 0xFF, sizeof(float), s), who);  // all bits set: a NaN
  }
  // The block count depends only on the size, so the summation order is fixed.
  const i64 blocks = std::min<i64>((pixels + kBlock - 1) / kBlock, kPartials);
  Scratch scratch(static_cast<std::size_t>(2 * (blocks + 1)) * 8, s, who);
  auto* part_sum = static_cast<double*>(scratch.p);
  auto* part_bad = reinterpret_cast<i64*>(part_sum + blocks);
  double* sum = reinterpret_cast<double*>(part_bad + blocks);
  i64* bad = reinterpret_cast<i64*>(sum + 1);
  launch(cross_entropy_partials, static_cast<unsigned>(blocks), kBlock, 0, s, p, labels, c, plane, pixels, part_sum,
         part_bad);
  reduce_rows(part_sum, 1, blocks, sum, s);
  reduce_rows(part_bad, 1, blocks, bad, s);
  launch(mean_kernel, 1, 1, 0, s, sum, static_cast<double>(pixels), loss);
  check(cudaMemcpyAsync(invalid_labels, bad, sizeof(i64), cudaMemcpyDeviceToHost, s), who);
}

void cross_entropy_backward(const float* p, const float* labels, i64 n, i64 c, i64 plane, const float* dl, float* dx,
                            cudaStream_t s) {
  const i64 total = n * c * plane;
  if (n > 0 && c > 0 && plane > 0)
    launch(cross_entropy_backward_kernel, grid_for(total), kBlock, 0, s, p, labels, c, plane, total, dl,
           static_cast<float>(n * plane), dx);
}

void dice_sums(const float* p, const float* labels, i64 n, i64 c, i64 plane, double* sums, i64* invalid_labels,
               cudaStream_t s) {
  const char* who = "dice_sums";
  const i64 pixels = n * plane;
  *invalid_labels = c <= 0 ? std::max<i64>(pixels, 0) : 0;  // (the ops never pass c <= 0)
  if (c <= 0) return;
  if (n <= 0 || plane <= 0)
    return check(cudaMemsetAsync(sums, 0, static_cast<std::size_t>(2 * c) * sizeof(double), s), who);
  // About 2 * kPartials blocks in all, fewer when the pixels run out; fixed by the sizes alone.
  const i64 chunks = std::min<i64>((pixels + kBlock - 1) / kBlock, std::max<i64>(1, 2 * kPartials / c));
  const i64 rows_d = 2 * c, rows_l = c + 1;
  Scratch scratch(static_cast<std::size_t>((rows_d + rows_l) * (chunks + 1)) * 8, s, who);
  auto* part_d = static_cast<double*>(scratch.p);
  auto* part_l = reinterpret_cast<i64*>(part_d + rows_d * chunks);
  double* sum_d = reinterpret_cast<double*>(part_l + rows_l * chunks);  // [sum p | inter], 2c
  i64* sum_l = reinterpret_cast<i64*>(sum_d + rows_d);                  // [counts | invalid], c + 1
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min<i64>(c, 65535)));
  launch(dice_partials, grid, kBlock, 0, s, p, labels, c, plane, pixels, part_d, part_l);
  reduce_rows(part_d, rows_d, chunks, sum_d, s);
  reduce_rows(part_l, rows_l, chunks, sum_l, s);
  launch(dice_piece_kernel, 1, 1, 0, s, sum_d, sum_l, c, sums);
  check(cudaMemcpyAsync(invalid_labels, sum_l + c, sizeof(i64), cudaMemcpyDeviceToHost, s), who);
}

void dice_loss_finish(const double* sums, i64 pieces, i64 c, float* loss, float* scale, float* target, cudaStream_t s) {
  if (c > 0) launch(dice_finish_kernel, 1, 1, 0, s, sums, pieces, c, loss, scale, target);
}

void dice_grad_probs(const float* labels, i64 n, i64 c, i64 plane, const float* scale, const float* target,
                     const float* dl, float* dP, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (n > 0 && c > 0 && plane > 0)
    launch(dice_grad_kernel, grid_for(total), kBlock, 0, s, labels, c, plane, total, scale, target, dl, dP);
}

}  // namespace dd::cuda::kernels
