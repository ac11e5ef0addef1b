// GPU benchmark, our side (bench/gpu/torch_reference.py is PyTorch's; bench/gpu/compare.py runs
// both alternately and prints the ratios). Prints one JSON line in the same format as the PyTorch
// script: median and minimum time per iteration and the peak bytes held by tensors.
//   unet_train: one training step (forward, cross entropy, backward, Adam) of U-Net(4) base 16 on
//               one RGB 1024 x 1024 image (paper Table 5's network);
//   ddu_infer:  inference of DDU-Net(4, 64, Y) base 16 on one RGB 2048 x 2048 image, 2x2 grid.
// --size N changes the image's side (a multiple of 32; the emulated GPU's smoke test runs tiny ones).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include <dd/ddunet.hpp>

#include "dd/backend/cuda/convolution.hpp"

namespace {

struct Args {
  std::string which = "unet_train", dtype = "fp32";
  bool channels_last = true, find = true, graph = false, half_activations = false;
  int iters = 20, warmup = 5;
  std::int64_t size = 0;  // image side; 0: the case's own (1024, 2048)
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--case") a.which = v;
    else if (k == "--dtype") a.dtype = v;
    else if (k == "--iters") a.iters = std::stoi(v);
    else if (k == "--warmup") a.warmup = std::stoi(v);
    else if (k == "--channels-last") a.channels_last = v != "no";
    else if (k == "--find") a.find = v != "no";  // no: cuDNN's heuristics (for profilers: no search kernels)
    else if (k == "--graph") a.graph = v != "no";  // yes: cuDNN graph-API plans (cudnn_graph.hpp)
    // yes: bf16/fp16 activations (ConvSettings::half_activations), as PyTorch's autocast keeps them
    else if (k == "--half-activations") a.half_activations = v != "no";
    else if (k == "--size") a.size = std::stoll(v);
    else dd::fail("unknown flag {} (flags: --case unet_train|ddu_infer --dtype fp32|bf16|fp16 --iters N --warmup N "
                  "--channels-last yes|no --find yes|no --graph yes|no --half-activations yes|no --size N)", k);
  }
  DD_CHECK(a.which == "unet_train" || a.which == "ddu_infer", "--case {}: unet_train or ddu_infer", a.which);
  DD_CHECK(a.dtype == "fp32" || a.dtype == "bf16" || a.dtype == "fp16", "--dtype {}: fp32, bf16 or fp16", a.dtype);
  DD_CHECK(a.iters >= 1 && a.warmup >= 0, "--iters {} / --warmup {}: at least 1 timed and 0 warm-up iterations",
           a.iters, a.warmup);
  if (a.size == 0) a.size = a.which == "unet_train" ? 1024 : 2048;
  DD_CHECK(a.size >= 32 && a.size % 32 == 0, "--size {}: a multiple of 32 (four poolings, a 2x2 grid)", a.size);
  return a;
}

