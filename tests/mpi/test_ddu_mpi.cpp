// DomainDecomposed across MPI ranks gives what one process gives. Run under mpirun with 2 or 4
// ranks (ctest: mpi_ddu_np2, mpi_ddu_np4): every rank also computes the single-process reference
// itself (same seeds), then compares its own subimages' logits, the loss, and after 5 Adam steps
// the parameters and BN statistics.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include <dd/ddunet.hpp>

#include "dd/backend/mpi/distribution.hpp"
#include "dd/backend/mpi/environment.hpp"
#include "dd/backend/mpi/rank_grid.hpp"
#include "tiles.hpp"

using namespace dd;

namespace {

mpi::Communicator* world = nullptr;

using test::max_rel;
using test::my_tiles;

Tensor labels_for(Shape s, std::uint64_t seed) {
  Rng rng(seed);
  Tensor l = Tensor::empty({s.n, 1, s.h, s.w});
  for (std::int64_t i = 0; i < l.numel(); ++i) l.data()[i] = float(rng.uniform_int(0, 2));
  return l;
}

// MpiDistribution with direct collectives on host memory: the code path NcclDistribution takes on
// GPUs (tiles packed and padded to the largest rank's count, one all-gather, views of the result;
// each rank sums its clones' gradients and the ranks all-reduce that), run here on CPU tensors.
class DirectOnHost : public mpi::MpiDistribution {
 public:
  using MpiDistribution::MpiDistribution;
  bool direct_collectives() const override { return true; }
  void all_gather_direct(const float* local, std::int64_t n, float* all) override {
    std::vector<std::int64_t> counts;
    const std::vector<float> v = communicator().all_gather_v(local, n, counts);
    for (const std::int64_t c : counts) REQUIRE(c == n);  // equal counts, as NCCL requires
    std::copy(v.begin(), v.end(), all);
  }
  void all_reduce_sum_direct(float* x, std::int64_t n) override { communicator().all_reduce_sum(x, n); }
};

// direct: through DirectOnHost; the gradient sum is then not one process's order, so parameters
// agree to rounding instead of bit for bit.
template <class DDU>
void compare_with_one_process(GridSpec grid, Exchange mode, Shape image, bool direct = false) {
  CAPTURE(world->size());
  CAPTURE(grid.rows);
  CAPTURE(grid.cols);
  CAPTURE(direct);
  const Tensor x = Tensor::randn(image, 7), labels = labels_for(image, 8);
  DDU ref(grid, mode, 3, CpuWorkers(1)), dist(grid, mode, 3, CpuWorkers(1)), whole(grid, mode, 3, CpuWorkers(1));
  Adam a_whole(whole.parameters(), whole.gradients(), {1e-3f});
  std::shared_ptr<mpi::MpiDistribution> md = direct ? std::make_shared<DirectOnHost>(*world)
                                                    : std::make_shared<mpi::MpiDistribution>(*world);
  dist.distribute(md);
  const Grid g = ref.grid_for(image);
  std::vector<Tensor> all_labels;  // the reference's loss is taken over the same pieces
  for (std::int64_t k = 0; k < g.count(); ++k) {
    const std::int64_t i = k / g.cols(), j = k % g.cols();
    all_labels.push_back(labels.tile(g.row_offset(i), g.heights()[std::size_t(i)], g.col_offset(j), g.widths()[std::size_t(j)]).clone());
  }
  Adam a_ref(ref.parameters(), ref.gradients(), {1e-3f}), a_dist(dist.parameters(), dist.gradients(), {1e-3f});
  const std::vector<Tensor> xt = my_tiles(dist, x), lt = my_tiles(dist, labels);
  for (int step = 0; step < 5; ++step) {
    CAPTURE(step);
    ref.zero_grad();
    const Var y_ref = ref.forward(Var(x));
    const Var l_ref = dice_loss(cut(y_ref, g), all_labels);
    l_ref.backward();
    a_ref.step();
    // The plain single-process run: Dice over the whole stitched image (sums in another order).
    whole.zero_grad();
    dice_loss(whole.forward(Var(x)), labels).backward();
    a_whole.step();

    dist.zero_grad();
    std::vector<Var> in;
    for (const Tensor& t : xt) in.emplace_back(t);
    const std::vector<Var> y = dist.forward_tiles(image, in);
    const Var l = dice_loss(y, lt, mpi::sum_over(*md));
    l.backward();
    a_dist.step();

    // The summed shared-weight gradients (the direct path sums in another order: rounding apart).
    CHECK(max_rel(dist.gradients(), ref.gradients()) < (direct ? 1e-5 : 0.0) + 1e-12);
    if (direct)  // the parameters drift apart by rounding after the first step (see below)
      CHECK(std::fabs(l.value().item() - l_ref.value().item()) <= 1e-5 * std::fabs(l_ref.value().item()));
    else
      CHECK(l.value().item() == l_ref.value().item());
    // This rank's logits are the reference's at its subimages.
    const std::vector<Tensor> ref_tiles = my_tiles(dist, y_ref.value());
    for (std::size_t i = 0; i < y.size(); ++i) CHECK(max_rel(y[i].value(), ref_tiles[i]) < 1e-5);
  }
  const double dp = max_rel(dist.parameters(), ref.parameters()), db = max_rel(dist.buffers(), ref.buffers());
  const double dw = max_rel(dist.parameters(), whole.parameters());
  MESSAGE("after 5 steps: parameters differ by " << dp << ", BN statistics by " << db << " (max |diff| / max |value|); "
          "from the run with the Dice loss over the whole image by " << dw);
  // Direct: Adam turns a rounding-level difference of a near-zero gradient into a step of up to its
  // learning rate (1e-3), so after 5 steps parameters agree to ~1e-4, not 1e-5 (the gradients are
  // compared at every step above).
  const double tol = direct ? 5e-4 : 1e-5;
  CHECK(dw < tol);
  CHECK(dp < tol);
  CHECK(db < tol);
  // Stronger, and true by construction: the same bits (the ranks sum gradients, Dice sums and BN
  // statistics in one process's order).
  if (!direct) {
    CHECK(dp == 0.0);
    CHECK(db == 0.0);
  }
  // Every rank holds the same parameters (bit for bit: the gradient sums are in rank order).
  std::vector<std::int64_t> counts;
  const auto p = dist.parameters().to_vector();
  const auto all = world->all_gather_v(p.data(), std::int64_t(p.size()), counts);
  for (int r = 1; r < world->size(); ++r)
    CHECK(std::equal(p.begin(), p.end(), all.begin() + std::ptrdiff_t(r) * std::ptrdiff_t(p.size())));
  // Evaluation mode: no dropout, running statistics; logits still match.
  ref.eval(), dist.eval();
  NoGrad ng;
  std::vector<Var> in;
  for (const Tensor& t : xt) in.emplace_back(t);
  const std::vector<Var> y = dist.forward_tiles(image, in);
  const std::vector<Tensor> ref_tiles = my_tiles(dist, ref.forward(Var(x)).value());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(max_rel(y[i].value(), ref_tiles[i]) < 2 * tol);
}

}  // namespace

