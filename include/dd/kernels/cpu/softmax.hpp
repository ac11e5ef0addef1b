#pragma once
// Softmax over the channel axis of NCHW logits (one distribution per pixel).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dd/core/parallel.hpp"

namespace dd::cpu {

inline void softmax_channels(const float* x, std::int64_t n, std::int64_t c, std::int64_t plane, float* p) {
  parallel_for(n, [&](std::int64_t b) {
    const float* xb = x + b * c * plane;
    float* pb = p + b * c * plane;
    std::vector<float> mx(xb, xb + plane), sum(static_cast<std::size_t>(plane), 0.0f);
    for (std::int64_t k = 1; k < c; ++k)
      for (std::int64_t i = 0; i < plane; ++i) mx[i] = std::max(mx[i], xb[k * plane + i]);
    for (std::int64_t k = 0; k < c; ++k)
      for (std::int64_t i = 0; i < plane; ++i) {
        const float e = std::exp(xb[k * plane + i] - mx[i]);
        pb[k * plane + i] = e;
        sum[i] += e;
      }
    for (std::int64_t k = 0; k < c; ++k)
      for (std::int64_t i = 0; i < plane; ++i) pb[k * plane + i] /= sum[i];
  });
}

// dx = p * (dp - sum_k dp_k p_k), per pixel.
inline void softmax_channels_backward(const float* p, const float* dp, std::int64_t n, std::int64_t c,
                                      std::int64_t plane, float* dx) {
  parallel_for(n, [&](std::int64_t b) {
    const float* pb = p + b * c * plane;
    const float* db = dp + b * c * plane;
    float* xb = dx + b * c * plane;
    std::vector<float> dot(static_cast<std::size_t>(plane), 0.0f);
    for (std::int64_t k = 0; k < c; ++k)
      for (std::int64_t i = 0; i < plane; ++i) dot[i] += pb[k * plane + i] * db[k * plane + i];
    for (std::int64_t k = 0; k < c; ++k)
      for (std::int64_t i = 0; i < plane; ++i) xb[k * plane + i] = pb[k * plane + i] * (db[k * plane + i] - dot[i]);
  });
}

}  // namespace dd::cpu
