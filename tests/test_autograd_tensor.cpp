// Tensor views and memory accounting; the tape's accumulation, zero_grad and no_grad.
#include <doctest/doctest.h>

#include <cmath>
#include <dd/ddunet.hpp>
#include <limits>

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

TEST_CASE("channels-last tensors: layout queries, copies between orders, gradients of either order") {
  using dd::MemoryFormat;
  const Tensor a = Tensor::randn({2, 3, 4, 5}, 3);
  const Tensor b = a.clone_as(MemoryFormat::nhwc);
  CHECK(b.strides() == Tensor::Strides{60, 1, 15, 3});
  CHECK(b.format() == MemoryFormat::nhwc);
  CHECK(b.is_dense(MemoryFormat::nhwc));
  CHECK(!b.is_contiguous());
  CHECK(a.format() == MemoryFormat::nchw);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t h = 0; h < 4; ++h)
        for (std::int64_t w = 0; w < 5; ++w) REQUIRE(b.at(n, c, h, w) == a.at(n, c, h, w));
  CHECK(b.contiguous().to_vector() == a.to_vector());
  CHECK(b.dense().shares_storage(b));  // already dense in its own order: no copy
  // Views keep reporting the order of their tensor, so their copies stay channels-last.
  CHECK(b.channels(1, 2).format() == MemoryFormat::nhwc);
  CHECK(!b.channels(1, 2).is_dense(MemoryFormat::nhwc));
  CHECK(b.channels(1, 2).clone().is_dense(MemoryFormat::nhwc));
  CHECK(b.tile(1, 2, 1, 3).clone().to_vector() == a.tile(1, 2, 1, 3).clone().to_vector());
  // One channel, or one pixel: both orders are the same memory.
  const Tensor one = Tensor::randn({2, 1, 4, 5}, 4);
  CHECK(one.is_dense(MemoryFormat::nhwc));
  CHECK(one.as_format(MemoryFormat::nhwc).shares_storage(one));
  CHECK(Tensor::empty({2, 3, 1, 1}, dd::Device::cpu, MemoryFormat::nhwc).is_contiguous());
  // add_ wants one order on both sides and says so otherwise.
  CHECK_THROWS_WITH_AS(a.clone().add_(b), doctest::Contains("same memory format"), dd::Error);
  const Tensor s = b.clone();
  s.add_(a.dense_like(b));
  for (std::size_t i = 0; const float v : s.contiguous().to_vector()) CHECK(v == 2.0f * a.to_vector()[i++]);
  // Gradients of a value arrive in either order (and as views) and sum.
  const Var x(Tensor::zeros({2, 3, 4, 5}), true);
  x.accumulate_grad(b);
  x.accumulate_grad(a);
  x.accumulate_grad(Tensor::zeros({2, 3, 8, 5}).tile(0, 4, 0, 5));
  for (std::size_t i = 0; const float v : x.grad().contiguous().to_vector()) CHECK(v == 2.0f * a.to_vector()[i++]);
}

TEST_CASE("CPU ops take channels-last inputs and give the NCHW results") {
  using dd::MemoryFormat;
  const Tensor x = Tensor::randn({2, 4, 6, 7}, 5), w = Tensor::randn({3, 4, 3, 3}, 6, 0.3f);
  auto run = [&](const Tensor& in) {
    const Var xv(in, true), wv(w.clone(), true);
    const Var y = dd::max_pool2x2(dd::relu(dd::conv2d(xv, wv, Var{}, {1, 1, 1})));
    dd::weighted_sum(y, Tensor::randn(y.shape(), 7)).backward();
    return std::vector<std::vector<float>>{y.value().to_vector(), xv.grad().to_vector(), wv.grad().to_vector()};
  };
  CHECK(run(x.clone_as(MemoryFormat::nhwc)) == run(x));
}

TEST_CASE("half conversions on the host: closed-form roundings, every half value round-trips, nearest for the rest") {
  using namespace dd::half_bits;
  const float u = std::ldexp(1.0f, -8), v = std::ldexp(1.0f, -11);
  // bf16 keeps 7 mantissa bits (ulp 2^-7 at 1): ties go to the even neighbour.
  CHECK(to_bf16(1.0f) == 0x3f80);
  CHECK(from_bf16(to_bf16(1.0f + u)) == 1.0f);
  CHECK(from_bf16(to_bf16(1.0f + 3 * u)) == 1.0f + 4 * u);
  CHECK(from_bf16(to_bf16(-2.5f)) == -2.5f);
  CHECK(std::isnan(from_bf16(to_bf16(std::nanf("")))));
  CHECK(std::isinf(from_bf16(to_bf16(std::numeric_limits<float>::infinity()))));
  // f16: 10 mantissa bits, largest 65504, smallest subnormal 2^-24.
  CHECK(to_f16(1.0f) == 0x3c00);
  CHECK(from_f16(to_f16(1.0f + v)) == 1.0f);
  CHECK(from_f16(to_f16(1.0f + 3 * v)) == 1.0f + 4 * v);
  CHECK(from_f16(to_f16(65504.0f)) == 65504.0f);
  CHECK(from_f16(to_f16(65519.0f)) == 65504.0f);
  CHECK(std::isinf(from_f16(to_f16(65520.0f))));
  CHECK(from_f16(to_f16(-std::ldexp(1.0f, -24))) == -std::ldexp(1.0f, -24));
  CHECK(from_f16(to_f16(std::ldexp(1.0f, -25))) == 0.0f);                      // tie with 0: even
  CHECK(from_f16(to_f16(std::ldexp(3.0f, -25))) == std::ldexp(1.0f, -23));     // tie of 1 and 2 units: 2
  CHECK(from_f16(to_f16(std::ldexp(1.0f, -14))) == std::ldexp(1.0f, -14));     // smallest normal
  CHECK(std::isnan(from_f16(to_f16(std::nanf("")))));
  // Every finite half value converts back to itself.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    if (std::isfinite(from_bf16(b))) REQUIRE(to_bf16(from_bf16(b)) == b);
    if (std::isfinite(from_f16(b))) REQUIRE(to_f16(from_f16(b)) == b);
  }
  // Any other float lands on a nearest neighbour.
  dd::Rng rng(11);
  for (int i = 0; i < 20000; ++i) {
    const float x = rng.normal() * std::ldexp(1.0f, static_cast<int>(rng.uniform() * 40) - 26);
    const std::uint16_t b = to_bf16(x), f = to_f16(x);
    const float eb = std::fabs(from_bf16(b) - x), ef = std::fabs(from_f16(f) - x);
    for (int d : {-1, 1}) {
      // (a neighbour that is NaN compares false and passes)
      REQUIRE(!(eb > std::fabs(from_bf16(static_cast<std::uint16_t>(b + d)) - x)));
      if (std::fabs(x) < 65504.0f && (f & 0x7fff) != 0)
        REQUIRE(!(ef > std::fabs(from_f16(static_cast<std::uint16_t>(f + d)) - x)));
    }
  }
}

