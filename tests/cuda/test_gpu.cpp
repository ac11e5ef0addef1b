// GPU against CPU: every op, whole U-Net and DDU-Net training steps, the optimizer, the caching
// allocator, determinism and reduced precision. Each case skips (with a message) on a machine
// without a GPU, so the binary also runs in CI, where it proves the CUDA build links and starts.
// The same file runs on the emulated GPU (tests/cuda_emulated, DD_EMULATED_GPU): the library's host
// code and kernels on the CPU, cuDNN as plain loops.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <dd/ddunet.hpp>

#include "dd/backend/cuda/convolution.hpp"

using namespace dd;

namespace {

bool no_gpu() {
  if (cuda::available()) return false;
  MESSAGE("no CUDA device: skipped");
  return true;
}

// ||a - b|| / ||b|| on the host (b is the CPU reference).
double rel_error(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double d = 0, n = 0;
  for (std::size_t i = 0; i < x.size(); ++i) d += double(x[i] - y[i]) * (x[i] - y[i]), n += double(y[i]) * y[i];
  return std::sqrt(d) / std::max(std::sqrt(n), 1e-30);
}
// max |a - b| / max |b|: no single element may be off even when the norm hides it.
double max_error(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double d = 0, m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) d = std::max(d, double(std::fabs(x[i] - y[i]))), m = std::max(m, double(std::fabs(y[i])));
  return d / std::max(m, 1e-30);
}

// The GPU activation layout and convolution API under test (cases that compare with the CPU run
// each): channels-last and NCHW with cuDNN's legacy algorithms, channels-last with graph-API plans.
struct GpuConfig {
  bool channels_last, graph_api;
};
constexpr GpuConfig kDefaultConfig{true, false};
constexpr GpuConfig kConfigs[] = {{true, false}, {false, false}, {true, true}};
GpuConfig g_config = kDefaultConfig;
bool g_channels_last = true;  // g_config.channels_last

// Runs body under every configuration of kConfigs (the globals set; the default restored after).
void for_each_config(const std::function<void(const GpuConfig&)>& body) {
  for (const GpuConfig config : kConfigs) {
    g_config = config;
    g_channels_last = config.channels_last;
    CAPTURE(config.channels_last);
    CAPTURE(config.graph_api);
    body(config);
  }
  g_config = kDefaultConfig;
  g_channels_last = true;
}

// fp32 convolutions without TF32 and deterministic algorithms, in the layout under test, restored
// afterwards.
struct ExactConvs {
  cuda::ConvSettings saved = cuda::conv_settings();
  ExactConvs() {
    cuda::conv_settings().precision = cuda::Precision::fp32;
    cuda::conv_settings().deterministic = true;
    cuda::conv_settings().channels_last = g_channels_last;
    cuda::conv_settings().graph_api = g_config.graph_api;
  }
  ~ExactConvs() { cuda::conv_settings() = saved; }
};

using OpFn = std::function<Var(const std::vector<Var>&)>;

// The GPU inputs' gradients against the CPU's: where one has a gradient the other has it, on the
// GPU, in its value's element type, within grad_tol.
void check_input_gradients(const std::vector<Var>& cpu_in, const std::vector<Var>& gpu_in, double grad_tol) {
  for (std::size_t i = 0; i < cpu_in.size(); ++i) {
    CAPTURE(i);
    REQUIRE(cpu_in[i].grad().defined() == gpu_in[i].grad().defined());
    if (!cpu_in[i].grad().defined()) continue;
    CHECK(gpu_in[i].grad().device() == Device::cuda);
    CHECK(gpu_in[i].grad().dtype() == gpu_in[i].value().dtype());
    CHECK(rel_error(gpu_in[i].grad(), cpu_in[i].grad()) < grad_tol);
  }
}

// Runs op on CPU and GPU copies of the inputs, backpropagates sum(R * y) with the same random R,
// and compares the output and every input gradient. Each side runs forward AND backward before the
// other starts: backward() replays the whole current tape (autograd/tape.hpp).
void check_op(const char* name, const std::vector<Tensor>& inputs, const OpFn& op, double fwd_tol = 1e-4,
              double grad_tol = 1e-3) {
  CAPTURE(name);
  ExactConvs exact;
  std::vector<Var> cpu_in, gpu_in;
  for (const Tensor& t : inputs) cpu_in.emplace_back(t.clone(), true), gpu_in.emplace_back(t.to(Device::cuda), true);
  const Var yc = op(cpu_in);
  const Tensor R = Tensor::randn(yc.shape(), 99);
  weighted_sum(yc, R).backward();
  const Var yg = op(gpu_in);
  weighted_sum(yg, R).backward();
  REQUIRE(yg.value().device() == Device::cuda);
  // Channels-last inputs stay channels-last through every op but the losses and softmax.
  if (g_channels_last && yg.shape().c > 1 && yg.shape().h * yg.shape().w > 1 && inputs[0].shape().c > 1 &&
      std::string_view(name).find("soft") == std::string_view::npos)
    CHECK(yg.value().format() == MemoryFormat::nhwc);
  CHECK(rel_error(yg.value(), yc.value()) < fwd_tol);
  CHECK(max_error(yg.value(), yc.value()) < 10 * fwd_tol);
  check_input_gradients(cpu_in, gpu_in, grad_tol);
}

Tensor labels_for(Shape s, int classes, std::uint64_t seed) {
  Rng rng(seed);
  Tensor l = Tensor::empty({s.n, 1, s.h, s.w});
  for (std::int64_t i = 0; i < l.numel(); ++i) l.data()[i] = float(rng.uniform_int(0, classes - 1));
  return l;
}

}  // namespace

TEST_CASE("GPU tensors: round trips, strided views, fill, add, scale, norm") {
  if (no_gpu()) return;
  const Tensor a = Tensor::randn({2, 3, 5, 7}, 1);
  const Tensor g = a.to(Device::cuda);
  CHECK(g.device() == Device::cuda);
  CHECK(g.to_vector() == a.to_vector());
  CHECK(g.tile(1, 3, 2, 4).clone().to_vector() == a.tile(1, 3, 2, 4).clone().to_vector());
  CHECK(g.channels(1, 2).clone().to_vector() == a.channels(1, 2).clone().to_vector());
  // A strided destination on the GPU, from a CPU source.
  const Tensor z = Tensor::zeros({2, 3, 5, 7}, Device::cuda);
  z.tile(0, 2, 1, 3).copy_from(a.tile(3, 2, 4, 3));
  const Tensor zc = Tensor::zeros({2, 3, 5, 7});
  zc.tile(0, 2, 1, 3).copy_from(a.tile(3, 2, 4, 3));
  CHECK(z.to_vector() == zc.to_vector());
  z.channels(2, 1).fill(5.0f);
  zc.channels(2, 1).fill(5.0f);
  CHECK(z.to_vector() == zc.to_vector());
  const Tensor s = g.clone();
  s.add_(g);
  s.scale_(0.25f);
  for (std::size_t i = 0; const float v : s.to_vector()) CHECK(v == a.to_vector()[i++] * 0.5f);
  CHECK(l2_norm(g) == doctest::Approx(l2_norm(a)).epsilon(1e-6));
  CHECK(Tensor::full({1, 1, 1, 1}, 3.5f, Device::cuda).item() == 3.5f);
}

