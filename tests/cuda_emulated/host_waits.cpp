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

// Steps a model with cross entropy and Adam on the GPU: the first step (algorithm searches, first
// allocations) may wait; the next two must not. The losses they kept on the device are then read.
template <class M>
void check_step_never_waits(M& m, const Tensor& x, const Tensor& labels) {
  m.to(Device::cuda);
  Adam adam(m.parameters(), m.gradients(), {1e-3f});
  const Tensor xg = x.to(Device::cuda), lg = labels.to(Device::cuda);
  std::vector<Var> losses;
  const auto step = [&] {
    m.zero_grad();
    losses.push_back(cross_entropy(m.forward(Var(xg)), lg));
    losses.back().backward();
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

}  // namespace

TEST_CASE("emulated GPU: a U-Net training step with cross entropy and Adam never waits for the GPU") {
  Model<UNet<2, 3, 3, 8>> m(1);
  check_step_never_waits(m, Tensor::randn({2, 3, 32, 32}, 2), class_labels(2, 32, 32, 3, 3));
}

TEST_CASE("emulated GPU: a DDU-Net training step (2x2 grid, exchange) never waits for the GPU") {
  DomainDecomposed<UNet<2, 3, 3, 8>, CommNet<8>> m({2, 2}, Exchange::stitched, 1);
  check_step_never_waits(m, Tensor::randn({1, 3, 32, 32}, 4), class_labels(1, 32, 32, 3, 5));
}

TEST_CASE("emulated GPU: a small copy to the GPU does not wait, a large one may; Dice's backward does not") {
  const Tensor small = Tensor::randn({1, 4, 16, 16}, 6), large = Tensor::randn({1, 4, 512, 256}, 7);  // 4 KiB, 2 MiB
  Tensor on_gpu;
  CHECK(waits_of([&] { on_gpu = small.to(Device::cuda); }) == 0);
  CHECK(on_gpu.to(Device::cpu).to_vector() == small.to_vector());  // through the pinned buffer, intact
  CHECK(waits_of([&] { (void)large.to(Device::cuda); }) == 1);     // above PinnedStaging::kMaxBytes: pageable
  // Dice waits for its sums in the forward pass; its backward waits only to read the loss's gradient
  // (as one item() does), its factors going up through a pinned buffer.
  const Var logits(Tensor::randn({2, 3, 8, 8}, 8).to(Device::cuda), true);
  const Var loss = dice_loss(logits, class_labels(2, 8, 8, 3, 9).to(Device::cuda));
  const std::int64_t one_read = waits_of([&] { (void)loss.value().item(); });
  CHECK(one_read > 0);
  CHECK(waits_of([&] { loss.backward(); }) == one_read);
  CHECK(logits.grad().defined());
}
