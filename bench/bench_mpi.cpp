// Scaling of DomainDecomposed over MPI ranks: training-step time, bytes exchanged and the share of
// the step spent in communication, against a halo-exchange estimate for the same network (bytes
// per step if every 3x3 convolution exchanged a 1-pixel halo across subimage borders, as a
// conventionally parallelised U-Net would). Prints one JSON line (rank 0); bench/mpi_scaling.sh
// runs it for 1, 2 and 4 ranks, strong (fixed image) and weak (image grows with the ranks) scaling.
//   mpirun -np P bench_mpi --image HxW --grid RxC [--depth 3 --base 8 --F 32 --batch 2 --steps 5 --warmup 2]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <dd/ddunet.hpp>

#include "dd/backend/mpi/distribution.hpp"
#include "dd/backend/mpi/environment.hpp"

namespace {

struct Args {
  std::int64_t h = 256, w = 256, rows = 2, cols = 2;
  int depth = 3, base = 8, F = 32, batch = 2, steps = 5, warmup = 2;
  bool estimate_only = false;  // the byte counts alone (no training), e.g. for the paper's sizes
  std::string label = "run";
};

std::pair<std::int64_t, std::int64_t> pair_of(const std::string& v, const char* flag) {
  long long a = 0, b = 0;
  DD_CHECK(std::sscanf(v.c_str(), "%lldx%lld", &a, &b) == 2 && a > 0 && b > 0, "{} {}: expected AxB", flag, v);
  return {a, b};
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--image") std::tie(a.h, a.w) = pair_of(v, "--image");
    else if (k == "--grid") std::tie(a.rows, a.cols) = pair_of(v, "--grid");
    else if (k == "--depth") a.depth = std::stoi(v);
    else if (k == "--base") a.base = std::stoi(v);
    else if (k == "--F") a.F = std::stoi(v);
    else if (k == "--batch") a.batch = std::stoi(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--warmup") a.warmup = std::stoi(v);
    else if (k == "--label") a.label = v;
    else if (k == "--estimate-only") a.estimate_only = v == "1" || v == "yes";
    else dd::fail("unknown flag {}", k);
  }
  return a;
}

// Bytes all ranks together receive per training step if every 3x3 convolution of the U-Net
// exchanged a 1-pixel halo with the subimages of OTHER ranks (rows, columns and corners), forward
// (activations) and backward (their gradients).
double halo_bytes(const dd::DynamicUNet& net, const dd::Grid& g, const dd::Distribution& d, std::int64_t batch) {
  const std::int64_t K = g.count();
  auto owner = [&](std::int64_t k) {
    int r = 0;
    while (r + 1 < d.size() && d.first_clone(r + 1, K) <= k) ++r;
    return r;
  };
  // Input channels of every 3x3 conv at each level: encoder (in, base), (ch(l-1), ch(l)); decoder (2ch(l), ch(l)).
  std::vector<std::vector<std::int64_t>> cin(static_cast<std::size_t>(net.depth() + 1));
  cin[0] = {net.in_channels(), net.ch(0), 2 * net.ch(0), net.ch(0)};
  for (int l = 1; l <= net.depth(); ++l) {
    cin[std::size_t(l)] = {net.ch(l - 1), net.ch(l)};
    if (l < net.depth()) cin[std::size_t(l)].insert(cin[std::size_t(l)].end(), {2 * net.ch(l), net.ch(l)});
  }
  double bytes = 0;
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t m = 0; m < K; ++m) {
      if (owner(k) == owner(m)) continue;
      const std::int64_t ik = k / g.cols(), jk = k % g.cols(), im = m / g.cols(), jm = m % g.cols();
      const std::int64_t di = std::abs(ik - im), dj = std::abs(jk - jm);
      if (di > 1 || dj > 1) continue;  // m receives from its 8 neighbours only
      for (int l = 0; l <= net.depth(); ++l) {
        const std::int64_t f = std::int64_t{1} << l;
        // The part of k's map that m needs: a row (vertical neighbours), a column, or a corner pixel.
        const std::int64_t px = di == 1 && dj == 1 ? 1 : di == 1 ? g.widths()[std::size_t(jk)] / f : g.heights()[std::size_t(ik)] / f;
        for (const std::int64_t c : cin[std::size_t(l)]) bytes += 2.0 * double(px * c * batch) * 4.0;  // fwd + bwd
      }
    }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  return dd::mpi::run_ranks(argc, argv, [&]() -> int {
    const Args a = parse(argc, argv);
    dd::mpi::Communicator world = dd::mpi::Communicator::world();
    auto dist = std::make_shared<dd::mpi::MpiDistribution>(world);
    dd::DDUNet model(dd::DynamicUNet({a.depth, 3, 3, a.base}), dd::DynamicCommNet(a.F), {a.rows, a.cols},
                     dd::Exchange::stitched, 1, dd::CpuWorkers(1));
    model.distribute(dist);
    dd::Adam adam(model.parameters(), model.gradients(), {1e-3f});
    const dd::Shape image{a.batch, 3, a.h, a.w};
    const dd::Grid g = model.grid_for(image);
    const std::vector<std::int64_t> mine = model.local_clones(g.count());
    // Only this rank's subimages are made (seeded by their grid position). Exchange rounds per step:
    // DDU 2 (the F-maps forward, their gradients backward); halo 2 per 3x3 convolution (4D + 2 of them).
    std::vector<dd::Tensor> x, y;
    for (const std::int64_t k : mine) {
      const dd::Shape s{a.batch, 3, g.heights()[std::size_t(k / g.cols())], g.widths()[std::size_t(k % g.cols())]};
      x.push_back(dd::Tensor::randn(s, std::uint64_t(100 + k)));
      dd::Rng rng(std::uint64_t(200 + k));
      dd::Tensor l = dd::Tensor::empty({s.n, 1, s.h, s.w});
      for (std::int64_t i = 0; i < l.numel(); ++i) l.data()[i] = float(rng.uniform_int(0, 2));
      y.push_back(l);
    }
    auto step = [&] {
      model.zero_grad();
      std::vector<dd::Var> in(x.begin(), x.end());
      dd::dice_loss(model.forward_tiles(image, in), y, dd::mpi::sum_over(*dist)).backward();
      adam.step();
    };
    for (int i = 0; i < (a.estimate_only ? 0 : a.warmup); ++i) step();
    world.barrier();
    world.reset_counters();
    dist->reset_counters();
    const auto t0 = std::chrono::steady_clock::now();
    const int steps = a.estimate_only ? 0 : a.steps;
    for (int i = 0; i < steps; ++i) step();
    world.barrier();
    const int div = std::max(steps, 1);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / div;
    double sent = double(world.bytes_sent() + dist->chain_bytes()) / div;
    double comm = (world.seconds_in_collectives() + dist->chain_seconds()) / div;
    double totals[2] = {sent, comm};
    world.all_reduce_sum(totals, 2);  // bytes sent by all ranks; collective seconds summed over ranks
    const double step_s = world.all_reduce_max(secs);
    // Received bytes of the DDU exchange: every rank receives the other ranks' F-maps (forward) and
    // their gradients (backward); plus the BN statistics gather and the gradient chain + broadcast.
    const double f_tiles = double(a.batch) * a.F * (double(a.h) / (1 << a.depth)) * (double(a.w) / (1 << a.depth)) * 4.0;
    const int P = world.size();
    const double params = double(model.num_net_params()) * 4.0, buffers = double(model.num_net_buffers()) * 4.0;
    const double ddu_activation = 2.0 * (P - 1) * f_tiles;
    const double grads = P > 1 ? 2.0 * (P - 1) * params : 0.0;
    const double stats = P > 1 ? double(P - 1) * g.count() * buffers : 0.0;
    const double halo = halo_bytes(model.network(), g, *dist, a.batch);
    if (world.rank() == 0)
      std::printf(
          "{\"label\": \"%s\", \"ranks\": %d, \"image\": \"%lldx%lld\", \"grid\": \"%lldx%lld\", \"batch\": %d, "
          "\"step_ms\": %.2f, \"sent_bytes_per_step\": %.0f, \"comm_share\": %.3f, "
          "\"ddu_activation_bytes\": %.0f, \"gradient_bytes\": %.0f, \"bn_stat_bytes\": %.0f, "
          "\"halo_activation_bytes\": %.0f, \"halo_over_ddu_activations\": %.1f, \"ddu_rounds\": %d, "
          "\"halo_rounds\": %d}\n",
          a.label.c_str(), P, (long long)a.h, (long long)a.w, (long long)a.rows, (long long)a.cols, a.batch,
          a.estimate_only ? 0.0 : step_s * 1e3, totals[0], a.estimate_only ? 0.0 : totals[1] / (P * step_s),
          ddu_activation, grads, stats, halo,
          ddu_activation > 0 ? halo / ddu_activation : 0.0, P > 1 ? 2 : 0, P > 1 ? 2 * (4 * a.depth + 2) : 0);
    return 0;
  });
}