TEST_CASE(
    "GPU strided copies: row moves (16 bytes down to 2), element-wise layout changes and conversions, bit for bit") {
  if (no_gpu()) return;
  // Concat parts into channel slices of channels-last memory at offsets that give the row kernel
  // 16-, 8-, 4- and 2-byte units (copy_plan.hpp), then back out; conversions through views.
  for (const std::int64_t part : {12, 16}) {
    const Tensor a = Tensor::randn({2, part, 3, 5}, 31);
    for (const DType t : {DType::f32, DType::bf16, DType::f16}) {
      CAPTURE(part);
      CAPTURE(dtype_name(t));
      const Tensor host = a.to(t).clone_as(MemoryFormat::nhwc),
                   dev = host.to(Device::cuda).to(t).clone_as(MemoryFormat::nhwc);
      REQUIRE(dev.dtype() == t);
      for (const std::int64_t at : {0, 1, 2, 4, 8}) {
        CAPTURE(at);
        const Tensor into_h = Tensor::zeros({2, 32, 3, 5}, Device::cpu, MemoryFormat::nhwc, t);
        const Tensor into_d = Tensor::zeros({2, 32, 3, 5}, Device::cuda, MemoryFormat::nhwc, t);
        into_h.channels(at, part).copy_from(host);
        into_d.channels(at, part).copy_from(dev);
        CHECK(into_d.to_vector() == into_h.to_vector());
        CHECK(into_d.channels(at, part).clone().to_vector() == host.to_vector());  // and back out
        // Converting copies between views of different types and memory orders.
        const Tensor wide_h = Tensor::zeros({2, part, 3, 5}), wide_d = Tensor::zeros({2, part, 3, 5}, Device::cuda);
        wide_h.copy_from(into_h.channels(at, part));
        wide_d.copy_from(into_d.channels(at, part));
        CHECK(wide_d.to_vector() == wide_h.to_vector());
        const Tensor narrow_d = Tensor::zeros({2, 32, 3, 5}, Device::cuda, MemoryFormat::nhwc, t);
        narrow_d.channels(at, part).copy_from(a.to(Device::cuda));  // f32 NCHW into a half NHWC slice
        CHECK(narrow_d.to_vector() == into_h.to_vector());
      }
      // Copies to the host of any layout and type (the GPU reorders and converts first): a channel
      // slice of a host tensor (through a dense host image) and whole host tensors, both orders.
      for (const MemoryFormat f : {MemoryFormat::nchw, MemoryFormat::nhwc}) {
        CAPTURE(int(f));
        const Tensor want = Tensor::zeros({2, 32, 3, 5}, Device::cpu, f, t),
                     got = Tensor::zeros({2, 32, 3, 5}, Device::cpu, f, t);
        want.channels(3, part).copy_from(host);
        got.channels(3, part).copy_from(dev);
        CHECK(got.to_vector() == want.to_vector());
        const Tensor whole = Tensor::empty({2, part, 3, 5}, Device::cpu, f, t);
        whole.copy_from(dev);
        CHECK(whole.to_vector() == host.to_vector());
        const Tensor wide = Tensor::empty({2, part, 3, 5}, Device::cpu, f, DType::f32);
        wide.copy_from(dev);
        CHECK(wide.to_vector() == host.to_vector());
      }
    }
  }
  // The filter gradient's way: a bf16 KRSC array widened, reordered to KCRS and added to f32, in one kernel.
  const Tensor w = Tensor::randn({4, 3, 3, 3}, 32), krsc = w.clone_as(MemoryFormat::nhwc).to(DType::bf16);
  const Tensor acc = Tensor::randn({4, 3, 3, 3}, 33), acc_d = acc.to(Device::cuda);
  const Tensor krsc_d = krsc.to(Device::cuda).to(DType::bf16).clone_as(MemoryFormat::nhwc);
  REQUIRE(krsc_d.is_dense(MemoryFormat::nhwc));
  gpu::add_strided(acc_d.raw(), DType::f32, krsc_d.raw(), DType::bf16, cuda::kernels::filter_order(4, 3, 3, 3, false));
  const std::vector<float> got = acc_d.to_vector(), base = acc.to_vector(),
                           wb = krsc.to(DType::f32).contiguous().to_vector();
  for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == base[i] + wb[i]);
  const Tensor a = Tensor::randn({2, 12, 3, 5}, 31);
  // Dense blocks (one cudaMemcpyAsync) and a tile of a tile.
  const Tensor g = a.to(Device::cuda);
  CHECK(g.clone().to_vector() == a.to_vector());
  CHECK(g.tile(1, 2, 1, 3).tile(0, 1, 1, 2).clone().to_vector() ==
        a.tile(1, 2, 1, 3).tile(0, 1, 1, 2).clone().to_vector());
}

