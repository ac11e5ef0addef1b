#pragma once
// Convolutions through cuDNN's graph (backend) API, the engines PyTorch's cuDNN path chooses from.
// The legacy calls (cudnnConvolutionForward & co., cudnn.hpp) reach one kernel per algorithm enum;
// the graph API lists every engine configuration cuDNN has for a problem (heuristics mode A, then
// the fallback list). On an H100 the legacy enums gave the U-Net's 16-channel 1024^2 layers slow
// kernels (wgrad_alg0_engine, an NCHW FMA up-convolution: 0.5-0.8 ms each under Nsight Compute);
// this path lets the same search see the rest. On when conv_settings().graph_api is set; when no
// engine configuration finalises for a problem, the caller runs the legacy path instead.
//
// One plan per problem, direction, settings and cuDNN handle (plans are built against a handle),
// searched once: the first configuration in heuristic order that passes the filters and runs, or
// with `benchmark` the fastest of the first kMaxTimed; candidates run on the call's own inputs with
// the output in scratch. Plans always write their output (beta = 0, as PyTorch's and cudnn-frontend's
// graphs do: an engine's handling of beta = 1 is little exercised, and a search on zeroed scratch
// could not tell whether it adds); the runner adds a filter gradient to the one it accumulates.
#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dd/backend/cuda/allocator.hpp"
#include "dd/backend/cuda/cudnn.hpp"
#include "dd/backend/cuda/runtime.hpp"

namespace dd::cuda::graph {

// An owned backend descriptor.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) { DD_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_)); }
  ~Descriptor() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  Descriptor(Descriptor&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Descriptor& operator=(Descriptor&&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  // Attribute setters: `values` points at `count` elements of the C type that `type` names.
  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const void* values,
           std::int64_t count = 1) const {
    DD_CUDNN_CHECK(cudnnBackendSetAttribute(d_, name, type, count, values));
  }
  void set(cudnnBackendAttributeName_t name, const Descriptor& d) const {
    const cudnnBackendDescriptor_t v = d.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, &v);
  }
  void set_int(cudnnBackendAttributeName_t name, std::int64_t v) const { set(name, CUDNN_TYPE_INT64, &v); }
  void finalize() const { DD_CUDNN_CHECK(cudnnBackendFinalize(d_)); }
  cudnnStatus_t try_finalize() const { return cudnnBackendFinalize(d_); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// The three tensors of every direction, by unique id: the x-shaped one (input of the forward, the
// data gradient of backward-data), the filter-shaped one, the y-shaped one.
enum Uid : std::int64_t { kX = 1, kW = 2, kY = 3 };

// A 4-d tensor [d0, d1, d2, d3] (NCHW or KCRS indices) in NCHW or NHWC (KRSC) memory, 16-byte aligned
// (every pointer the convolution runner hands cuDNN is).
inline Descriptor tensor(std::int64_t uid, cudnnDataType_t type, std::int64_t d0, std::int64_t d1, std::int64_t d2,
                         std::int64_t d3, bool channels_last) {
  const std::int64_t dims[4] = {d0, d1, d2, d3};
  const std::int64_t nchw[4] = {d1 * d2 * d3, d2 * d3, d3, 1}, nhwc[4] = {d2 * d3 * d1, 1, d3 * d1, d1};
  Descriptor t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &type);
  t.set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dims, 4);
  t.set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, channels_last ? nhwc : nchw, 4);
  t.set_int(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid);
  t.set_int(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 16);
  t.finalize();
  return t;
}

// Why an engine configuration is not allowed under the settings, or nullptr: fp32 means no
// tensor cores (TF32); no precision converts its inputs further down (as PyTorch filters); half
// precision keeps fp32 accumulation; deterministic excludes engines cuDNN marks otherwise; engines
// that compile kernels at run time are skipped (seconds on first use, and NVRTC may be missing).
inline const char* excluded(const std::vector<cudnnBackendNumericalNote_t>& notes,
                            const std::vector<cudnnBackendBehaviorNote_t>& behavior, const ConvSettings& s) {
  for (const auto n : notes) {
    if (n == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC && s.deterministic) return "nondeterministic";
    if (n == CUDNN_NUMERICAL_NOTE_TENSOR_CORE && s.precision == Precision::fp32) return "tensor cores (TF32)";
    if (n == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) return "converts inputs down";
    if (n == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) return "reduced-precision reduction";
  }
  for (const auto b : behavior)
    if (b == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) return "runtime compilation";
  return nullptr;
}

