// Tensor views and memory accounting; the tape's accumulation, zero_grad and no_grad.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <dd/ddunet.hpp>
#include <dd/kernels/cuda/copy_plan.hpp>
#include <limits>
#include <random>

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

// ---- Strided copies: the host's, and the GPU's planned and replayed on the host ----
namespace {
namespace ck = dd::cuda::kernels;
using Bytes = std::vector<unsigned char>;

// dst view at byte dst_at, src view at byte src_at: the 4-D loop, element by element.
Bytes reference_copy(const dd::StridedCopy& g, std::size_t es, Bytes dst, std::size_t dst_at, const Bytes& src,
                     std::size_t src_at) {
  for (std::int64_t a = 0; a < g.shape[0]; ++a)
    for (std::int64_t b = 0; b < g.shape[1]; ++b)
      for (std::int64_t c = 0; c < g.shape[2]; ++c)
        for (std::int64_t d = 0; d < g.shape[3]; ++d) {
          const std::int64_t i[4] = {a, b, c, d};
          std::int64_t od = 0, os = 0;
          for (int k = 0; k < 4; ++k) od += i[k] * g.dst_strides[k], os += i[k] * g.src_strides[k];
          std::memcpy(&dst[dst_at + static_cast<std::size_t>(od) * es],
                      &src[src_at + static_cast<std::size_t>(os) * es], es);
        }
  return dst;
}

// What the element-wise kernel does for index type I: every i < total through CopyDims::offsets.
template <class I>
Bytes replay_elements(const dd::CopyDims& d, std::size_t es, Bytes dst, std::size_t dst_at, const Bytes& src,
                      std::size_t src_at) {
  for (I i = 0; i < static_cast<I>(d.total); ++i) {
    std::int64_t od = 0, os = 0;
    switch (d.dims) {
      case 1:
        d.offsets<1>(i, od, os);
        break;
      case 2:
        d.offsets<2>(i, od, os);
        break;
      case 3:
        d.offsets<3>(i, od, os);
        break;
      default:
        d.offsets<4>(i, od, os);
        break;
    }
    std::memcpy(&dst[dst_at + static_cast<std::size_t>(od) * es], &src[src_at + static_cast<std::size_t>(os) * es], es);
  }
  return dst;
}

// What the row kernel does: every unit i < total through RowCopy::offsets (addresses: the byte offsets).
template <class I>
Bytes replay_rows(const ck::RowCopy& p, Bytes dst, std::size_t dst_at, const Bytes& src, std::size_t src_at) {
  REQUIRE(dst_at % static_cast<std::size_t>(p.unit) == 0);
  REQUIRE(src_at % static_cast<std::size_t>(p.unit) == 0);
  const auto u = static_cast<std::size_t>(p.unit);
  for (I i = 0; i < static_cast<I>(p.total()); ++i) {
    std::int64_t od = 0, os = 0;
    p.offsets(i, od, os);
    std::memcpy(&dst[dst_at + static_cast<std::size_t>(od) * u], &src[src_at + static_cast<std::size_t>(os) * u], u);
  }
  return dst;
}

Bytes pattern(std::size_t n, unsigned seed) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = static_cast<unsigned char>(rng());
  return b;
}