TEST_CASE("GPU ops match the CPU in both layouts and both cuDNN APIs: forward within 1e-4, gradients within 1e-3") {
  if (no_gpu()) return;
  for_each_config([&](const GpuConfig& config) {
  const bool layout = config.channels_last;
  // Channels-last inputs, as a convolution would hand them on, so every op sees that layout.
  auto in = [layout](const Tensor& t) { return layout ? t.clone_as(MemoryFormat::nhwc) : t; };
  const Tensor x = in(Tensor::randn({2, 6, 17, 20}, 2));
  auto conv = [](std::int64_t pad, std::int64_t stride, std::int64_t dil, bool bias) {
    return [=](const std::vector<Var>& v) { return conv2d(v[0], v[1], bias ? v[2] : Var{}, {pad, stride, dil}); };
  };
  check_op("conv 3x3", {x, Tensor::randn({8, 6, 3, 3}, 3, 0.2f)}, conv(1, 1, 1, false));
  check_op("conv 5x5 bias", {x, Tensor::randn({6, 6, 5, 5}, 4, 0.1f), Tensor::randn({6, 1, 1, 1}, 5)}, conv(2, 1, 1, true));
  check_op("conv stride 2 dilation 2", {x, Tensor::randn({4, 6, 3, 3}, 6, 0.2f)}, conv(2, 2, 2, false));
  check_op("conv 3x3 from 3 channels, bias", {in(Tensor::randn({2, 3, 17, 20}, 22)), Tensor::randn({8, 3, 3, 3}, 23, 0.3f),
                                              Tensor::randn({8, 1, 1, 1}, 24)}, conv(1, 1, 1, true));
  check_op("conv 1x1 bias", {x, Tensor::randn({3, 6, 1, 1}, 7), Tensor::randn({3, 1, 1, 1}, 8)}, conv(0, 1, 1, true));
  check_op("upconv", {x, Tensor::randn({6, 4, 2, 2}, 9, 0.3f), Tensor::randn({4, 1, 1, 1}, 10)},
           [](const std::vector<Var>& v) { return upconv2x2(v[0], v[1], v[2]); });
  check_op("relu", {x}, [](const std::vector<Var>& v) { return relu(v[0]); });
  check_op("max pool, odd sizes", {in(Tensor::randn({2, 3, 7, 9}, 11))},
           [](const std::vector<Var>& v) { return max_pool2x2(v[0]); });
  check_op("concat channels", {x, in(Tensor::randn({2, 2, 17, 20}, 12))},
           [](const std::vector<Var>& v) { return concat({v[0], v[1]}, 1); });
  check_op("concat width + slice", {x, in(Tensor::randn({2, 6, 17, 3}, 13))},
           [](const std::vector<Var>& v) { return slice(concat({v[0], v[1]}, 3), 2, 4, 9); });
  check_op("softmax", {x}, [](const std::vector<Var>& v) { return softmax(v[0]); });
  check_op("dropout2d (same seed, same mask)", {x}, [](const std::vector<Var>& v) {
    Rng rng(5);
    return dropout2d(v[0], 0.3f, rng, true);
  });
  for (const bool training : {true, false}) {
    CAPTURE(training);
    check_op("batch norm", {x, Tensor::randn({6, 1, 1, 1}, 14), Tensor::randn({6, 1, 1, 1}, 15)},
             [training](const std::vector<Var>& v) {
               const Device d = v[0].value().device();
               const Tensor rm = Tensor::randn({6, 1, 1, 1}, 16).to(d);
               const Tensor rv = Tensor::full({6, 1, 1, 1}, 1.5f, d);
               const Var y = batch_norm(v[0], v[1], v[2], rm, rv, {training, 0.1f, 1e-5f});
               if (training) {  // the running statistics moved the same way
                 const Tensor rm0 = Tensor::randn({6, 1, 1, 1}, 16);
                 const Tensor rv0 = Tensor::full({6, 1, 1, 1}, 1.5f);
                 const Var ref = batch_norm(Var(v[0].value().to(Device::cpu)), Var(v[1].value().to(Device::cpu)),
                                            Var(v[2].value().to(Device::cpu)), rm0, rv0, {true, 0.1f, 1e-5f});
                 CHECK(rel_error(rm, rm0) < 1e-5);
                 CHECK(rel_error(rv, rv0) < 1e-5);
               }
               return y;
             });
  }
  if (layout) {
    // Our kernels' scratch (channels-last batch norm's partial sums) comes from the device's memory
    // pool, which keeps its memory across waits (release threshold at its maximum, set by the first scratch).
    int dev = 0;
    cudaMemPool_t pool;
    std::uint64_t threshold = 0;
    REQUIRE(cudaGetDevice(&dev) == cudaSuccess);
    REQUIRE(cudaDeviceGetMemPool(&pool, dev) == cudaSuccess);
    REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) == cudaSuccess);
    CHECK(threshold == ~std::uint64_t{0});
  }
  for (const bool training : {true, false}) {
    CAPTURE(training);
    check_op("fused batch norm -> relu -> dropout", {x, Tensor::randn({6, 1, 1, 1}, 19), Tensor::randn({6, 1, 1, 1}, 20)},
             [training](const std::vector<Var>& v) {
               const Device d = v[0].value().device();
               Rng rng(21);
               return batch_norm_relu_dropout(v[0], v[1], v[2], Tensor::zeros({6, 1, 1, 1}, d),
                                              Tensor::full({6, 1, 1, 1}, 1.0f, d), {training, 0.1f, 1e-5f}, 0.3f, &rng);
             });
    // Wide layers: one block per 300 channels, 1024 (the widest our kernels take), 1030 (cuDNN's
    // batch norm with the tail applied after it).
    for (const std::int64_t c : {300, 1024, 1030}) {
      CAPTURE(c);
      const Tensor xc = in(Tensor::randn({2, c, 5, 7}, 60 + c));
      const Tensor gamma = Tensor::randn({c, 1, 1, 1}, 61), beta = Tensor::randn({c, 1, 1, 1}, 62);
      check_op("wide fused batch norm -> relu -> dropout", {xc, gamma, beta}, [training, c](const std::vector<Var>& v) {
        const Device d = v[0].value().device();
        Rng rng(63);
        return batch_norm_relu_dropout(v[0], v[1], v[2], Tensor::zeros({c, 1, 1, 1}, d),
                                       Tensor::full({c, 1, 1, 1}, 1.0f, d), {training, 0.1f, 1e-5f}, 0.3f, &rng);
      });
    }
  }
  const Tensor logits = Tensor::randn({2, 3, 9, 11}, 17), L = labels_for({2, 3, 9, 11}, 3, 18);
  check_op("cross entropy", {logits}, [&](const std::vector<Var>& v) {
    return cross_entropy(v[0], L.to(v[0].value().device()));
  }, 1e-5, 1e-4);
  check_op("dice loss", {logits}, [&](const std::vector<Var>& v) {
    return dice_loss(v[0], L.to(v[0].value().device()));
  }, 1e-5, 1e-4);
  // Dice of an image in pieces (sums added on the device in piece order), and with the pieces' sums
  // gathered over ranks on the host (a stand-in second rank holding the same pieces).
  const Tensor piece1 = Tensor::randn({1, 3, 6, 5}, 19), piece2 = Tensor::randn({2, 3, 4, 7}, 20);
  const Tensor L1 = labels_for(piece1.shape(), 3, 21), L2 = labels_for(piece2.shape(), 3, 22);
  check_op(
      "dice loss over pieces", {logits, piece1, piece2},
      [&](const std::vector<Var>& v) {
        const Device d = v[0].value().device();
        return dice_loss(v, {L.to(d), L1.to(d), L2.to(d)});
      },
      1e-5, 1e-4);
  const DicePieceGather twice = [](const std::vector<double>& mine) {
    std::vector<double> all = mine;
    all.insert(all.end(), mine.begin(), mine.end());
    return all;
  };
  check_op(
      "dice loss over pieces, gathered", {logits, piece1},
      [&](const std::vector<Var>& v) {
        const Device d = v[0].value().device();
        return dice_loss(v, {L.to(d), L1.to(d)}, twice);
      },
      1e-5, 1e-4);
  // A convolution gives the configured layout whatever layout it takes.
  {
    ExactConvs exact;
    const Var w(Tensor::randn({8, 6, 3, 3}, 3, 0.2f).to(Device::cuda));
    const Tensor xg = Tensor::randn({2, 6, 17, 20}, 2).to(Device::cuda);
    const MemoryFormat want = layout ? MemoryFormat::nhwc : MemoryFormat::nchw;
    CHECK(conv2d(Var(xg), w, Var{}, {1, 1, 1}).value().format() == want);
    CHECK(conv2d(Var(xg.clone_as(MemoryFormat::nhwc)), w, Var{}, {1, 1, 1}).value().format() == want);
  }
  if (config.graph_api) {
    // The graph-API configuration really ran plans (problems without one fall back to the legacy calls).
    const auto [with, without] = cuda::graph::PlanCache::instance().counts();
    MESSAGE("graph API: " << with << " convolution problems ran an execution plan, " << without
                          << " fell back to the legacy algorithms");
#ifdef DD_EMULATED_GPU
    CHECK((with == 0 && without > 0));  // the emulated cuDNN has no graph API: every problem fell back
#else
    CHECK(with > 0);
#endif
  }
  });
}