TEST_CASE("DDU-Net(3, 16, Y) on a 2x2 grid across the ranks: forward and 5 training steps as one process") {
  compare_with_one_process<DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<16>>>({2, 2}, Exchange::stitched, {2, 1, 64, 64});
}

TEST_CASE("unequal ownership: a 2x3 grid of unequal subimages, DDU-Net(2, 8, Y) and (2, 8, N)") {
  using DDU = DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<8>>;
  compare_with_one_process<DDU>({2, 3}, Exchange::stitched, {1, 1, 40, 52});
  compare_with_one_process<DDU>({2, 3}, Exchange::local, {1, 1, 40, 52});
}

TEST_CASE("direct collectives (NcclDistribution's path, on host memory): unequal tiles padded, gradients all-reduced") {
  using DDU = DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<8>>;
  compare_with_one_process<DDU>({2, 3}, Exchange::stitched, {1, 1, 40, 52}, true);
  compare_with_one_process<DDU>({2, 3}, Exchange::local, {1, 1, 40, 52}, true);
  compare_with_one_process<DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<16>>>({2, 2}, Exchange::stitched,
                                                                            {2, 1, 64, 64}, true);
}

TEST_CASE("direct tile gather: half tiles travel as their bytes (odd counts padded), mixed types as f32") {
  DirectOnHost dist(*world);
  // K = 5 tiles of unequal, odd sizes, spread over the ranks as the model spreads its clones.
  const std::vector<Shape> shapes{{1, 3, 3, 5}, {1, 3, 2, 5}, {1, 3, 3, 3}, {1, 3, 1, 7}, {1, 3, 3, 4}};
  const auto K = static_cast<std::int64_t>(shapes.size());
  if (world->size() > K) return;
  auto tile = [&](std::int64_t k) { return Tensor::randn(shapes[std::size_t(k)], 300 + std::uint64_t(k)); };
  for (const DType t : {DType::bf16, DType::f16, DType::f32}) {
    CAPTURE(dtype_name(t));
    std::vector<Tensor> mine;
    for (std::int64_t k = dist.first_clone(world->rank(), K); k < dist.first_clone(world->rank() + 1, K); ++k)
      mine.push_back(tile(k).to(t));
    const std::vector<Tensor> all = detail::gather_all(mine, shapes, dist, Device::cpu);
    REQUIRE(std::int64_t(all.size()) == K);
    for (std::int64_t k = 0; k < K; ++k) {
      CAPTURE(k);
      CHECK(all[std::size_t(k)].dtype() == t);
      CHECK(all[std::size_t(k)].to_vector() == tile(k).to(t).to_vector());  // bit for bit
    }
  }
  // Tiles of two types on one rank travel as f32: ranks with two or more tiles mix bf16 and f32,
  // the others send f32; every rank gets f32 tiles holding what was sent.
  auto owner_tiles = [&](std::int64_t k) {  // how many tiles the rank that owns tile k has
    int r = 0;
    while (dist.first_clone(r + 1, K) <= k) ++r;
    return dist.first_clone(r + 1, K) - dist.first_clone(r, K);
  };
  auto sent = [&](std::int64_t k) { return owner_tiles(k) > 1 && k % 2 ? tile(k).to(DType::bf16) : tile(k); };
  std::vector<Tensor> mixed;
  for (std::int64_t k = dist.first_clone(world->rank(), K); k < dist.first_clone(world->rank() + 1, K); ++k)
    mixed.push_back(sent(k));
  const std::vector<Tensor> got = detail::gather_all(mixed, shapes, dist, Device::cpu);
  for (std::int64_t k = 0; k < K; ++k) {
    CAPTURE(k);
    CHECK(got[std::size_t(k)].dtype() == DType::f32);
    CHECK(got[std::size_t(k)].to_vector() == sent(k).to_vector());
  }
  // Ranks that disagree (rank 0 half, the others f32) all stop with the same clear error, before
  // any tile moves.
  if (world->size() > 1) {
    std::vector<Tensor> odd;
    for (std::int64_t k = dist.first_clone(world->rank(), K); k < dist.first_clone(world->rank() + 1, K); ++k)
      odd.push_back(world->rank() == 0 ? tile(k).to(DType::bf16) : tile(k));
    CHECK_THROWS_WITH_AS(detail::gather_all(odd, shapes, dist, Device::cpu),
                         doctest::Contains("different element types"), dd::Error);
  }
  // More ranks than tiles: a rank without tiles takes the others' type (it used to vote f32 and
  // stop the exchange of half tiles).
  if (world->size() > 1) {
    const auto few = static_cast<std::int64_t>(world->size()) - 1;
    const std::vector<Shape> some(shapes.begin(), shapes.begin() + few);
    std::vector<Tensor> mine;
    for (std::int64_t k = dist.first_clone(world->rank(), few); k < dist.first_clone(world->rank() + 1, few); ++k)
      mine.push_back(tile(k).to(DType::bf16));
    CHECK(dist.first_clone(0, few) == dist.first_clone(1, few));  // rank 0 holds none
    const std::vector<Tensor> all = detail::gather_all(mine, some, dist, Device::cpu);
    for (std::int64_t k = 0; k < few; ++k) {
      CHECK(all[std::size_t(k)].dtype() == DType::bf16);
      CHECK(all[std::size_t(k)].to_vector() == tile(k).to(DType::bf16).to_vector());
    }
  }
}