// Checks every way the GPU could run the copy against the 4-D loop; returns the row unit (0: none).
int check_copy(const dd::StridedCopy& g, std::size_t es, std::size_t dst_at, std::size_t src_at) {
  std::int64_t dst_span = 1, src_span = 1;  // one past the largest element offset
  for (int k = 0; k < 4; ++k) {
    if (g.shape[k] == 0) return 0;
    dst_span += (g.shape[k] - 1) * g.dst_strides[k], src_span += (g.shape[k] - 1) * g.src_strides[k];
  }
  const Bytes dst = pattern(dst_at + static_cast<std::size_t>(dst_span) * es, 1);
  const Bytes src = pattern(src_at + static_cast<std::size_t>(src_span) * es, 2);
  const Bytes want = reference_copy(g, es, dst, dst_at, src, src_at);
  REQUIRE(want != dst);  // the copy changes something, so a replay that does nothing fails
  const dd::CopyDims d = dd::reduce_dims(g);
  CHECK(d.total == g.shape[0] * g.shape[1] * g.shape[2] * g.shape[3]);
  CHECK(replay_elements<std::uint32_t>(d, es, dst, dst_at, src, src_at) == want);
  CHECK(replay_elements<std::int64_t>(d, es, dst, dst_at, src, src_at) == want);
  // The host runs the same geometry (Tensor::copy_from between host views).
  Bytes host = dst;
  const dd::DType t = es == 4 ? dd::DType::f32 : dd::DType::bf16;
  dd::copy_on_host(&host[dst_at], t, &src[src_at], t, g);
  CHECK(host == want);
  const ck::RowCopy rows = ck::plan_rows(d, es, dst_at, src_at);
  if (rows.unit != 0) {
    CHECK(rows.unit >= static_cast<int>(es));
    CHECK(rows.total() * rows.unit == d.total * static_cast<std::int64_t>(es));
    CHECK(replay_rows<std::uint32_t>(rows, dst, dst_at, src, src_at) == want);
    CHECK(replay_rows<std::int64_t>(rows, dst, dst_at, src, src_at) == want);
  }
  return rows.unit;
}

// Strides of a dense tensor of shape s whose dimensions are laid out in `order` (outermost first).
std::array<std::int64_t, 4> dense_strides(const std::int64_t (&s)[4], const int (&order)[4]) {
  std::array<std::int64_t, 4> st{};
  std::int64_t step = 1;
  for (int i = 3; i >= 0; --i) st[static_cast<std::size_t>(order[i])] = step, step *= s[order[i]];
  return st;
}
}  // namespace

