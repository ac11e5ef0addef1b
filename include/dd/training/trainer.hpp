#pragma once
// The training loop of the paper (PAPER_NOTES section 5): Adam, Dice loss, gradient-norm clipping,
// ReduceLROnPlateau on the validation loss, early stopping after a minimum epoch, and the best
// validation state kept in memory and restored at the end. Works for any model with the
// Model / DomainDecomposed interface.
#include <chrono>
#include <functional>
#include <numeric>
#include <optional>
#include <vector>

#include "dd/data/circles.hpp"
#include "dd/decomposition/distribution.hpp"
#include "dd/decomposition/grid.hpp"
#include "dd/ops/dice_loss.hpp"
#include "dd/training/adam.hpp"
#include "dd/training/loss_scaler.hpp"
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
  bool loss_scaling = false;  // dynamic loss scaling, for fp16 compute on the GPU
  LossScalerOptions loss_scaler{};
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

namespace detail {
// The model's distribution over ranks, if it has one spread over more than one rank.
template <class M>
Distribution* spread(M& model) {
  if constexpr (requires { model.distribution(); }) {
    Distribution* d = model.distribution().get();
    return d && d->size() > 1 ? d : nullptr;
  } else {
    return nullptr;
  }
}

// This rank's subimages of a batch (images or labels), as separate tensors on device dev.
template <class M>
std::vector<Tensor> local_tiles(const M& model, const Tensor& batch, Device dev) {
  const Grid g = model.grid_for(batch.shape());
  std::vector<Tensor> out;
  for (const std::int64_t k : model.local_clones(g.count())) {
    const std::int64_t i = k / g.cols(), j = k % g.cols();
    out.push_back(batch.tile(g.row_offset(i), g.heights()[std::size_t(i)], g.col_offset(j), g.widths()[std::size_t(j)])
                      .clone()
                      .to(dev));
  }
  return out;
}

// Forward and loss of one batch. A model spread over ranks sees only this rank's subimages, and
// the Dice loss sums every rank's pieces (the loss of the whole batch, the same on every rank).
// logits_out, when given, receives this rank's logits (whole batch, or its subimages in order).
template <class M>
Var batch_loss(M& model, const SegmentationSet& b, LossKind k, std::vector<Var>* logits_out = nullptr) {
  const Device dev = model.device();
  if constexpr (requires { model.distribution(); }) {
    if (Distribution* d = spread(model)) {
      DD_CHECK(k == LossKind::dice, "dd::Trainer: a model spread over ranks trains with the Dice loss only");
      const std::vector<Tensor> x = local_tiles(model, b.images, dev), y = local_tiles(model, b.labels, dev);
      std::vector<Var> logits = model.forward_tiles(b.images.shape(), std::vector<Var>(x.begin(), x.end()));
      Var loss = dice_loss(logits, y, gather_pieces(*d));
      if (logits_out) *logits_out = std::move(logits);
      return loss;
    }
  }
  const Var logits = model.forward(Var(b.images.to(dev)));
  if (logits_out) *logits_out = {logits};
  return segmentation_loss(logits, b.labels.to(dev), k);
}
}  // namespace detail

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
    std::vector<Var> logits;
    e.loss += detail::batch_loss(model, b, k, &logits).value().item() * double(len);
    if (!detail::spread(model)) {
      e.confusion.add(logits[0].value().to(Device::cpu), b.labels);
    } else if constexpr (requires { model.distribution(); }) {  // this rank's subimages
      const std::vector<Tensor> labels = detail::local_tiles(model, b.labels, Device::cpu);
      for (std::size_t i = 0; i < logits.size(); ++i) e.confusion.add(logits[i].value().to(Device::cpu), labels[i]);
    }
  }
  if (Distribution* d = detail::spread(model)) {  // every rank's pixels counted, on every rank
    std::vector<double> c(e.confusion.counts().begin(), e.confusion.counts().end());
    d->all_reduce_sum(c.data(), std::int64_t(c.size()));
    for (std::size_t i = 0; i < c.size(); ++i) e.confusion.counts()[i] = static_cast<std::int64_t>(c[i]);
  }
  e.loss /= double(std::max<std::int64_t>(1, set.size()));
  model.train(was_training);
  return e;
}

// The training state of one run, one epoch at a time, so a run can be checkpointed after any
// epoch and resumed with bit-identical results (the shuffle of epoch e depends only on the seed
// and e; everything else that carries over is exposed for checkpoints).
template <class M>
class Trainer {
 public:
  Trainer(M& model, int classes, const TrainOptions& o)
      : model_(model),
        classes_(classes),
        o_(o),
        adam_(model.parameters(), model.gradients(), {o.lr}),
        plateau_(o.lr_factor, o.lr_patience),
        stopper_(o.stop_patience, o.min_epochs),
        best_params_(model.parameters().clone()),
        best_buffers_(model.buffers().clone()),
        scaler_(o.loss_scaler) {
    DD_CHECK(o.batch > 0 && o.epochs > 0, "dd::Trainer: batch {} and epochs {} must be positive", o.batch, o.epochs);
  }