TEST_CASE("keep_local's backward: tiles without a gradient send zeros of their own type") {
  DirectOnHost dist(*world);
  const std::int64_t K = 2 * world->size();
  std::vector<Var> all;
  for (std::int64_t k = 0; k < K; ++k)
    all.emplace_back(Tensor::randn({1, 2, 3, 4}, 400 + std::uint64_t(k)).to(DType::bf16), true);
  const TileGroup group{&dist, dist.local_clones(K), K};
  const std::vector<Var> out = keep_local(all, group);
  // Only even ranks give their tiles a gradient (ones); odd ranks' tiles get none.
  if (world->rank() % 2 == 0)
    for (const Var& v : out) v.accumulate_grad(Tensor::full(v.shape(), 1.0f));
  Tape::current().backward();
  for (std::int64_t k = 0; k < K; ++k) {
    CAPTURE(k);
    int owner = 0;
    while (dist.first_clone(owner + 1, K) <= k) ++owner;
    const Tensor& g = all[std::size_t(k)].grad();
    REQUIRE(g.defined());
    CHECK(g.dtype() == DType::bf16);
    CHECK(g.to_vector() == std::vector<float>(24, owner % 2 == 0 ? 1.0f : 0.0f));
  }
}

TEST_CASE("subimage x data parallel: 2 groups take one image each; as one process taking both (no dropout)") {
  if (world->size() % 2 != 0) return;
  using DDU = DomainDecomposed<UNet<2, 1, 3, 4, 0.0f>, CommNet<8, 3, 5, 0.0f>>;
  mpi::RankGrid grid(*world, world->size() / 2);
  const Tensor x = Tensor::randn({2, 1, 32, 32}, 31), labels = labels_for({2, 1, 32, 32}, 32);
  const Shape one{1, 1, 32, 32};
  DDU ref({2, 2}, Exchange::stitched, 5, CpuWorkers(1)), dp({2, 2}, Exchange::stitched, 5, CpuWorkers(1));
  dp.distribute(grid.subimage_distribution());
  Adam a_ref(ref.parameters(), ref.gradients(), {1e-3f}), a_dp(dp.parameters(), dp.gradients(), {1e-3f});
  auto tiles_of = [](const DDU& m, const Tensor& img, const std::vector<std::int64_t>& which) {
    const Grid g = m.grid_for(img.shape());
    std::vector<Tensor> out;
    for (const std::int64_t k : which) {
      const std::int64_t i = k / g.cols(), j = k % g.cols();
      out.push_back(img.tile(g.row_offset(i), g.heights()[std::size_t(i)], g.col_offset(j), g.widths()[std::size_t(j)]).clone());
    }
    return out;
  };
  const std::vector<std::int64_t> all_k{0, 1, 2, 3};
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    // One process: both images, one forward each, one loss over all their pieces.
    ref.zero_grad();
    std::vector<Var> pieces;
    std::vector<Tensor> piece_labels;
    for (std::int64_t b = 0; b < 2; ++b) {
      const auto xt = tiles_of(ref, x.batch(b), all_k), lt = tiles_of(ref, labels.batch(b), all_k);
      const auto y = ref.forward_tiles(one, std::vector<Var>(xt.begin(), xt.end()));
      pieces.insert(pieces.end(), y.begin(), y.end());
      piece_labels.insert(piece_labels.end(), lt.begin(), lt.end());
    }
    const Var l_ref = dice_loss(pieces, piece_labels);
    l_ref.backward();
    a_ref.step();
    // The rank grid: this rank's group takes image group(), this rank its subimages of it.
    dp.zero_grad();
    const auto mine = dp.local_clones(4);
    const auto xt = tiles_of(dp, x.batch(grid.group()), mine), lt = tiles_of(dp, labels.batch(grid.group()), mine);
    const Var l = dice_loss(dp.forward_tiles(one, std::vector<Var>(xt.begin(), xt.end())), lt, grid.loss_gather());
    l.backward();
    grid.reduce_gradients(dp);
    a_dp.step();
    grid.average_buffers(dp);
    CHECK(l.value().item() == l_ref.value().item());
  }
  const double d = max_rel(dp.parameters(), ref.parameters());
  MESSAGE("rank grid " << grid.groups() << " groups x " << grid.ranks_per_image() << " ranks: parameters differ by " << d);
  CHECK(d < 1e-5);
}

