// Every CPU kernel, forward alone and forward + backward, at the shapes the U-Nets use: 3x3
// convolutions from 4 to 256 channels on 16 to 1024 pixel maps (U-Net(4) base 4/16 levels, one
// image, as a tile or a subimage is run), the communication network's 5x5 convolutions, batch norm
// (and the fused BN -> ReLU -> Dropout2d tail), max-pool, up-convolution, concatenation, ReLU,
// softmax + cross entropy; strided copies beside memcpy. Google Benchmark; the comparison with
// PyTorch is bench/cpu/compare.py.
//   ./build/bench/bench_kernels --benchmark_counters_tabular=true [--benchmark_filter=conv3x3]
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include <dd/ddunet.hpp>

namespace {

dd::Var param(dd::Shape s, std::uint64_t seed) {
  return dd::Var::parameter(dd::Tensor::randn(s, seed, 0.1f), dd::Tensor::zeros(s));
}

// state.range(0) = 0: forward only (no tape); 1: forward, then backward from a fixed gradient.
template <class Op>
void run(benchmark::State& state, const std::vector<dd::Tensor>& inputs, Op&& op, double flops_forward = 0) {
  const bool backward = state.range(0) != 0;
  dd::Tensor dy;  // the fixed output gradient, drawn before the timed loop
  if (backward) {
    dd::NoGrad ng;
    std::vector<dd::Var> xs(inputs.begin(), inputs.end());
    dy = dd::Tensor::randn(op(xs).shape(), 99);
  }
  for (auto _ : state) {
    std::vector<dd::Var> xs;
    for (const dd::Tensor& t : inputs) xs.emplace_back(t, backward);
    if (!backward) {
      dd::NoGrad ng;
      benchmark::DoNotOptimize(op(xs).value().data());
      continue;
    }
    const dd::Var y = op(xs);
    y.accumulate_grad(dy);
    dd::Tape::current().backward();
  }
  if (flops_forward > 0)  // backward: input and weight gradients, each a forward's work
    state.counters["GFLOP/s"] = benchmark::Counter(flops_forward * (backward ? 3 : 1) * 1e-9 * double(state.iterations()),
                                                   benchmark::Counter::kIsRate);
  state.counters["threads"] = dd::num_threads();
}

// conv k x k, c -> c channels, on one hw x hw image; args: backward, c, hw, k.
void Conv(benchmark::State& state) {
  const std::int64_t c = state.range(1), hw = state.range(2), k = state.range(3);
  const dd::Var w = param({c, c, k, k}, 1), b = k == 5 ? param({c, 1, 1, 1}, 2) : dd::Var{};
  run(state, {dd::Tensor::randn({1, c, hw, hw}, 3)},
      [&](const std::vector<dd::Var>& x) { return dd::conv2d(x[0], w, b, {k / 2, 1, 1}); },
      2.0 * double(c * c * k * k) * double(hw * hw));
}
// The decoder's first convolution over [skip, up] (2c -> c), read without a concatenation.
void ConvOverParts(benchmark::State& state) {
  const std::int64_t c = state.range(1), hw = state.range(2);
  const dd::Var w = param({c, 2 * c, 3, 3}, 1);
  run(state, {dd::Tensor::randn({1, c, hw, hw}, 3), dd::Tensor::randn({1, c, hw, hw}, 4)},
      [&](const std::vector<dd::Var>& x) { return dd::conv2d(x, w, dd::Var{}, {1, 1, 1}); },
      2.0 * double(2 * c * c * 9) * double(hw * hw));
}
struct Norm {
  dd::Var g = dd::Var::parameter(dd::Tensor::full({16, 1, 1, 1}, 1.0f), dd::Tensor::zeros({16, 1, 1, 1}));
  dd::Var b = dd::Var::parameter(dd::Tensor::zeros({16, 1, 1, 1}), dd::Tensor::zeros({16, 1, 1, 1}));
  dd::Tensor rm = dd::Tensor::zeros({16, 1, 1, 1}), rv = dd::Tensor::full({16, 1, 1, 1}, 1.0f);
};
void BatchNorm(benchmark::State& state) {
  Norm n;
  run(state, {dd::Tensor::randn({1, 16, state.range(1), state.range(1)}, 3)}, [&](const std::vector<dd::Var>& x) {
    return dd::batch_norm(x[0], n.g, n.b, n.rm, n.rv, {true, 0.1f, 1e-5f});
  });
}
void BatchNormReLUDropout(benchmark::State& state) {
  Norm n;
  dd::Rng rng(5);
  run(state, {dd::Tensor::randn({1, 16, state.range(1), state.range(1)}, 3)}, [&](const std::vector<dd::Var>& x) {
    return dd::batch_norm_relu_dropout(x[0], n.g, n.b, n.rm, n.rv, {true, 0.1f, 1e-5f}, 0.1f, &rng);
  });
}
void ReLU(benchmark::State& state) {
  run(state, {dd::Tensor::randn({1, 16, state.range(1), state.range(1)}, 3)},
      [](const std::vector<dd::Var>& x) { return dd::relu(x[0]); });
}
void MaxPool(benchmark::State& state) {
  run(state, {dd::Tensor::randn({1, 16, state.range(1), state.range(1)}, 3)},
      [](const std::vector<dd::Var>& x) { return dd::max_pool2x2(x[0]); });
}
void UpConv(benchmark::State& state) {
  const std::int64_t c = state.range(1), hw = state.range(2);
  const dd::Var w = param({c, c / 2, 2, 2}, 1), b = param({c / 2, 1, 1, 1}, 2);
  run(state, {dd::Tensor::randn({1, c, hw, hw}, 3)},
      [&](const std::vector<dd::Var>& x) { return dd::upconv2x2(x[0], w, b); });
}
void Concat(benchmark::State& state) {
  const dd::Shape s{1, 16, state.range(1), state.range(1)};
  run(state, {dd::Tensor::randn(s, 3), dd::Tensor::randn(s, 4)},
      [](const std::vector<dd::Var>& x) { return dd::concat({x[0], x[1]}, 1); });
}
// Tensor::copy_from between host views, the copies under concat, slice, the DDU stitch and cut and
// host transfers, beside "memcpy": one std::memcpy of the same destination bytes (the peer: a copy
// cannot beat it). Args: kind, hw. Kinds: 0 a 16-channel part into its channel slice of a
// 32-channel NCHW tensor (concat); 1 a W-half tile into a full-width image (stitch); 2 NHWC to
// NCHW (a GPU activation's host copy); 3 f32 to bf16, dense (a half tensor's staging).
void Copy(benchmark::State& state) {
  const std::int64_t hw = state.range(1);
  const dd::Shape part{1, 16, hw, hw};
  dd::Tensor src, dst;
  switch (state.range(0)) {
    case 0:
      src = dd::Tensor::randn(part, 3);
      dst = dd::Tensor::empty({1, 32, hw, hw}).channels(16, 16);
      break;
    case 1:
      src = dd::Tensor::randn(part, 3);
      dst = dd::Tensor::empty({1, 16, hw, 2 * hw}).tile(0, hw, hw, hw);
      break;
    case 2:
      src = dd::Tensor::randn(part, 3).clone_as(dd::MemoryFormat::nhwc);
      dst = dd::Tensor::empty(part);
      break;
    default:
      src = dd::Tensor::randn(part, 3);
      dst = dd::Tensor::empty(part, dd::Device::cpu, dd::MemoryFormat::nchw, dd::DType::bf16);
      break;
  }
  for (auto _ : state) {
    dst.copy_from(src);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(dst.bytes()));
}
void Memcpy(benchmark::State& state) {  // the peer of Copy: the same number of destination bytes
  const std::int64_t hw = state.range(1);
  const std::size_t bytes = static_cast<std::size_t>(16 * hw * hw) * (state.range(0) == 3 ? 2 : 4);
  const std::vector<char> src(bytes, 1);
  std::vector<char> dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(bytes));
}
void copy_cases(benchmark::internal::Benchmark* b) {
  for (int kind : {0, 1, 2, 3})
    for (int hw : {128, 1024}) b->Args({kind, hw});
}

