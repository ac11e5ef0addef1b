// DDU-Net: the communication network, DomainDecomposed<Net, Comm> and its exchange.
#include <doctest/doctest.h>

#include "gradcheck.hpp"

using dd::Shape;
using dd::Tensor;
using dd::Var;

namespace {
using UNet3 = dd::UNet<3, 1, 3, 4>;

// PAPER_NOTES section 2: 3 * (25 F^2 + F + 2F).
static_assert(dd::param_count<dd::CommNet<1>> == 84);
static_assert(dd::param_count<dd::CommNet<2>> == 318);
static_assert(dd::param_count<dd::CommNet<4>> == 1'236);
static_assert(dd::param_count<dd::CommNet<8>> == 4'872);
static_assert(dd::param_count<dd::CommNet<16>> == 19'344);
static_assert(dd::param_count<dd::CommNet<32>> == 77'088);
static_assert(dd::param_count<dd::CommNet<64>> == 307'776);
// Paper Table 4: DDU-Net(D, F > 0, Y) sees 24 * 2^D - 4 pixels; F does not matter.
static_assert(dd::receptive_field<dd::DomainDecomposed<dd::UNet<2, 1, 3, 4>, dd::CommNet<8>>> == 92);
static_assert(dd::receptive_field<dd::DomainDecomposed<UNet3, dd::CommNet<32>>> == 188);
static_assert(dd::receptive_field<dd::DomainDecomposed<dd::UNet<4, 1, 3, 4>, dd::CommNet<1>>> == 380);
static_assert(dd::receptive_field<dd::DomainDecomposed<UNet3, dd::NoComm>> == 92);
static_assert(dd::DomainDecomposed<UNet3, dd::CommNet<32>>::param_count == 30'479 + 77'088);

Tensor random_labels(Shape s, std::uint64_t seed) {
  Tensor t = Tensor::empty(s);
  dd::Rng rng(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(rng.uniform_int(0, 2));
  return t;
}

// A smooth stand-in for the communication network (no ReLU kinks), for finite differences.
struct SmoothComm : dd::Seq<dd::Conv<2, 2, 5>, dd::BatchNorm<2>, dd::Conv<2, 2, 3>> {};
}  // namespace

TEST_CASE("DDU-Net(D, 0, N) on a 1x1 grid is exactly the U-Net: outputs and gradients") {
  dd::Model<UNet3> unet(5);
  dd::DomainDecomposed<UNet3> ddu({1, 1}, dd::Exchange::local, 5);
  CHECK(unet.parameters().to_vector() == ddu.parameters().to_vector());
  const Tensor x = Tensor::randn({3, 1, 32, 64}, 6);
  const Tensor labels = random_labels({3, 1, 32, 64}, 7);
  // Training mode: BN batch statistics and dropout. One graph at a time: backward replays the tape.
  const Var a = unet.forward(Var(x));
  dd::dice_loss(a, labels).backward();
  const Var b = ddu.forward(Var(x));
  dd::dice_loss(b, labels).backward();
  CHECK(a.value().to_vector() == b.value().to_vector());
  CHECK(ddu.gradients().to_vector() != std::vector<float>(ddu.gradients().numel(), 0.0f));
  CHECK(unet.gradients().to_vector() == ddu.gradients().to_vector());
  CHECK(unet.buffers().to_vector() == ddu.buffers().to_vector());
}

TEST_CASE("C = N on a 2x2 grid equals four independent clone runs") {
  using DDU = dd::DomainDecomposed<UNet3, dd::CommNet<8>>;
  DDU ddu({2, 2}, dd::Exchange::local, 8);
  ddu.eval();
  const Tensor x = Tensor::randn({2, 1, 64, 48}, 9);
  const Tensor out = ddu.forward(Var(x)).value();
  dd::Context ctx{ddu.parameters(), Tensor{}, ddu.buffers(), false, nullptr};
  const dd::Grid g = dd::Grid::split(64, 48, {2, 2}, 8);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      const Tensor tile = x.tile(32 * i, 32, 24 * j, 24).contiguous();
      dd::UNetFeatures f = UNet3::encode(ctx, Var(tile));
      const Var kept = dd::slice(f.bottleneck, 1, 0, 24), sent = dd::slice(f.bottleneck, 1, 24, 8);
      f.bottleneck = dd::concat({kept, dd::CommNet<8>::forward(ctx, sent, DDU::net_param_count, DDU::net_buffer_count)}, 1);
      const Tensor alone = UNet3::decode(ctx, f).value();
      const Tensor part = out.tile(32 * i, 32, 24 * j, 24).contiguous();
      for (std::int64_t k = 0; k < alone.numel(); ++k) REQUIRE(part.data()[k] == doctest::Approx(alone.data()[k]).epsilon(1e-5));
    }
  dd::Tape::current().clear();
}

TEST_CASE("a pixel in subimage (0,0) reaches subimage (0,1) only with C = Y and F > 0") {
  Tensor x = Tensor::randn({1, 1, 64, 64}, 10);
  Tensor y = x.clone();
  y.at(0, 0, 5, 5) += 3.0f;  // inside tile (0,0)
  auto changes_neighbour = [&](auto& model) {
    model.eval();
    dd::NoGrad ng;
    const Tensor a = model.forward(Var(x)).value(), b = model.forward(Var(y)).value();
    CHECK(a.tile(0, 32, 0, 32).to_vector() != b.tile(0, 32, 0, 32).to_vector());  // its own tile always changes
    return a.tile(0, 32, 32, 32).to_vector() != b.tile(0, 32, 32, 32).to_vector();
  };
  dd::DomainDecomposed<UNet3, dd::CommNet<16>> with_y({2, 2}, dd::Exchange::stitched, 11);
  dd::DomainDecomposed<UNet3, dd::CommNet<16>> with_n({2, 2}, dd::Exchange::local, 11);
  dd::DomainDecomposed<UNet3> no_comm({2, 2}, dd::Exchange::stitched, 11);
  CHECK(changes_neighbour(with_y));
  CHECK_FALSE(changes_neighbour(with_n));
  CHECK_FALSE(changes_neighbour(no_comm));
}

TEST_CASE("finite differences through stitch -> communication network -> cut (C = Y)") {
  using Comm = SmoothComm;
  Tensor params = Tensor::randn({static_cast<std::int64_t>(Comm::param_count), 1, 1, 1}, 12, 0.3f);
  Tensor buffers = Tensor::zeros({static_cast<std::int64_t>(Comm::buffer_count), 1, 1, 1});
  const dd::Grid coarse({3, 2}, {2, 4});  // unequal tiles: 2x3 grid of bottlenecks
  auto run = [&](const std::vector<Var>& b, const Tensor& grads) {
    dd::Context ctx{params, grads, buffers, true, nullptr};
    return dd::stitch(dd::exchange_bottlenecks<Comm>(ctx, b, coarse, dd::Exchange::stitched, 0, 0), coarse);
  };
  std::vector<Tensor> tiles;
  for (auto h : coarse.heights())
    for (auto w : coarse.widths()) tiles.push_back(Tensor::randn({2, 5, h, w}, 13 + tiles.size()));
  // Gradients with respect to every bottleneck tile (kept and sent channels).
  CHECK(ddtest::check_op([&](const std::vector<Var>& v) { return run(v, Tensor{}); }, tiles) < 1e-3);

  // Gradients with respect to the communication network's parameters.
  Tensor grads = Tensor::zeros(params.shape());
  std::vector<Var> vars;
  for (auto& t : tiles) vars.emplace_back(t);
  const Var out = run(vars, grads);
  const Tensor R = Tensor::randn(out.shape(), 14);
  dd::weighted_sum(out, R).backward();
  auto loss = [&] {
    dd::NoGrad ng;
    return ddtest::dot(run(vars, Tensor{}).value(), R);
  };
  std::vector<float*> coords;
  std::vector<float> analytic;
  for (std::int64_t i = 0; i < params.numel(); ++i) coords.push_back(params.data() + i), analytic.push_back(grads.data()[i]);
  CHECK(ddtest::fd_relative_error(loss, coords, analytic, 1e-2f) < 1e-3);
}

TEST_CASE("shared weights: the DDU-Net gradient is the sum of the clones' gradients") {
  // With C = N and no communication, each clone's loss gradient can be computed alone.
  using DDU = dd::DomainDecomposed<UNet3>;
  DDU ddu({1, 2}, dd::Exchange::local, 15);
  ddu.eval();  // fixed statistics and no dropout: clones are independent functions of their tiles
  const Tensor x = Tensor::randn({2, 1, 32, 64}, 16);
  const Tensor R = Tensor::randn({2, 3, 32, 64}, 17);
  dd::weighted_sum(ddu.forward(Var(x)), R).backward();
  dd::Model<UNet3> single(15);
  single.eval();
  for (int j = 0; j < 2; ++j)
    dd::weighted_sum(single.forward(Var(x.tile(0, 32, 32 * j, 32).contiguous())), R.tile(0, 32, 32 * j, 32).contiguous())
        .backward();
  const auto a = ddu.gradients().to_vector(), b = single.gradients().to_vector();
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]), norm += b[i] * b[i];
  CHECK(std::sqrt(diff / norm) < 1e-5);
}

TEST_CASE("same seed twice: bit-identical losses after 3 training steps, with 1 and with 2 workers") {
  auto losses = [](int workers) {
    dd::DomainDecomposed<UNet3, dd::CommNet<8>> m({2, 2}, dd::Exchange::stitched, 18, dd::CpuWorkers(workers));
    dd::Adam adam(m.parameters(), m.gradients(), {0.01f});
    const auto data = dd::make_circles(4, 19, {.subimages = 2});
    std::vector<float> out;
    for (int step = 0; step < 3; ++step) {
      m.zero_grad();
      const Tensor x = Tensor::zeros({4, 1, 64, 64}), lab = Tensor::zeros({4, 1, 64, 64});
      x.tile(0, 32, 0, 64).copy_from(data.images);
      lab.tile(0, 32, 0, 64).copy_from(data.labels);
      const Var loss = dd::dice_loss(m.forward(Var(x)), lab);
      loss.backward();
      dd::clip_grad_norm(m.gradients(), 1.0);
      adam.step();
      out.push_back(loss.value().item());
    }
    out.push_back(m.parameters().data()[100]);
    return out;
  };
  for (int w : {1, 2}) {
    CAPTURE(w);
    const auto a = losses(w), b = losses(w);
    CHECK(a == b);
    CHECK(a[2] != a[0]);  // it did train
  }
}

TEST_CASE("grids: unequal tiles, another grid at evaluation, clear errors") {
  const dd::Grid g = dd::Grid::split(40, 96, {2, 3}, 8);  // 5 units of 8 rows over 2 rows: 24 + 16
  CHECK(g.heights() == std::vector<std::int64_t>{24, 16});
  CHECK(g.widths() == std::vector<std::int64_t>{32, 32, 32});
  CHECK_THROWS_WITH_AS(dd::Grid::split(36, 64, {1, 2}, 8), doctest::Contains("height 36 is not a multiple of 8"), dd::Error);
  CHECK_THROWS_WITH_AS(dd::Grid::split(32, 32, {1, 6}, 8), doctest::Contains("fewer than 6 tiles"), dd::Error);

  dd::DomainDecomposed<UNet3, dd::CommNet<4>> m({1, 4}, dd::Exchange::stitched, 20);
  m.eval();
  dd::NoGrad ng;
  const Tensor x = Tensor::randn({1, 1, 32, 128}, 21);
  CHECK(m.forward(Var(x)).shape() == Shape{1, 3, 32, 128});
  m.set_grid({1, 2});  // evaluate on another grid (paper Fig. 11)
  CHECK(m.forward(Var(x)).shape() == Shape{1, 3, 32, 128});
  m.set_grid({2, 3});
  CHECK(m.forward(Var(Tensor::randn({1, 1, 40, 96}, 22))).shape() == Shape{1, 3, 40, 96});
  m.set_grid({1, 32});  // 128 / 8 = 16 units of width cannot make 32 tiles
  CHECK_THROWS_WITH_AS(m.forward(Var(x)), doctest::Contains("subimage grid 1x32"), dd::Error);
  CHECK_THROWS_AS(m.forward(Var(Tensor::zeros({1, 2, 32, 128}))), dd::Error);
}

TEST_CASE("eval without gradients: subimages stacked on the batch give each clone's own logits") {
  // Trained a step first, so the running statistics are not the initial ones.
  for (const dd::Exchange mode : {dd::Exchange::stitched, dd::Exchange::local}) {
    CAPTURE(static_cast<int>(mode));
    dd::DomainDecomposed<UNet3, dd::CommNet<8>> m({2, 2}, mode, 30);
    const Tensor x = Tensor::randn({2, 1, 64, 64}, 31);
    dd::dice_loss(m.forward(Var(x)), random_labels({2, 1, 64, 64}, 32)).backward();
    m.eval();
    dd::NoGrad ng;
    m.set_eval_tiles(dd::EvalTiles::per_clone);
    const std::vector<float> clones = m.forward(Var(x)).value().to_vector();
    CHECK(!m.stacks_eval(x.shape()));
    m.set_eval_tiles(dd::EvalTiles::stacked);
    CHECK(m.stacks_eval(x.shape()));
    const std::vector<float> stacked = m.forward(Var(x)).value().to_vector();
    CHECK(ddtest::max_abs_diff(stacked, clones) <= 1e-5);
    // Unequal subimages (40 = 24 + 16 rows): one stack per shape (two of two here), same logits.
    m.set_grid({2, 2});
    const Tensor y = Tensor::randn({1, 1, 40, 64}, 33);
    CHECK(m.stacks_eval(y.shape()));
    const std::vector<float> uneven = m.forward(Var(y)).value().to_vector();
    m.set_eval_tiles(dd::EvalTiles::per_clone);
    const std::vector<float> uneven_clones = m.forward(Var(y)).value().to_vector();
    CHECK(ddtest::max_abs_diff(uneven, uneven_clones) <= 1e-5);
    // Stacks held to a limit of values (2 images x 8 channels (the concatenation) x 32 x 32 = 16384 per
    // subimage, a limit of 40000: stacks of two), same logits.
    m.set_eval_tiles(dd::EvalTiles::stacked);
    m.set_eval_stack_limit(40000);
    CHECK(m.stacks_eval(x.shape()));
    const std::vector<float> chunked = m.forward(Var(x)).value().to_vector();
    CHECK(ddtest::max_abs_diff(chunked, clones) <= 1e-5);
    CHECK_THROWS_AS(m.set_eval_stack_limit(0), dd::Error);
    // No two subimages alike (a 1x2 grid of 24 = 16 + 8 columns): per clone even when asked to stack.
    m.set_eval_tiles(dd::EvalTiles::stacked);
    m.set_grid({1, 2});
    CHECK(!m.stacks_eval(Shape{1, 1, 32, 24}));
  }
  // The dynamic (tool) network, RGB, 2x3 grid.
  dd::DDUNet d(dd::DynamicUNet({3, 3, 3, 8}), dd::DynamicCommNet(16), {2, 3}, dd::Exchange::stitched, 34);
  d.eval();
  dd::NoGrad ng;
  const Tensor xr = Tensor::randn({1, 3, 96, 144}, 35);
  d.set_eval_tiles(dd::EvalTiles::per_clone);
  const std::vector<float> a = d.forward(Var(xr)).value().to_vector();
  d.set_eval_tiles(dd::EvalTiles::stacked);
  CHECK(d.stacks_eval(xr.shape()));
  const std::vector<float> b = d.forward(Var(xr)).value().to_vector();
  CHECK(ddtest::max_abs_diff(a, b) <= 1e-5);
  CHECK(d.eval_tiles() == dd::EvalTiles::stacked);
  d.train();  // training never stacks (each clone normalises with its own batch statistics)
  CHECK(!d.stacks_eval(xr.shape()));
}

TEST_CASE("inference folds each batch norm into its convolution: the logits of the separate layers") {
  // Trained a step first (running statistics away from 0 / 1); then eval with gradients recorded
  // (the separate layers) and without (folded), typed and dynamic networks, both exchanges.
  using Dynamic = dd::DomainDecomposed<dd::DynamicUNet, dd::DynamicCommNet>;
  for (const dd::Exchange mode : {dd::Exchange::stitched, dd::Exchange::local}) {
    CAPTURE(static_cast<int>(mode));
    dd::DomainDecomposed<UNet3, dd::CommNet<8>> typed({2, 2}, mode, 40);
    Dynamic dynamic(dd::DynamicUNet({3, 1, 3, 4}), dd::DynamicCommNet(8), {2, 2}, mode, 40);
    const Tensor x = Tensor::randn({2, 1, 64, 64}, 41);
    const Tensor labels = random_labels({2, 1, 64, 64}, 42);
    dd::dice_loss(typed.forward(Var(x)), labels).backward();
    dd::dice_loss(dynamic.forward(Var(x)), labels).backward();
    typed.eval(), dynamic.eval();
    std::vector<float> separate;
    {
      dd::Tape tape;  // what this forward records is dropped with it
      dd::TapeScope scope(tape);
      separate = typed.forward(Var(x)).value().to_vector();
      CHECK(!tape.empty());  // gradients recorded: the separate layers ran
    }
    std::vector<float> folded, folded_dynamic;
    {
      dd::NoGrad ng;
      folded = typed.forward(Var(x)).value().to_vector();
      folded_dynamic = dynamic.forward(Var(x)).value().to_vector();
    }
    const double scale = ddtest::max_abs(separate);
    CHECK(scale > 0.1);
    CHECK(ddtest::max_abs_diff(folded, separate) <= 1e-5 * scale);
    CHECK(folded != separate);  // the folded path ran (it rounds differently somewhere)
    CHECK(folded_dynamic == folded);
  }
}

TEST_CASE("a backward pass that reaches a destroyed or moved DDU-Net is an error, not a crash") {
  const Tensor x = Tensor::randn({1, 1, 32, 32}, 50);
  dd::Tape tape;
  dd::TapeScope scope(tape);
  {
    dd::DomainDecomposed<dd::UNet<2, 1, 3, 4>, dd::CommNet<4>> m({2, 2}, dd::Exchange::stitched, 51);
    (void)m.forward(Var(x));  // recorded, never backpropagated
  }
  CHECK_THROWS_WITH_AS(tape.backward(), doctest::Contains("dd::DomainDecomposed: a backward pass replayed"), dd::Error);
  CHECK(tape.empty());  // forgotten even though it threw

  using Small = dd::DomainDecomposed<dd::UNet<2, 1, 3, 4>, dd::CommNet<4>>;
  Small a({2, 2}, dd::Exchange::stitched, 52);
  const Var y = a.forward(Var(x));
  Small b(std::move(a));  // the recording belongs to the moved-from object
  CHECK_THROWS_WITH_AS(tape.backward(), doctest::Contains("destroyed or moved"), dd::Error);
  // The new object records and backpropagates as usual.
  dd::dice_loss(b.forward(Var(x)), random_labels({1, 1, 32, 32}, 53)).backward();
  CHECK(tape.empty());
  double g = 0;
  for (float v : b.gradients().to_vector()) g += std::fabs(v);
  CHECK(g > 0);
}
