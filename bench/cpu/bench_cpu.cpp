// CPU benchmark against PyTorch, our side (bench/cpu/torch_cpu.py is PyTorch's; bench/cpu/compare.py
// runs both alternately and prints the table). One case per process, so the peak resident memory
// (getrusage ru_maxrss) belongs to that case alone. Prints ONE JSON line.
//
//   bench_cpu --case CASE [--threads N] [--iters N] [--warmup N]
//   bench_cpu --export PATH --model ddu_train|unet_train|ddu_infer [--threads N] [--size HxW] [--batch N]
//   bench_cpu --list
//
// Cases (the shapes of bench/cpu/torch_cpu.py, which builds the same work in PyTorch):
//   kernel:NAME  forward + backward of one op per call (see kernels() below; x, weights and bias
//                need gradients, the output gradient is fixed random data);
//   ddu_train    one training step (forward, Dice loss, backward, Adam) of DDU-Net(3, 32, Y), base 4,
//                grid 1x4, on a batch of 16 circles images (32 x 128);
//   unet_train   one training step (forward, cross entropy, backward, Adam) of U-Net(4) base 16 on one
//                RGB 1024 x 1024 image (paper Table 5's network);
//   ddu_infer    inference (eval, NoGrad) of DDU-Net(4, 64, Y) base 16, grid 4x4, on one RGB 2048 x 2048 image.
// --export writes the model's weights under PyTorch's state_dict names and shapes, plus a seeded
// input ("check.input") and our eval-mode output for it ("check.output"), to a safetensors file;
// `torch_cpu.py --check PATH` loads it and compares. BN affine parameters, running statistics and
// every bias are drawn at random first (our initialisation sets them to 1 / 0), so the check sees them.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <dd/ddunet.hpp>

#include "dd/io/safetensors.hpp"

namespace {

struct Args {
  std::string which, export_path, model = "ddu_infer";
  int threads = 2, iters = -1, warmup = -1;
  std::int64_t height = 0, width = 0, batch = 0;
  bool list = false;
};

[[noreturn]] void usage_error(const std::string& msg) {
  dd::fail("{}\nusage: bench_cpu --case CASE [--threads N] [--iters N] [--warmup N]\n"
           "       bench_cpu --export PATH --model ddu_train|unet_train|ddu_infer [--threads N] [--size HxW] "
           "[--batch N]\n       bench_cpu --list",
           msg);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--list") {
      a.list = true;
      continue;
    }
    if (i + 1 >= argc) usage_error("flag " + k + " needs a value");
    const std::string v = argv[++i];
    if (k == "--case") a.which = v;
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--iters") a.iters = std::stoi(v);
    else if (k == "--warmup") a.warmup = std::stoi(v);
    else if (k == "--export") a.export_path = v;
    else if (k == "--model") a.model = v;
    else if (k == "--batch") a.batch = std::stoll(v);
    else if (k == "--size") {
      if (std::sscanf(v.c_str(), "%ldx%ld", &a.height, &a.width) != 2) usage_error("--size " + v + ": want HxW");
    } else usage_error("unknown flag " + k);
  }
  DD_CHECK(a.threads >= 1, "--threads {}: must be >= 1", a.threads);
  return a;
}

long peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss * 1024L;  // Linux: kilobytes
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Per-phase times of a training step (milliseconds, one entry per timed iteration).
struct Phases {
  std::vector<double> forward, backward, optimizer;
  bool used = false;
};

std::string json_list(const std::vector<double>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{:.3f}", i ? ", " : "", v[i]);
  return s + "]";
}

