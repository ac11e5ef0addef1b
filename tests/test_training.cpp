// The training stack: losses, optimizer, schedules, metrics, and the circles data.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "gradcheck.hpp"

using dd::Shape;
using dd::Tensor;
using dd::Var;

TEST_CASE("dice loss: finite differences, and closed-form values") {
  Tensor labels = Tensor::empty({2, 1, 4, 5});
  dd::Rng rng(1);
  for (std::int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = static_cast<float>(rng.uniform_int(0, 2));
  CHECK(ddtest::check_op([&](const std::vector<Var>& v) { return dd::dice_loss(v[0], labels); },
                         {Tensor::randn({2, 3, 4, 5}, 2)}) < 1e-3);
  // Confident and right: loss near 0. Uniform logits, all pixels class 0 (N pixels, C = 2):
  // dice_0 = 2 (N/2) / (N/2 + N) = 2/3, dice_1 = 0 / (N/2) = 0, loss = ((1 - 2/3) + 1) / 2 = 2/3.
  const Tensor right = Tensor::from({1, 2, 2, 2}, {20, 20, 0, 0, 0, 0, 20, 20});
  CHECK(dd::dice_loss(Var(right), Tensor::from({1, 1, 2, 2}, {0, 0, 1, 1})).value().item() < 1e-6);
  const Tensor zeros = Tensor::zeros({1, 1, 2, 2});
  CHECK(dd::dice_loss(Var(Tensor::zeros({1, 2, 2, 2})), zeros).value().item() == doctest::Approx(2.0 / 3.0));
}

TEST_CASE("Adam's first step moves each parameter by lr against its gradient's sign") {
  Tensor p = Tensor::from({4, 1, 1, 1}, {1, 2, 3, 4}), g = Tensor::from({4, 1, 1, 1}, {0.5f, -2, 1e-3f, 0});
  dd::Adam adam(p, g, {0.1f});
  adam.step();
  CHECK(p.data()[0] == doctest::Approx(0.9));
  CHECK(p.data()[1] == doctest::Approx(2.1));
  CHECK(p.data()[2] == doctest::Approx(2.9).epsilon(1e-4));
  CHECK(p.data()[3] == 4.0f);
  // Clipping scales to the requested norm.
  Tensor big = Tensor::from({2, 1, 1, 1}, {3, 4});
  CHECK(dd::clip_grad_norm(big, 1.0) == doctest::Approx(5.0));
  CHECK(std::hypot(big.data()[0], big.data()[1]) == doctest::Approx(1.0).epsilon(1e-5));
}

TEST_CASE("ReduceLROnPlateau halves after `patience` bad epochs; early stopping respects the minimum epoch") {
  dd::ReduceLROnPlateau plateau(0.5f, 2);
  float lr = 1.0f;
  for (double loss : {1.0, 0.9, 0.95, 0.95}) lr = plateau.step(loss, lr);
  CHECK(lr == 1.0f);
  lr = plateau.step(0.95, lr);  // third bad epoch > patience 2
  CHECK(lr == 0.5f);
  dd::EarlyStopping stop(2, 5);
  for (double loss : {1.0, 1.1, 1.2}) stop.update(loss);
  CHECK_FALSE(stop.should_stop());  // patience used up, but epoch 3 < 5
  stop.update(1.3);
  stop.update(1.4);
  CHECK(stop.should_stop());
  CHECK(stop.best() == 1.0);
}

TEST_CASE("IoU from a whole-set confusion matrix") {
  // Predictions by argmax: pixels predicted 0,1,1,2 for truth 0,1,0,2.
  const Tensor logits = Tensor::from({1, 3, 1, 4}, {9, 0, 0, 0,  //
                                                    0, 9, 9, 0,  //
                                                    0, 0, 0, 9});
  const Tensor labels = Tensor::from({1, 1, 1, 4}, {0, 1, 0, 2});
  dd::ConfusionMatrix m(3);
  m.add(logits, labels);
  CHECK(m.iou(0) == doctest::Approx(0.5));  // TP 1, FN 1
  CHECK(m.iou(1) == doctest::Approx(0.5));  // TP 1, FP 1
  CHECK(m.iou(2) == doctest::Approx(1.0));
  CHECK(m.pixel_accuracy() == doctest::Approx(0.75));
  m.add(logits, labels);  // counts add up over a set: ratios stay
  CHECK(m.mean_iou() == doctest::Approx(2.0 / 3.0));
}

TEST_CASE("circles: seeded, two discs of radius 4 in two different subimages, line under the discs") {
  const auto a = dd::make_circles(50, 3, {.subimages = 4});
  const auto b = dd::make_circles(50, 3, {.subimages = 4});
  CHECK(a.images.to_vector() == b.images.to_vector());
  CHECK(a.labels.to_vector() == b.labels.to_vector());
  CHECK(a.images.shape() == Shape{50, 1, 32, 128});
  for (std::int64_t n = 0; n < 50; ++n) {
    int disc = 0, line = 0;
    std::set<std::int64_t> tiles;
    for (std::int64_t y = 0; y < 32; ++y)
      for (std::int64_t x = 0; x < 128; ++x) {
        const float l = a.labels.at(n, 0, y, x), v = a.images.at(n, 0, y, x);
        CHECK(v == (l == 2.0f ? 1.0f : 0.0f));  // the image shows the discs only
        if (l == 2.0f) ++disc, tiles.insert(x / 32);
        line += l == 1.0f;
      }
    CHECK(disc == 2 * 49);        // 49 lattice points within radius 4 of a centre, per disc
    CHECK(tiles.size() == 2);     // in two different subimages, never across a border
    CHECK(line > 0);              // centres are at least 9 px apart: part of the segment shows
  }
}

TEST_CASE("fit() trains a small DDU-Net: validation loss falls, best state restored") {
  const auto train = dd::make_circles(64, 4, {.subimages = 2});
  const auto val = dd::make_circles(16, 5, {.subimages = 2});
  dd::DomainDecomposed<dd::UNet<2, 1, 3, 4>, dd::CommNet<4>> m({1, 2}, dd::Exchange::stitched, 6);
  dd::TrainOptions o;
  o.epochs = 4, o.min_epochs = 4, o.batch = 8, o.lr = 0.01f;
  const auto hist = dd::fit(m, train, val, 3, o);
  REQUIRE(hist.size() == 4);
  CHECK(hist.back().train_loss < hist.front().train_loss);
  double best = 1e9;
  for (const auto& h : hist) best = std::min(best, h.val_loss);
  CHECK(dd::evaluate(m, val, 3).loss == doctest::Approx(best).epsilon(1e-5));
}

TEST_CASE("dynamic loss scaling: scaled backward, exact unscale, overflow skips and backs off, growth") {
  using namespace dd;
  LossScaler scaler({.initial_scale = 1024.0f, .growth = 2.0f, .backoff = 0.5f, .growth_interval = 2});
  // d(sum w x)/dx = w, so the scaled gradient is 1024 w and unscaling gives w back exactly (powers of 2).
  const Tensor w = Tensor::from({1, 1, 1, 3}, {0.5f, -2.0f, 3.0f});
  const Var x(Tensor::zeros({1, 1, 1, 3}), true);
  scaler.backward(weighted_sum(x, w));
  CHECK(x.grad().to_vector() == std::vector<float>{512.0f, -2048.0f, 3072.0f});
  CHECK(scaler.unscale(x.grad()));
  CHECK(x.grad().to_vector() == w.to_vector());
  CHECK(scaler.scale() == 1024.0f);
  CHECK(scaler.unscale(x.grad()));  // second clean step: growth
  CHECK(scaler.scale() == 2048.0f);
  // An overflowed gradient: the step is refused and the scale halves.
  const Tensor bad = Tensor::from({1, 1, 1, 2}, {1.0f, std::numeric_limits<float>::infinity()});
  CHECK_FALSE(scaler.unscale(bad));
  CHECK(scaler.scale() == 1024.0f);
  CHECK(scaler.skipped_steps() == 1);
  const Tensor nan = Tensor::from({1, 1, 1, 1}, {std::numeric_limits<float>::quiet_NaN()});
  CHECK_FALSE(scaler.unscale(nan));
  CHECK(scaler.scale() == 512.0f);
  CHECK_THROWS_WITH_AS(LossScaler({.backoff = 1.5f}), doctest::Contains("0 < backoff < 1"), dd::Error);
}

TEST_CASE("loss scaling gates Adam: an overflowed step changes nothing, the step count included") {
  using namespace dd;
  const Tensor p0 = Tensor::from({1, 1, 1, 3}, {0.5f, -1.0f, 2.0f});
  // Two optimizers on copies of the same parameters: one steps ungated on the clean gradients only,
  // the other gated on every step, overflowed ones included.
  Tensor pa = p0.clone(), ga = Tensor::zeros(p0.shape()), pb = p0.clone(), gb = Tensor::zeros(p0.shape());
  Adam a(pa, ga, {0.1f}), b(pb, gb, {0.1f});
  LossScaler scaler({.initial_scale = 8.0f, .growth_interval = 1000});
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::vector<float>> grads = {{1, 2, 3}, {inf, 0, 1}, {-1, 0.5f, 2}, {0, 0, 0}, {1, -1, 1}};
  for (const auto& g : grads) {
    const bool finite = std::all_of(g.begin(), g.end(), [](float v) { return std::isfinite(v); });
    std::vector<float> scaled = g;
    for (auto& v : scaled) v *= scaler.scale();
    gb.copy_from(Tensor::from(p0.shape(), scaled));
    const Tensor gate = scaler.unscale_gate(gb);
    CHECK(gate.numel() == 1);
    CHECK(gate.item() == (finite ? 1.0f : 0.0f));
    b.step(gate);
    if (finite) {
      ga.copy_from(Tensor::from(p0.shape(), g));
      a.step();
    }
    CHECK(pb.to_vector() == pa.to_vector());
    CHECK(b.steps() == a.steps());
  }
  CHECK(a.steps() == 4);
  CHECK(scaler.skipped_steps() == 1);
  CHECK(scaler.scale() == 4.0f);
  CHECK(pa.to_vector() != p0.to_vector());
  CHECK_THROWS_WITH_AS(b.step(Tensor::full({1, 1, 1, 2}, 1.0f)), doctest::Contains("one f32 value"), dd::Error);
}
