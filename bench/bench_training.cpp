// Training throughput of the circles configuration (issue: DDU-Net main job): one Adam step on a
// batch of 16 images of k = 4 subimages (128 x 32), reported as images per second.
//   ./build/bench/bench_training --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <dd/ddunet.hpp>

namespace {

template <class M>
void train_steps(benchmark::State& state, M& model) {
  const auto data = dd::make_circles(16, 1, {.subimages = 4});
  dd::Adam adam(model.parameters(), model.gradients(), {0.008f});
  for (auto _ : state) {
    model.zero_grad();
    const dd::Var loss = dd::dice_loss(model.forward(dd::Var(data.images)), data.labels);
    loss.backward();
    dd::clip_grad_norm(model.gradients(), 1.0);
    adam.step();
    benchmark::DoNotOptimize(loss.value().item());
  }
  state.counters["images_per_s"] = benchmark::Counter(16.0 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["threads"] = dd::num_threads();
}

using Net = dd::UNet<3, 1, 3, 4>;

void DDUNet_3_32_Y(benchmark::State& state) {
  dd::DomainDecomposed<Net, dd::CommNet<32>> m({1, 4}, dd::Exchange::stitched, 1);
  train_steps(state, m);
}
void DDUNet_3_32_N(benchmark::State& state) {
  dd::DomainDecomposed<Net, dd::CommNet<32>> m({1, 4}, dd::Exchange::local, 1);
  train_steps(state, m);
}
void UNet_3_full_image(benchmark::State& state) {
  dd::Model<Net> m(1);
  train_steps(state, m);
}

BENCHMARK(DDUNet_3_32_Y)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK(DDUNet_3_32_N)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK(UNet_3_full_image)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

}  // namespace

BENCHMARK_MAIN();