TEST_CASE("half tensors: half the bytes, conversions through views, float access refused, CPU ops read them widened") {
  using dd::DType;
  using dd::MemoryFormat;
  const auto before = dd::MemoryStats::current();
  {
    const Tensor h = Tensor::empty({1, 1, 1024, 1024}, dd::Device::cpu, MemoryFormat::nchw, DType::bf16);
    CHECK(dd::MemoryStats::current() - before == 2 * 1024 * 1024);
    CHECK(h.bytes() == 2u * 1024 * 1024);
    CHECK_THROWS_WITH_AS(h.data(), doctest::Contains("to(dd::DType::f32)"), dd::Error);
  }
  const Tensor a = Tensor::randn({2, 3, 4, 5}, 21);
  for (const DType t : {DType::bf16, DType::f16}) {
    const Tensor h = a.to(t);
    CHECK(h.dtype() == t);
    CHECK(a.to(DType::f32).shares_storage(a));  // already f32: no copy
    const std::vector<float> back = h.to(DType::f32).to_vector(), direct = h.to_vector();
    CHECK(back == direct);  // host copies are f32
    for (std::size_t i = 0; i < back.size(); ++i) {
      const float r = t == DType::bf16 ? dd::half_bits::from_bf16(dd::half_bits::to_bf16(a.to_vector()[i]))
                                       : dd::half_bits::from_f16(dd::half_bits::to_f16(a.to_vector()[i]));
      REQUIRE(back[i] == r);
    }
    // Views and the other memory order: copies within one type and across types agree.
    const Tensor hl = h.clone_as(MemoryFormat::nhwc);
    CHECK(hl.dtype() == t);
    CHECK(hl.tile(1, 2, 1, 3).to_vector() == h.tile(1, 2, 1, 3).clone().to_vector());
    const Tensor into = Tensor::zeros({2, 3, 8, 5}, dd::Device::cpu, MemoryFormat::nchw, t);
    into.tile(2, 4, 0, 5).copy_from(a);  // f32 into a half view: rounded
    CHECK(into.tile(2, 4, 0, 5).to_vector() == back);
    CHECK(into.tile(0, 2, 0, 5).to_vector() == std::vector<float>(60, 0.0f));
    into.fill(0.5f);
    CHECK(into.to_vector() == std::vector<float>(240, 0.5f));
    CHECK_THROWS_WITH_AS(h.clone().add_(a), doctest::Contains("f32"), dd::Error);  // types must agree
    const Tensor twice = h.clone();
    twice.add_(h);
    for (std::size_t i = 0; const float y : twice.to_vector()) REQUIRE(y == 2.0f * back[i++]);  // exact: x2
    twice.scale_(0.5f);
    CHECK(twice.to_vector() == back);
  }
  // CPU ops read half inputs widened; gradients come back in the value's type.
  const Tensor w = Tensor::randn({3, 3, 3, 3}, 22, 0.3f);
  const Tensor ah = a.to(DType::bf16), aw = ah.to(DType::f32);
  auto run = [&](const Tensor& in) {
    const Var xv(in, true), wv(w.clone(), true);
    const Var y = dd::max_pool2x2(dd::relu(dd::conv2d(xv, wv, Var{}, {1, 1, 1})));
    dd::weighted_sum(y, Tensor::randn(y.shape(), 23)).backward();
    return std::pair{xv, std::vector<std::vector<float>>{y.value().to_vector(), wv.grad().to_vector()}};
  };
  const auto [xh, rh] = run(ah);
  const auto [xw, rw] = run(aw);
  CHECK(rh == rw);
  CHECK(xh.grad().dtype() == DType::bf16);
  // A half value used twice sums its two gradients in its own type.
  const Var xt(ah, true);
  dd::weighted_sum(dd::concat({xt, xt}, 1), Tensor::full({2, 6, 4, 5}, 0.25f)).backward();
  CHECK(xt.grad().dtype() == DType::bf16);
  CHECK(xt.grad().to_vector() == std::vector<float>(120, 0.5f));
  CHECK(xh.grad().to_vector() == xw.grad().to(DType::bf16).to_vector());
}
