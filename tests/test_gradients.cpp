// Every op's backward against central finite differences (relative error < 1e-3).
#include <doctest/doctest.h>

#include "gradcheck.hpp"
#include "reference_unet.hpp"

using ddtest::check_op;
using dd::Shape;
using dd::Tensor;
using dd::Var;

namespace {
constexpr double tol = 1e-3;

// Values kept at least `gap` away from zero, so +-eps never crosses relu's kink.
Tensor away_from_zero(Shape s, std::uint64_t seed, float gap = 0.1f) {
  Tensor t = Tensor::randn(s, seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] += t.data()[i] >= 0 ? gap : -gap;
  return t;
}

// Random [n, c, h, w] inputs of the parts' channel counts c (seeds seed, seed + 1, ...); cin: their sum.
std::vector<Tensor> random_parts(const std::vector<std::int64_t>& channels, Shape s, std::uint64_t seed,
                                 std::int64_t& cin) {
  std::vector<Tensor> in;
  cin = 0;
  for (std::size_t i = 0; i < channels.size(); ++i) {
    in.push_back(Tensor::randn({s.n, channels[i], s.h, s.w}, seed + i));
    cin += channels[i];
  }
  return in;
}
}  // namespace

TEST_CASE("conv2d backward matches finite differences") {
  struct Case {
    Shape x;
    std::int64_t cout, k, pad, stride, dilation;
    bool bias;
  };
  const Case cases[] = {
      {{1, 2, 7, 6}, 3, 3, 1, 1, 1, true},    // one image: threaded GEMM path
      {{3, 2, 6, 5}, 4, 3, 1, 1, 1, false},   // several images: split over threads
      {{2, 3, 9, 8}, 2, 5, 2, 1, 1, true},    // 5x5, the comm-net kernel
      {{2, 2, 9, 7}, 3, 3, 1, 2, 1, true},    // stride 2
      {{2, 2, 9, 9}, 2, 3, 2, 1, 2, false},   // dilation 2
      {{2, 3, 5, 4}, 4, 1, 0, 1, 1, true},    // 1x1 head: no im2col
      {{1, 3, 6, 6}, 2, 3, 0, 1, 1, true},    // no padding
      {{1, 64, 12, 256}, 2, 3, 1, 1, 1, true},  // wide image: several im2col row blocks
  };
  for (const auto& c : cases) {
    CAPTURE(c.x);
    CAPTURE(c.k);
    CAPTURE(c.stride);
    CAPTURE(c.dilation);
    std::vector<Tensor> in;
    in.reserve(3);  // (growing the vector set off a false -Warray-bounds in GCC 12)
    in.push_back(Tensor::randn(c.x, 1));
    in.push_back(Tensor::randn({c.cout, c.x.c, c.k, c.k}, 2, 0.3f));
    if (c.bias) in.push_back(Tensor::randn({c.cout, 1, 1, 1}, 3));
    const auto op = [&](const std::vector<Var>& v) {
      return dd::conv2d(v[0], v[1], c.bias ? v[2] : Var{}, {c.pad, c.stride, c.dilation});
    };
    CHECK(check_op(op, in) < tol);
  }
}

