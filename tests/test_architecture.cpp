// Compile-time architecture facts (PAPER_NOTES sections 1 and 3) and input validation.
#include <doctest/doctest.h>

#include <dd/ddunet.hpp>

namespace {

using UNet2 = dd::UNet<2, 1, 3, 4>;
using UNet3 = dd::UNet<3, 1, 3, 4>;
using UNet4 = dd::UNet<4, 1, 3, 4>;

// Paper Table 8 / PAPER_NOTES section 1 (30,479: the paper's 30,470 is a typo).
static_assert(dd::param_count<UNet2> == 7'487);
static_assert(dd::param_count<UNet3> == 30'479);
static_assert(dd::param_count<UNet4> == 122'031);
static_assert(UNet3::encoder_param_count == 18'564);
static_assert(UNet3::decoder_param_count == 11'915);

// Paper Table 4 / thesis Table 7.2: 12 * 2^D - 4.
static_assert(dd::receptive_field<UNet2> == 44);
static_assert(dd::receptive_field<UNet3> == 92);
static_assert(dd::receptive_field<UNet4> == 188);

// Single layers: closed forms.
static_assert(dd::receptive_field<dd::Conv<1, 1, 3>> == 3);
static_assert(dd::receptive_field<dd::Seq<dd::Conv<1, 1, 3>, dd::Conv<1, 1, 3>>> == 5);  // thesis Fig. 2.7
static_assert(dd::receptive_field<dd::Conv<1, 1, 3, true, 1, 2>> == 5);                   // dilation 2
static_assert(dd::receptive_field<dd::Seq<dd::Conv<1, 1, 5>, dd::Conv<1, 1, 5>, dd::Conv<1, 1, 5>>> == 13);
static_assert(dd::param_count<dd::Conv<3, 8, 3>> == 8 * 3 * 9 + 8);
static_assert(dd::param_count<dd::Conv<3, 8, 3, false>> == 8 * 3 * 9);
static_assert(dd::param_count<dd::BatchNorm<8>> == 16);
static_assert(dd::param_count<dd::UpConv<8, 4>> == 8 * 4 * 4 + 4);
static_assert(dd::Skip<dd::Conv<4, 6>>::out_channels == 10);
static_assert(dd::Seq<dd::MaxPool2, dd::Conv<4, 6>>::in_channels == 4);
static_assert(dd::Layer<UNet3>);
static_assert(dd::Layer<dd::DoubleConv<1, 4>>);

}  // namespace

TEST_CASE("bad inputs are rejected with messages that say what is wrong") {
  dd::Model<UNet3> model(1);
  auto message = [&](dd::Shape s) -> std::string {
    try {
      model.forward(dd::Var(dd::Tensor::zeros(s)));
    } catch (const dd::Error& e) {
      return e.what();
    }
    return "no error";
  };
  const std::string channels = message({1, 3, 32, 32});
  CHECK(channels.find("3 channels") != std::string::npos);
  CHECK(channels.find("built for 1") != std::string::npos);

  const std::string size = message({1, 1, 36, 32});
  CHECK(size.find("36x32") != std::string::npos);
  CHECK(size.find("not divisible by 2^3 = 8") != std::string::npos);

  const std::string empty = message({0, 1, 32, 32});
  CHECK(empty.find("empty input") != std::string::npos);

  // Kernel-level checks name both shapes.
  const dd::Var x(dd::Tensor::zeros({1, 2, 8, 8}));
  const dd::Var w(dd::Tensor::zeros({4, 3, 3, 3}));
  CHECK_THROWS_WITH_AS(dd::conv2d(x, w, dd::Var{}, {1, 1, 1}), doctest::Contains("input has 2 channels"), dd::Error);
  CHECK_THROWS_AS(dd::concat({x, dd::Var(dd::Tensor::zeros({1, 2, 4, 8}))}, 1), dd::Error);
  // A label that is not a class index: the message names the loss that read it.
  CHECK_THROWS_WITH_AS(dd::cross_entropy(x, dd::Tensor::full({1, 1, 8, 8}, 5.0f)),
                       doctest::Contains("dd::cross_entropy: label 5 at pixel 0 is not a class index in [0, 2)"),
                       dd::Error);
  CHECK_THROWS_WITH_AS(dd::dice_loss(x, dd::Tensor::full({1, 1, 8, 8}, 0.5f)),
                       doctest::Contains("dd::dice_loss: label 0.5 at pixel 0 is not a class index in [0, 2)"),
                       dd::Error);
}

TEST_CASE("same seed, same weights and outputs; another seed, other weights") {
  dd::Model<UNet2> a(7), b(7), c(8);
  CHECK(a.parameters().to_vector() == b.parameters().to_vector());
  CHECK(a.parameters().to_vector() != c.parameters().to_vector());
  const dd::Var x(dd::Tensor::randn({2, 1, 16, 16}, 3));
  const auto ya = a.forward(x).value().to_vector();
  const auto yb = b.forward(x).value().to_vector();
  CHECK(ya == yb);
}