TEST_CASE("fit() trains a model spread over the ranks as one process trains it") {
  const auto train = make_circles(32, 4, {.subimages = 4});
  const auto val = make_circles(8, 5, {.subimages = 4});
  using DDU = DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<8>>;
  DDU ref({1, 4}, Exchange::stitched, 6, CpuWorkers(1)), dist({1, 4}, Exchange::stitched, 6, CpuWorkers(1));
  dist.distribute(std::make_shared<mpi::MpiDistribution>(*world));
  TrainOptions o;
  o.epochs = 3, o.min_epochs = 3, o.batch = 8, o.lr = 0.01f;
  const auto h_ref = fit(ref, train, val, 3, o), h = fit(dist, train, val, 3, o);
  REQUIRE(h.size() == h_ref.size());
  for (std::size_t e = 0; e < h.size(); ++e) {
    CAPTURE(e);
    // Dice sums over pieces instead of the whole image: equal up to double rounding.
    CHECK(h[e].train_loss == doctest::Approx(h_ref[e].train_loss).epsilon(1e-4));
    CHECK(h[e].val_loss == doctest::Approx(h_ref[e].val_loss).epsilon(1e-4));
    CHECK(h[e].val_miou == doctest::Approx(h_ref[e].val_miou).epsilon(1e-3));
  }
  CHECK(max_rel(dist.parameters(), ref.parameters()) < 1e-3);
}