// A finalised execution plan and every descriptor it was built from (kept alive with it).
struct Plan {
  std::vector<Descriptor> parts;  // tensors, convolution, operation, graph, engine configurations
  std::unique_ptr<Descriptor> plan;
  std::size_t workspace = 0;
  std::int64_t engine = -1;  // cuDNN's global engine index (for the log)

  // Runs the plan on (x-shaped, filter-shaped, y-shaped) device pointers.
  void execute(cudnnHandle_t h, const void* x, const void* w, const void* y) const {
    DeviceScratch ws(workspace);
    Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    const std::int64_t uids[3] = {kX, kW, kY};
    void* ptrs[3] = {const_cast<void*>(x), const_cast<void*>(w), const_cast<void*>(y)};
    void* wsp = ws.get();
    pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids, 3);
    pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, ptrs, 3);
    pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &wsp);
    pack.finalize();
    DD_CUDNN_CHECK(cudnnBackendExecute(h, plan->get(), pack.get()));
  }
};

struct PlanKey {
  ConvAlgorithmKey algorithm;  // problem, direction, precision, determinism, search mode, workspace, device
  std::uintptr_t handle;
  bool operator==(const PlanKey&) const = default;
};
struct PlanKeyHash {
  std::size_t operator()(const PlanKey& k) const {
    return hash_fields({static_cast<std::int64_t>(k.handle)}, ConvAlgorithmKeyHash{}(k.algorithm));
  }
};

// Searched plans (null: no engine configuration works, run the legacy path).
class PlanCache : public SearchCache<PlanKey, std::shared_ptr<const Plan>, PlanKeyHash> {
 public:
  static PlanCache& instance() {
    static auto* c = new PlanCache();
    return *c;
  }
  // Problems searched so far: with a plan, and without one (those run the legacy algorithms).
  std::pair<std::size_t, std::size_t> counts() const {
    const std::size_t with = count_if([](const std::shared_ptr<const Plan>& p) { return p != nullptr; });
    return {with, size() - with};
  }

 private:
  PlanCache() = default;
};

namespace detail {

// The operation graph of one convolution direction; its descriptors are appended to `parts`.
inline const Descriptor& operation_graph(cudnnHandle_t h, const ConvProblem& p, ConvDirection dir, Precision prec,
                                         std::vector<Descriptor>& parts) {
  parts.reserve(parts.size() + 6);
  const cudnnDataType_t t = conv_data_type(prec);
  const Descriptor& x = parts.emplace_back(tensor(kX, t, p.n, p.c, p.h, p.w, p.nhwc));
  const Descriptor& w = parts.emplace_back(tensor(kW, t, p.k, p.c, p.r, p.s, p.nhwc));
  const Descriptor& y = parts.emplace_back(tensor(kY, t, p.n, p.k, p.out_h(), p.out_w(), p.nhwc));

  const Descriptor& conv = parts.emplace_back(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const cudnnDataType_t accumulation = CUDNN_DATA_FLOAT;  // fp32 accumulation in every precision
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const std::int64_t pad[2] = {p.pad, p.pad}, stride[2] = {p.stride, p.stride}, dilation[2] = {p.dilation, p.dilation};
  conv.set_int(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, 2);
  conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &accumulation);
  conv.set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, &mode);
  conv.set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, pad, 2);
  conv.set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, pad, 2);
  conv.set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, stride, 2);
  conv.set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, dilation, 2);
  conv.finalize();

  // The direction's operation and the attribute names of its (x-shaped, filter-shaped, y-shaped)
  // tensors, convolution, alpha and beta.
  struct Names {
    cudnnBackendDescriptorType_t type;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
  };
  const Names a =
      dir == ConvDirection::forward
          ? Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA}
      : dir == ConvDirection::backward_data
          ? Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA}
          : Names{CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  const float alpha = 1.0f, beta = 0.0f;
  const Descriptor* op = &parts.emplace_back(a.type);
  op->set(a.x, x);
  op->set(a.w, w);
  op->set(a.y, y);
  op->set(a.conv, conv);
  op->set(a.alpha, CUDNN_TYPE_FLOAT, &alpha);
  op->set(a.beta, CUDNN_TYPE_FLOAT, &beta);
  op->finalize();

  const Descriptor& graph = parts.emplace_back(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  const cudnnBackendDescriptor_t ops = op->get();
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, &ops);
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, &h);
  graph.finalize();
  return graph;
}

