// The host must not wait for the GPU inside a training step: each wait leaves the GPU idle while the
// host enqueues what follows (a training step's backward pass: hundreds of launches). The emulated
// runtime counts every wait a GPU would impose (emulated_runtime.hpp: synchronisations, copies into
// pageable host memory, copies out of it), so these cases count a step's waits. Part of
// dd_emulated_cuda_tests (the library's host code on the emulated GPU).
#include <doctest/doctest.h>

#include <cstdint>
#include <dd/ddunet.hpp>

#include "emulated_runtime.hpp"

using namespace dd;

namespace {

template <class Step>
std::int64_t waits_of(const Step& step) {
  const std::int64_t before = cuda::emulation::host_waits();
  step();
  return cuda::emulation::host_waits() - before;
}

Tensor class_labels(std::int64_t n, std::int64_t h, std::int64_t w, int classes, std::uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::empty({n, 1, h, w});
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = float(rng.uniform_int(0, classes - 1));
  return t;
}

// Steps a model with a loss, gradient-norm clipping (as the trainer does) and Adam on the GPU: the
// first step (algorithm searches, first allocations) may wait; the next two must not. The losses
// they kept on the device are then read.
template <class M, class Loss>
void check_step_never_waits(M& m, const Tensor& x, const Tensor& labels, Loss loss_of) {
  m.to(Device::cuda);
  Adam adam(m.parameters(), m.gradients(), {1e-3f});
  const Tensor xg = x.to(Device::cuda), lg = labels.to(Device::cuda);
  std::vector<Var> losses;
  const auto step = [&] {
    m.zero_grad();
    losses.push_back(loss_of(m.forward(Var(xg)), lg));
    losses.back().backward();
    clip_gradients(m.gradients(), 1.0);
    adam.step();
  };
  step();
  CHECK(waits_of(step) == 0);
  CHECK(waits_of(step) == 0);
  // Reading the losses waits (once each); they are finite and fall as Adam steps on one batch.
  const float l0 = losses[0].value().item(), l2 = losses[2].value().item();
  CHECK(std::isfinite(l0));
  CHECK(l2 < l0);
}

const auto with_cross_entropy = [](const Var& logits, const Tensor& labels) { return cross_entropy(logits, labels); };
const auto with_dice = [](const Var& logits, const Tensor& labels) { return dice_loss(logits, labels); };

}  // namespace

TEST_CASE("emulated GPU: a U-Net training step (cross entropy or Dice, clipping, Adam) never waits for the GPU") {
  Model<UNet<2, 3, 3, 8>> m(1);
  const Tensor x = Tensor::randn({2, 3, 32, 32}, 2), labels = class_labels(2, 32, 32, 3, 3);
  SUBCASE("cross entropy") {
    check_step_never_waits(m, x, labels, with_cross_entropy);
  }
  SUBCASE("Dice") {
    check_step_never_waits(m, x, labels, with_dice);
  }
}

TEST_CASE("emulated GPU: a DDU-Net training step (2x2 grid, exchange, Dice) never waits for the GPU") {
  DomainDecomposed<UNet<2, 3, 3, 8>, CommNet<8>> m({2, 2}, Exchange::stitched, 1);
  check_step_never_waits(m, Tensor::randn({1, 3, 32, 32}, 4), class_labels(1, 32, 32, 3, 5), with_dice);
}

TEST_CASE("emulated GPU: a loss-scaled step (fp16 training's) never waits: the overflow check gates Adam on the GPU") {
  Model<UNet<2, 3, 3, 8>> m(1);
  m.to(Device::cuda);
  Adam adam(m.parameters(), m.gradients(), {1e-3f});
  LossScaler scaler({.initial_scale = 1024.0f});
  const Tensor x = Tensor::randn({2, 3, 32, 32}, 2).to(Device::cuda),
               labels = class_labels(2, 32, 32, 3, 3).to(Device::cuda);
  const auto step = [&] {
    m.zero_grad();
    scaler.backward(dice_loss(m.forward(Var(x)), labels));
    const Tensor gate = scaler.unscale_gate(m.gradients());
    clip_gradients(m.gradients(), 1.0);
    adam.step(gate);
  };
  step();
  CHECK(waits_of(step) == 0);
  CHECK(waits_of(step) == 0);
  // Read afterwards (waits): three clean steps, nothing skipped, the scale unchanged (growth after 2000).
  CHECK(adam.steps() == 3);
  CHECK(scaler.skipped_steps() == 0);
  CHECK(scaler.scale() == 1024.0f);
}

TEST_CASE("emulated GPU: the trainer waits once per batch, to read the loss of the batch before") {
  Model<UNet<2, 1, 2, 8>> m(1);
  m.to(Device::cuda);
  const SegmentationSet train{Tensor::randn({6, 1, 32, 32}, 11), class_labels(6, 32, 32, 2, 12)}, none{};
  TrainOptions o;
  o.batch = 2;
  o.epochs = 3;
  SUBCASE("without loss scaling") {}
  SUBCASE("with loss scaling (fp16 training)") {
    o.loss_scaling = true;
  }
  Trainer<Model<UNet<2, 1, 2, 8>>> trainer(m, 2, o);
  (void)trainer.run_epoch(train, none);  // first allocations, algorithm searches
  std::vector<std::int64_t> reported, steps_then;
  EpochStats st;
  const std::int64_t steps_before = trainer.optimizer().steps();
  const std::int64_t waits = waits_of([&] {
    st = trainer.run_epoch(train, none, [&](int, std::int64_t b, std::int64_t batches, double loss, double) {
      CHECK(batches == 3);
      CHECK(std::isfinite(loss));
      reported.push_back(b);
      // (With loss scaling the step count is on the GPU: reading it would wait.)
      if (!o.loss_scaling) steps_then.push_back(trainer.optimizer().steps() - steps_before);
    });
  });
  // Each batch's loss was read once the next batch's step was enqueued (the last one's at the end).
  if (!o.loss_scaling) CHECK(steps_then == std::vector<std::int64_t>{2, 3, 3});
  CHECK(trainer.optimizer().steps() - steps_before == 3);  // no overflow: every step taken
  // As many waits as three reads of a loss: mutations (Dice's sums or the clipping norm read on the
  // host) add waits.
  const Tensor scalar = Tensor::full({1, 1, 1, 1}, 1.0f, Device::cuda);
  const std::int64_t one_read = waits_of([&] { (void)scalar.item(); });
  CHECK(one_read > 0);
  CHECK(waits == 3 * one_read);
  CHECK(reported == std::vector<std::int64_t>{1, 2, 3});
  CHECK(std::isfinite(st.train_loss));
  CHECK(st.train_loss > 0.0);
}

TEST_CASE("emulated GPU: a small copy to the GPU does not wait, a large one may") {
  const Tensor small = Tensor::randn({1, 4, 16, 16}, 6), large = Tensor::randn({1, 4, 512, 256}, 7);  // 4 KiB, 2 MiB
  Tensor on_gpu;
  CHECK(waits_of([&] { on_gpu = small.to(Device::cuda); }) == 0);
  CHECK(on_gpu.to(Device::cpu).to_vector() == small.to_vector());  // through the pinned buffer, intact
  CHECK(waits_of([&] { (void)large.to(Device::cuda); }) == 1);     // above PinnedStaging::kMaxBytes: pageable
}