// Timed as PyTorch's side is: CUDA events around each step on the caller's stream, steps enqueued
// back to back (no synchronisation between them, so the host may run ahead of the GPU). enqueue_ms
// is the host time a step takes to return: when it is close to median_ms, the host is the limit.
// The timed steps sit inside cudaProfilerStart/Stop, so `ncu --profile-from-start off` sees only
// them (the warm-up, with cuDNN's algorithm search, stays out of the profile).
template <class Step>
void measure(const Args& a, const Step& step) {
  for (int i = 0; i < a.warmup; ++i) step();
  dd::cuda::synchronize_device();
  auto& alloc = dd::cuda::CachingAllocator::instance();
  alloc.reset_peak();
  const cudaStream_t s = dd::cuda::current_stream();
  std::vector<cudaEvent_t> ev(2 * static_cast<std::size_t>(a.iters));
  for (auto& e : ev) DD_CUDA_CHECK(cudaEventCreate(&e));
  std::vector<double> host;
  (void)cudaProfilerStart();  // no profiler attached: a no-op; never a reason to fail the benchmark
  (void)cudaGetLastError();
  for (int i = 0; i < a.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    DD_CUDA_CHECK(cudaEventRecord(ev[2 * static_cast<std::size_t>(i)], s));
    step();
    DD_CUDA_CHECK(cudaEventRecord(ev[2 * static_cast<std::size_t>(i) + 1], s));
    host.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  dd::cuda::synchronize_device();
  (void)cudaProfilerStop();
  (void)cudaGetLastError();
  std::vector<double> ms;
  for (int i = 0; i < a.iters; ++i) {
    float t = 0;
    DD_CUDA_CHECK(cudaEventElapsedTime(&t, ev[2 * static_cast<std::size_t>(i)], ev[2 * static_cast<std::size_t>(i) + 1]));
    ms.push_back(t);
  }
  for (auto& e : ev) DD_CUDA_CHECK(cudaEventDestroy(e));
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  cudaDeviceProp prop{};
  DD_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf(
      "{\"framework\": \"ddunet\", \"case\": \"%s\", \"dtype\": \"%s\", \"median_ms\": %.4f, \"min_ms\": %.4f, "
      "\"enqueue_ms\": %.4f, \"peak_mem_bytes\": %lld, \"reserved_bytes\": %lld, \"tf32\": %s, \"channels_last\": %s, "
      "\"graph_api\": %s, \"half_activations\": %s, \"graph_plans\": %zu, \"graph_fallbacks\": %zu, \"cudnn\": %zu, "
      "\"device\": \"%s\"}\n",
      a.which.c_str(), a.dtype.c_str(), median(ms), *std::min_element(ms.begin(), ms.end()), median(host),
      (long long)alloc.stats().peak_allocated, (long long)alloc.stats().peak_reserved,
      a.dtype == "fp32" ? "true" : "false", a.channels_last ? "true" : "false", a.graph ? "true" : "false",
      a.half_activations && a.dtype != "fp32" ? "true" : "false", dd::cuda::graph::PlanCache::instance().counts().first,
      dd::cuda::graph::PlanCache::instance().counts().second,
      cudnnGetVersion(), prop.name);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  DD_CHECK(dd::cuda::available(), "bench_gpu: no CUDA device");
  auto& cs = dd::cuda::conv_settings();
  cs.benchmark = a.find;  // as torch.backends.cudnn.benchmark = True
  cs.deterministic = false;
  cs.channels_last = a.channels_last;
  cs.graph_api = a.graph;
  cs.half_activations = a.half_activations;
  // fp32 as PyTorch runs it by default: cuDNN convolutions may use TF32 tensor cores.
  cs.precision = a.dtype == "bf16" ? dd::cuda::Precision::bf16
                 : a.dtype == "fp16" ? dd::cuda::Precision::fp16
                                     : dd::cuda::Precision::tf32;
  dd::Rng rng(1);
  if (a.which == "unet_train") {
    dd::Model<dd::UNet<4, 3, 3, 16>> m(1);
    m.to(dd::Device::cuda);
    dd::Adam adam(m.parameters(), m.gradients(), {1e-3f});
    const dd::Tensor x = dd::Tensor::randn({1, 3, a.size, a.size}, 2).to(dd::Device::cuda);
    dd::Tensor labels = dd::Tensor::empty({1, 1, a.size, a.size});
    for (std::int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = float(rng.uniform_int(0, 2));
    labels = labels.to(dd::Device::cuda);
    measure(a, [&] {
      m.zero_grad();
      dd::cross_entropy(m.forward(dd::Var(x)), labels).backward();
      adam.step();
    });
  } else {
    dd::DomainDecomposed<dd::UNet<4, 3, 3, 16>, dd::CommNet<64>> m({2, 2}, dd::Exchange::stitched, 1);
    m.to(dd::Device::cuda);
    m.eval();
    const dd::Tensor x = dd::Tensor::randn({1, 3, a.size, a.size}, 2).to(dd::Device::cuda);
    measure(a, [&] {
      dd::NoGrad ng;
      const dd::Var y = m.forward(dd::Var(x));
      (void)y;
    });
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_gpu: %s\n", e.what());
  return 1;
}