TEST_CASE("GPU errors: mixed devices and bad labels are dd::Error with a message") {
  if (no_gpu()) return;
  const Var x(Tensor::randn({1, 2, 4, 4}, 1)), w(Tensor::randn({2, 2, 3, 3}, 2).to(Device::cuda));
  CHECK_THROWS_WITH_AS(conv2d(x, w, Var{}, {1, 1, 1}), doctest::Contains("different devices"), dd::Error);
  const Var lg(Tensor::randn({1, 3, 4, 4}, 3).to(Device::cuda));
  Tensor bad = Tensor::zeros({1, 1, 4, 4});
  bad.data()[5] = 7.0f;
  // Both losses find bad labels on the GPU and report them at the next wait for it (reading the
  // loss here), once.
  const Tensor good = Tensor::zeros({1, 1, 4, 4}).to(Device::cuda);
  const Var ce = cross_entropy(lg, bad.to(Device::cuda));
  CHECK_THROWS_WITH_AS(ce.value().item(), doctest::Contains("cross_entropy: 1 labels are not class indices in [0, 3)"),
                       dd::Error);
  CHECK_NOTHROW(cross_entropy(lg, good).value().item());
  const Var dice = dice_loss(lg, bad.to(Device::cuda));
  CHECK_THROWS_WITH_AS(dice.value().item(), doctest::Contains("dice_loss: 1 labels are not class indices in [0, 3)"),
                       dd::Error);
  CHECK_NOTHROW(dice_loss(lg, good).value().item());
  CHECK_THROWS_WITH_AS(dice_loss(lg, bad), doctest::Contains("labels on cpu"), dd::Error);
  CHECK_THROWS_WITH_AS(dice_loss({lg, Var(lg.value().to(Device::cpu))}, {good, good.to(Device::cpu)}),
                       doctest::Contains("pieces on cuda and cpu"), dd::Error);
  // The trainer reads each loss one step late: a bad label still ends the epoch with the error
  // (at the latest when its last loss is read), before the epoch is over and anything is saved.
  Model<UNet<2, 1, 2, 8>> m(1);
  m.to(Device::cuda);
  SegmentationSet train{Tensor::randn({3, 1, 16, 16}, 4), Tensor::zeros({3, 1, 16, 16})};
  train.labels.data()[256 + 37] = 2.0f;  // the second image; 2 classes
  TrainOptions o;
  o.batch = 1;
  Trainer<Model<UNet<2, 1, 2, 8>>> trainer(m, 2, o);
  CHECK_THROWS_WITH_AS(trainer.run_epoch(train, {}),
                       doctest::Contains("dice_loss: 1 labels are not class indices in [0, 2)"), dd::Error);
}

namespace {
// One training step (forward, Dice loss, backward) of CPU and GPU copies of the same model, compared.
template <class M>
void compare_step(M& cpu, M& gpu, const Tensor& x, const Tensor& labels, double grad_tol = 1e-3) {
  CAPTURE(g_channels_last);
  ExactConvs exact;
  gpu.to(Device::cuda);
  cpu.zero_grad(), gpu.zero_grad();
  // Forward and backward of one side before the other (backward replays the whole tape).
  const Var yc = cpu.forward(Var(x));
  const Var lc = dice_loss(yc, labels);
  lc.backward();
  const Var yg = gpu.forward(Var(x.to(Device::cuda)));
  const Var lg = dice_loss(yg, labels.to(Device::cuda));
  lg.backward();
  CHECK(rel_error(yg.value(), yc.value()) < 1e-4);
  CHECK(max_error(yg.value(), yc.value()) < 1e-3);
  CHECK(lg.value().item() == doctest::Approx(lc.value().item()).epsilon(1e-5));
  CHECK(l2_norm(cpu.gradients()) > 0.0);
  const double ge = rel_error(gpu.gradients(), cpu.gradients());
  // The first 1 % of the parameters (the first layer) apart: a layer-local error shows there, a
  // flipped ReLU spreads over everything upstream of it.
  const std::int64_t P = cpu.gradients().numel(), head = std::max<std::int64_t>(1, P / 100);
  MESSAGE("gradient relative error " << ge << " (first " << head << " parameters "
          << rel_error(gpu.gradients().to(Device::cpu).slice(0, 0, head), cpu.gradients().slice(0, 0, head))
          << "), logits " << rel_error(yg.value(), yc.value()));
  CHECK(ge < grad_tol);
  CHECK(rel_error(gpu.buffers(), cpu.buffers()) < 1e-4);  // BN running statistics
  // Eval mode as well.
  cpu.eval(), gpu.eval();
  NoGrad ng;
  CHECK(rel_error(gpu.forward(Var(x.to(Device::cuda))).value(), cpu.forward(Var(x)).value()) < 1e-4);
  cpu.train(), gpu.train();
}
}  // namespace

TEST_CASE("U-Net(3) on the GPU: forward within 1e-4 and gradients within 1e-3 of the CPU (dropout on)") {
  if (no_gpu()) return;
  for_each_config([&](const GpuConfig&) {
  Model<UNet<3, 1, 3, 4>> cpu(7), gpu(7);
  // Dropout masks under which no pre-ReLU value lies within rounding of zero: with the default
  // masks one value of the last block does, and which side of the kink it lands on depends on
  // the summation order (the CPU kernels' GEMM blocking flipped it: one pixel's gradient, spread
  // by batch norm to every parameter upstream, 0.8 %). Both sides match a double-precision
  // reference on this seed (tests/test_gradients.cpp does that check on the CPU).
  cpu.reseed_dropout(24), gpu.reseed_dropout(24);
  const Tensor x = Tensor::randn({4, 1, 64, 64}, 8);
  compare_step(cpu, gpu, x, labels_for(x.shape(), 3, 9));
  });
}

TEST_CASE("DDU-Net(3, 32, Y) on a 2x2 grid on the GPU (one stream per clone) matches the CPU") {
  if (no_gpu()) return;
  for_each_config([&](const GpuConfig&) {
  using DDU = DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<32>>;
  DDU cpu({2, 2}, Exchange::stitched, 11), gpu({2, 2}, Exchange::stitched, 11);
  const Tensor x = Tensor::randn({2, 1, 128, 128}, 12);
  compare_step(cpu, gpu, x, labels_for(x.shape(), 3, 13));
  // The dynamic (tool) network with unequal tiles too.
  DDUNet dc(DynamicUNet({3, 3, 3, 8}), DynamicCommNet(16), {2, 3}, Exchange::stitched, 14);
  DDUNet dg(DynamicUNet({3, 3, 3, 8}), DynamicCommNet(16), {2, 3}, Exchange::stitched, 14);
  const Tensor xr = Tensor::randn({1, 3, 96, 144}, 15);
  // 5e-3: this network has pre-ReLU values within rounding of zero, where the side of the kink
  // depends on the summation order of batch norm's statistics (channels-last: our kernels; NCHW:
  // cuDNN), and one flipped pixel moves every gradient upstream by ~1e-3 (see the U-Net case).
  // Every op, 3-channel convolutions included, is held to 1e-3 above.
  compare_step(dc, dg, xr, labels_for(xr.shape(), 3, 16), 5e-3);
  });
}