TEST_CASE(
    "GPU strided copies, planned and replayed on the host: rows of up to 16 bytes where they fit, else element-wise") {
  // A concat part: channels [8, 20) of an NHWC [2, 24, 3, 5] tensor from a dense NHWC [2, 12, 3, 5] part.
  const dd::StridedCopy part{{2, 12, 3, 5}, {3 * 5 * 24, 1, 5 * 24, 24}, {3 * 5 * 12, 1, 5 * 12, 12}};
  const dd::CopyDims d = dd::reduce_dims(part);
  CHECK(d.dims == 2);  // rows of 12 channels, one per pixel
  CHECK(d.shape[0] == 30);
  CHECK(check_copy(part, 4, 8 * 4, 0) == 16);     // f32: 48-byte rows, 16-byte aligned on both sides
  CHECK(check_copy(part, 4, 8 * 4 + 4, 0) == 4);  // a destination 4 bytes off: one float at a time
  CHECK(check_copy(part, 2, 8 * 2, 0) == 8);      // bf16: 24-byte rows
  CHECK(check_copy(part, 2, 8 * 2 + 2, 0) == 2);
  // The gradient's way back: the slice out of the concatenation into a dense part.
  dd::StridedCopy back = part;
  std::swap(back.dst_strides, back.src_strides);
  CHECK(check_copy(back, 4, 0, 8 * 4) == 16);
  // Every row stride counts: 16-byte rows on one side, 20-byte rows on the other move 4 bytes at a time.
  CHECK(check_copy({{3, 4, 1, 1}, {4, 1, 1, 1}, {5, 1, 1, 1}}, 4, 0, 0) == 4);
  CHECK(check_copy({{3, 4, 1, 1}, {5, 1, 1, 1}, {4, 1, 1, 1}}, 4, 0, 0) == 4);
  CHECK(check_copy({{3, 4, 1, 1}, {6, 1, 1, 1}, {8, 1, 1, 1}}, 4, 0, 0) == 8);
  // NCHW channel slice: one row per sample.
  const dd::StridedCopy nchw{{2, 3, 4, 5}, {60, 20, 5, 1}, {140, 20, 5, 1}};
  CHECK(dd::reduce_dims(nchw).dims == 2);
  CHECK(check_copy(nchw, 4, 0, 2 * 20 * 4) == 16);
  // Dense blocks are one row (the launcher's cudaMemcpyAsync); a single element too.
  const ck::RowCopy dense = ck::plan_rows(dd::reduce_dims(dd::dense_copy(1000)), 4, 0, 0);
  CHECK(dense.rows == 1);
  CHECK(dense.unit == 16);
  CHECK(check_copy(dd::dense_copy(1001), 2, 6, 2) == 2);
  CHECK(check_copy({{1, 1, 1, 1}, {7, 7, 7, 7}, {3, 3, 3, 3}}, 4, 0, 0) == 4);  // one 4-byte unit
  CHECK(dd::reduce_dims({{0, 3, 1, 1}, {3, 1, 1, 1}, {3, 1, 1, 1}}).total == 0);
  CHECK(ck::plan_rows(dd::reduce_dims({{0, 3, 1, 1}, {3, 1, 1, 1}, {3, 1, 1, 1}}), 4, 0, 0).unit == 0);
  // Layout changes are element-wise: NCHW to NHWC, and the filter orders (KCRS <-> KRSC) both ways.
  CHECK(check_copy({{2, 3, 4, 5}, {60, 1, 15, 3}, {60, 20, 5, 1}}, 4, 0, 0) == 0);
  CHECK(check_copy(ck::filter_order(4, 3, 3, 3, true), 4, 0, 0) == 0);
  CHECK(check_copy(ck::filter_order(4, 3, 3, 3, false), 2, 0, 0) == 0);
  // The filter orders are inverse permutations: there and back is the identity.
  const dd::StridedCopy there = ck::filter_order(5, 7, 3, 2, true), again = ck::filter_order(5, 7, 3, 2, false);
  Bytes w = pattern(5 * 7 * 3 * 2 * 4, 3);
  CHECK(reference_copy(again, 4, Bytes(w.size()), 0, reference_copy(there, 4, Bytes(w.size()), 0, w, 0), 0) == w);

  // Random sub-boxes of random memory orders on both sides, both element sizes, several alignments.
  std::mt19937 rng(7);
  int rows_seen = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::int64_t full_d[4], full_s[4], box[4], at_d[4], at_s[4];
    for (int k = 0; k < 4; ++k) {
      full_d[k] = 1 + static_cast<std::int64_t>(rng() % 5);
      full_s[k] = 1 + static_cast<std::int64_t>(rng() % 5);
      box[k] = 1 + static_cast<std::int64_t>(rng() % static_cast<unsigned>(std::min(full_d[k], full_s[k])));
      at_d[k] = static_cast<std::int64_t>(rng() % static_cast<unsigned>(full_d[k] - box[k] + 1));
      at_s[k] = static_cast<std::int64_t>(rng() % static_cast<unsigned>(full_s[k] - box[k] + 1));
    }
    int od[4] = {0, 1, 2, 3}, os[4] = {0, 1, 2, 3};
    if (trial % 3 != 0) std::shuffle(od, od + 4, rng);  // a third keep both sides in the same order
    if (trial % 3 != 0) std::shuffle(os, os + 4, rng);
    const auto sd = dense_strides(full_d, od), ss = dense_strides(full_s, os);
    dd::StridedCopy g{};
    std::int64_t off_d = 0, off_s = 0;
    for (int k = 0; k < 4; ++k) {
      g.shape[k] = box[k], g.dst_strides[k] = sd[static_cast<std::size_t>(k)],
      g.src_strides[k] = ss[static_cast<std::size_t>(k)];
      off_d += at_d[k] * g.dst_strides[k], off_s += at_s[k] * g.src_strides[k];
    }
    const std::size_t es = trial % 2 == 0 ? 4 : 2;
    const std::size_t pad = es * (rng() % 8);  // the arrays' own alignment, in elements
    CAPTURE(trial);
    rows_seen +=
        check_copy(g, es, static_cast<std::size_t>(off_d) * es + pad, static_cast<std::size_t>(off_s) * es + pad) != 0;
  }
  CHECK(rows_seen > 30);  // the row path was exercised, not just planned away
}

