#pragma once
// Dice loss of PAPER_NOTES section 5: p = softmax(logits); per class c,
// dice_c = 2 sum(p t) / max(sum(p) + sum(t), 1e-7) over the whole batch; loss = mean_c (1 - dice_c).
// The loss depends on the pixels only through two sums per class, so a loss over several pieces of
// an image (the subimages of one rank, or of all ranks) adds the pieces' sums, in piece order:
// pass a gathering of every rank's piece sums, and every rank gets the loss of the whole image,
// the same bits as one process computing it from the same pieces. On the GPU the loss stays on the
// device (dice_loss_on_gpu): a training step with it never waits for the GPU.
#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "dd/kernels/cpu/softmax.hpp"
#include "dd/ops/loss.hpp"

namespace dd {

// Given this rank's pieces' sums (2C doubles per piece: per-class intersections, then denominators),
// returns every rank's, concatenated in rank order (= piece order of the whole image).
using DicePieceGather = std::function<std::vector<double>(const std::vector<double>&)>;

namespace detail {

// Every rank's piece sums (this rank's `mine` through `gather`), checked: whole pieces of 2C doubles.
inline std::vector<double> gathered_sums(const DicePieceGather& gather, const std::vector<double>& mine,
                                         std::size_t piece_doubles) {
  std::vector<double> all = gather(mine);
  DD_CHECK(!all.empty() && all.size() % piece_doubles == 0,
           "dd::dice_loss: the ranks' pieces have different class counts");
  return all;
}

// Adds one piece's per-class sums into inter / denom (host pieces).
inline void dice_sums(const SoftmaxTargets& t, std::vector<double>& inter, std::vector<double>& denom) {
  const auto& [s, L, P] = t;
  const std::int64_t plane = s.h * s.w, C = s.c;
  for (std::int64_t b = 0; b < s.n; ++b) {
    for (std::int64_t c = 0; c < C; ++c) {
      const float* p = P.data() + (b * C + c) * plane;
      double sp = 0;
      for (std::int64_t i = 0; i < plane; ++i) sp += p[i];
      denom[static_cast<std::size_t>(c)] += sp;
    }
    for (std::int64_t i = 0; i < plane; ++i) {
      const std::int64_t k = label_at(L, b * plane + i, C, "dice_loss");
      inter[static_cast<std::size_t>(k)] += P.data()[(b * C + k) * plane + i];
      denom[static_cast<std::size_t>(k)] += 1.0;
    }
  }
}

// dL/dlogits of one host piece, given the per-class factors of dL/dp and the incoming gradient g.
inline Tensor dice_backward(const SoftmaxTargets& t, const std::vector<float>& dP_scale,
                            const std::vector<float>& dP_target, float g) {
  const auto& [s, L, P] = t;
  const std::int64_t plane = s.h * s.w;
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
  return softmax_backward_of(P, dP);
}

// On the GPU nothing waits unless `gather` needs the sums on the host: each piece's sums, the loss
// and the backward's factors stay on the device (cuda::kernels::dice_loss_finish repeats the host's
// arithmetic below), the backward reads the loss's gradient there, and labels that are not class
// indices are reported at the next wait for the GPU.
inline Var dice_loss_on_gpu(const std::vector<Var>& logits, const std::vector<SoftmaxTargets>& pieces,
                            const DicePieceGather& gather, bool rec) {
#if DD_WITH_CUDA
  const std::int64_t C = pieces[0].shape.c;
  const Device dev = pieces[0].probs.device();
  const auto piece_doubles = static_cast<std::size_t>(2 * C);
  auto sums = std::make_shared<Storage>(pieces.size() * piece_doubles * sizeof(double), dev);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto& [s, L, P] = pieces[i];
    gpu::dice_sums(P.data(), L.data(), s.n, C, s.h * s.w, static_cast<double*>(sums->data()) + i * piece_doubles);
  }
  std::size_t count = pieces.size();
  if (gather) {  // the ranks' sums meet on the host
    std::vector<double> mine(count * piece_doubles);
    cuda::copy_to_host(mine.data(), sums->data(), mine.size() * sizeof(double));
    const std::vector<double> all = gathered_sums(gather, mine, piece_doubles);
    count = all.size() / piece_doubles;
    sums = std::make_shared<Storage>(all.size() * sizeof(double), dev);
    cuda::copy_to_device(sums->data(), all.data(), all.size() * sizeof(double));
  }
  Tensor value = Tensor::empty({1, 1, 1, 1}, dev), factors = Tensor::empty({2 * C, 1, 1, 1}, dev);
  gpu::dice_loss_finish(static_cast<const double*>(sums->data()), static_cast<std::int64_t>(count), C, value.data(),
                        factors.data(), factors.data() + C);
  Var out(std::move(value), rec);
  if (rec)
    Tape::current().record([logits, out, pieces, factors, C] {
      const Tensor& grad = out.grad();
      if (!grad.defined()) return;
      const Tensor dl = grad.contiguous().to(DType::f32);
      for (std::size_t i = 0; i < logits.size(); ++i) {
        if (!logits[i].requires_grad()) continue;
        const auto& [s, L, P] = pieces[i];
        Tensor dP = Tensor::empty(s, P.device());
        gpu::dice_grad_probs(L.data(), s.n, C, s.h * s.w, factors.data(), factors.data() + C, dl.data(), dP.data());
        logits[i].accumulate_grad(softmax_backward_of(P, dP));
      }
    });
  return out;
#else
  (void)logits, (void)pieces, (void)gather, (void)rec;
  detail::no_cuda();
#endif
}

}  // namespace detail

// The Dice loss of an image given in pieces (logits[i] with labels[i]; all with the same classes,
// on one device), optionally summed over the ranks of a process group by `gather`.
inline Var dice_loss(const std::vector<Var>& logits, const std::vector<Tensor>& labels,
                     const DicePieceGather& gather = {}) {
  DD_CHECK(!logits.empty() && logits.size() == labels.size(), "dd::dice_loss: {} logit pieces for {} label pieces",
           logits.size(), labels.size());
  std::vector<detail::SoftmaxTargets> pieces;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    pieces.push_back(detail::softmax_targets(logits[i], labels[i], "dice_loss"));
    DD_CHECK(pieces.back().shape.c == pieces[0].shape.c, "dd::dice_loss: pieces with {} and {} classes",
             pieces[0].shape.c, pieces.back().shape.c);
    DD_CHECK(pieces.back().probs.device() == pieces[0].probs.device(), "dd::dice_loss: pieces on {} and {}",
             device_name(pieces[0].probs.device()), device_name(pieces.back().probs.device()));
  }
  bool rec = false;
  for (const Var& l : logits) rec = rec || detail::should_record({&l});
  if (detail::on_gpu(pieces[0].probs)) return detail::dice_loss_on_gpu(logits, pieces, gather, rec);

  const std::int64_t C = pieces[0].shape.c;
  const auto uC = static_cast<std::size_t>(C);
  std::vector<double> sums;  // per piece: inter[C], denom[C]
  for (const auto& t : pieces) {
    std::vector<double> inter(uC, 0.0), denom(uC, 0.0);
    detail::dice_sums(t, inter, denom);
    sums.insert(sums.end(), inter.begin(), inter.end());
    sums.insert(sums.end(), denom.begin(), denom.end());
  }
  if (gather) sums = detail::gathered_sums(gather, sums, 2 * uC);
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
  Var out(Tensor::full({1, 1, 1, 1}, static_cast<float>(loss / static_cast<double>(C))), rec);
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