// The clones' work forks from the caller's stream and joins back into it, also when a clone's work
// throws (out of memory, say): the caller goes on to free and reuse what the clones were using. On
// the emulated GPU, whose streams run only when waited for, a missing join shows: the caller reads
// the buffers before the clones wrote them.
TEST_CASE("clone streams: the caller waits for every forked clone, also when a clone's work throws") {
  if (no_gpu()) return;
  std::vector<Tensor> bufs;
  for (int k = 0; k < 3; ++k) bufs.push_back(Tensor::zeros({1, 1, 1, 64}, Device::cuda));
  const auto forked = [&](bool throws) {
    cuda::StreamFork fork;
    for (std::size_t k = 0; k < bufs.size(); ++k) {
      cuda::StreamScope scope(fork.fork(k));
      if (throws && k == 2) fail("clone {} failed", k);
      bufs[k].fill(float(k + 1));
    }
    fork.join();
  };
  for (const bool throws : {false, true}) {
    CAPTURE(throws);
    for (const Tensor& b : bufs) b.fill(0.0f);
    if (throws)
      CHECK_THROWS_WITH_AS(forked(true), doctest::Contains("clone 2 failed"), Error);
    else
      forked(false);
    for (std::size_t k = 0; k < bufs.size(); ++k) {
      const float want = throws && k == 2 ? 0.0f : float(k + 1);
      for (const float v : bufs[k].to_vector()) REQUIRE(v == want);
    }
  }
}

TEST_CASE("Adam on the GPU takes the CPU's step; the trainer runs there") {
  if (no_gpu()) return;
  const Tensor p0 = Tensor::randn({1000, 1, 1, 1}, 1), g0 = Tensor::randn({1000, 1, 1, 1}, 2);
  Tensor pc = p0.clone(), gc = g0.clone(), pg = p0.to(Device::cuda), gg = g0.to(Device::cuda);
  Adam ac(pc, gc, {0.01f, 0.9f, 0.999f, 1e-8f, 0.01f}), ag(pg, gg, {0.01f, 0.9f, 0.999f, 1e-8f, 0.01f});
  for (int i = 0; i < 3; ++i) ac.step(), ag.step();
  CHECK(max_error(pg, pc) < 1e-6);
  CHECK(rel_error(Tensor::from({1000, 1, 1, 1}, ag.first_moment()), Tensor::from({1000, 1, 1, 1}, ac.first_moment())) < 1e-6);

  const auto train = make_circles(64, 4, {.subimages = 2});
  const auto val = make_circles(16, 5, {.subimages = 2});
  DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<4>> m({1, 2}, Exchange::stitched, 6);
  m.to(Device::cuda);
  TrainOptions o;
  o.epochs = 4, o.min_epochs = 4, o.batch = 8, o.lr = 0.01f;
  const auto hist = fit(m, train, val, 3, o);
  CHECK(hist.back().train_loss < hist.front().train_loss);
  CHECK(m.parameters().device() == Device::cuda);
}

TEST_CASE("caching allocator: after the first step a training step asks the driver for nothing") {
  if (no_gpu()) return;
  using DDU = DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<32>>;
  DDU m({2, 2}, Exchange::stitched, 3);
  m.to(Device::cuda);
  Adam adam(m.parameters(), m.gradients(), {1e-3f});
  const Tensor x = Tensor::randn({4, 1, 128, 128}, 4).to(Device::cuda), L = labels_for({4, 1, 128, 128}, 3, 5).to(Device::cuda);
  auto step = [&] {
    m.zero_grad();
    dice_loss(m.forward(Var(x)), L).backward();
    adam.step();
  };
  step();
  step();
  auto& a = cuda::CachingAllocator::instance();
  const auto before = a.stats();
  a.reset_peak();
  for (int i = 0; i < 3; ++i) step();
  cuda::synchronize_device();
  const auto after = a.stats();
  CHECK(after.driver_allocations == before.driver_allocations);
  CHECK(after.peak_allocated > after.allocated);  // activations came and went
  CHECK(after.allocated == before.allocated);     // and nothing leaked
  MESSAGE("DDU-Net(3,32,Y) 4x128x128 step: peak " << after.peak_allocated / 1048576.0 << " MiB, reserved "
                                                   << after.reserved / 1048576.0 << " MiB");
}

TEST_CASE("deterministic: same seed, same GPU parameters bit for bit") {
  if (no_gpu()) return;
  ExactConvs exact;
  auto run = [] {
    using DDU = DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<32>>;
    DDU m({2, 2}, Exchange::stitched, 21);
    m.to(Device::cuda);
    Adam adam(m.parameters(), m.gradients(), {1e-3f});
    const Tensor x = Tensor::randn({2, 1, 64, 64}, 22).to(Device::cuda), L = labels_for({2, 1, 64, 64}, 3, 23).to(Device::cuda);
    for (int i = 0; i < 3; ++i) {
      m.zero_grad();
      dice_loss(m.forward(Var(x)), L).backward();
      adam.step();
    }
    return m.parameters().to_vector();
  };
  CHECK(run() == run());
}

TEST_CASE("reduced precision: bf16/fp16/tf32 convolutions stay close to fp32; fp16 training with loss scaling learns") {
  if (no_gpu()) return;
  const Tensor x = Tensor::randn({2, 16, 32, 32}, 31).to(Device::cuda), w = Tensor::randn({16, 16, 3, 3}, 32, 0.1f).to(Device::cuda);
  Tensor ref;
  {
    ExactConvs exact;
    ref = conv2d(Var(x), Var(w), Var{}, {1, 1, 1}).value();
  }
  for (const auto p : {cuda::Precision::tf32, cuda::Precision::bf16, cuda::Precision::fp16}) {
    ExactConvs restore;
    cuda::conv_settings().precision = p;
    const Var xv(x, true), wv(w, true);
    const Var y = conv2d(xv, wv, Var{}, {1, 1, 1});
    const double e = rel_error(y.value(), ref);
    MESSAGE("precision " << int(p) << ": relative error " << e);
    CHECK(e < (p == cuda::Precision::bf16 ? 2e-2 : 5e-3));
    // bf16/fp16 really ran in reduced precision (TF32 is only allowed: cuDNN may keep fp32 math).
    if (p != cuda::Precision::tf32) CHECK(e > 0.0);
    weighted_sum(y, Tensor::randn(y.shape(), 33)).backward();
    CHECK(std::isfinite(l2_norm(wv.grad())));
  }
  ExactConvs restore;
  cuda::conv_settings().precision = cuda::Precision::fp16;
  const auto train = make_circles(64, 4, {.subimages = 2});
  DomainDecomposed<UNet<2, 1, 3, 4>, CommNet<4>> m({1, 2}, Exchange::stitched, 6);
  m.to(Device::cuda);
  TrainOptions o;
  o.epochs = 3, o.min_epochs = 3, o.batch = 8, o.lr = 0.01f, o.loss_scaling = true;
  const auto hist = fit(m, train, SegmentationSet{}, 3, o);
  CHECK(std::isfinite(hist.back().train_loss));
  CHECK(hist.back().train_loss < hist.front().train_loss);
}