void report(const Args& a, long setup_rss, const std::vector<double>& ms, const Phases& ph, int iters, int warmup) {
  std::string phases;
  if (ph.used)
    phases = fmt::format(", \"forward_ms\": {:.3f}, \"backward_ms\": {:.3f}, \"optimizer_ms\": {:.3f}", median(ph.forward),
                         median(ph.backward), median(ph.optimizer));
  std::printf("%s\n", fmt::format("{{\"framework\": \"ddunet\", \"case\": \"{}\", \"median_ms\": {:.4f}, \"min_ms\": {:.4f}, "
                                  "\"peak_rss_bytes\": {}, \"setup_rss_bytes\": {}, \"threads\": {}, \"iters\": {}, "
                                  "\"warmup\": {}{}, \"times_ms\": {}}}",
                                  a.which, median(ms), *std::min_element(ms.begin(), ms.end()), peak_rss_bytes(),
                                  setup_rss, dd::num_threads(), iters, warmup, phases, json_list(ms))
                          .c_str());
}

// Runs `step` warmup + iters times and reports the timed ones.
void measure(const Args& a, long setup_rss, int iters, int warmup, const std::function<void()>& step,
             Phases* ph = nullptr) {
  for (int i = 0; i < warmup; ++i) step();
  if (ph) *ph = Phases{};
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    step();
    ms.push_back(ms_since(t0));
  }
  report(a, setup_rss, ms, ph ? *ph : Phases{}, iters, warmup);
}

// ------------------------------------------------------------------------------------------------
// (a) kernels: forward + backward of one op, timed per call.
// ------------------------------------------------------------------------------------------------
struct KernelCase {
  std::string name;
  // Builds inputs and returns the per-call work.
  std::function<std::function<void()>()> make;
};

// A parameter-like Var: value and a persistent gradient buffer (as in a model).
dd::Var param(dd::Shape s, std::uint64_t seed) {
  return dd::Var::parameter(dd::Tensor::randn(s, seed, 0.1f), dd::Tensor::zeros(s));
}

// Runs forward(x...) then backward from a fixed output gradient; the inputs need gradients.
std::function<void()> fwd_bwd(std::vector<dd::Tensor> inputs, std::function<dd::Var(const std::vector<dd::Var>&)> fwd,
                              dd::Shape out_shape) {
  const dd::Tensor dy = dd::Tensor::randn(out_shape, 99);
  return [inputs = std::move(inputs), fwd = std::move(fwd), dy] {
    std::vector<dd::Var> xs;
    for (const dd::Tensor& t : inputs) xs.emplace_back(t, true);
    const dd::Var y = fwd(xs);
    DD_CHECK(y.shape() == dy.shape(), "bench_cpu: output {} for a gradient of {}", y.shape(), dy.shape());
    y.accumulate_grad(dy);  // the seed gradient, not copied (Var::backward would clone it)
    dd::Tape::current().backward();
  };
}

std::function<void()> conv_case(std::int64_t n, std::int64_t c, std::int64_t hw, int k, bool bias) {
  const dd::Var w = param({c, c, k, k}, 3), b = bias ? param({c, 1, 1, 1}, 4) : dd::Var{};
  return fwd_bwd({dd::Tensor::randn({n, c, hw, hw}, 1)},
                 [w, b, k](const std::vector<dd::Var>& x) { return dd::conv2d(x[0], w, b, {k / 2, 1, 1}); },
                 {n, c, hw, hw});
}

