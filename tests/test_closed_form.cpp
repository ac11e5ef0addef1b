// Kernels against cases whose answer is known in closed form or by hand.
#include <doctest/doctest.h>

#include <cmath>

#include <dd/ddunet.hpp>

using dd::Shape;
using dd::Tensor;
using dd::Var;

TEST_CASE("a convolution with a delta kernel is the identity") {
  for (std::int64_t k : {1, 3, 5, 7}) {
    CAPTURE(k);
    const std::int64_t c = 3;
    Tensor w = Tensor::zeros({c, c, k, k});
    for (std::int64_t i = 0; i < c; ++i) w.at(i, i, k / 2, k / 2) = 1.0f;
    for (std::int64_t n : {1, 4}) {  // both threading paths
      const Tensor x = Tensor::randn({n, c, 9, 11}, 1);
      const Tensor y = dd::conv2d(Var(x), Var(w), Var{}, {k / 2, 1, 1}).value();
      CHECK(y.to_vector() == x.to_vector());
    }
  }
  // Dilation 2 with a delta kernel is the identity too; a bias shifts every pixel.
  Tensor w = Tensor::zeros({1, 1, 3, 3});
  w.at(0, 0, 1, 1) = 1.0f;
  const Tensor x = Tensor::randn({1, 1, 6, 6}, 2);
  const Tensor y = dd::conv2d(Var(x), Var(w), Var(Tensor::full({1, 1, 1, 1}, 0.5f)), {2, 1, 2}).value();
  for (std::int64_t i = 0; i < x.numel(); ++i) CHECK(y.data()[i] == doctest::Approx(x.data()[i] + 0.5f));
}

TEST_CASE("a shifted delta kernel shifts the image; stride 2 subsamples") {
  Tensor w = Tensor::zeros({1, 1, 3, 3});
  w.at(0, 0, 1, 2) = 1.0f;  // y(i, j) = x(i, j + 1)
  const Tensor x = Tensor::randn({1, 1, 5, 6}, 3);
  const Tensor y = dd::conv2d(Var(x), Var(w), Var{}, {1, 1, 1}).value();
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 6; ++j) CHECK(y.at(0, 0, i, j) == (j + 1 < 6 ? x.at(0, 0, i, j + 1) : 0.0f));
  Tensor d = Tensor::zeros({1, 1, 3, 3});
  d.at(0, 0, 1, 1) = 1.0f;
  const Tensor s = dd::conv2d(Var(x), Var(d), Var{}, {1, 2, 1}).value();
  CHECK(s.shape() == Shape{1, 1, 3, 3});
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) CHECK(s.at(0, 0, i, j) == x.at(0, 0, 2 * i, 2 * j));
}

TEST_CASE("a 3x3 box filter sums neighbourhoods (zero padding at the border)") {
  const Tensor x = Tensor::full({1, 1, 4, 4}, 1.0f);
  const Tensor y = dd::conv2d(Var(x), Var(Tensor::full({1, 1, 3, 3}, 1.0f)), Var{}, {1, 1, 1}).value();
  CHECK(y.at(0, 0, 0, 0) == 4.0f);  // corner
  CHECK(y.at(0, 0, 0, 1) == 6.0f);  // edge
  CHECK(y.at(0, 0, 1, 1) == 9.0f);  // interior
}

TEST_CASE("batch norm in eval mode is gamma * (x - mean) / sqrt(var + eps) + beta") {
  const Tensor x = Tensor::randn({2, 3, 4, 4}, 4);
  const Tensor gamma = Tensor::from({3, 1, 1, 1}, {1.5f, -0.5f, 2.0f});
  const Tensor beta = Tensor::from({3, 1, 1, 1}, {0.1f, 0.2f, -0.3f});
  const Tensor mean = Tensor::from({3, 1, 1, 1}, {0.5f, -1.0f, 0.0f});
  const Tensor var = Tensor::from({3, 1, 1, 1}, {4.0f, 0.25f, 1.0f});
  const Tensor y = dd::batch_norm(Var(x), Var(gamma), Var(beta), mean, var, {false, 0.1f, 1e-5f}).value();
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 4; ++i) {
        const float expect =
            gamma.data()[c] * (x.at(n, c, i, 1) - mean.data()[c]) / std::sqrt(var.data()[c] + 1e-5f) + beta.data()[c];
        CHECK(y.at(n, c, i, 1) == doctest::Approx(expect).epsilon(1e-6));
      }
}

