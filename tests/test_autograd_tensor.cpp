// Tensor views and memory accounting; the tape's accumulation, zero_grad and no_grad.
#include <doctest/doctest.h>

#include <dd/ddunet.hpp>

using dd::Shape;
using dd::Tensor;
using dd::Var;

TEST_CASE("slices along N, C, H, W are views of the same storage") {
  const Tensor t = Tensor::randn({2, 3, 8, 8}, 1);
  const Tensor tile = t.tile(4, 4, 0, 4);
  CHECK(tile.shares_storage(t));
  CHECK(tile.shape() == Shape{2, 3, 4, 4});
  CHECK(!tile.is_contiguous());
  CHECK(tile.at(1, 2, 0, 3) == t.at(1, 2, 4, 3));
  tile.at(0, 1, 1, 1) = 42.0f;  // writes go through
  CHECK(t.at(0, 1, 5, 1) == 42.0f);
  const Tensor ch = t.channels(1, 2);
  CHECK(ch.at(1, 0, 2, 2) == t.at(1, 1, 2, 2));
  CHECK(t.batch(1).is_contiguous());
  const Tensor copy = tile.contiguous();
  CHECK(copy.is_contiguous());
  CHECK(!copy.shares_storage(t));
  CHECK(copy.at(1, 2, 3, 3) == t.at(1, 2, 7, 3));
  CHECK_THROWS_AS(t.slice(2, 6, 4), dd::Error);
  CHECK_THROWS_AS(tile.reshape({1, 1, 1, 96}), dd::Error);
}

TEST_CASE("the allocator tracks current and peak bytes") {
  const auto before = dd::MemoryStats::current();
  dd::MemoryStats::reset_peak();
  {
    const Tensor big = Tensor::zeros({1, 1, 1024, 1024});  // 4 MiB
    CHECK(dd::MemoryStats::current() - before >= 4 * 1024 * 1024);
  }
  CHECK(dd::MemoryStats::current() == before);
  CHECK(dd::MemoryStats::peak() - before >= 4 * 1024 * 1024);
  CHECK(reinterpret_cast<std::uintptr_t>(Tensor::zeros({1, 1, 3, 3}).data()) % 64 == 0);
}

TEST_CASE("gradients accumulate over fan-out, across backward calls, until zero_grad") {
  const Var x(Tensor::randn({1, 2, 3, 3}, 2), true);
  const Tensor r = Tensor::randn({1, 4, 3, 3}, 3);
  dd::weighted_sum(dd::concat({x, x}, 1), r).backward();  // x used twice: gradients add
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 9; ++i) CHECK(x.grad().at(0, c, i / 3, i % 3) == r.at(0, c, i / 3, i % 3) + r.at(0, c + 2, i / 3, i % 3));
  const auto once = x.grad().to_vector();
  dd::weighted_sum(dd::concat({x, x}, 1), r).backward();
  for (std::size_t i = 0; i < once.size(); ++i) CHECK(x.grad().to_vector()[i] == doctest::Approx(2 * once[i]));
  x.zero_grad();
  for (float g : x.grad().to_vector()) CHECK(g == 0.0f);
  CHECK(dd::Tape::current().empty());  // backward consumed the tape
}

TEST_CASE("no_grad records nothing; its outputs need no gradient") {
  dd::Model<dd::UNet<2, 1, 3, 4>> model(1);
  const Var x(Tensor::randn({1, 1, 16, 16}, 4));
  {
    dd::NoGrad ng;
    const Var y = model.forward(x);
    CHECK(!y.requires_grad());
    CHECK(dd::Tape::current().empty());
  }
  const Var y = model.forward(x);
  CHECK(y.requires_grad());
  CHECK(dd::Tape::current().size() > 20);
  dd::Tape::current().clear();
  CHECK_THROWS_AS(Var(Tensor::zeros({1, 1, 1, 1})).backward(), dd::Error);
}

TEST_CASE("inference under no_grad holds less memory than a recorded forward") {
  dd::Model<dd::UNet<3, 1, 3, 4>> model(1);
  model.eval();
  const Var x(Tensor::randn({1, 1, 128, 128}, 5));
  const auto base = dd::MemoryStats::current();
  dd::MemoryStats::reset_peak();
  {
    dd::NoGrad ng;
    model.forward(x);
  }
  const auto inference_peak = dd::MemoryStats::peak() - base;
  dd::MemoryStats::reset_peak();
  const Var y = model.forward(x);
  const auto recorded = dd::MemoryStats::current() - base;  // activations kept for backward
  dd::Tape::current().clear();
  CHECK(inference_peak < recorded / 2);
  CHECK(y.value().shape() == Shape{1, 3, 128, 128});
}

TEST_CASE("a tape can be scoped: recording goes to the innermost tape") {
  dd::Tape tape;
  const Var x(Tensor::randn({1, 1, 2, 2}, 6), true);
  {
    dd::TapeScope scope(tape);
    dd::relu(x);
    CHECK(tape.size() == 1);
  }
  CHECK(dd::Tape::current().empty());
}