TEST_CASE("loss scaling on the GPU: the CPU's scales, skipped steps and Adam steps, with the state on the device") {
  if (no_gpu()) return;
  const LossScalerOptions so{.initial_scale = 1024.0f, .growth = 2.0f, .backoff = 0.5f, .growth_interval = 2};
  LossScaler on_cpu(so), on_gpu(so);
  // The scaled backward: d(sum w x)/dx = scale * w on both devices.
  const Tensor w = Tensor::from({1, 1, 1, 3}, {0.5f, -2.0f, 3.0f});
  const Var xc(Tensor::zeros({1, 1, 1, 3}), true), xg(Tensor::zeros({1, 1, 1, 3}).to(Device::cuda), true);
  on_cpu.backward(weighted_sum(xc, w));
  on_gpu.backward(weighted_sum(xg, w.to(Device::cuda)));
  CHECK(xg.grad().to_vector() == xc.grad().to_vector());
  CHECK(xc.grad().to_vector() == std::vector<float>{512.0f, -2048.0f, 3072.0f});

  const std::int64_t n = 70001;
  const Tensor p0 = Tensor::randn({1, 1, 1, n}, 71);
  Tensor pc = p0.clone(), gc = Tensor::zeros(p0.shape());
  Tensor pg = p0.to(Device::cuda), gg = Tensor::zeros(p0.shape(), Device::cuda);
  Adam ac(pc, gc, {1e-2f}), ag(pg, gg, {1e-2f});
  for (int step = 0; step < 8; ++step) {
    CAPTURE(step);
    std::vector<float> g = Tensor::randn(p0.shape(), 100 + step).to_vector();
    if (step == 2 || step == 5 || step == 6) g[static_cast<std::size_t>(97 * step)] = step == 5 ? NAN : INFINITY;
    for (auto& v : g) v *= on_cpu.scale();
    gc.copy_from(Tensor::from(p0.shape(), g));
    gg.copy_from(gc);
    ac.step(on_cpu.unscale_gate(gc));
    ag.step(on_gpu.unscale_gate(gg));
    CHECK(on_gpu.scale() == on_cpu.scale());
    CHECK(on_gpu.skipped_steps() == on_cpu.skipped_steps());
    CHECK(ag.steps() == ac.steps());
    CHECK(max_error(pg.to(Device::cpu), pc) < 1e-6);
  }
  CHECK(on_cpu.skipped_steps() == 3);
  CHECK(ac.steps() == 5);
}

TEST_CASE("tiled prediction on the GPU gives the CPU model's logits; eval stacks the tiles") {
  if (no_gpu()) return;
  ExactConvs exact;
  DDUNet cpu(DynamicUNet({3, 3, 3, 8}), DynamicCommNet(16), {2, 3}, Exchange::stitched, 40);
  DDUNet gpu(DynamicUNet({3, 3, 3, 8}), DynamicCommNet(16), {2, 3}, Exchange::stitched, 40);
  gpu.to(Device::cuda);
  cpu.eval(), gpu.eval();
  const Tensor x = Tensor::randn({1, 3, 96, 144}, 41);
  Tensor expect;
  {
    NoGrad ng;
    expect = cpu.forward(Var(x)).value();
    // The whole-image eval pass on the GPU (subimages stacked on the batch, EvalTiles::automatic).
    CHECK(gpu.eval_tiles() == EvalTiles::automatic);
    CHECK(gpu.stacks_eval(x.shape()));
    CHECK(!cpu.stacks_eval(x.shape()));
    CHECK(rel_error(gpu.forward(Var(x.to(Device::cuda))).value(), expect) < 1e-4);
  }
  Tensor got = Tensor::zeros(expect.shape());
  int calls = 0;
  predict_tiled(
      gpu, 96, 144, [&](const TileRect& r) { return x.tile(r.y, r.h, r.x, r.w).contiguous(); },
      [&](const TileRect& r, const Tensor& logits) {
        CHECK(logits.device() == Device::cpu);
        got.tile(r.y, r.h, r.x, r.w).copy_from(logits);
        ++calls;
      });
  CHECK(calls == 6);
  CHECK(rel_error(got, expect) < 1e-4);
}

TEST_CASE("stacked eval on the GPU gives each clone's logits (both exchanges, batch 2, trained statistics)") {
  if (no_gpu()) return;
  ExactConvs exact;
  for (const Exchange mode : {Exchange::stitched, Exchange::local}) {
    CAPTURE(static_cast<int>(mode));
    CAPTURE(g_channels_last);
    DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<8>> m({2, 2}, mode, 50);
    m.to(Device::cuda);
    const Tensor x = Tensor::randn({2, 1, 64, 64}, 51).to(Device::cuda);
    // One training step first, so the running statistics are not the initial ones.
    dice_loss(m.forward(Var(x)), labels_for(x.shape(), 3, 52).to(Device::cuda)).backward();
    m.eval();
    NoGrad ng;
    m.set_eval_tiles(EvalTiles::per_clone);
    CHECK(!m.stacks_eval(x.shape()));
    const Tensor clones = m.forward(Var(x)).value();
    m.set_eval_tiles(EvalTiles::automatic);
    CHECK(m.stacks_eval(x.shape()));
    // Within the forward tolerance: batch 8 and batch 2 may get different cuDNN algorithms.
    CHECK(rel_error(m.forward(Var(x)).value(), clones) < 1e-4);
    // Unequal subimages (40 = 24 + 16 rows): one stack per shape; per clone runs them on their streams.
    const Tensor y = Tensor::randn({1, 1, 40, 64}, 53).to(Device::cuda);
    CHECK(m.stacks_eval(y.shape()));
    const Tensor uneven = m.forward(Var(y)).value();
    m.set_eval_tiles(EvalTiles::per_clone);
    CHECK(rel_error(m.forward(Var(y)).value(), uneven) < 1e-4);
  }
}

