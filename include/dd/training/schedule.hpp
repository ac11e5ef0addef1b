#pragma once
// Learning-rate decay on plateaus and early stopping, as in PyTorch's ReduceLROnPlateau and the
// paper's training (PAPER_NOTES section 5).
#include <limits>

namespace dd {

class ReduceLROnPlateau {
 public:
  ReduceLROnPlateau(float factor = 0.5f, int patience = 3, float min_lr = 0.0f, double threshold = 1e-4)
      : factor_(factor), patience_(patience), min_lr_(min_lr), threshold_(threshold) {}

  // Feeds one validation loss; returns the learning rate to use from now on.
  struct State {
    double best;
    int bad;
  };
  State state() const { return {best_, bad_}; }
  void set_state(State s) { best_ = s.best, bad_ = s.bad; }

  float step(double metric, float lr) {
    if (metric < best_ * (1.0 - threshold_)) {
      best_ = metric;
      bad_ = 0;
      return lr;
    }
    if (++bad_ > patience_) {
      bad_ = 0;
      return lr * factor_ > min_lr_ ? lr * factor_ : min_lr_;
    }
    return lr;
  }

 private:
  float factor_;
  int patience_;
  float min_lr_;
  double threshold_;
  double best_ = std::numeric_limits<double>::infinity();
  int bad_ = 0;
};

// Stops after `patience` epochs without improvement, never before `min_epochs`.
class EarlyStopping {
 public:
  EarlyStopping(int patience = 8, int min_epochs = 20) : patience_(patience), min_epochs_(min_epochs) {}

  // Returns true when this epoch's metric is the best so far.
  bool update(double metric) {
    ++epoch_;
    if (metric < best_) {
      best_ = metric;
      since_best_ = 0;
      return true;
    }
    ++since_best_;
    return false;
  }
  struct State {
    int epoch, since_best;
    double best;
  };
  State state() const { return {epoch_, since_best_, best_}; }
  void set_state(State s) { epoch_ = s.epoch, since_best_ = s.since_best, best_ = s.best; }

  bool should_stop() const { return epoch_ >= min_epochs_ && since_best_ >= patience_; }
  double best() const { return best_; }

 private:
  int patience_, min_epochs_;
  int epoch_ = 0, since_best_ = 0;
  double best_ = std::numeric_limits<double>::infinity();
};

}  // namespace dd