namespace {
// Element (n, c, h, w) of a host tensor of any element type, as the float it holds.
float element(const Tensor& t, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  const auto& s = t.strides();
  const std::int64_t i = n * s[0] + c * s[1] + h * s[2] + w * s[3];
  if (t.dtype() == dd::DType::f32) return static_cast<const float*>(t.raw())[i];
  const std::uint16_t b = static_cast<const std::uint16_t*>(t.raw())[i];
  return t.dtype() == dd::DType::bf16 ? dd::half_bits::from_bf16(b) : dd::half_bits::from_f16(b);
}
float round_to(dd::DType t, float v) {
  return t == dd::DType::f32    ? v
         : t == dd::DType::bf16 ? dd::half_bits::from_bf16(dd::half_bits::to_bf16(v))
                                : dd::half_bits::from_f16(dd::half_bits::to_f16(v));
}
}  // namespace

TEST_CASE("host copies between views of any two element types and memory orders; fills of views") {
  using dd::DType;
  using dd::MemoryFormat;
  std::mt19937 rng(11);
  const DType types[3] = {DType::f32, DType::bf16, DType::f16};
  const MemoryFormat formats[2] = {MemoryFormat::nchw, MemoryFormat::nhwc};
  for (int trial = 0; trial < 120; ++trial) {
    CAPTURE(trial);
    const DType dt = types[trial % 3], st = types[(trial / 3) % 3];
    auto pick = [&](std::int64_t k) { return static_cast<std::int64_t>(rng() % static_cast<unsigned>(k)); };
    const Shape box{1 + pick(3), 1 + pick(5), 1 + pick(6), 1 + pick(6)};
    // Each side is a sub-box of a larger tensor in a random memory order.
    auto host_view = [&](DType t, float sentinel, std::uint64_t seed, Tensor& whole) {
      const Shape full{box.n + pick(2), box.c + pick(3), box.h + pick(3), box.w + pick(3)};
      const MemoryFormat f = formats[pick(2)];
      whole = sentinel == 0 ? Tensor::randn(full, seed).to(t).clone_as(f)
                            : Tensor::full(full, sentinel, dd::Device::cpu, f, t);
      const std::int64_t at[4] = {pick(full.n - box.n + 1), pick(full.c - box.c + 1), pick(full.h - box.h + 1),
                                  pick(full.w - box.w + 1)};
      return whole.slice(0, at[0], box.n).slice(1, at[1], box.c).tile(at[2], box.h, at[3], box.w);
    };
    Tensor src_whole, dst_whole;
    const Tensor src = host_view(st, 0, 100 + static_cast<std::uint64_t>(trial), src_whole);
    const Tensor dst = host_view(dt, 7.0f, 0, dst_whole);
    dst.copy_from(src);
    int changed = 0;
    for (std::int64_t n = 0; n < box.n; ++n)
      for (std::int64_t c = 0; c < box.c; ++c)
        for (std::int64_t h = 0; h < box.h; ++h)
          for (std::int64_t w = 0; w < box.w; ++w) {
            const float want = round_to(dt, element(src, n, c, h, w));
            REQUIRE(element(dst, n, c, h, w) == want);
            changed += want != 7.0f;
          }
    CHECK(changed > 0);
    // Nothing outside the view was written: the whole tensor holds box.numel() copied values, the rest 7.
    std::int64_t sevens = 0;
    for (const float v : dst_whole.to_vector()) sevens += v == 7.0f;
    CHECK(sevens >= dst_whole.numel() - box.numel());
    // A fill of the view, converted to its type, leaves the rest alone too.
    dst.fill(-1.7f);
    std::int64_t filled = 0;
    for (const float v : dst_whole.to_vector()) filled += v == round_to(dt, -1.7f);
    CHECK(filled == box.numel());
  }
}