TEST_CASE("conv2d over channel parts: finite differences, and the same as over the concatenation") {
  struct Case {
    std::vector<std::int64_t> parts;  // channels of each part
    Shape x;                          // n, (unused), h, w
    std::int64_t cout, k, pad, stride;
  };
  const Case cases[] = {
      {{2, 3}, {2, 0, 7, 6}, 3, 3, 1, 1},    // the decoder's [skip, up]
      {{1, 2, 1}, {1, 0, 9, 8}, 2, 5, 2, 1},  // three parts, 5x5
      {{2, 2}, {2, 0, 9, 7}, 3, 3, 1, 2},    // stride 2: the col2im path
      {{3, 1}, {2, 0, 5, 4}, 4, 1, 0, 1},    // 1x1: no im2col for a single part, parts need it
      {{8, 8}, {1, 0, 40, 64}, 4, 3, 1, 1},  // several row blocks
  };
  for (const auto& c : cases) {
    CAPTURE(c.parts.size());
    CAPTURE(c.k);
    CAPTURE(c.stride);
    std::int64_t cin = 0;
    std::vector<Tensor> in = random_parts(c.parts, c.x, 30, cin);
    const std::size_t np = c.parts.size();
    in.push_back(Tensor::randn({c.cout, cin, c.k, c.k}, 40, 0.3f));
    in.push_back(Tensor::randn({c.cout, 1, 1, 1}, 41));
    const dd::Conv2dOptions o{c.pad, c.stride, 1};
    const auto parts_op = [&](const std::vector<Var>& v) {
      return dd::conv2d(std::vector<Var>(v.begin(), v.begin() + np), v[np], v[np + 1], o);
    };
    const auto concat_op = [&](const std::vector<Var>& v) {
      return dd::conv2d(dd::concat(std::vector<Var>(v.begin(), v.begin() + np), 1), v[np], v[np + 1], o);
    };
    if (c.x.h * c.x.w < 1000) CHECK(check_op(parts_op, in) < tol);

    std::vector<Var> a, b;
    for (const Tensor& t : in) a.emplace_back(t, true), b.emplace_back(t, true);
    const Var ya = parts_op(a);
    const Tensor r = Tensor::randn(ya.shape(), 42);
    dd::weighted_sum(ya, r).backward();  // one graph per backward: it replays and clears the tape
    const Var yb = concat_op(b);
    dd::weighted_sum(yb, r).backward();
    CHECK(ya.value().to_vector() == yb.value().to_vector());  // the same col blocks, the same GEMMs
    for (std::size_t i = 0; i < in.size(); ++i) {
      CAPTURE(i);
      const auto ga = a[i].grad().to_vector(), gb = b[i].grad().to_vector();
      REQUIRE(ga.size() == gb.size());
      double diff = 0, norm = 0;
      for (std::size_t j = 0; j < ga.size(); ++j) {
        diff = std::max(diff, double(std::abs(ga[j] - gb[j])));
        norm = std::max(norm, double(std::abs(gb[j])));
      }
      CHECK(diff <= 1e-6 * std::max(norm, 1.0));
    }
  }
  const Var x1(Tensor::randn({1, 2, 6, 6}, 1)), x2(Tensor::randn({1, 2, 5, 6}, 2));
  const Var w(Tensor::randn({1, 4, 3, 3}, 3));
  CHECK_THROWS_WITH_AS(dd::conv2d(std::vector<Var>{x1, x2}, w, Var{}, {1, 1, 1}), doctest::Contains("differ outside"),
                       dd::Error);
  CHECK_THROWS_WITH_AS(dd::conv2d(std::vector<Var>{x1, x1, x1}, w, Var{}, {1, 1, 1}),
                       doctest::Contains("input has 6 channels"), dd::Error);
}

TEST_CASE("batch_norm backward matches finite differences (train and eval)") {
  for (bool training : {true, false}) {
    CAPTURE(training);
    const Tensor rm = Tensor::randn({3, 1, 1, 1}, 4, 0.5f);
    Tensor rv = Tensor::randn({3, 1, 1, 1}, 5);
    for (std::int64_t i = 0; i < 3; ++i) rv.data()[i] = 0.5f + std::abs(rv.data()[i]);
    const auto op = [&](const std::vector<Var>& v) {
      // Copies of the running statistics, so repeated evaluations see the same ones.
      return dd::batch_norm(v[0], v[1], v[2], rm.clone(), rv.clone(), {training, 0.1f, 1e-5f});
    };
    Tensor gamma = Tensor::randn({3, 1, 1, 1}, 6);
    const std::vector<Tensor> in{Tensor::randn({2, 3, 5, 4}, 7, 2.0f), gamma, Tensor::randn({3, 1, 1, 1}, 8)};
    CHECK(check_op(op, in, 3e-3f) < tol);
  }
}

