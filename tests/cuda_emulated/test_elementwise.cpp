// The element-wise kernels of src/cuda/elementwise.cu, run by the emulator, against plain loops:
// every element type, the per-plane and channels-last dropout/ReLU tails, and the strided copies
// (dense blocks, the row kernel at every unit size, element-wise copies, conversions and adds).
#include <algorithm>
#include <array>
#include <numeric>

#include "emulated.hpp"

namespace dd::emulated_test {
namespace {

// Exact equality of what a kernel wrote and a reference rounded to the array's type.
void check_equal(const Array& got, const std::vector<float>& want) {
  REQUIRE(got.size() == static_cast<i64>(want.size()));
  i64 bad = 0, first = -1;
  for (i64 i = 0; i < got.size(); ++i) {
    const float g = got.get(i), w = round_to(want[static_cast<std::size_t>(i)], got.dtype());
    if (!(g == w || (g != g && w != w))) bad += 1, first = first < 0 ? i : first;
  }
  INFO("type ", dtype_name(got.dtype()), ", first mismatch at ", first);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("emulated kernels: fill, axpy, scale and conversions in every element type") {
  GuardCheck guard;
  std::mt19937 rng(11);
  for (const i64 n : {i64{1}, i64{255}, i64{257}, i64{70000}}) {
    for (const DType t : kTypes) {
      CAPTURE(n);
      Array x(random_values(rng, n, -3.0f, 3.0f, t), t), y(random_values(rng, n, -3.0f, 3.0f, t), t);
      const auto xv = x.values(), yv = y.values();
      k::fill(y.raw(), n, 0.1f, t, nullptr);
      check_equal(y, std::vector<float>(static_cast<std::size_t>(n), 0.1f));
      y.set(yv);
      k::axpy(y.raw(), x.raw(), n, -0.7f, t, nullptr);
      std::vector<float> want(yv);
      for (std::size_t i = 0; i < want.size(); ++i) want[i] = yv[i] + -0.7f * xv[i];
      check_equal(y, want);
      k::scale(x.raw(), n, 1.3f, t, nullptr);
      for (std::size_t i = 0; i < want.size(); ++i) want[i] = xv[i] * 1.3f;
      check_equal(x, want);
    }
    // every pair of types: round once to the destination's type (the source's values are exact)
    for (const DType from : kTypes)
      for (const DType to : kTypes) {
        auto v = random_values(rng, n, -70000.0f, 70000.0f, from);
        v[0] = 1e-9f * v[0];  // a subnormal in f16, zero in its rounding
        Array x(v, from), y(n, to);
        k::convert(x.raw(), from, y.raw(), to, n, nullptr);
        check_equal(y, x.values());
      }
  }
}

TEST_CASE("emulated kernels: ReLU, dropout planes and the conv block's tail in both layouts") {
  GuardCheck guard;
  std::mt19937 rng(12);
  for (const DType t : kTypes) {
    const i64 n = 1000;
    Array x(random_values(rng, n, -1.0f, 1.0f, t), t), y(n, t), dy(random_values(rng, n, -1.0f, 1.0f, t), t), dx(n, t);
    k::relu_forward(x.raw(), n, y.raw(), t, nullptr);
    k::relu_backward(y.raw(), dy.raw(), n, dx.raw(), t, nullptr);
    std::vector<float> wy(static_cast<std::size_t>(n)), wdx(wy);
    const auto xv = x.values(), dyv = dy.values();
    for (std::size_t i = 0; i < wy.size(); ++i) wy[i] = std::max(xv[i], 0.0f), wdx[i] = xv[i] > 0 ? dyv[i] : 0.0f;
    check_equal(y, wy);
    check_equal(dx, wdx);
  }
  // NCHW planes (f32 only): planes beyond the grid's 65535 rows of blocks take the plane loop.
  for (const auto& [planes, plane] : {std::pair<i64, i64>{6, 1000}, {70000, 3}}) {
    CAPTURE(planes);
    const i64 n = planes * plane;
    Array x(random_values(rng, n, -1.0f, 1.0f), DType::f32), y(n, DType::f32),
        dy(random_values(rng, n, -1.0f, 1.0f), DType::f32), dx(n, DType::f32);
    Array s(random_values(rng, planes, 0.0f, 2.0f), DType::f32);
    const auto xv = x.values(), sv = s.values(), dyv = dy.values();
    k::scale_planes(x.f(), s.f(), planes, plane, y.f(), nullptr);
    std::vector<float> want(static_cast<std::size_t>(n));
    for (i64 i = 0; i < n; ++i) want[i] = xv[i] * sv[i / plane];
    check_equal(y, want);
    for (const bool with_scale : {false, true}) {
      y.set(xv);
      k::relu_scale_planes(y.f(), with_scale ? s.f() : nullptr, planes, plane, nullptr);
      for (i64 i = 0; i < n; ++i) want[i] = with_scale ? std::max(xv[i], 0.0f) * sv[i / plane] : std::max(xv[i], 0.0f);
      check_equal(y, want);
      const auto yv = y.values();
      k::relu_scale_planes_backward(y.f(), dy.f(), with_scale ? s.f() : nullptr, planes, plane, dx.f(), nullptr);
      for (i64 i = 0; i < n; ++i) want[i] = yv[i] > 0 ? (with_scale ? dyv[i] * sv[i / plane] : dyv[i]) : 0.0f;
      check_equal(dx, want);
    }
  }
  // Channels-last [n, plane, c]: the factor of element i is scale[sample * c + channel].
  for (const DType t : kTypes)
    for (const auto& [nb, c, plane] : {std::array<i64, 3>{2, 3, 7}, {3, 16, 50}, {1, 300, 5}}) {
      CAPTURE(c);
      const i64 n = nb * c * plane;
      Array x(random_values(rng, n, -1.0f, 1.0f, t), t), y(n, t), dy(random_values(rng, n, -1.0f, 1.0f, t), t),
          dx(n, t);
      Array s(random_values(rng, nb * c, 0.0f, 2.0f), DType::f32);
      const auto xv = x.values(), sv = s.values(), dyv = dy.values();
      const auto factor = [&](i64 i) { return sv[(i / (plane * c)) * c + i % c]; };
      std::vector<float> want(static_cast<std::size_t>(n));
      k::scale_planes_nhwc(x.raw(), s.f(), nb, c, plane, y.raw(), t, nullptr);
      for (i64 i = 0; i < n; ++i) want[i] = xv[i] * factor(i);
      check_equal(y, want);
      for (const bool with_scale : {false, true}) {
        y.set(xv);
        k::relu_scale_planes_nhwc(y.raw(), with_scale ? s.f() : nullptr, nb, c, plane, t, nullptr);
        for (i64 i = 0; i < n; ++i) want[i] = with_scale ? std::max(xv[i], 0.0f) * factor(i) : std::max(xv[i], 0.0f);
        check_equal(y, want);
        const auto yv = y.values();
        k::relu_scale_planes_nhwc_backward(y.raw(), dy.raw(), with_scale ? s.f() : nullptr, nb, c, plane, dx.raw(), t,
                                           nullptr);
        for (i64 i = 0; i < n; ++i) want[i] = yv[i] > 0 ? (with_scale ? dyv[i] * factor(i) : dyv[i]) : 0.0f;
        check_equal(dx, want);
      }
    }
}

namespace {

// A random sub-box view of a random 4-D buffer in a random memory order: its geometry and where
// it starts (in elements).
struct View {
  std::array<i64, 4> strides;
  i64 offset, buffer;
};
View random_view(std::mt19937& rng, const std::array<i64, 4>& shape) {
  std::array<i64, 4> full, order{0, 1, 2, 3}, start;
  for (int d = 0; d < 4; ++d) {
    full[d] = shape[d] + std::uniform_int_distribution<i64>(0, 2)(rng);
    start[d] = std::uniform_int_distribution<i64>(0, full[d] - shape[d])(rng);
  }
  std::shuffle(order.begin(), order.end(), rng);  // order[3] innermost
  View v{};
  i64 stride = 1;
  for (int j = 3; j >= 0; --j) v.strides[order[j]] = stride, stride *= full[order[j]];
  v.buffer = stride;
  v.offset = 0;
  for (int d = 0; d < 4; ++d) v.offset += start[d] * v.strides[d];
  return v;
}

// dst view += or = src view, converted through float: the reference for copy_strided / add_strided.
void reference_copy(std::vector<float>& dst, const View& dv, const std::vector<float>& src, const View& sv,
                    const std::array<i64, 4>& shape, bool add) {
  for (i64 a = 0; a < shape[0]; ++a)
    for (i64 b = 0; b < shape[1]; ++b)
      for (i64 c = 0; c < shape[2]; ++c)
        for (i64 d = 0; d < shape[3]; ++d) {
          const i64 od = dv.offset + a * dv.strides[0] + b * dv.strides[1] + c * dv.strides[2] + d * dv.strides[3];
          const i64 os = sv.offset + a * sv.strides[0] + b * sv.strides[1] + c * sv.strides[2] + d * sv.strides[3];
          dst[od] = add ? dst[od] + src[os] : src[os];
        }
}

StridedCopy geometry(const View& dv, const View& sv, const std::array<i64, 4>& shape) {
  StridedCopy g{};
  for (int d = 0; d < 4; ++d) g.shape[d] = shape[d], g.dst_strides[d] = dv.strides[d], g.src_strides[d] = sv.strides[d];
  return g;
}

void* at(const Array& a, i64 element) {
  return static_cast<char*>(a.raw()) + element * dtype_size(a.dtype());
}

}  // namespace

TEST_CASE("emulated kernels: strided copies and adds between random views of every element type") {
  GuardCheck guard;
  std::mt19937 rng(13);
  for (int trial = 0; trial < 400; ++trial) {
    std::array<i64, 4> shape;
    for (auto& s : shape) s = std::uniform_int_distribution<i64>(1, 6)(rng);
    const View dv = random_view(rng, shape), sv = random_view(rng, shape);
    const DType dt = kTypes[trial % 3], st = kTypes[(trial / 3) % 3];
    const bool add = trial % 5 == 4;
    CAPTURE(trial);
    Array dst(random_values(rng, dv.buffer, -100.0f, 100.0f, dt), dt);
    Array src(random_values(rng, sv.buffer, -100.0f, 100.0f, st), st);
    auto want = dst.values();
    reference_copy(want, dv, src.values(), sv, shape, add);
    const StridedCopy g = geometry(dv, sv, shape);
    if (add)
      k::add_strided(at(dst, dv.offset), dt, at(src, sv.offset), st, g, nullptr);
    else
      k::copy_strided(at(dst, dv.offset), dt, at(src, sv.offset), st, g, nullptr);
    check_equal(dst, want);  // inside the view the copy, outside it nothing changed
  }
}

TEST_CASE("emulated kernels: channel-slice copies in channels-last memory at every unit size and alignment") {
  // A concat part: [n, h, w, cs] into channels [c0, c0 + cs) of [n, h, w, c]. Rows of cs elements
  // move in the widest unit the row length, strides and addresses allow (16, 8, 4 or 2 bytes).
  GuardCheck guard;
  std::mt19937 rng(14);
  for (const DType t : {DType::f32, DType::bf16})
    for (const i64 c : {i64{8}, i64{16}, i64{24}, i64{32}})
      for (i64 c0 = 0; c0 < c; c0 += 1)
        for (const i64 cs : {i64{1}, i64{2}, i64{4}, i64{8}}) {
          if (c0 + cs > c) continue;
          INFO("c ", c, " c0 ", c0, " cs ", cs);
          const i64 n = 2, h = 3, w = 5, pixels = n * h * w;
          Array whole(random_values(rng, pixels * c, -1.0f, 1.0f, t), t);
          Array part(random_values(rng, pixels * cs, -1.0f, 1.0f, t), t);
          // into the slice ([n, c, h, w] indices; strides of NHWC memory)
          StridedCopy into{{n, cs, h, w}, {h * w * c, 1, w * c, c}, {h * w * cs, 1, w * cs, cs}};
          auto want = whole.values();
          const auto pv = part.values();
          for (i64 p = 0; p < pixels; ++p)
            for (i64 j = 0; j < cs; ++j) want[p * c + c0 + j] = pv[p * cs + j];
          k::copy_strided(at(whole, c0), t, part.raw(), t, into, nullptr);
          check_equal(whole, want);
          // and back out of it (the concat's gradient)
          Array back(pixels * cs, t);
          StridedCopy out{{n, cs, h, w}, {h * w * cs, 1, w * cs, cs}, {h * w * c, 1, w * c, c}};
          k::copy_strided(back.raw(), t, at(whole, c0), t, out, nullptr);
          check_equal(back, pv);
        }
}

}  // namespace dd::emulated_test