void SoftmaxCrossEntropy(benchmark::State& state) {
  const std::int64_t hw = state.range(1);
  dd::Tensor labels = dd::Tensor::empty({1, 1, hw, hw});
  for (std::int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = static_cast<float>(i % 3);
  run(state, {dd::Tensor::randn({1, 3, hw, hw}, 3)},
      [&](const std::vector<dd::Var>& x) { return dd::cross_entropy(x[0], labels); });
}

// {backward, channels, size}: the U-Net(4) levels at base 4 and 16 on a 1024^2 image, and a 16^2
// bottleneck tile of a DDU-Net(4) subimage.
void conv_shapes(benchmark::internal::Benchmark* b) {
  for (int bwd : {0, 1})
    for (auto [c, hw] : {std::pair{4, 1024}, {16, 1024}, {32, 512}, {64, 256}, {128, 128}, {256, 64}, {64, 32},
                         {256, 16}})
      b->Args({bwd, c, hw, 3});
}
void comm_shapes(benchmark::internal::Benchmark* b) {
  for (int bwd : {0, 1})
    for (auto [c, hw] : {std::pair{32, 32}, {64, 64}}) b->Args({bwd, c, hw, 5});
}
void sizes(benchmark::internal::Benchmark* b) {
  for (int bwd : {0, 1})
    for (int hw : {128, 1024}) b->Args({bwd, hw});
}

}  // namespace

BENCHMARK(Conv)->Name("conv3x3")->Apply(conv_shapes)->ArgNames({"bwd", "c", "hw", "k"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(Conv)->Name("conv5x5_comm")->Apply(comm_shapes)->ArgNames({"bwd", "c", "hw", "k"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(ConvOverParts)->ArgsProduct({{0, 1}, {16}, {128, 1024}})->ArgNames({"bwd", "c", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BatchNorm)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BatchNormReLUDropout)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(ReLU)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(MaxPool)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(UpConv)->ArgsProduct({{0, 1}, {32, 256}, {64, 16}})->ArgNames({"bwd", "c", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(Concat)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(Copy)->Apply(copy_cases)->ArgNames({"kind", "hw"})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(Memcpy)->Name("memcpy")->Apply(copy_cases)->ArgNames({"kind", "hw"})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(SoftmaxCrossEntropy)->Apply(sizes)->ArgNames({"bwd", "hw"})->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