TEST_CASE("filter gradients add to what the gradient holds (beta = 1), under both cuDNN APIs") {
  if (no_gpu()) return;
  for_each_config([&](const GpuConfig&) {
    ExactConvs exact;
    const Tensor x = Tensor::randn({2, 6, 17, 20}, 70), w0 = Tensor::randn({8, 6, 3, 3}, 71, 0.2f);
    const Tensor u0 = Tensor::randn({6, 4, 2, 2}, 72, 0.3f), p0 = Tensor::randn({8, 6, 1, 1}, 75, 0.3f);
    const Tensor R = Tensor::randn({2, 8, 17, 20}, 73), Ru = Tensor::randn({2, 4, 34, 40}, 74);
    // Two backward passes into the same parameters: the second must add to the first's gradient
    // (cuDNN's beta = 1 where the filter order needs no reorder: the 1x1 convolution, NCHW).
    auto run = [&](Device d, Var& w, Var& u, Var& pw) {
      for (int pass = 0; pass < 2; ++pass) {
        const Var xv(x.to(d));
        weighted_sum(conv2d(xv, w, Var{}, {1, 1, 1}), R).backward();
        weighted_sum(upconv2x2(xv, u, Var{}), Ru).backward();
        weighted_sum(conv2d(xv, pw, Var{}, {0, 1, 1}), R).backward();
      }
    };
    Var wc(w0.clone(), true), uc(u0.clone(), true), pc(p0.clone(), true);
    Var wg(w0.to(Device::cuda), true), ug(u0.to(Device::cuda), true), pg(p0.to(Device::cuda), true);
    run(Device::cpu, wc, uc, pc);
    run(Device::cuda, wg, ug, pg);
    CHECK(rel_error(wg.grad(), wc.grad()) < 1e-3);
    CHECK(rel_error(ug.grad(), uc.grad()) < 1e-3);
    CHECK(rel_error(pg.grad(), pc.grad()) < 1e-3);
  });
}

namespace {
// Half activations: bf16 convolutions giving bf16 outputs, and the ops after them keeping bf16
// (cuda::ConvSettings::half_activations, channels-last), restored afterwards.
struct HalfActivations : ExactConvs {
  explicit HalfActivations(cuda::Precision p = cuda::Precision::bf16) {
    cuda::conv_settings().precision = p;
    cuda::conv_settings().channels_last = true;
    cuda::conv_settings().half_activations = true;
  }
};

// The op on the GPU with its first `activations` inputs as channels-last bf16 activations, against
// the CPU op in f32 on the same (rounded) values: a result rounded once to bf16 is within 2^-9
// relative of the exact one, so fwd_tol 1e-2 holds unless the kernels read or write the wrong
// elements. half_out: the output stays bf16; input gradients always come back as bf16.
void check_half_op(const char* name, const std::vector<Tensor>& inputs, std::size_t activations, const OpFn& op,
                   bool half_out = true, double fwd_tol = 1e-2, double grad_tol = 2e-2) {
  CAPTURE(name);
  HalfActivations half;
  std::vector<Var> cpu_in, gpu_in;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const bool act = i < activations;
    const Tensor t = act ? inputs[i].to(DType::bf16).to(DType::f32) : inputs[i].clone();
    cpu_in.emplace_back(t, true);
    const Tensor g = t.clone_as(MemoryFormat::nhwc).to(Device::cuda);
    gpu_in.emplace_back(act ? g.to(DType::bf16) : inputs[i].to(Device::cuda), true);
  }
  const Var yc = op(cpu_in);
  const Tensor R = Tensor::randn(yc.shape(), 98);
  weighted_sum(yc, R).backward();
  const Var yg = op(gpu_in);
  weighted_sum(yg, R).backward();
  CHECK(yg.value().dtype() == (half_out ? DType::bf16 : DType::f32));
  CHECK(rel_error(yg.value(), yc.value()) < fwd_tol);
  CHECK(max_error(yg.value(), yc.value()) < 4 * fwd_tol);
  check_input_gradients(cpu_in, gpu_in, grad_tol);
}
}  // namespace

TEST_CASE("half activations: every op keeps bf16 activations and matches the CPU on the same values") {
  if (no_gpu()) return;
  const Tensor x = Tensor::randn({2, 6, 17, 20}, 80);
  const Tensor g6 = Tensor::randn({6, 1, 1, 1}, 81), b6 = Tensor::randn({6, 1, 1, 1}, 82);
  // The convolutions under both cuDNN APIs (legacy algorithms, graph-API plans).
  for (const bool graph : {false, true}) {
    CAPTURE(graph);
    g_config.graph_api = graph;
    check_half_op("conv 3x3 bias", {x, Tensor::randn({8, 6, 3, 3}, 83, 0.2f), Tensor::randn({8, 1, 1, 1}, 84)}, 1,
                  [](const std::vector<Var>& v) { return conv2d(v[0], v[1], v[2], {1, 1, 1}); });
    check_half_op("conv 3x3 from an f32 image",
                  {Tensor::randn({2, 3, 17, 20}, 85), Tensor::randn({8, 3, 3, 3}, 86, 0.3f)}, 0,
                  [](const std::vector<Var>& v) { return conv2d(v[0], v[1], Var{}, {1, 1, 1}); });
    check_half_op("upconv", {x, Tensor::randn({6, 4, 2, 2}, 87, 0.3f), Tensor::randn({4, 1, 1, 1}, 88)}, 1,
                  [](const std::vector<Var>& v) { return upconv2x2(v[0], v[1], v[2]); });
  }
  g_config = kDefaultConfig;
  check_half_op("relu", {x}, 1, [](const std::vector<Var>& v) { return relu(v[0]); });
  check_half_op("max pool, odd sizes", {Tensor::randn({2, 3, 7, 9}, 89)}, 1,
                [](const std::vector<Var>& v) { return max_pool2x2(v[0]); });
  check_half_op("concat channels + slice", {x, Tensor::randn({2, 2, 17, 20}, 90)}, 2,
                [](const std::vector<Var>& v) { return slice(concat({v[0], v[1]}, 1), 3, 2, 11); });
  check_half_op("dropout2d", {x}, 1, [](const std::vector<Var>& v) {
    Rng rng(5);
    return dropout2d(v[0], 0.3f, rng, true);
  });
  for (const bool training : {true, false}) {
    CAPTURE(training);
    check_half_op("batch norm", {x, g6, b6}, 1, [training](const std::vector<Var>& v) {
      const Device d = v[0].value().device();
      return batch_norm(v[0], v[1], v[2], Tensor::randn({6, 1, 1, 1}, 91).to(d), Tensor::full({6, 1, 1, 1}, 1.5f, d),
                        {training, 0.1f, 1e-5f});
    });
    check_half_op("fused batch norm -> relu -> dropout", {x, g6, b6}, 1, [training](const std::vector<Var>& v) {
      const Device d = v[0].value().device();
      Rng rng(21);
      return batch_norm_relu_dropout(v[0], v[1], v[2], Tensor::zeros({6, 1, 1, 1}, d),
                                     Tensor::full({6, 1, 1, 1}, 1.0f, d), {training, 0.1f, 1e-5f}, 0.3f, &rng);
    });
  }
  // More than 1024 channels: cuDNN's batch norm on a widened copy, the output f32.
  const std::int64_t wide = 1030;
  const Tensor gw = Tensor::randn({wide, 1, 1, 1}, 93), bw = Tensor::randn({wide, 1, 1, 1}, 94);
  const OpFn wide_bn = [](const std::vector<Var>& v) {
    const Device d = v[0].value().device();
    return batch_norm(v[0], v[1], v[2], Tensor::zeros({1030, 1, 1, 1}, d), Tensor::full({1030, 1, 1, 1}, 1.0f, d),
                      {true, 0.1f, 1e-5f});
  };
  check_half_op("wide batch norm (widened)", {Tensor::randn({2, wide, 3, 4}, 92), gw, bw}, 1, wide_bn, false);
  check_half_op("softmax (reads widened)", {Tensor::randn({2, 3, 9, 11}, 95)}, 1,
                [](const std::vector<Var>& v) { return softmax(v[0]); }, false);
  const Tensor L = labels_for({2, 3, 9, 11}, 3, 96);
  check_half_op("dice loss (reads widened)", {Tensor::randn({2, 3, 9, 11}, 97)}, 1, [&](const std::vector<Var>& v) {
    return dice_loss(v[0], L.to(v[0].value().device()));
  }, false);
  // GPU tensors of any type: conversions both ways and strided copies agree with the host's.
  const Tensor h = x.to(Device::cuda).clone_as(MemoryFormat::nhwc).to(DType::f16);
  CHECK(h.to_vector() == x.to(DType::f16).to_vector());
  CHECK(h.tile(2, 5, 3, 9).clone().to_vector() == x.to(DType::f16).tile(2, 5, 3, 9).clone().to_vector());
}