// The engine configurations cuDNN proposes for a graph under one heuristic mode, best first
// (none when the mode has nothing for it).
inline std::vector<Descriptor> engine_configs(const Descriptor& graph, cudnnBackendHeurMode_t mode) {
  std::vector<Descriptor> out;
  Descriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode);
  if (heur.try_finalize() != CUDNN_STATUS_SUCCESS) return out;
  std::int64_t count = 0;
  if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                               nullptr) != CUDNN_STATUS_SUCCESS ||
      count <= 0)
    return out;
  out.reserve(static_cast<std::size_t>(count));
  std::vector<cudnnBackendDescriptor_t> raw;
  for (std::int64_t i = 0; i < count; ++i) raw.push_back(out.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR).get());
  std::int64_t got = 0;
  if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                               raw.data()) != CUDNN_STATUS_SUCCESS)
    got = 0;
  while (static_cast<std::int64_t>(out.size()) > std::max<std::int64_t>(0, got)) out.pop_back();
  return out;
}

// The numerical and behaviour notes and the global index of a configuration's engine.
struct EngineInfo {
  bool known = false;  // the notes could be read (an engine whose notes cannot be is not used)
  std::vector<cudnnBackendNumericalNote_t> notes;
  std::vector<cudnnBackendBehaviorNote_t> behavior;
  std::int64_t index = -1;
};
// Up to `most` values of an array attribute of type T; nullopt when cuDNN does not answer.
template <class T>
std::optional<std::vector<T>> array_attribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                              cudnnBackendAttributeType_t type, std::int64_t most) {
  std::vector<T> v(static_cast<std::size_t>(most));
  std::int64_t n = 0;
  if (cudnnBackendGetAttribute(d, name, type, most, &n, v.data()) != CUDNN_STATUS_SUCCESS) return std::nullopt;
  v.resize(static_cast<std::size_t>(std::clamp<std::int64_t>(n, 0, most)));
  return v;
}
inline EngineInfo engine_info(const Descriptor& config) {
  EngineInfo info;
  Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t e = engine.get();
  std::int64_t n = 0;
  if (cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e) !=
      CUDNN_STATUS_SUCCESS)
    return info;
  const auto notes = array_attribute<cudnnBackendNumericalNote_t>(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                                                                  CUDNN_TYPE_NUMERICAL_NOTE,
                                                                  CUDNN_NUMERICAL_NOTE_TYPE_COUNT);
  if (!notes) return info;  // unknown numerics (TF32? nondeterministic?): not used
  info.known = true;
  info.notes = *notes;
  info.behavior = array_attribute<cudnnBackendBehaviorNote_t>(e, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                                                              CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT)
                      .value_or(std::vector<cudnnBackendBehaviorNote_t>{});
  cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &info.index);
  return info;
}

// Milliseconds of one run of a plan on the stream (after one untimed run).
inline float time_plan(cudnnHandle_t h, cudaStream_t stream, const Plan& plan, const void* x, const void* w,
                       const void* y) {
  struct Events {  // destroyed on every way out, the rethrow below included
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start) cudaEventDestroy(start);
      if (stop) cudaEventDestroy(stop);
    }
  } ev;
  DD_CUDA_CHECK(cudaEventCreate(&ev.start));
  DD_CUDA_CHECK(cudaEventCreate(&ev.stop));
  float ms = -1.0f;
  try {
    plan.execute(h, x, w, y);
    DD_CUDA_CHECK(cudaEventRecord(ev.start, stream));
    plan.execute(h, x, w, y);
    DD_CUDA_CHECK(cudaEventRecord(ev.stop, stream));
    DD_CUDA_CHECK(cudaEventSynchronize(ev.stop));
    DD_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
  } catch (const dd::Error&) {
    // A configuration that finalised but does not run is not a candidate, unless the failure left
    // the stream broken (an illegal address, say): then nothing can run, and the error goes up.
    const cudaError_t q = cudaStreamQuery(stream);
    if (q != cudaSuccess && q != cudaErrorNotReady) throw;
    ms = -1.0f;
    (void)cudaGetLastError();
  }
  return ms;
}

}  // namespace detail

