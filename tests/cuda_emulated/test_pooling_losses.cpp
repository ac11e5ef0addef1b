// Pooling, softmax and losses, Adam and the whole-buffer reductions, batch norm's invstd and eval
// backward (src/cuda/pooling.cu, softmax_loss.cu, optim.cu, batchnorm.cu) on the emulator, against
// plain loops written from the contracts in kernels.hpp (in double where the kernels sum).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "emulated.hpp"

namespace dd::emulated_test {
namespace {

using u8 = std::uint8_t;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Device elements of type T (argmax maps, loss sums), guarded like Array's.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(i64 n)
      : n_(n), p_(static_cast<T*>(cuda::emulation::device_alloc(static_cast<std::size_t>(n) * sizeof(T)))) {}
  ~DeviceArray() { cuda::emulation::device_free(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  std::vector<T> values() const { return {p_, p_ + n_}; }
  void set(const std::vector<T>& v) { std::copy(v.begin(), v.end(), p_); }

 private:
  i64 n_;
  T* p_;
};
using Bytes = DeviceArray<u8>;

std::vector<std::uint32_t> bit_patterns(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  std::transform(v.begin(), v.end(), b.begin(), [](float x) { return bits(x); });
  return b;
}

// Multiples of 0.375 in [-1.125, 1.125] (exact in every type), some zeros negative: many ties.
std::vector<float> tie_values(std::mt19937& rng, i64 n) {
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    const int q = d(rng);
    x = q == 0 && (rng() & 1) ? -0.0f : 0.375f * static_cast<float>(q);
  }
  return v;
}

// The window's position that wins: the first one holding its maximum (-0 and +0 are equal).
u8 first_max(const float (&a)[4]) {
  const float m = std::max({a[0], a[1], a[2], a[3]});
  return static_cast<u8>(std::find(a, a + 4, m) - a);
}

// Class indices stored as floats, about one in six invalid (non-integer, negative, >= c, NaN, +-inf,
// denormal); a zero is sometimes -0.0, which is the integer 0 and so class 0.
std::vector<float> make_labels(std::mt19937& rng, i64 pixels, i64 c) {
  const float cf = static_cast<float>(c);
  const float bad[] = {0.5f,   -1.0f, cf,   cf + 1.0f, kNaN,   cf - 0.5f,
                       -0.25f, 1e20f, kInf, -kInf,     1e-45f, std::nextafter(1.0f, 2.0f)};
  std::uniform_int_distribution<i64> cls(0, c - 1);
  std::uniform_int_distribution<std::size_t> pick(0, std::size(bad) - 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(pixels));
  for (auto& x : v) {
    x = u(rng) < 0.15f ? bad[pick(rng)] : static_cast<float>(cls(rng));
    if (x == 0.0f && (rng() & 1)) x = -0.0f;
  }
  return v;
}

// The contract: a label is a class iff it is an integer in [0, c).
bool label_class(float v, i64 c, i64& k) {
  if (std::isnan(v) || v < 0.0f || static_cast<double>(v) >= static_cast<double>(c) || std::trunc(v) != v) return false;
  k = static_cast<i64>(v);
  return true;
}

// Probabilities in [0, 1) with some exact zeros and values under the 1e-30 clamp.
std::vector<float> probabilities(std::mt19937& rng, i64 n) {
  auto p = random_values(rng, n, 0.0f, 1.0f);
  for (std::size_t i = 0; i < p.size(); i += 37) p[i] = 0.0f;
  for (std::size_t i = 11; i < p.size(); i += 53) p[i] = 1e-40f;
  return p;
}

struct Nchw {
  i64 n, c, plane;
};

// The largest error seen; a NaN (an element the kernel left unwritten: the arrays start NaN) sticks,
// where std::max would drop it.
struct Worst {
  double v = 0.0;
  void operator()(double e) {
    if (!(e <= v)) v = e;
  }
};

}  // namespace

TEST_CASE("emulated kernels: maxpool2x2 NCHW forward/backward (ties, odd edges, accumulate)") {
  GuardCheck guard;
  std::mt19937 rng(101);
  struct Shape {
    i64 planes, h, w;
  };
  for (const Shape s : {Shape{1, 2, 2}, {3, 5, 7}, {2, 8, 6}, {4, 1, 9}, {5, 67, 129}}) {
    INFO("planes ", s.planes, " h ", s.h, " w ", s.w);
    const i64 ho = s.h / 2, wo = s.w / 2, nx = s.planes * s.h * s.w, ny = s.planes * ho * wo;
    const auto xv = tie_values(rng, nx);
    Array x(xv, DType::f32), y(ny, DType::f32);
    Bytes at(ny);
    k::maxpool2x2_forward(x.f(), s.planes, s.h, s.w, y.f(), at.get(), nullptr);
    std::vector<float> y_ref(static_cast<std::size_t>(ny));
    std::vector<u8> at_ref(y_ref.size());
    std::vector<i64> winner(y_ref.size());  // x index of each window's winner
    i64 tied = 0;
    for (i64 p = 0; p < s.planes; ++p)
      for (i64 i = 0; i < ho; ++i)
        for (i64 j = 0; j < wo; ++j) {
          const i64 o = (p * ho + i) * wo + j, e = (p * s.h + 2 * i) * s.w + 2 * j;
          const float a[4] = {xv[e], xv[e + 1], xv[e + s.w], xv[e + s.w + 1]};
          const u8 q = first_max(a);
          at_ref[o] = q, y_ref[o] = a[q], winner[o] = e + (q >> 1) * s.w + (q & 1);
          tied += std::count(a, a + 4, a[q]) > 1;
        }
    CHECK(bit_patterns(y.values()) == bit_patterns(y_ref));
    CHECK(at.values() == at_ref);
    if (ny > 100) CHECK(tied > ny / 4);  // the tie rule was exercised

    // Backward from an independent random argmax (all four positions), over a NaN-filled dx: every
    // element written, or with accumulate only the winners, added to what dx holds.
    std::uniform_int_distribution<int> pos(0, 3);
    for (i64 o = 0; o < ny; ++o) {
      at.get()[o] = static_cast<u8>(pos(rng));
      const i64 i = (o / wo) % ho, j = o % wo, p = o / (ho * wo);
      winner[o] = (p * s.h + 2 * i + (at.get()[o] >> 1)) * s.w + 2 * j + (at.get()[o] & 1);
    }
    const auto dyv = random_values(rng, ny, -2.0f, 2.0f);
    const auto prior = random_values(rng, nx, -1.0f, 1.0f);
    Array dy(dyv, DType::f32), dx(nx, DType::f32), dx_acc(prior, DType::f32);
    k::maxpool2x2_backward(dy.f(), at.get(), s.planes, s.h, s.w, dx.f(), false, nullptr);
    k::maxpool2x2_backward(dy.f(), at.get(), s.planes, s.h, s.w, dx_acc.f(), true, nullptr);
    std::vector<float> dx_ref(static_cast<std::size_t>(nx), 0.0f), acc_ref = prior;
    for (i64 o = 0; o < ny; ++o) dx_ref[winner[o]] += dyv[o], acc_ref[winner[o]] += dyv[o];
    CHECK(bit_patterns(dx.values()) == bit_patterns(dx_ref));
    CHECK(bit_patterns(dx_acc.values()) == bit_patterns(acc_ref));
  }
}

TEST_CASE("emulated kernels: maxpool2x2 NHWC forward/backward in f32, bf16, f16") {
  GuardCheck guard;
  std::mt19937 rng(102);
  struct Shape {
    i64 n, c, h, w;
  };
  for (const DType t : kTypes)
    for (const Shape s : {Shape{1, 1, 2, 2}, {2, 3, 5, 7}, {1, 4, 1, 6}, {3, 17, 9, 11}, {2, 64, 13, 15}}) {
      INFO(dtype_name(t), " n ", s.n, " c ", s.c, " h ", s.h, " w ", s.w);
      const i64 ho = s.h / 2, wo = s.w / 2, nx = s.n * s.h * s.w * s.c, ny = s.n * ho * wo * s.c;
      const auto xv = tie_values(rng, nx);
      Array x(xv, t), y(ny, t);
      Bytes at(ny);
      k::maxpool2x2_nhwc_forward(x.raw(), s.n, s.c, s.h, s.w, y.raw(), at.get(), t, nullptr);
      const auto xi = [&](i64 b, i64 r, i64 col, i64 ch) { return ((b * s.h + r) * s.w + col) * s.c + ch; };
      std::vector<float> y_ref(static_cast<std::size_t>(ny));
      std::vector<u8> at_ref(y_ref.size());
      std::vector<i64> winner(y_ref.size());
      for (i64 b = 0; b < s.n; ++b)
        for (i64 i = 0; i < ho; ++i)
          for (i64 j = 0; j < wo; ++j)
            for (i64 ch = 0; ch < s.c; ++ch) {
              const i64 o = ((b * ho + i) * wo + j) * s.c + ch;
              const float a[4] = {xv[xi(b, 2 * i, 2 * j, ch)], xv[xi(b, 2 * i, 2 * j + 1, ch)],
                                  xv[xi(b, 2 * i + 1, 2 * j, ch)], xv[xi(b, 2 * i + 1, 2 * j + 1, ch)]};
              const u8 q = first_max(a);
              at_ref[o] = q, y_ref[o] = a[q], winner[o] = xi(b, 2 * i + (q >> 1), 2 * j + (q & 1), ch);
            }
      CHECK(bit_patterns(y.values()) == bit_patterns(y_ref));
      CHECK(at.values() == at_ref);

      // Backward with the forward's argmax (checked above), dy and prior dx exact in t.
      const auto dyv = random_values(rng, ny, -2.0f, 2.0f, t);
      const auto prior = random_values(rng, nx, -1.0f, 1.0f, t);
      Array dy(dyv, t), dx(nx, t), dx_acc(prior, t);
      k::maxpool2x2_nhwc_backward(dy.raw(), at.get(), s.n, s.c, s.h, s.w, dx.raw(), false, t, nullptr);
      k::maxpool2x2_nhwc_backward(dy.raw(), at.get(), s.n, s.c, s.h, s.w, dx_acc.raw(), true, t, nullptr);
      std::vector<float> dx_ref(static_cast<std::size_t>(nx), 0.0f), acc_ref = prior;
      for (i64 o = 0; o < ny; ++o)
        dx_ref[winner[o]] += dyv[o], acc_ref[winner[o]] = round_to(prior[winner[o]] + dyv[o], t);
      CHECK(bit_patterns(dx.values()) == bit_patterns(dx_ref));
      CHECK(bit_patterns(dx_acc.values()) == bit_patterns(acc_ref));
    }
}

TEST_CASE("emulated kernels: softmax over channels, forward and backward") {
  GuardCheck guard;
  std::mt19937 rng(103);
  for (const i64 c : {1, 2, 5})
    for (const auto& [n, plane] : {std::pair<i64, i64>{1, 1}, {2, 37}, {3, 300}, {2, 1337}}) {
      INFO("n ", n, " c ", c, " plane ", plane);
      const i64 total = n * c * plane;
      const auto xv = random_values(rng, total, -8.0f, 8.0f);
      const auto pv = random_values(rng, total, 0.0f, 1.0f), dpv = random_values(rng, total, -1.0f, 1.0f);
      Array x(xv, DType::f32), p(total, DType::f32), pin(pv, DType::f32), dp(dpv, DType::f32), dx(total, DType::f32);
      k::softmax_channels(x.f(), n, c, plane, p.f(), nullptr);
      k::softmax_channels_backward(pin.f(), dp.f(), n, c, plane, dx.f(), nullptr);
      Worst worst_p, worst_dx;
      for (i64 b = 0; b < n; ++b)
        for (i64 i = 0; i < plane; ++i) {
          const auto at = [&](i64 ch) { return static_cast<std::size_t>((b * c + ch) * plane + i); };
          double mx = -INFINITY, sum = 0.0, dot = 0.0, dot_abs = 0.0;
          for (i64 ch = 0; ch < c; ++ch) mx = std::max(mx, double(xv[at(ch)]));
          for (i64 ch = 0; ch < c; ++ch) sum += std::exp(xv[at(ch)] - mx);
          for (i64 ch = 0; ch < c; ++ch)
            dot += double(pv[at(ch)]) * dpv[at(ch)], dot_abs += std::abs(pv[at(ch)] * dpv[at(ch)]);
          for (i64 ch = 0; ch < c; ++ch) {
            const double want = std::exp(xv[at(ch)] - mx) / sum;
            worst_p(std::abs(p.get(at(ch)) - want) / want);
            // dx = p (dp - dot): error relative to the terms, not to a result that may cancel
            const double want_dx = pv[at(ch)] * (dpv[at(ch)] - dot);
            const double scale = pv[at(ch)] * (std::abs(dpv[at(ch)]) + dot_abs) + 1e-30;
            worst_dx(std::abs(dx.get(at(ch)) - want_dx) / scale);
          }
        }
      CHECK(worst_p.v < 2e-6);  // the float x - max rounds: exp turns 2^-24 of |x - max| <= 16 into 1e-6
      CHECK(worst_dx.v < 1e-6);
    }
}

TEST_CASE("emulated kernels: cross_entropy_mean and cross_entropy_backward with invalid labels") {
  GuardCheck guard;
  std::mt19937 rng(104);
  // 263000 pixels > 1024 blocks * 256: the partials' grid-stride loop takes a second round
  for (const Nchw s : {Nchw{1, 1, 7}, {2, 2, 300}, {3, 5, 1001}, {1, 2, 263000}}) {
    INFO("n ", s.n, " c ", s.c, " plane ", s.plane);
    const i64 pixels = s.n * s.plane, total = pixels * s.c;
    const auto pv = probabilities(rng, total);
    const auto lv = make_labels(rng, pixels, s.c);
    const float dl = 0.37f, kk = dl / static_cast<float>(pixels);  // the backward's factor, as the CPU rounds it
    Array p(pv, DType::f32), labels(lv, DType::f32), dx(total, DType::f32), loss(1, DType::f32),
        dl_device(std::vector<float>{dl}, DType::f32);
    i64 invalid = -5;
    k::cross_entropy_mean(p.f(), labels.f(), s.n, s.c, s.plane, loss.f(), &invalid, nullptr);
    k::cross_entropy_backward(p.f(), labels.f(), s.n, s.c, s.plane, dl_device.f(), dx.f(), nullptr);

    double sum_ref = 0.0;
    i64 invalid_ref = 0;
    Worst worst_dx;  // relative to k: two float roundings
    for (i64 b = 0; b < s.n; ++b)
      for (i64 i = 0; i < s.plane; ++i) {
        i64 label = -1;
        if (label_class(lv[b * s.plane + i], s.c, label))
          sum_ref -= std::log(std::max<double>(pv[(b * s.c + label) * s.plane + i], 1e-30f));
        else
          ++invalid_ref;
        for (i64 ch = 0; ch < s.c; ++ch) {
          const i64 e = (b * s.c + ch) * s.plane + i;
          worst_dx(std::abs(dx.get(e) - double(kk) * (pv[e] - (ch == label ? 1.0 : 0.0))) / kk);
        }
      }
    CHECK(invalid == invalid_ref);
    CHECK(invalid_ref > 0);
    // positive terms, each within logf's ulp, then one rounding to float
    const double mean_ref = sum_ref / static_cast<double>(pixels);
    CHECK(std::abs(loss.get(0) - mean_ref) <= 1e-7 * mean_ref + std::abs(static_cast<float>(mean_ref) - mean_ref));
    CHECK(worst_dx.v < 2.5e-7);
  }
}

TEST_CASE("emulated kernels: dice_sums and dice_grad_probs with invalid labels") {
  GuardCheck guard;
  std::mt19937 rng(105);
  // 110000 pixels > 409 chunks (2048 / c) * 256: a second grid-stride round
  for (const Nchw s : {Nchw{1, 1, 7}, {2, 2, 300}, {3, 5, 401}, {1, 5, 110000}}) {
    INFO("n ", s.n, " c ", s.c, " plane ", s.plane);
    const i64 pixels = s.n * s.plane, total = pixels * s.c;
    const auto pv = probabilities(rng, total);
    const auto lv = make_labels(rng, pixels, s.c);
    Array p(pv, DType::f32), labels(lv, DType::f32), dP(total, DType::f32);
    DeviceArray<double> sums(2 * s.c);
    sums.set(std::vector<double>(2 * s.c, 123.0));  // overwritten, not added to
    i64 invalid = -5;
    k::dice_sums(p.f(), labels.f(), s.n, s.c, s.plane, sums.get(), &invalid, nullptr);
    const auto scale = random_values(rng, s.c, -1.0f, 1.0f), target = random_values(rng, s.c, -1.0f, 1.0f);
    const float g = -0.731f;
    Array scale_device(scale, DType::f32), target_device(target, DType::f32),
        g_device(std::vector<float>{g}, DType::f32);
    k::dice_grad_probs(labels.f(), s.n, s.c, s.plane, scale_device.f(), target_device.f(), g_device.f(), dP.f(),
                       nullptr);

    std::vector<double> inter_ref(s.c, 0.0), denom_ref(s.c, 0.0);
    i64 invalid_ref = 0;
    Worst worst;
    for (i64 b = 0; b < s.n; ++b)
      for (i64 i = 0; i < s.plane; ++i) {
        i64 label = -1;
        if (label_class(lv[b * s.plane + i], s.c, label))
          inter_ref[label] += pv[(b * s.c + label) * s.plane + i], denom_ref[label] += 1.0;
        else
          ++invalid_ref;
        for (i64 ch = 0; ch < s.c; ++ch) {
          const i64 e = (b * s.c + ch) * s.plane + i;
          denom_ref[ch] += pv[e];
          const double want = double(g) * scale[ch] + (ch == label ? double(g) * target[ch] : 0.0);
          const double terms = std::abs(g * scale[ch]) + std::abs(g * target[ch]);
          worst(std::abs(dP.get(e) - want) / terms);
        }
      }
    CHECK(invalid == invalid_ref);
    const std::vector<double> got = sums.values();  // intersections, then denominators
    for (i64 ch = 0; ch < s.c; ++ch) {
      CAPTURE(ch);
      CHECK(std::abs(got[ch] - inter_ref[ch]) <= 1e-12 * inter_ref[ch]);
      CHECK(std::abs(got[s.c + ch] - denom_ref[ch]) <= 1e-12 * denom_ref[ch]);
    }
    CHECK(worst.v < 2.5e-7);
  }
}

TEST_CASE("emulated kernels: dice_loss_finish adds the pieces in order and is dd::dice_loss's arithmetic") {
  GuardCheck guard;
  std::mt19937 rng(110);
  std::uniform_real_distribution<double> u(0.0, 500.0);
  for (const i64 c : {1, 2, 5}) {
    for (const i64 pieces : {1, 4}) {
      INFO("c ", c, " pieces ", pieces);
      std::vector<double> sv(static_cast<std::size_t>(pieces * 2 * c));
      for (i64 q = 0; q < pieces; ++q)
        for (i64 k = 0; k < c; ++k) {
          const double inter = u(rng);
          sv[q * 2 * c + k] = inter;
          sv[q * 2 * c + c + k] = 2.0 * inter + u(rng);  // S >= 2 I: I is at most sum p and the count
        }
      if (c > 1)  // a class absent everywhere: its denominator is clamped
        for (i64 q = 0; q < pieces; ++q) sv[q * 2 * c + 1] = 0.0, sv[q * 2 * c + c + 1] = 0.0;
      DeviceArray<double> sums(static_cast<i64>(sv.size()));
      sums.set(sv);
      Array loss(1, DType::f32), scale(c, DType::f32), target(c, DType::f32);
      k::dice_loss_finish(sums.get(), pieces, c, loss.f(), scale.f(), target.f(), nullptr);

      // The contract: per class I and S summed over pieces in order, S clamped at 1e-7;
      // loss = mean (1 - 2 I / S); scale = 2 I / (S^2 c) (0 when clamped), target = -2 / (S c).
      double total = 0.0;
      for (i64 k = 0; k < c; ++k) {
        CAPTURE(k);
        double inter = 0.0, denom = 0.0;
        for (i64 q = 0; q < pieces; ++q) inter += sv[q * 2 * c + k], denom += sv[q * 2 * c + c + k];
        const bool clamped = denom < 1e-7;
        const double S = clamped ? 1e-7 : denom;
        total += 1.0 - 2.0 * inter / S;
        CHECK(bits(target.get(k)) == bits(static_cast<float>(-2.0 / S / double(c))));
        CHECK(bits(scale.get(k)) == bits(clamped ? 0.0f : static_cast<float>(2.0 * inter / (S * S) / double(c))));
      }
      CHECK(bits(loss.get(0)) == bits(static_cast<float>(total / double(c))));
      CHECK(loss.get(0) >= 0.0f);
      CHECK(loss.get(0) <= 1.0f);
    }
  }
}

TEST_CASE("emulated kernels: adam_step_counted is dd::Adam's float arithmetic, bit for bit; a zero gate skips") {
  GuardCheck guard;
  std::mt19937 rng(106);
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, lr = 3e-3f;
  for (const i64 n : {1, 255, 1000, 70001}) {
    CAPTURE(n);
    auto pv = random_values(rng, n, -1.0f, 1.0f), mv = random_values(rng, n, -0.1f, 0.1f);
    auto vv = random_values(rng, n, 0.0f, 0.01f);
    Array p(pv, DType::f32), m(mv, DType::f32), v(vv, DType::f32), g(n, DType::f32);
    Array counter(sizeof(AdamCounter) / sizeof(float), DType::f32), gate(1, DType::f32);
    const auto count = [&] {
      AdamCounter c;
      std::memcpy(&c, counter.raw(), sizeof c);
      return c;
    };
    std::memset(counter.raw(), 0, sizeof(AdamCounter));
    int t = 0;
    // Steps with and without a gate; the gated-off ones (2 and 5) change nothing, the count included.
    for (int call = 1; call <= 6; ++call) {
      const bool skip = call == 2 || call == 5;
      const bool gated = call >= 2;
      gate.put(0, skip ? 0.0f : 1.0f);
      const auto gv = random_values(rng, n, -1.0f, 1.0f);
      g.set(gv);
      k::adam_step_counted(p.f(), g.f(), m.f(), v.f(), n, static_cast<AdamCounter*>(counter.raw()),
                           gated ? gate.f() : nullptr, double(lr), b1, b2, eps, wd, nullptr);
      CAPTURE(call);
      CHECK(count().skip == (skip ? 1 : 0));
      if (!skip) {
        ++t;
        const double bc1 = 1.0 - std::pow(double(b1), t), bc2 = 1.0 - std::pow(double(b2), t);
        const float step = static_cast<float>(lr / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
        CHECK(bits(count().step) == bits(step));
        CHECK(bits(count().inv_bc2) == bits(inv_bc2));
        for (std::size_t i = 0; i < pv.size(); ++i) {  // dd::Adam::step's CPU loop
          const float gi = gv[i] + wd * pv[i];
          mv[i] = b1 * mv[i] + (1.0f - b1) * gi;
          vv[i] = b2 * vv[i] + (1.0f - b2) * gi * gi;
          pv[i] -= step * mv[i] / (std::sqrt(vv[i] * inv_bc2) + eps);
        }
      }
      CHECK(count().t == t);
      CHECK(bit_patterns(m.values()) == bit_patterns(mv));
      CHECK(bit_patterns(v.values()) == bit_patterns(vv));
      CHECK(bit_patterns(p.values()) == bit_patterns(pv));
    }
  }
}

TEST_CASE("emulated kernels: loss scaling on the device is dd::LossScaler's arithmetic") {
  GuardCheck guard;
  std::mt19937 rng(112);
  const LossScalerOptions o{
      .initial_scale = 1024.0f, .growth = 2.0f, .backoff = 0.5f, .growth_interval = 3, .min_scale = 256.0f};
  Array state(sizeof(LossScaleState) / sizeof(float), DType::f32);
  const auto read = [&] {
    LossScaleState st;
    std::memcpy(&st, state.raw(), sizeof st);
    return st;
  };
  LossScaleState init;
  init.scale = o.initial_scale;
  std::memcpy(state.raw(), &init, sizeof init);
  // The host's reference: the scale, clean steps and skips as dd::LossScaler updates them.
  float scale = o.initial_scale;
  int clean = 0;
  std::int64_t skipped = 0;
  const i64 n = 263000;  // several partial blocks
  for (int step = 0; step < 12; ++step) {
    CAPTURE(step);
    auto gv = random_values(rng, n, -3.0f, 3.0f);
    const bool overflow = step == 4 || step == 7 || step == 8 || step == 9;
    if (overflow) gv[static_cast<std::size_t>(step * 1000)] = step == 7 ? kNaN : kInf;
    Array g(gv, DType::f32);
    Array seed(5, DType::f32);
    k::loss_scale_fill(seed.f(), 5, static_cast<const LossScaleState*>(state.raw()), nullptr);
    CHECK(seed.values() == std::vector<float>(5, scale));
    k::loss_scale_unscale(g.f(), n, static_cast<LossScaleState*>(state.raw()), o, nullptr);
    std::vector<float> want = gv;
    if (overflow) {
      scale = std::max(o.min_scale, scale * o.backoff);
      clean = 0;
      ++skipped;
    } else {
      for (auto& x : want) x *= 1.0f / scale;
      if (++clean >= o.growth_interval) scale *= o.growth, clean = 0;
    }
    CHECK(bit_patterns(g.values()) == bit_patterns(want));  // an overflowed step's gradients are left
    CHECK(read().gate == (overflow ? 0.0f : 1.0f));
    CHECK(read().scale == scale);
    CHECK(read().clean_steps == clean);
    CHECK(read().skipped == skipped);
  }
  CHECK(scale == 256.0f);  // three overflows in a row from 2048 stop at min_scale
  Array none(1, DType::f32);
  k::loss_scale_unscale(none.f(), 0, static_cast<LossScaleState*>(state.raw()), o, nullptr);  // no gradients: clean
  CHECK(read().gate == 1.0f);
}

TEST_CASE("emulated kernels: sum_squares and count_nonfinite") {
  GuardCheck guard;
  std::mt19937 rng(107);
  // 263000 > 1024 blocks * 256: the partials' grid-stride loop takes a second round
  for (const i64 n : {1, 7, 256, 1000, 263000}) {
    CAPTURE(n);
    auto xv = random_values(rng, n, -3.0f, 3.0f);
    xv[0] = 1e18f;  // a wide range of magnitudes
    Array x(xv, DType::f32);
    double want = 0.0;
    for (float v : xv) want += double(v) * v;
    CHECK(std::abs(k::sum_squares(x.f(), n, nullptr) - want) <= 1e-12 * want);

    // non-finite values, among finite extremes (FLT_MAX, denormals), at random places
    const float odd[] = {kNaN,
                         kInf,
                         -kInf,
                         from_bits(0x7f800001u),
                         from_bits(0xffffffffu),
                         std::numeric_limits<float>::max(),
                         -std::numeric_limits<float>::max(),
                         1e-45f};
    std::uniform_int_distribution<i64> where(0, n - 1);
    for (int j = 0; j < 20; ++j) xv[where(rng)] = odd[j % std::size(odd)];
    x.set(xv);
    const i64 bad = std::count_if(xv.begin(), xv.end(), [](float v) { return !std::isfinite(v); });
    CHECK(k::count_nonfinite(x.f(), n, nullptr) == bad);
  }
  Array none(0, DType::f32);
  CHECK(k::sum_squares(none.f(), 0, nullptr) == 0.0);
  k::clip_by_norm(none.f(), 0, 1.0, nullptr);  // nothing to do, nothing touched
  CHECK(k::count_nonfinite(none.f(), 0, nullptr) == 0);
}

TEST_CASE("emulated kernels: clip_by_norm is dd::clip_grad_norm's arithmetic with the norm left on the device") {
  GuardCheck guard;
  std::mt19937 rng(111);
  for (const i64 n : {1, 1000, 263000}) {
    const auto xv = random_values(rng, n, -3.0f, 3.0f);
    Array x(xv, DType::f32);
    const double norm = std::sqrt(k::sum_squares(x.f(), n, nullptr));  // the same reduction, waited for
    for (const double max_norm : {0.5 * norm, 2.0 * norm, norm}) {
      INFO("n ", n, " max_norm / norm ", max_norm / norm);
      x.set(xv);
      k::clip_by_norm(x.f(), n, max_norm, nullptr);
      std::vector<float> want = xv;
      if (norm > max_norm)
        for (auto& v : want) v *= static_cast<float>(max_norm / (norm + 1e-6));
      CHECK(bit_patterns(x.values()) == bit_patterns(want));
      double after = 0.0;
      for (float v : x.values()) after += double(v) * v;
      CHECK(std::sqrt(after) <= std::min(max_norm, norm) * (1 + 1e-5));  // at most max_norm after
    }
  }
  // A NaN norm clips nothing (as on the CPU: the comparison fails).
  std::vector<float> xv = {1.0f, kNaN, -2.0f};
  Array x(xv, DType::f32);
  k::clip_by_norm(x.f(), 3, 0.1, nullptr);
  CHECK(bit_patterns(x.values()) == bit_patterns(xv));
}

TEST_CASE("emulated kernels: batch norm eval pieces: invstd and backward_eval, both layouts, all types") {
  GuardCheck guard;
  std::mt19937 rng(108);
  for (const i64 c : {1, 37, 1000}) {
    CAPTURE(c);
    auto var = random_values(rng, c, 0.0f, 4.0f);
    var[0] = 0.0f;
    const float eps = 1e-5f;
    Array v(var, DType::f32), inv(c, DType::f32);
    k::batchnorm_invstd(v.f(), c, eps, inv.f(), nullptr);
    for (i64 ch = 0; ch < c; ++ch) {
      CHECK(bits(inv.get(ch)) == bits(1.0f / std::sqrt(var[ch] + eps)));  // the CPU's float expression
      const double want = 1.0 / std::sqrt(double(var[ch]) + double(eps));
      CHECK(std::abs(inv.get(ch) - want) <= 3e-7 * want);
    }
  }

  // Outputs given: bit 1 dx, 2 dgamma, 4 dbeta.
  struct Run {
    Nchw s;
    int outputs;
  };
  std::vector<Run> runs;
  for (const Nchw s : {Nchw{1, 1, 1}, {2, 3, 35}, {3, 5, 129}, {1, 2, 700}})
    for (const int outputs : {7, 1}) runs.push_back({s, outputs});
  for (const int outputs : {2, 4, 3}) runs.push_back({{1, 2, 35}, outputs});
  runs.push_back({{2, 3, 90001}, 7});  // count 180002 > 682 chunks (2048 / c) * 256: a second round
  for (const bool nhwc : {false, true})
    for (const DType t : kTypes)
      for (auto [s, outputs] : runs) {
        // the large run's sums take ~2000 blocks of barriers: in f32 only (dx alone in half types)
        if (s.plane > 10000 && t != DType::f32) outputs = 1;
        INFO((nhwc ? "NHWC " : "NCHW "), dtype_name(t), " n ", s.n, " c ", s.c, " plane ", s.plane, " outputs ",
             outputs);
        const i64 total = s.n * s.c * s.plane;
        const auto xv = random_values(rng, total, -2.0f, 2.0f, t), dyv = random_values(rng, total, -2.0f, 2.0f, t);
        const auto gamma = random_values(rng, s.c, 0.5f, 1.5f), mean = random_values(rng, s.c, -0.5f, 0.5f);
        const auto invstd = random_values(rng, s.c, 0.5f, 2.0f);
        const auto dg0 = random_values(rng, s.c, -3.0f, 3.0f), db0 = random_values(rng, s.c, -3.0f, 3.0f);
        Array x(xv, t), dy(dyv, t), dx(total, t), g(gamma, DType::f32), m(mean, DType::f32), is(invstd, DType::f32);
        Array dgamma(dg0, DType::f32), dbeta(db0, DType::f32);
        k::batchnorm_backward_eval(x.raw(), dy.raw(), g.f(), m.f(), is.f(), s.n, s.c, s.plane,
                                   outputs & 1 ? dx.raw() : nullptr, outputs & 2 ? dgamma.f() : nullptr,
                                   outputs & 4 ? dbeta.f() : nullptr, nhwc, t, nullptr);

        // dx: rounded once into t from a float value within 1e-6 of the double one.
        const double rel = (t == DType::bf16 ? 0x1p-8 : t == DType::f16 ? 0x1p-11 : 0.0) + 1e-6;
        const double abs_floor = t == DType::f16 ? 0x1p-25 : 0.0;  // f16 subnormals
        Worst worst_dx;                                            // beyond the allowed error
        for (i64 ch = 0; ch < s.c; ++ch) {
          double sdy = 0.0, sdy_abs = 0.0, sdyx = 0.0, sdyx_abs = 0.0;
          for (i64 b = 0; b < s.n; ++b)
            for (i64 i = 0; i < s.plane; ++i) {
              const i64 e = nhwc ? (b * s.plane + i) * s.c + ch : (b * s.c + ch) * s.plane + i;
              const double d = dyv[e], term = d * (double(xv[e]) - mean[ch]);
              sdy += d, sdy_abs += std::abs(d), sdyx += term, sdyx_abs += std::abs(term);
              const double want = d * gamma[ch] * invstd[ch];
              if (outputs & 1) worst_dx(std::abs(dx.get(e) - want) - rel * std::abs(want) - abs_floor);
            }
          CAPTURE(ch);
          // Added to the prior values (left exactly as they were when not given); bounds relative to
          // the terms, since the sums cancel.
          const bool dg = outputs & 2, db = outputs & 4;
          const double dg_want = dg0[ch] + (dg ? invstd[ch] * sdyx : 0.0), db_want = db0[ch] + (db ? sdy : 0.0);
          CHECK(std::abs(dgamma.get(ch) - dg_want) <= (dg ? 1e-6 * (std::abs(dg0[ch]) + invstd[ch] * sdyx_abs) : 0.0));
          CHECK(std::abs(dbeta.get(ch) - db_want) <= (db ? 1e-6 * (std::abs(db0[ch]) + sdy_abs) : 0.0));
        }
        if (outputs & 1)
          CHECK(worst_dx.v <= 0.0);
        else  // dx not given: the array keeps its NaN fill (nothing wrote to it)
          CHECK(std::isnan(dx.get(0)));
      }
}

}  // namespace dd::emulated_test
