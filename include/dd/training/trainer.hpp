#pragma once
// The training loop of the paper (PAPER_NOTES section 5): Adam, Dice loss, gradient-norm clipping,
// ReduceLROnPlateau on the validation loss, early stopping after a minimum epoch, and the best
// validation state kept in memory and restored at the end. Works for any model with the
// Model / DomainDecomposed interface.
#include <chrono>
#include <functional>
#include <numeric>
#include <vector>

#include "dd/data/circles.hpp"
#include "dd/ops/dice_loss.hpp"
#include "dd/training/adam.hpp"
#include "dd/training/metrics.hpp"
#include "dd/training/schedule.hpp"

namespace dd {

enum class LossKind { dice, cross_entropy };

struct TrainOptions {
  int epochs = 40, batch = 16;
  float lr = 0.008f;
  int lr_patience = 3;
  float lr_factor = 0.5f;
  int stop_patience = 8, min_epochs = 20;
  double clip_norm = 1.0;  // <= 0: no clipping
  std::uint64_t shuffle_seed = 0;
  LossKind loss = LossKind::dice;
};

struct EpochStats {
  int epoch = 0;
  double train_loss = 0, val_loss = 0, val_miou = 0;
  float lr = 0;
  double seconds = 0, images_per_second = 0;
  bool best = false;
};

// Called after every training batch: epoch, batch index, batches per epoch, running mean loss,
// images per second so far in this epoch.
using BatchCallback = std::function<void(int, std::int64_t, std::int64_t, double, double)>;
using EpochCallback = std::function<void(const EpochStats&)>;

inline Var segmentation_loss(const Var& logits, const Tensor& labels, LossKind k) {
  return k == LossKind::dice ? dice_loss(logits, labels) : cross_entropy(logits, labels);
}

// Copies the listed images into one contiguous batch.
inline SegmentationSet gather(const SegmentationSet& set, const std::vector<std::int64_t>& idx, std::int64_t start,
                              std::int64_t len) {
  const Shape si = set.images.shape(), sl = set.labels.shape();
  SegmentationSet b{Tensor::empty({len, si.c, si.h, si.w}), Tensor::empty({len, sl.c, sl.h, sl.w})};
  for (std::int64_t i = 0; i < len; ++i) {
    b.images.batch(i).copy_from(set.images.batch(idx[static_cast<std::size_t>(start + i)]));
    b.labels.batch(i).copy_from(set.labels.batch(idx[static_cast<std::size_t>(start + i)]));
  }
  return b;
}

struct Evaluation {
  double loss = 0;
  ConfusionMatrix confusion{1};
};

// Loss and confusion over a whole set, in eval mode without recording.
template <class M>
Evaluation evaluate(M& model, const SegmentationSet& set, int classes, int batch = 32, LossKind k = LossKind::dice) {
  const bool was_training = model.training();
  model.eval();
  NoGrad no_grad;
  Evaluation e{0.0, ConfusionMatrix(classes)};
  for (std::int64_t s = 0; s < set.size(); s += batch) {
    const std::int64_t len = std::min<std::int64_t>(batch, set.size() - s);
    const SegmentationSet b = set.batch(s, len);
    const Var logits = model.forward(Var(b.images));
    e.loss += segmentation_loss(logits, b.labels, k).value().item() * double(len);
    e.confusion.add(logits.value(), b.labels);
  }
  e.loss /= double(std::max<std::int64_t>(1, set.size()));
  model.train(was_training);
  return e;
}

template <class M>
std::vector<EpochStats> fit(M& model, const SegmentationSet& train, const SegmentationSet& val, int classes,
                            const TrainOptions& o, const BatchCallback& on_batch = {},
                            const EpochCallback& on_epoch = {}) {
  DD_CHECK(train.size() > 0, "dd::fit: empty training set");
  DD_CHECK(o.batch > 0 && o.epochs > 0, "dd::fit: batch {} and epochs {} must be positive", o.batch, o.epochs);
  Adam adam(model.parameters(), model.gradients(), {o.lr});
  ReduceLROnPlateau plateau(o.lr_factor, o.lr_patience);
  EarlyStopping stopper(o.stop_patience, o.min_epochs);
  Tensor best_params = model.parameters().clone(), best_buffers = model.buffers().clone();
  std::vector<EpochStats> history;
  std::vector<std::int64_t> order(static_cast<std::size_t>(train.size()));
  std::iota(order.begin(), order.end(), 0);
  Rng shuffle(o.shuffle_seed);
  const std::int64_t batches = (train.size() + o.batch - 1) / o.batch;

  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    for (std::int64_t i = train.size() - 1; i > 0; --i)
      std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(shuffle.uniform_int(0, i))]);
    model.train();
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    std::int64_t seen = 0;
    for (std::int64_t b = 0; b < batches; ++b) {
      const std::int64_t start = b * o.batch, len = std::min<std::int64_t>(o.batch, train.size() - start);
      const SegmentationSet batch = gather(train, order, start, len);
      model.zero_grad();
      const Var loss = segmentation_loss(model.forward(Var(batch.images)), batch.labels, o.loss);
      loss.backward();
      if (o.clip_norm > 0) clip_grad_norm(model.gradients(), o.clip_norm);
      adam.step();
      loss_sum += loss.value().item() * double(len);
      seen += len;
      if (on_batch) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        on_batch(epoch, b + 1, batches, loss_sum / double(seen), double(seen) / std::max(secs, 1e-9));
      }
    }
    EpochStats st;
    st.epoch = epoch;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.images_per_second = double(seen) / std::max(st.seconds, 1e-9);
    st.train_loss = loss_sum / double(seen);
    st.lr = adam.lr();
    if (val.size() > 0) {
      const Evaluation e = evaluate(model, val, classes, 32, o.loss);
      st.val_loss = e.loss;
      st.val_miou = e.confusion.mean_iou();
    } else {
      st.val_loss = st.train_loss;
    }
    st.best = stopper.update(st.val_loss);
    if (st.best) best_params.copy_from(model.parameters()), best_buffers.copy_from(model.buffers());
    adam.set_lr(plateau.step(st.val_loss, adam.lr()));
    history.push_back(st);
    if (on_epoch) on_epoch(st);
    if (stopper.should_stop()) break;
  }
  model.parameters().copy_from(best_params);
  model.buffers().copy_from(best_buffers);
  return history;
}

}  // namespace dd