TEST_CASE("inference conv blocks (batch norm folded into the convolution) match the CPU: f32 and bf16 activations") {
  if (no_gpu()) return;
  // Two input parts (the decoder's [skip, up]), 8 outputs (our bias-ReLU kernel) and 1030 (cuDNN's
  // bias addition, then the ReLU kernel), with and without a convolution bias.
  const Tensor a = Tensor::randn({2, 5, 17, 20}, 110), c = Tensor::randn({2, 3, 17, 20}, 111);
  for (const std::int64_t cout : {8, 1030})
    for (const bool bias : {false, true}) {
      CAPTURE(cout);
      CAPTURE(bias);
      const Tensor w = Tensor::randn({cout, 8, 3, 3}, 112, 0.2f), b = Tensor::randn({cout, 1, 1, 1}, 113);
      const Tensor g = Tensor::randn({cout, 1, 1, 1}, 114), be = Tensor::randn({cout, 1, 1, 1}, 115);
      const Tensor m = Tensor::randn({cout, 1, 1, 1}, 116, 0.3f), v = Tensor::full({cout, 1, 1, 1}, 1.3f);
      // x0, x1: the parts on their device, in their type
      const auto block = [&](const Tensor& x0, const Tensor& x1) {
        NoGrad ng;
        const Device d = x0.device();
        return conv2d_batch_norm_relu({Var(x0), Var(x1)}, Var(w.to(d)), bias ? Var(b.to(d)) : Var{}, Var(g.to(d)),
                                      Var(be.to(d)), m.to(d), v.to(d), 1e-5f, {1, 1, 1})
            .value();
      };
      const Tensor want = block(a, c);
      for_each_config([&](const GpuConfig&) {
        ExactConvs exact;
        const Tensor got = block(a.to(Device::cuda), c.to(Device::cuda));
        CHECK(rel_error(got, want) < 1e-4);
        CHECK(max_error(got, want) < 1e-4);
      });
      // bf16 activations: the same rounded inputs on both devices
      HalfActivations half;
      const Tensor ah = a.to(DType::bf16).to(DType::f32), ch = c.to(DType::bf16).to(DType::f32);
      const Tensor got = block(ah.clone_as(MemoryFormat::nhwc).to(Device::cuda).to(DType::bf16),
                               ch.clone_as(MemoryFormat::nhwc).to(Device::cuda).to(DType::bf16));
      CHECK(got.dtype() == (cout <= 1024 ? DType::bf16 : DType::f32));
      const Tensor ref = block(ah, ch);
      CHECK(rel_error(got, ref) < 1e-2);
      CHECK(max_error(got, ref) < 4e-2);
    }
}

TEST_CASE("half activations: U-Net and DDU-Net training steps close to f32 activations, with less memory") {
  if (no_gpu()) return;
  for (const auto p : {cuda::Precision::bf16, cuda::Precision::fp16}) {
    CAPTURE(int(p));
    using DDU = DomainDecomposed<UNet<3, 1, 3, 4>, CommNet<16>>;
    const Tensor x = Tensor::randn({4, 1, 128, 128}, 100).to(Device::cuda);
    const Tensor L = labels_for({4, 1, 128, 128}, 3, 101).to(Device::cuda);
    // The loss seeded with 1024, as loss scaling does: Dice gradients of ~1e-6 per logit would be
    // fp16 subnormals otherwise (relative errors below do not depend on the scale).
    const Tensor seed = Tensor::full({1, 1, 1, 1}, 1024.0f, Device::cuda);
    // held: device bytes the forward keeps for backward (activations; no workspaces, which are
    // freed when each call returns).
    auto step = [&](auto& m, bool half, std::int64_t& held) {
      ExactConvs restore;
      cuda::conv_settings().precision = p;
      cuda::conv_settings().channels_last = true;
      cuda::conv_settings().half_activations = half;
      m.zero_grad();
      cuda::synchronize_device();
      auto& a = cuda::CachingAllocator::instance();
      a.empty_cache();  // fresh blocks: a cached one may be up to twice the request, counted whole
      const std::int64_t base = a.stats().allocated;
      const Var y = m.forward(Var(x));
      cuda::synchronize_device();
      held = a.stats().allocated - base;
      CHECK(y.value().dtype() == (half ? cuda::compute_dtype(p) : DType::f32));
      dice_loss(y, L).backward(seed);
      cuda::synchronize_device();
      return std::pair{y.value().to_vector(), m.gradients().to_vector()};
    };
    auto compare = [&](auto& wide, auto& half, const std::string& what) {
      CAPTURE(what);
      wide.to(Device::cuda), half.to(Device::cuda);
      std::int64_t held_wide = 0, held_half = 0;
      const auto [yw, gw] = step(wide, false, held_wide);
      const auto [yh, gh] = step(half, true, held_half);
      const Shape s{1, 1, 1, static_cast<std::int64_t>(yw.size())}, sg{1, 1, 1, static_cast<std::int64_t>(gw.size())};
      const double ey = rel_error(Tensor::from(s, yh), Tensor::from(s, yw));
      const double eg = rel_error(Tensor::from(sg, gh), Tensor::from(sg, gw));
      MESSAGE(what << ": logits " << ey << ", gradients " << eg << " apart; forward keeps " << held_half / 1048576.0
                   << " vs " << held_wide / 1048576.0 << " MiB");
      CHECK(ey < 3e-2);
      CHECK(eg < 5e-2);
      CHECK(held_half < 0.6 * held_wide);
    };
    Model<UNet<3, 1, 3, 4>> uw(7), uh(7);
    compare(uw, uh, "U-Net(3)");
    DDU dw({2, 2}, Exchange::stitched, 11), dh({2, 2}, Exchange::stitched, 11);
    compare(dw, dh, "DDU-Net(3, 16, Y)");
  }
}