std::vector<KernelCase> kernels() {
  const dd::Shape s16{1, 16, 128, 128};
  auto bn_params = [] {
    struct P {
      dd::Var g, b;
      dd::Tensor rm, rv;
    };
    return P{dd::Var::parameter(dd::Tensor::full({16, 1, 1, 1}, 1.0f), dd::Tensor::zeros({16, 1, 1, 1})),
             dd::Var::parameter(dd::Tensor::zeros({16, 1, 1, 1}), dd::Tensor::zeros({16, 1, 1, 1})),
             dd::Tensor::zeros({16, 1, 1, 1}), dd::Tensor::full({16, 1, 1, 1}, 1.0f)};
  };
  return {
      {"conv3x3_4to4_256", [] { return conv_case(1, 4, 256, 3, false); }},
      {"conv3x3_16to16_128", [] { return conv_case(1, 16, 128, 3, false); }},
      {"conv3x3_16to16_1024", [] { return conv_case(1, 16, 1024, 3, false); }},
      {"conv3x3_64to64_32", [] { return conv_case(1, 64, 32, 3, false); }},
      {"conv3x3_256to256_16_n4", [] { return conv_case(4, 256, 16, 3, false); }},
      {"conv5x5_32to32_32", [] { return conv_case(1, 32, 32, 5, true); }},
      {"bn_16_128",
       [=] {
         const auto p = bn_params();
         return fwd_bwd({dd::Tensor::randn(s16, 1)},
                        [p](const std::vector<dd::Var>& x) {
                          return dd::batch_norm(x[0], p.g, p.b, p.rm, p.rv, {true, 0.1f, 1e-5f});
                        },
                        s16);
       }},
      {"bnrelu_16_128",  // what the networks run: BN -> ReLU fused (dropout off here)
       [=] {
         const auto p = bn_params();
         return fwd_bwd({dd::Tensor::randn(s16, 1)},
                        [p](const std::vector<dd::Var>& x) {
                          return dd::batch_norm_relu_dropout(x[0], p.g, p.b, p.rm, p.rv, {true, 0.1f, 1e-5f}, 0.0f,
                                                             nullptr);
                        },
                        s16);
       }},
      {"relu_16_128",
       [=] {
         return fwd_bwd({dd::Tensor::randn(s16, 1)}, [](const std::vector<dd::Var>& x) { return dd::relu(x[0]); }, s16);
       }},
      {"maxpool_16_128",
       [=] {
         return fwd_bwd({dd::Tensor::randn(s16, 1)},
                        [](const std::vector<dd::Var>& x) { return dd::max_pool2x2(x[0]); }, {1, 16, 64, 64});
       }},
      {"upconv_16to8_128",
       [=] {
         const dd::Var w = param({16, 8, 2, 2}, 3), b = param({8, 1, 1, 1}, 4);
         return fwd_bwd({dd::Tensor::randn(s16, 1)},
                        [w, b](const std::vector<dd::Var>& x) { return dd::upconv2x2(x[0], w, b); }, {1, 8, 256, 256});
       }},
      {"concat_16+16_128",
       [=] {
         return fwd_bwd({dd::Tensor::randn(s16, 1), dd::Tensor::randn(s16, 2)},
                        [](const std::vector<dd::Var>& x) { return dd::concat({x[0], x[1]}, 1); }, {1, 32, 128, 128});
       }},
  };
}

// ------------------------------------------------------------------------------------------------
// (b)-(d) whole models.
// ------------------------------------------------------------------------------------------------
using CirclesNet = dd::DomainDecomposed<dd::UNet<3, 1, 3, 4>, dd::CommNet<32>>;
using Table5Net = dd::Model<dd::UNet<4, 3, 3, 16>>;
using BigDDU = dd::DomainDecomposed<dd::UNet<4, 3, 3, 16>, dd::CommNet<64>>;

// One training step with per-phase times.
template <class M, class Loss>
std::function<void()> train_step(M& model, dd::Adam& adam, const dd::Tensor& x, Loss loss_fn, Phases& ph) {
  return [&model, &adam, x, loss_fn, &ph] {
    const auto t0 = Clock::now();
    model.zero_grad();
    const dd::Var loss = loss_fn(model.forward(dd::Var(x)));
    const auto t1 = Clock::now();
    loss.backward();
    const auto t2 = Clock::now();
    adam.step();
    ph.forward.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    ph.backward.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    ph.optimizer.push_back(ms_since(t2));
    ph.used = true;
  };
}

