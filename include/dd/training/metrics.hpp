#pragma once
// Segmentation metrics over a whole set: per-class IoU = TP / (TP + FP + FN) from counts summed
// over every pixel of every image (not averaged per image), mIoU, pixel accuracy.
#include <vector>

#include "dd/core/tensor.hpp"

namespace dd {

class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int classes) : classes_(classes), counts_(std::size_t(classes) * classes, 0) {}

  // logits [N,C,H,W] (prediction = argmax over C), labels [N,1,H,W].
  void add(const Tensor& logits, const Tensor& labels) {
    const Tensor X = logits.host_f32(), L = labels.host_f32();
    const Shape s = X.shape();
    DD_CHECK(s.c == classes_, "dd::ConfusionMatrix: logits have {} classes, the matrix {}", s.c, classes_);
    DD_CHECK(L.shape() == (Shape{s.n, 1, s.h, s.w}), "dd::ConfusionMatrix: labels {} for logits {}", L.shape(), s);
    const std::int64_t plane = s.h * s.w;
    for (std::int64_t b = 0; b < s.n; ++b)
      for (std::int64_t i = 0; i < plane; ++i) {
        int best = 0;
        float bv = X.data()[(b * s.c) * plane + i];
        for (int c = 1; c < classes_; ++c) {
          const float v = X.data()[(b * s.c + c) * plane + i];
          if (v > bv) bv = v, best = c;
        }
        const int truth = static_cast<int>(L.data()[b * plane + i]);
        DD_CHECK(truth >= 0 && truth < classes_, "dd::ConfusionMatrix: label {} is not a class in [0, {})", truth,
                 classes_);
        ++counts_[std::size_t(truth) * classes_ + best];
      }
  }

  // Adds another matrix's counts (e.g. of images evaluated one at a time).
  ConfusionMatrix& operator+=(const ConfusionMatrix& o) {
    DD_CHECK(o.classes_ == classes_, "dd::ConfusionMatrix: adding {} classes to {}", o.classes_, classes_);
    for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
    return *this;
  }

  std::int64_t count(int truth, int predicted) const { return counts_[std::size_t(truth) * classes_ + predicted]; }
  // All counts, row-major [truth][predicted] (e.g. to sum them over the ranks of a job).
  std::vector<std::int64_t>& counts() { return counts_; }
  double iou(int c) const {
    std::int64_t tp = count(c, c), fp = 0, fn = 0;
    for (int k = 0; k < classes_; ++k)
      if (k != c) fp += count(k, c), fn += count(c, k);
    const std::int64_t d = tp + fp + fn;
    return d == 0 ? 1.0 : double(tp) / double(d);
  }
  double mean_iou() const {
    double s = 0;
    for (int c = 0; c < classes_; ++c) s += iou(c);
    return s / classes_;
  }
  double pixel_accuracy() const {
    std::int64_t right = 0, all = 0;
    for (int t = 0; t < classes_; ++t)
      for (int p = 0; p < classes_; ++p) (t == p ? right : all) += count(t, p);
    all += right;
    return all == 0 ? 0.0 : double(right) / double(all);
  }
  int classes() const { return classes_; }

 private:
  int classes_;
  std::vector<std::int64_t> counts_;
};

}  // namespace dd