TEST_CASE("relu, max_pool, upconv, concat, slice, dropout backward match finite differences") {
  SUBCASE("relu") {
    CHECK(check_op([](const std::vector<Var>& v) { return dd::relu(v[0]); }, {away_from_zero({2, 3, 4, 5}, 9)}) < tol);
  }
  SUBCASE("max_pool2x2") {
    // Distinct values 0.1 apart: +-eps never changes a window's winner.
    Tensor x = Tensor::empty({2, 2, 6, 8});
    dd::Rng rng(10);
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data()[i] = 0.1f * static_cast<float>(i);
    for (std::int64_t i = x.numel() - 1; i > 0; --i) std::swap(x.data()[i], x.data()[rng.uniform_int(0, i)]);
    CHECK(check_op([](const std::vector<Var>& v) { return dd::max_pool2x2(v[0]); }, {x}) < tol);
  }
  SUBCASE("upconv2x2") {
    const std::vector<Tensor> in{Tensor::randn({2, 4, 3, 5}, 11), Tensor::randn({4, 3, 2, 2}, 12),
                                 Tensor::randn({3, 1, 1, 1}, 13)};
    CHECK(check_op([](const std::vector<Var>& v) { return dd::upconv2x2(v[0], v[1], v[2]); }, in) < tol);
  }
  SUBCASE("concat and slice along every dimension") {
    for (int dim = 0; dim < 4; ++dim) {
      CAPTURE(dim);
      const std::vector<Tensor> in{Tensor::randn({2, 3, 4, 5}, 14), Tensor::randn({2, 3, 4, 5}, 15)};
      const auto op = [dim](const std::vector<Var>& v) {
        return dd::slice(dd::concat({v[0], v[1], v[0]}, dim), dim, 1, 4);
      };
      CHECK(check_op(op, in) < tol);
    }
  }
  SUBCASE("dropout2d") {
    const auto op = [](const std::vector<Var>& v) {
      dd::Rng rng(16);  // same mask at every evaluation
      return dd::dropout2d(v[0], 0.3f, rng, true);
    };
    CHECK(check_op(op, {Tensor::randn({3, 4, 3, 3}, 17)}) < tol);
  }
  SUBCASE("softmax and cross_entropy") {
    CHECK(check_op([](const std::vector<Var>& v) { return dd::softmax(v[0]); }, {Tensor::randn({2, 3, 3, 4}, 18)}) <
          tol);
    Tensor labels = Tensor::empty({2, 1, 3, 4});
    dd::Rng rng(19);
    for (std::int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = static_cast<float>(rng.uniform_int(0, 2));
    const auto ce = [&](const std::vector<Var>& v) { return dd::cross_entropy(v[0], labels); };
    CHECK(check_op(ce, {Tensor::randn({2, 3, 3, 4}, 20)}, 1e-2f) < tol);
  }
}

TEST_CASE("whole U-Net(2): forward and loss gradient match a double-precision reference") {
  // Finite differences of a ReLU network in float32 cross activation kinks at any usable step,
  // so the differences are taken in double on an independent loop implementation, and the
  // framework's float forward and tape gradient are compared with it.
  using Net = dd::UNet<2, 1, 3, 4>;
  dd::Model<Net> model(21);
  model.train();
  const Tensor x = Tensor::randn({2, 1, 16, 16}, 22);
  Tensor labels = Tensor::empty({2, 1, 16, 16});
  std::vector<int> label_ints;
  dd::Rng rng(23);
  for (std::int64_t i = 0; i < labels.numel(); ++i) {
    label_ints.push_back(static_cast<int>(rng.uniform_int(0, 2)));
    labels.data()[i] = static_cast<float>(label_ints.back());
  }
  const std::uint64_t dropout_seed = 24;
  model.reseed_dropout(dropout_seed);
  const Var logits = model.forward(Var(x));
  const Var loss = dd::cross_entropy(logits, labels);
  loss.backward();

  ddtest::ReferenceUNet ref(2, 4, 3, 0.1f);
  ddtest::Map xm(2, 1, 16, 16);
  for (std::int64_t i = 0; i < x.numel(); ++i) xm.v[std::size_t(i)] = x.data()[i];
  std::vector<double> theta(model.parameters().data(), model.parameters().data() + model.parameters().numel());
  const double ref_loss = ref.loss(theta, xm, label_ints, dropout_seed);

  // Same forward: logits and loss.
  double max_diff = 0, max_abs = 0;
  for (std::size_t i = 0; i < ref.logits().v.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(ref.logits().v[i] - logits.value().data()[i]));
    max_abs = std::max(max_abs, std::abs(ref.logits().v[i]));
  }
  CHECK(max_diff < 1e-4 * max_abs);
  CHECK(std::abs(ref_loss - loss.value().item()) < 1e-5 * ref_loss);

  // Same gradient: central differences in double, coordinates spread over every parameter block.
  double diff = 0, nf = 0, na = 0;
  int kinks = 0, compared = 0;
  const double eps = 1e-6;
  for (auto i : ddtest::spread(model.parameters().numel(), 400)) {
    const auto k = std::size_t(i);
    const double saved = theta[k];
    theta[k] = saved + eps;
    const double up = ref.loss(theta, xm, label_ints, dropout_seed);
    theta[k] = saved - eps;
    const double down = ref.loss(theta, xm, label_ints, dropout_seed);
    theta[k] = saved;
    const double fwd = (up - ref_loss) / eps, bwd = (ref_loss - down) / eps;
    if (std::abs(fwd - bwd) > 1e-4 * std::max(std::abs(fwd), 1e-6) + 1e-8) {  // a ReLU/max-pool kink
      ++kinks;
      continue;
    }
    const double fd = 0.5 * (fwd + bwd), an = model.gradients().data()[i];
    diff += (fd - an) * (fd - an);
    nf += fd * fd;
    na += an * an;
    ++compared;
  }
  CAPTURE(kinks);
  CHECK(compared >= 390);
  CHECK(std::sqrt(diff) / std::max(std::sqrt(nf), std::sqrt(na)) < tol);
}