TEST_CASE("batch norm in training normalises each channel and moves the running statistics") {
  const Tensor x = Tensor::randn({4, 2, 5, 5}, 5, 3.0f);
  Tensor rm = Tensor::zeros({2, 1, 1, 1}), rv = Tensor::full({2, 1, 1, 1}, 1.0f);
  const Tensor y =
      dd::batch_norm(Var(x), Var(Tensor::full({2, 1, 1, 1}, 1.0f)), Var(Tensor::zeros({2, 1, 1, 1})), rm, rv, {})
          .value();
  for (int c = 0; c < 2; ++c) {
    double s = 0, sq = 0, xs = 0, xsq = 0;
    const double m = 4 * 25;
    for (int n = 0; n < 4; ++n)
      for (int i = 0; i < 25; ++i) {
        s += y.at(n, c, i / 5, i % 5), sq += std::pow(y.at(n, c, i / 5, i % 5), 2);
        xs += x.at(n, c, i / 5, i % 5), xsq += std::pow(x.at(n, c, i / 5, i % 5), 2);
      }
    CHECK(std::abs(s / m) < 1e-5);
    CHECK(sq / m == doctest::Approx(1.0).epsilon(1e-3));
    const double mean = xs / m, unbiased = (xsq - m * mean * mean) / (m - 1);
    CHECK(rm.data()[c] == doctest::Approx(0.1 * mean).epsilon(1e-4));
    CHECK(rv.data()[c] == doctest::Approx(0.9 + 0.1 * unbiased).epsilon(1e-4));
  }
}

TEST_CASE("max pool picks each window's maximum and routes the gradient to it") {
  // 4x4 input, windows hand-checked.
  const Tensor x = Tensor::from({1, 1, 4, 4}, {1, 2, 5, 3,  //
                                               4, 0, 1, 7,  //
                                               -1, -2, 6, 6,  //
                                               -3, -4, 2, 0});
  const Var xv(x, true);
  const Var y = dd::max_pool2x2(xv);
  CHECK(y.value().to_vector() == std::vector<float>{4, 7, -1, 6});
  dd::weighted_sum(y, Tensor::from({1, 1, 2, 2}, {10, 20, 30, 40})).backward();
  // Ties go to the first maximum (row-major), as in PyTorch.
  CHECK(xv.grad().to_vector() == std::vector<float>{0, 0, 0, 0,  //
                                                    10, 0, 0, 20,  //
                                                    30, 0, 40, 0,  //
                                                    0, 0, 0, 0});
}

TEST_CASE("upconv places one kernel copy per input pixel") {
  const Tensor x = Tensor::from({1, 1, 1, 2}, {1, 2});
  const Tensor w = Tensor::from({1, 1, 2, 2}, {1, 2, 3, 4});
  const Tensor b = Tensor::from({1, 1, 1, 1}, {0.5f});
  const Tensor y = dd::upconv2x2(Var(x), Var(w), Var(b)).value();
  CHECK(y.shape() == Shape{1, 1, 2, 4});
  CHECK(y.to_vector() == std::vector<float>{1.5f, 2.5f, 2.5f, 4.5f, 3.5f, 4.5f, 6.5f, 8.5f});
  // Two input channels, two output channels: outputs add the channels' contributions.
  const Tensor x2 = Tensor::from({1, 2, 1, 1}, {1, 10});
  const Tensor w2 = Tensor::from({2, 2, 2, 2}, {1, 1, 1, 1, 2, 2, 2, 2,  //
                                                 3, 3, 3, 3, 4, 4, 4, 4});
  const Tensor y2 = dd::upconv2x2(Var(x2), Var(w2), Var{}).value();
  CHECK(y2.to_vector() == std::vector<float>{31, 31, 31, 31, 42, 42, 42, 42});
}

TEST_CASE("softmax sums to one; cross-entropy of uniform logits is log(C)") {
  const Tensor p = dd::softmax(Var(Tensor::randn({2, 4, 3, 3}, 6))).value();
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 9; ++i) {
      double s = 0;
      for (int c = 0; c < 4; ++c) s += p.at(n, c, i / 3, i % 3);
      CHECK(s == doctest::Approx(1.0).epsilon(1e-6));
    }
  const Var loss = dd::cross_entropy(Var(Tensor::zeros({1, 5, 2, 2})), Tensor::full({1, 1, 2, 2}, 3.0f));
  CHECK(loss.value().item() == doctest::Approx(std::log(5.0)).epsilon(1e-6));
}

TEST_CASE("dropout2d drops whole channels, scales survivors, is seeded, and is the identity in eval") {
  const Tensor x = Tensor::full({8, 64, 2, 2}, 1.0f);
  dd::Rng r1(7), r2(7);
  const Tensor a = dd::dropout2d(Var(x), 0.25f, r1, true).value();
  const Tensor b = dd::dropout2d(Var(x), 0.25f, r2, true).value();
  CHECK(a.to_vector() == b.to_vector());
  int dropped = 0;
  for (int n = 0; n < 8; ++n)
    for (int c = 0; c < 64; ++c) {
      const float v = a.at(n, c, 0, 0);
      CHECK((v == 0.0f || v == doctest::Approx(1.0f / 0.75f)));
      for (int i = 1; i < 4; ++i) CHECK(a.at(n, c, i / 2, i % 2) == v);  // the whole map
      dropped += v == 0.0f;
    }
  CHECK(dropped > 512 * 0.15);
  CHECK(dropped < 512 * 0.35);
  dd::Rng r3(7);
  CHECK(dd::dropout2d(Var(x), 0.25f, r3, false).value().to_vector() == x.to_vector());
}