TEST_CASE("bad calls: forward() of a distributed model, and the wrong number of subimages, are clear errors") {
  DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<8>> m({2, 2}, Exchange::stitched, 1);
  m.distribute(std::make_shared<mpi::MpiDistribution>(*world));
  if (world->size() > 1) CHECK_THROWS_WITH_AS(m.forward(Var(Tensor::zeros({1, 1, 16, 16}))), doctest::Contains("forward_tiles"), Error);
  CHECK_THROWS_WITH_AS(m.forward_tiles({1, 1, 16, 16}, {}), doctest::Contains("subimages given"), Error);
  DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<8>> tiny({1, 1}, Exchange::stitched, 1);
  tiny.distribute(std::make_shared<mpi::MpiDistribution>(*world));
  if (world->size() > 1) CHECK_THROWS_WITH_AS(tiny.local_clones(1), doctest::Contains("at least one subimage"), Error);
}

int main(int argc, char** argv) {
  mpi::Environment env(argc, argv);
  mpi::Communicator comm = mpi::Communicator::world();
  world = &comm;
  doctest::Context ctx(argc, argv);
  int failed = ctx.run();
  double f = failed ? 1.0 : 0.0;
  comm.all_reduce_sum(&f, 1);  // every rank reports the job's result
  if (comm.rank() == 0) std::printf("ranks: %d, ranks with failures: %g\n", comm.size(), f);
  return f > 0 ? 1 : 0;
}