TEST_CASE("fused BatchNorm -> ReLU -> Dropout2d equals the three ops bit for bit (values, gradients, statistics)") {
  using namespace dd;
  for (const bool training : {true, false})
    for (const float p : {0.0f, 0.3f}) {
      CAPTURE(training);
      CAPTURE(p);
      const Tensor x0 = Tensor::randn({3, 4, 5, 6}, 41), g0 = Tensor::randn({4, 1, 1, 1}, 42),
                   b0 = Tensor::randn({4, 1, 1, 1}, 43), R = Tensor::randn({3, 4, 5, 6}, 44);
      auto run = [&](bool fused, std::vector<float>& stats) {
        const Var x(x0.clone(), true), g(g0.clone(), true), b(b0.clone(), true);
        const Tensor rm = Tensor::randn({4, 1, 1, 1}, 45), rv = Tensor::full({4, 1, 1, 1}, 2.0f);
        Rng rng(46);
        const BatchNormOptions o{training, 0.1f, 1e-5f};
        Var y;
        if (fused) {
          y = batch_norm_relu_dropout(x, g, b, rm, rv, o, p, &rng);
        } else {
          y = relu(batch_norm(x, g, b, rm, rv, o));
          if (training && p > 0.0f) y = dropout2d(y, p, rng, true);
        }
        weighted_sum(y, R).backward();
        stats = rm.to_vector();
        for (float v : rv.to_vector()) stats.push_back(v);
        std::vector<float> out = y.value().to_vector();
        for (const Var* v : {&x, &g, &b})
          for (float e : v->grad().to_vector()) out.push_back(e);
        return out;
      };
      std::vector<float> s1, s2;
      const auto a = run(true, s1), c = run(false, s2);
      CHECK(a == c);
      CHECK(s1 == s2);
    }
}

