#pragma once
// 2x2 max pooling, stride 2 (odd trailing rows/columns are dropped, as in PyTorch). The forward
// keeps the winning offset (0..3) of each window for the backward.
#include <cstdint>

#include "dd/core/parallel.hpp"

namespace dd::cpu {

inline void maxpool2x2_forward(const float* x, std::int64_t planes, std::int64_t h, std::int64_t w, float* y,
                               std::uint8_t* argmax) {
  const std::int64_t ho = h / 2, wo = w / 2;
  parallel_for(planes, [&](std::int64_t p) {
    const float* xp = x + p * h * w;
    float* yp = y + p * ho * wo;
    std::uint8_t* ap = argmax + p * ho * wo;
    for (std::int64_t i = 0; i < ho; ++i) {
      const float* r0 = xp + 2 * i * w;
      const float* r1 = r0 + w;
      for (std::int64_t j = 0; j < wo; ++j) {
        // First maximum wins on ties, as in PyTorch.
        float best = r0[2 * j];
        std::uint8_t at = 0;
        if (r0[2 * j + 1] > best) best = r0[2 * j + 1], at = 1;
        if (r1[2 * j] > best) best = r1[2 * j], at = 2;
        if (r1[2 * j + 1] > best) best = r1[2 * j + 1], at = 3;
        yp[i * wo + j] = best;
        ap[i * wo + j] = at;
      }
    }
  });
}

// dx (zero-filled by the caller) receives dy at each window's winner.
inline void maxpool2x2_backward(const float* dy, const std::uint8_t* argmax, std::int64_t planes, std::int64_t h,
                                std::int64_t w, float* dx) {
  const std::int64_t ho = h / 2, wo = w / 2;
  parallel_for(planes, [&](std::int64_t p) {
    const float* dp = dy + p * ho * wo;
    const std::uint8_t* ap = argmax + p * ho * wo;
    float* xp = dx + p * h * w;
    for (std::int64_t i = 0; i < ho; ++i)
      for (std::int64_t j = 0; j < wo; ++j) {
        const std::uint8_t a = ap[i * wo + j];
        xp[(2 * i + (a >> 1)) * w + 2 * j + (a & 1)] += dp[i * wo + j];
      }
  });
}

}  // namespace dd::cpu
