#pragma once
// Dice loss of PAPER_NOTES section 5: p = softmax(logits); per class c,
// dice_c = 2 sum(p t) / max(sum(p) + sum(t), 1e-7) over the whole batch; loss = mean_c (1 - dice_c).
#include <vector>

#include "dd/kernels/cpu/softmax.hpp"
#include "dd/ops/loss.hpp"

namespace dd {

inline Var dice_loss(const Var& logits, const Tensor& labels) {
  auto [s, L, P] = detail::softmax_targets(logits, labels, "dice_loss");
  const std::int64_t plane = s.h * s.w, C = s.c;
  const bool gpu = detail::on_gpu(P);
  std::vector<double> inter(static_cast<std::size_t>(C), 0.0), denom(static_cast<std::size_t>(C), 0.0);
  if (gpu) {
#if DD_WITH_CUDA
    std::int64_t invalid = 0;
    gpu::dice_sums(P.data(), L.data(), s.n, C, plane, inter.data(), denom.data(), &invalid);
    detail::check_labels(invalid, C, "dice_loss");
#endif
  }
  for (std::int64_t b = 0; b < (gpu ? 0 : s.n); ++b) {
    for (std::int64_t c = 0; c < C; ++c) {
      const float* p = P.data() + (b * C + c) * plane;
      double sp = 0;
      for (std::int64_t i = 0; i < plane; ++i) sp += p[i];
      denom[static_cast<std::size_t>(c)] += sp;
    }
    for (std::int64_t i = 0; i < plane; ++i) {
      const std::int64_t k = detail::label_at(L, b * plane + i, C);
      inter[static_cast<std::size_t>(k)] += P.data()[(b * C + k) * plane + i];
      denom[static_cast<std::size_t>(k)] += 1.0;
    }
  }
  double loss = 0;
  std::vector<float> dP_scale(static_cast<std::size_t>(C)), dP_target(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c) {
    const auto u = static_cast<std::size_t>(c);
    const bool clamped = denom[u] < 1e-7;
    const double S = clamped ? 1e-7 : denom[u];
    loss += 1.0 - 2.0 * inter[u] / S;
    // d(1 - dice_c)/dp = -(2 t / S - 2 I / S^2) (the clamp makes S constant).
    dP_target[u] = static_cast<float>(-2.0 / S / static_cast<double>(C));
    dP_scale[u] = clamped ? 0.0f : static_cast<float>(2.0 * inter[u] / (S * S) / static_cast<double>(C));
  }
  const bool rec = detail::should_record({&logits});
  Var out(Tensor::full({1, 1, 1, 1}, static_cast<float>(loss / static_cast<double>(C)), P.device()), rec);
  if (rec)
    Tape::current().record([logits, out, P, L, s, plane, dP_scale, dP_target, gpu] {
      const Tensor& dl = out.grad();
      if (!dl.defined()) return;
      const float g = dl.item();
      if (gpu) {
        Tensor dP = Tensor::empty(s, P.device());
        DD_GPU(dice_grad_probs(L.data(), s.n, s.c, plane, dP_scale.data(), dP_target.data(), g, dP.data()));
        logits.accumulate_grad(detail::softmax_backward_of(P, dP));
        return;
      }
      Tensor dP = Tensor::empty(s);
      for (std::int64_t b = 0; b < s.n; ++b)
        for (std::int64_t c = 0; c < s.c; ++c) {
          float* d = dP.data() + (b * s.c + c) * plane;
          for (std::int64_t i = 0; i < plane; ++i) d[i] = g * dP_scale[static_cast<std::size_t>(c)];
        }
      for (std::int64_t b = 0; b < s.n; ++b)
        for (std::int64_t i = 0; i < plane; ++i) {
          const auto k = static_cast<std::int64_t>(L.data()[b * plane + i]);
          dP.data()[(b * s.c + k) * plane + i] += g * dP_target[static_cast<std::size_t>(k)];
        }
      logits.accumulate_grad(detail::softmax_backward_of(P, dP));
    });
  return out;
}

}  // namespace dd