int run_case(const Args& a) {
  const long setup_rss = peak_rss_bytes();
  if (a.which.rfind("kernel:", 0) == 0) {
    const std::string name = a.which.substr(7);
    for (const KernelCase& k : kernels())
      if (k.name == name) {
        const auto step = k.make();
        measure(a, setup_rss, a.iters < 0 ? 50 : a.iters, a.warmup < 0 ? 20 : a.warmup, step);
        return 0;
      }
    dd::fail("bench_cpu: no kernel named {} (--list shows the cases)", name);
  }
  Phases ph;
  if (a.which == "ddu_train") {
    CirclesNet m({1, 4}, dd::Exchange::stitched, 1);
    m.train();
    dd::Adam adam(m.parameters(), m.gradients(), {0.008f});
    const auto data = dd::make_circles(16, 7, {.subimages = 4});
    const dd::Tensor labels = data.labels;
    const auto step = train_step(m, adam, data.images, [labels](const dd::Var& y) { return dd::dice_loss(y, labels); }, ph);
    measure(a, setup_rss, a.iters < 0 ? 20 : a.iters, a.warmup < 0 ? 3 : a.warmup, step, &ph);
  } else if (a.which == "unet_train") {
    Table5Net m(1);
    m.train();
    dd::Adam adam(m.parameters(), m.gradients(), {1e-3f});
    const dd::Tensor x = dd::Tensor::randn({1, 3, 1024, 1024}, 2);
    dd::Tensor labels = dd::Tensor::empty({1, 1, 1024, 1024});
    dd::Rng rng(3);
    for (std::int64_t i = 0; i < labels.numel(); ++i) labels.data()[i] = float(rng.uniform_int(0, 2));
    const auto step =
        train_step(m, adam, x, [labels](const dd::Var& y) { return dd::cross_entropy(y, labels); }, ph);
    measure(a, setup_rss, a.iters < 0 ? 3 : a.iters, a.warmup < 0 ? 1 : a.warmup, step, &ph);
  } else if (a.which == "ddu_infer") {
    BigDDU m({4, 4}, dd::Exchange::stitched, 1);
    m.eval();
    const dd::Tensor x = dd::Tensor::randn({1, 3, 2048, 2048}, 2);
    measure(a, setup_rss, a.iters < 0 ? 3 : a.iters, a.warmup < 0 ? 1 : a.warmup, [&] {
      dd::NoGrad ng;
      const dd::Var y = m.forward(dd::Var(x));
      DD_CHECK(y.shape().c == 3, "bench_cpu: unexpected output {}", y.shape());
    });
  } else {
    dd::fail("bench_cpu: unknown case \"{}\" (--list shows the cases)", a.which);
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// --export: weights under PyTorch's names and shapes, a seeded input and our output for it.
// ------------------------------------------------------------------------------------------------
struct ExportSpec {
  dd::UNetConfig net;
  int F = 0;
  dd::GridSpec grid{1, 1};
  std::int64_t n = 1, h = 0, w = 0;
};

// Per-channel vectors (biases, BN) are [C] in PyTorch, [C,1,1,1] here.
std::vector<std::int64_t> torch_shape(const dd::TensorSlot& s) {
  const bool vec = s.name.find(".bn") != std::string::npos || s.name.ends_with(".bias");
  if (vec) return {s.shape.numel()};
  return {s.shape.n, s.shape.c, s.shape.h, s.shape.w};
}

template <class M>
int export_model(const Args& a, M& model, const ExportSpec& e, const std::string& name) {
  // The typed networks' layout is the dynamic ones' (tests check it), which name their slots.
  const dd::DynamicUNet dnet(e.net);
  const dd::DynamicCommNet dcomm(e.F);
  DD_CHECK(dnet.param_count() + dcomm.param_count() == std::size_t(model.parameters().numel()) &&
               dnet.buffer_count() + dcomm.buffer_count() == std::size_t(model.buffers().numel()),
           "bench_cpu --export: layout of {} does not match its dynamic twin", name);
  std::vector<dd::TensorSlot> ps, bs;
  dnet.slots(ps, bs);
  if (e.F > 0) dcomm.slots("comm", dnet.param_count(), dnet.buffer_count(), ps, bs);

  // Random BN affine parameters, running statistics and biases, so that the check exercises them.
  float* p = model.parameters().data();
  float* b = model.buffers().data();
  dd::Rng rng(11);
  for (const auto& s : ps) {
    const bool bn_weight = s.name.find(".bn") != std::string::npos && s.name.ends_with(".weight");
    if (bn_weight)
      for (std::int64_t i = 0; i < s.shape.numel(); ++i) p[s.offset + std::size_t(i)] = 0.5f + rng.uniform();
    else if (s.name.ends_with(".bias"))
      for (std::int64_t i = 0; i < s.shape.numel(); ++i) p[s.offset + std::size_t(i)] = 0.1f * rng.normal();
  }
  for (const auto& s : bs) {
    const bool var = s.name.ends_with(".running_var");
    for (std::int64_t i = 0; i < s.shape.numel(); ++i)
      b[s.offset + std::size_t(i)] = var ? 0.5f + rng.uniform() : 0.1f * rng.normal();
  }

  dd::safetensors::File f;
  f.metadata = {{"format", "ddunet-bench-cpu-export"},
                {"model", name},
                {"depth", std::to_string(e.net.depth)},
                {"in_channels", std::to_string(e.net.in_channels)},
                {"classes", std::to_string(e.net.classes)},
                {"base", std::to_string(e.net.base)},
                {"F", std::to_string(e.F)},
                {"grid", fmt::format("{}x{}", e.grid.rows, e.grid.cols)}};
  for (const auto& s : ps)
    f.tensors.push_back({s.name, torch_shape(s), std::vector<float>(p + s.offset, p + s.offset + s.shape.numel())});
  for (const auto& s : bs)
    f.tensors.push_back({s.name, torch_shape(s), std::vector<float>(b + s.offset, b + s.offset + s.shape.numel())});

  const dd::Tensor x = dd::Tensor::randn({e.n, e.net.in_channels, e.h, e.w}, 5);
  model.eval();
  dd::Tensor y;
  {
    dd::NoGrad ng;
    y = model.forward(dd::Var(x)).value().contiguous();
  }
  f.tensors.push_back(dd::safetensors::make_entry("check.input", x));
  f.tensors.push_back(dd::safetensors::make_entry("check.output", y));
  dd::safetensors::save(a.export_path, f);
  std::printf("%s\n", fmt::format("{{\"framework\": \"ddunet\", \"export\": \"{}\", \"model\": \"{}\", \"tensors\": {}, "
                                  "\"input\": [{}, {}, {}, {}], \"output\": [{}, {}, {}, {}]}}",
                                  a.export_path, name, f.tensors.size(), x.shape().n, x.shape().c, x.shape().h,
                                  x.shape().w, y.shape().n, y.shape().c, y.shape().h, y.shape().w)
                          .c_str());
  return 0;
}

int run_export(const Args& a) {
  ExportSpec e;
  auto size = [&](std::int64_t n, std::int64_t h, std::int64_t w) {
    e.n = a.batch > 0 ? a.batch : n;
    e.h = a.height > 0 ? a.height : h;
    e.w = a.width > 0 ? a.width : w;
  };
  if (a.model == "ddu_train") {
    e.net = {3, 1, 3, 4};
    e.F = 32;
    e.grid = {1, 4};
    size(2, 32, 128);
    CirclesNet m({1, 4}, dd::Exchange::stitched, 1);
    return export_model(a, m, e, a.model);
  }
  if (a.model == "unet_train") {
    e.net = {4, 3, 3, 16};
    size(1, 256, 256);
    Table5Net m(1);
    return export_model(a, m, e, a.model);
  }
  if (a.model == "ddu_infer") {
    e.net = {4, 3, 3, 16};
    e.F = 64;
    e.grid = {4, 4};
    size(1, 512, 512);
    BigDDU m({4, 4}, dd::Exchange::stitched, 1);
    return export_model(a, m, e, a.model);
  }
  dd::fail("bench_cpu --export: --model {}: ddu_train, unet_train or ddu_infer", a.model);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  dd::set_num_threads(a.threads);  // before any model: the DDU-Net's worker pool takes this count
  if (a.list) {
    for (const KernelCase& k : kernels()) std::printf("kernel:%s\n", k.name.c_str());
    std::printf("ddu_train\nunet_train\nddu_infer\n");
    return 0;
  }
  if (!a.export_path.empty()) return run_export(a);
  if (a.which.empty()) usage_error("give --case, --export or --list");
  return run_case(a);
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_cpu: %s\n", e.what());
  return 1;
}