  bool done() const { return epoch_ >= o_.epochs || stopper_.should_stop(); }

  EpochStats run_epoch(const SegmentationSet& train, const SegmentationSet& val, const BatchCallback& on_batch = {}) {
    DD_CHECK(train.size() > 0, "dd::Trainer: empty training set");
    const int epoch = ++epoch_;
    std::vector<std::int64_t> order(static_cast<std::size_t>(train.size()));
    std::iota(order.begin(), order.end(), 0);
    Rng shuffle(o_.shuffle_seed ^ (0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(epoch)));
    for (std::int64_t i = train.size() - 1; i > 0; --i)
      std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(shuffle.uniform_int(0, i))]);
    model_.train();
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t batches = (train.size() + o_.batch - 1) / o_.batch;
    double loss_sum = 0;
    std::int64_t seen = 0;
    // A batch's loss is counted (and reported) when read. On the GPU it is read after the next
    // batch's step is enqueued: the host then waits for one step while the GPU has the next (reading
    // it at once would leave the GPU idle while the host prepares the next batch and its forward pass).
    struct Done {
      Tensor loss;
      std::int64_t batch, len;
    };
    std::optional<Done> unread;
    const auto count = [&](const Done& d) {
      loss_sum += d.loss.item() * double(d.len);
      seen += d.len;
      if (on_batch) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        on_batch(epoch, d.batch + 1, batches, loss_sum / double(seen), double(seen) / std::max(secs, 1e-9));
      }
    };
    for (std::int64_t b = 0; b < batches; ++b) {
      const std::int64_t start = b * o_.batch, len = std::min<std::int64_t>(o_.batch, train.size() - start);
      const SegmentationSet batch = gather(train, order, start, len);
      model_.zero_grad();
      const Var loss = detail::batch_loss(model_, batch, o_.loss);
      if (o_.loss_scaling) {
        scaler_.backward(loss);
        // An overflow (gate 0) skips Adam's step; clipping gradients that are not finite then
        // changes nothing that is used (they are zeroed before the next backward).
        const Tensor gate = scaler_.unscale_gate(model_.gradients());
        if (o_.clip_norm > 0) clip_gradients(model_.gradients(), o_.clip_norm);
        adam_.step(gate);
      } else {
        loss.backward();
        if (o_.clip_norm > 0) clip_gradients(model_.gradients(), o_.clip_norm);
        adam_.step();
      }
      if (unread) count(*unread), unread.reset();
      Done done{loss.value(), b, len};
      if (done.loss.device() == Device::cpu)
        count(done);
      else
        unread = std::move(done);
    }
    if (unread) count(*unread);
    EpochStats st;
    st.epoch = epoch;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.images_per_second = double(seen) / std::max(st.seconds, 1e-9);
    st.train_loss = loss_sum / double(seen);
    st.lr = adam_.lr();
    if (val.size() > 0) {
      const Evaluation e = evaluate(model_, val, classes_, 32, o_.loss);
      st.val_loss = e.loss;
      st.val_miou = e.confusion.mean_iou();
    } else {
      st.val_loss = st.train_loss;
    }
    st.best = stopper_.update(st.val_loss);
    if (st.best) best_params_.copy_from(model_.parameters()), best_buffers_.copy_from(model_.buffers());
    adam_.set_lr(plateau_.step(st.val_loss, adam_.lr()));
    return st;
  }

  // Puts the best validation state back into the model.
  void restore_best() {
    model_.parameters().copy_from(best_params_);
    model_.buffers().copy_from(best_buffers_);
  }

  int epochs_done() const { return epoch_; }
  void set_epochs_done(int e) { epoch_ = e; }
  Adam& optimizer() { return adam_; }
  LossScaler& loss_scaler() { return scaler_; }
  const LossScaler& loss_scaler() const { return scaler_; }
  ReduceLROnPlateau& plateau() { return plateau_; }
  EarlyStopping& stopper() { return stopper_; }
  const Tensor& best_parameters() const { return best_params_; }
  const Tensor& best_buffers() const { return best_buffers_; }

 private:
  M& model_;
  int classes_;
  TrainOptions o_;
  Adam adam_;
  ReduceLROnPlateau plateau_;
  EarlyStopping stopper_;
  Tensor best_params_, best_buffers_;
  LossScaler scaler_;
  int epoch_ = 0;
};

template <class M>
std::vector<EpochStats> fit(M& model, const SegmentationSet& train, const SegmentationSet& val, int classes,
                            const TrainOptions& o, const BatchCallback& on_batch = {},
                            const EpochCallback& on_epoch = {}) {
  Trainer<M> trainer(model, classes, o);
  std::vector<EpochStats> history;
  while (!trainer.done()) {
    history.push_back(trainer.run_epoch(train, val, on_batch));
    if (on_epoch) on_epoch(history.back());
  }
  trainer.restore_best();
  return history;
}

}  // namespace dd
