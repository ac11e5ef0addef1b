#pragma once
// Dice loss of PAPER_NOTES section 5: p = softmax(logits); per class c,
// dice_c = 2 sum(p t) / max(sum(p) + sum(t), 1e-7) over the whole batch; loss = mean_c (1 - dice_c).
// The loss depends on the pixels only through two sums per class, so a loss over several pieces of
// an image (the subimages of one rank, or of all ranks) adds the pieces' sums, in piece order:
// pass a gathering of every rank's piece sums, and every rank gets the loss of the whole image,
// the same bits as one process computing it from the same pieces.
#include <algorithm>
#include <functional>
#include <vector>

#include "dd/kernels/cpu/softmax.hpp"
#include "dd/ops/loss.hpp"

namespace dd {

// Given this rank's pieces' sums (2C doubles per piece: per-class intersections, then denominators),
// returns every rank's, concatenated in rank order (= piece order of the whole image).
using DicePieceGather = std::function<std::vector<double>(const std::vector<double>&)>;

namespace detail {

// Adds one piece's per-class sums into inter / denom.
inline void dice_sums(const SoftmaxTargets& t, std::vector<double>& inter, std::vector<double>& denom) {
  const auto& [s, L, P] = t;
  const std::int64_t plane = s.h * s.w, C = s.c;
  if (on_gpu(P)) {
#if DD_WITH_CUDA
    std::vector<double> i2(static_cast<std::size_t>(C)), d2(static_cast<std::size_t>(C));
    std::int64_t invalid = 0;
    gpu::dice_sums(P.data(), L.data(), s.n, C, plane, i2.data(), d2.data(), &invalid);
    check_labels(invalid, C, "dice_loss");
    for (std::size_t c = 0; c < i2.size(); ++c) inter[c] += i2[c], denom[c] += d2[c];
#endif
    return;
  }
  for (std::int64_t b = 0; b < s.n; ++b) {
    for (std::int64_t c = 0; c < C; ++c) {
      const float* p = P.data() + (b * C + c) * plane;
      double sp = 0;
      for (std::int64_t i = 0; i < plane; ++i) sp += p[i];
      denom[static_cast<std::size_t>(c)] += sp;
    }
    for (std::int64_t i = 0; i < plane; ++i) {
      const std::int64_t k = label_at(L, b * plane + i, C);
      inter[static_cast<std::size_t>(k)] += P.data()[(b * C + k) * plane + i];
      denom[static_cast<std::size_t>(k)] += 1.0;
    }
  }
}

// dL/dlogits of one piece, given the per-class factors of dL/dp and the incoming gradient g.
inline Tensor dice_backward(const SoftmaxTargets& t, const std::vector<float>& dP_scale,
                            const std::vector<float>& dP_target, float g) {
  const auto& [s, L, P] = t;
  const std::int64_t plane = s.h * s.w;
  Tensor dP = Tensor::empty(s, P.device());
  if (on_gpu(P)) {
    // The factors go to the device through a pinned buffer: the host does not wait for the copy.
    Tensor factors = Tensor::empty({2 * s.c, 1, 1, 1});
    std::copy(dP_scale.begin(), dP_scale.end(), factors.data());
    std::copy(dP_target.begin(), dP_target.end(), factors.data() + s.c);
    factors = factors.to(P.device());
    DD_GPU(dice_grad_probs(L.data(), s.n, s.c, plane, factors.data(), factors.data() + s.c, g, dP.data()));
    return softmax_backward_of(P, dP);
  }
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
  return softmax_backward_of(P, dP);
}

}  // namespace detail

// The Dice loss of an image given in pieces (logits[i] with labels[i]; all with the same classes),
// optionally summed over the ranks of a process group by `reduce`.
inline Var dice_loss(const std::vector<Var>& logits, const std::vector<Tensor>& labels,
                     const DicePieceGather& gather = {}) {
  DD_CHECK(!logits.empty() && logits.size() == labels.size(), "dd::dice_loss: {} logit pieces for {} label pieces",
           logits.size(), labels.size());
  std::vector<detail::SoftmaxTargets> pieces;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    pieces.push_back(detail::softmax_targets(logits[i], labels[i], "dice_loss"));
    DD_CHECK(pieces.back().shape.c == pieces[0].shape.c, "dd::dice_loss: pieces with {} and {} classes",
             pieces[0].shape.c, pieces.back().shape.c);
  }
  const std::int64_t C = pieces[0].shape.c;
  const auto uC = static_cast<std::size_t>(C);
  std::vector<double> sums;  // per piece: inter[C], denom[C]
  for (const auto& t : pieces) {
    std::vector<double> inter(uC, 0.0), denom(uC, 0.0);
    detail::dice_sums(t, inter, denom);
    sums.insert(sums.end(), inter.begin(), inter.end());
    sums.insert(sums.end(), denom.begin(), denom.end());
  }
  if (gather) sums = gather(sums);
  DD_CHECK(sums.size() % (2 * uC) == 0, "dd::dice_loss: the ranks' pieces have different class counts");
  std::vector<double> inter(uC, 0.0), denom(uC, 0.0);
  for (std::size_t at = 0; at < sums.size(); at += 2 * uC)
    for (std::size_t c = 0; c < uC; ++c) inter[c] += sums[at + c], denom[c] += sums[at + uC + c];
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
  bool rec = false;
  for (const Var& l : logits) rec = rec || detail::should_record({&l});
  const Device dev = pieces[0].probs.device();
  Var out(Tensor::full({1, 1, 1, 1}, static_cast<float>(loss / static_cast<double>(C)), dev), rec);
  if (rec)
    Tape::current().record([logits, out, pieces, dP_scale, dP_target] {
      const Tensor& dl = out.grad();
      if (!dl.defined()) return;
      const float g = dl.item();
      for (std::size_t i = 0; i < logits.size(); ++i)
        if (logits[i].requires_grad()) logits[i].accumulate_grad(detail::dice_backward(pieces[i], dP_scale, dP_target, g));
    });
  return out;
}

inline Var dice_loss(const Var& logits, const Tensor& labels) {
  return dice_loss(std::vector<Var>{logits}, std::vector<Tensor>{labels});
}

}  // namespace dd