inline constexpr int kMaxTimed = 12;  // configurations timed per problem with `benchmark` (PyTorch: 10)

namespace detail {
inline PlanKey plan_key(cudnnHandle_t h, const ConvProblem& p, ConvDirection dir, const ConvSettings& s) {
  int device = 0;
  DD_CUDA_CHECK(cudaGetDevice(&device));
  return {{p, dir, s.precision, s.deterministic, s.benchmark, s.workspace_limit, device},
          reinterpret_cast<std::uintptr_t>(h)};
}

// The best of `configs` (configs[first_fallback..]: the fallback list) for the problem, or null.
// Candidates run on the inputs among x, w, y with the output slot in zeroed scratch.
inline std::shared_ptr<Plan> best_plan(cudnnHandle_t h, cudaStream_t stream, const ConvProblem& p, ConvDirection dir,
                                       const ConvSettings& s, const std::vector<Descriptor>& configs,
                                       std::size_t first_fallback, const void* x, const void* w, const void* y,
                                       bool log) {
  const std::size_t elem = dtype_size(compute_dtype(s.precision));
  const std::int64_t out_count = dir == ConvDirection::forward         ? p.output_count()
                                 : dir == ConvDirection::backward_data ? p.input_count()
                                                                       : p.filter_count();
  DeviceScratch scratch(static_cast<std::size_t>(out_count) * elem);
  DD_CUDA_CHECK(cudaMemsetAsync(scratch.get(), 0, static_cast<std::size_t>(out_count) * elem, stream));
  const void* tx = dir == ConvDirection::backward_data ? scratch.get() : x;
  const void* tw = dir == ConvDirection::backward_filter ? scratch.get() : w;
  const void* ty = dir == ConvDirection::forward ? scratch.get() : y;

  std::shared_ptr<Plan> best;
  float best_ms = 0.0f;
  int timed = 0;
  // Engines of the heuristics' list that ran: their fallback entries are repeats. (A fallback entry
  // of an engine whose listed configuration failed may have other settings: it is tried.)
  std::vector<std::int64_t> seen;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const EngineInfo info = engine_info(configs[i]);
    const char* why = info.known ? excluded(info.notes, info.behavior, s) : "notes unreadable";
    if (!why && i >= first_fallback && info.index >= 0 && std::find(seen.begin(), seen.end(), info.index) != seen.end())
      why = "listed by the heuristics already";
    auto plan = std::make_unique<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    std::int64_t ws = 0, n = 0;
    if (!why) {
      try {
        plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, &h);
        plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[i]);
        if (plan->try_finalize() != CUDNN_STATUS_SUCCESS) why = "does not finalise";
      } catch (const dd::Error&) {
        why = "refuses the plan's attributes";
      }
    }
    if (!why && cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                         &ws) != CUDNN_STATUS_SUCCESS)
      why = "no workspace size";
    if (!why && static_cast<std::size_t>(ws) > s.workspace_limit) why = "workspace over the limit";
    std::shared_ptr<Plan> candidate;
    float ms = -1.0f;
    if (!why) {
      candidate = std::make_shared<Plan>();
      candidate->plan = std::move(plan);
      candidate->workspace = static_cast<std::size_t>(ws);
      candidate->engine = info.index;
      ms = time_plan(h, stream, *candidate, tx, tw, ty);
      if (ms < 0.0f) why = "fails to run";
    }
    if (why) {
      if (log) std::fprintf(stderr, "  engine %lld: %s\n", (long long)info.index, why);
      continue;
    }
    if (i < first_fallback) seen.push_back(info.index);
    if (log) std::fprintf(stderr, "  engine %lld: %.3f ms, %.1f MiB workspace\n", (long long)info.index, double(ms),
                          double(ws) / 1048576.0);
    if (!best || ms < best_ms) best = std::move(candidate), best_ms = ms;
    if (!s.benchmark || ++timed >= kMaxTimed) break;  // heuristics: the first that runs
  }
  return best;
}
}  // namespace detail