TEST_CASE("conv2d_batch_norm_relu (inference) equals conv2d -> eval batch_norm -> relu; refuses gradients") {
  struct Case {
    std::vector<std::int64_t> parts;  // input channels of each part
    std::int64_t cout, k;
    bool bias;
  };
  const Case cases[] = {{{3}, 4, 3, false}, {{2, 3}, 5, 3, false}, {{4}, 4, 5, true}, {{3, 1}, 2, 1, true}};
  for (const auto& c : cases) {
    CAPTURE(c.parts.size());
    CAPTURE(c.k);
    CAPTURE(c.bias);
    std::int64_t cin = 0;
    std::vector<Var> parts;
    for (const Tensor& t : random_parts(c.parts, {2, 0, 9, 11}, 10, cin)) parts.emplace_back(t);
    const Var w(Tensor::randn({c.cout, cin, c.k, c.k}, 20, 0.4f));
    const Var b = c.bias ? Var(Tensor::randn({c.cout, 1, 1, 1}, 21)) : Var{};
    const Var gamma(Tensor::randn({c.cout, 1, 1, 1}, 22)), beta(Tensor::randn({c.cout, 1, 1, 1}, 23));
    Tensor mean = Tensor::randn({c.cout, 1, 1, 1}, 24), var = Tensor::randn({c.cout, 1, 1, 1}, 25);
    for (std::int64_t i = 0; i < c.cout; ++i) var.data()[i] = 0.2f + var.data()[i] * var.data()[i];
    const float eps = 1e-5f;
    const dd::Conv2dOptions o{c.k / 2, 1, 1};

    dd::NoGrad ng;
    const std::vector<float> ref =
        dd::relu(dd::batch_norm(dd::conv2d(parts, w, b, o), gamma, beta, mean, var, {false, 0.1f, eps}))
            .value()
            .to_vector();
    const std::vector<float> got =
        dd::conv2d_batch_norm_relu(parts, w, b, gamma, beta, mean, var, eps, o).value().to_vector();
    const double scale = ddtest::max_abs(ref);
    CHECK(scale > 0.5);
    CHECK(ddtest::max_abs_diff(got, ref) <= 2e-6 * scale);  // the folded weights round once more
    const auto zeros = std::count(got.begin(), got.end(), 0.0f), zeros_ref = std::count(ref.begin(), ref.end(), 0.0f);
    CHECK(zeros > std::ssize(ref) / 10);  // the ReLU ran
    CHECK(std::abs(double(zeros) - double(zeros_ref)) <= 2);
  }

  // Gradients wanted: refused with a message naming the ops to use; bad statistics and shapes too.
  const Var x(Tensor::randn({1, 2, 5, 5}, 30), true);
  const Var w(Tensor::randn({3, 2, 3, 3}, 31)), g(Tensor::full({3, 1, 1, 1}, 1.0f)), be(Tensor::zeros({3, 1, 1, 1}));
  const Tensor m = Tensor::zeros({3, 1, 1, 1}), v = Tensor::full({3, 1, 1, 1}, 1.0f);
  CHECK_THROWS_WITH_AS(dd::conv2d_batch_norm_relu({x}, w, Var{}, g, be, m, v, 1e-5f, {1, 1, 1}),
                       doctest::Contains("for inference only"), dd::Error);
  CHECK_THROWS_WITH_AS(dd::conv2d(x, w, Var(Tensor::zeros({3, 1, 1, 1})), {1, 1, 1, true}),
                       doctest::Contains("fused ReLU (Conv2dOptions::relu) is for inference"), dd::Error);
  dd::NoGrad ng;
  CHECK_THROWS_WITH_AS(dd::conv2d(x, w, Var{}, {1, 1, 1, true}), doctest::Contains("fused ReLU"), dd::Error);
  CHECK_THROWS_WITH_AS(
      dd::conv2d_batch_norm_relu({x}, w, Var{}, g, be, Tensor::zeros({2, 1, 1, 1}), v, 1e-5f, {1, 1, 1}),
      doctest::Contains("a batch norm of 3 channels (2 running means"), dd::Error);
  CHECK_THROWS_WITH_AS(dd::conv2d_batch_norm_relu({x}, w, Var{}, g, be, m, Tensor{}, 1e-5f, {1, 1, 1}),
                       doctest::Contains("0 running variances"), dd::Error);
}