// A plan that ran in its search but failed later (its workspace no longer fits, say): the problem
// runs the legacy algorithms from now on.
inline void forget_plan(cudnnHandle_t h, const ConvProblem& p, ConvDirection dir, const ConvSettings& s,
                        const char* why) {
  if (::dd::cuda::detail::log_algorithm_choices())
    std::fprintf(stderr, "dd::cudnn graph %s: the plan failed (%s); the legacy algorithms run this problem\n",
                 direction_name(dir), why);
  PlanCache::instance().replace(detail::plan_key(h, p, dir, s), nullptr);
}

// The plan for a direction of problem p on handle h (searched and cached on first use), or null
// when no configuration passes, the graph itself is not supported, or the search fails (no memory
// for its scratch output, say): the legacy calls then run the problem. x, w, y: the call's device
// pointers in the problem's data type; the search runs candidates on the inputs among them, with
// the output in scratch. Without `benchmark` the first candidate that finalises AND runs is taken
// (a plan that fails at execution is never cached); with it, the fastest of the first kMaxTimed.
inline std::shared_ptr<const Plan> plan_for(cudnnHandle_t h, cudaStream_t stream, const ConvProblem& p,
                                            ConvDirection dir, const ConvSettings& s, const void* x, const void* w,
                                            const void* y) {
  const PlanKey key = detail::plan_key(h, p, dir, s);
  auto& cache = PlanCache::instance();
  if (auto hit = cache.find(key)) return *hit;
  // Earlier work on the stream must have succeeded: its error would otherwise fail every candidate.
  DD_CUDA_CHECK(cudaStreamSynchronize(stream));

  const bool log = ::dd::cuda::detail::log_algorithm_choices();
  if (log)
    std::fprintf(stderr,
                 "dd::cudnn graph %s %s [%lld %lld %lld %lld] filter [%lld %lld %lld %lld] pad %lld stride %lld "
                 "dilation %lld, %s%s:\n",
                 direction_name(dir), p.nhwc ? "NHWC" : "NCHW", (long long)p.n, (long long)p.c, (long long)p.h,
                 (long long)p.w, (long long)p.k, (long long)p.c, (long long)p.r, (long long)p.s, (long long)p.pad,
                 (long long)p.stride, (long long)p.dilation, precision_name(s.precision), s.benchmark ? ", timed" : "");
  std::vector<Descriptor> parts, configs;
  std::shared_ptr<Plan> best;
  try {
    std::size_t first_fallback = 0;
    try {
      const Descriptor& graph = detail::operation_graph(h, p, dir, s.precision, parts);
      configs = detail::engine_configs(graph, CUDNN_HEUR_MODE_A);
      first_fallback = configs.size();
      for (auto& c : detail::engine_configs(graph, CUDNN_HEUR_MODE_FALLBACK)) configs.push_back(std::move(c));
    } catch (const dd::Error& e) {  // a graph cuDNN does not support: the legacy calls run it
      if (log) std::fprintf(stderr, "  no graph: %s\n", e.what());
      configs.clear();
    }
    if (!configs.empty()) best = detail::best_plan(h, stream, p, dir, s, configs, first_fallback, x, w, y, log);
  } catch (const dd::Error& e) {
    // The search itself failed. A broken stream (an illegal address, say) breaks everything after
    // it too: that error goes up. Anything else leaves the problem to the legacy calls.
    const cudaError_t q = cudaStreamQuery(stream);
    if (q != cudaSuccess && q != cudaErrorNotReady) throw;
    (void)cudaGetLastError();
    if (log) std::fprintf(stderr, "  the search failed: %s\n", e.what());
    best = nullptr;
  }
  if (best) {
    // The plan keeps the graph and every configuration alive (its engine configuration is one).
    for (auto& c : configs) parts.push_back(std::move(c));
    best->parts = std::move(parts);
  }
  if (log)
    std::fprintf(stderr, "  -> %s\n", best ? ("engine " + std::to_string(best->engine)).c_str()
                                           : "none: the legacy algorithms run this problem");
  cuda::detail::discard_cudnn_error();
  return cache.insert(key, std::move(best));
}

}  // namespace dd::cuda::graph
