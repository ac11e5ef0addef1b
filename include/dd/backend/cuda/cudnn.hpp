#pragma once
// cuDNN and cuBLAS as the CUDA backend uses them: checked calls, one handle of each per stream,
// RAII descriptors, the global convolution settings (precision, determinism, algorithm search,
// workspace limit) and the legacy API's algorithm choice and cache. The runner of the three
// convolution directions is in convolution.hpp, the graph-API path in cudnn_graph.hpp. Host code only.
#include <cublas_v2.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "dd/backend/cuda/allocator.hpp"
#include "dd/backend/cuda/runtime.hpp"
#include "dd/core/memory.hpp"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::detail {
// cuDNN 9 keeps a readable explanation of the last failure on this thread; worth having in the error.
inline std::string cudnn_last_error() {
#if CUDNN_MAJOR >= 9
  char buf[1024] = {};
  cudnnGetLastErrorString(buf, sizeof buf);
  if (buf[0]) return std::string(": ") + buf;
#endif
  return {};
}
// Reading the message clears it: a search that tolerated failures (candidates that do not run,
// plans that do not finalise) calls this at its end, so a later failure's message is its own.
inline void discard_cudnn_error() { (void)cudnn_last_error(); }
}  // namespace dd::cuda::detail

#define DD_CUDNN_CHECK(expr)                                                                                \
  do {                                                                                                      \
    const cudnnStatus_t dd_cudnn_status_ = (expr);                                                          \
    if (dd_cudnn_status_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                                              \
      ::dd::fail("dd::cudnn: {} failed: {} ({}){}", #expr, cudnnGetErrorString(dd_cudnn_status_),          \
                 static_cast<int>(dd_cudnn_status_), ::dd::cuda::detail::cudnn_last_error());               \
  } while (0)

#define DD_CUBLAS_CHECK(expr)                                                                               \
  do {                                                                                                      \
    const cublasStatus_t dd_cublas_status_ = (expr);                                                        \
    if (dd_cublas_status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                            \
      ::dd::fail("dd::cublas: {} failed: {} ({})", #expr, cublasGetStatusString(dd_cublas_status_),        \
                 cublasGetStatusName(dd_cublas_status_));                                                   \
  } while (0)

namespace dd::cuda {

// ---------------------------------------------------------------------------------------------
// Handles: one per stream, so clones running on their own streams (and threads) never share one.
// Created on first use, never destroyed (like the streams, they outlive every static at exit).
// ---------------------------------------------------------------------------------------------

inline cudnnHandle_t cudnn_handle(cudaStream_t stream) {
  static std::mutex m;
  static auto* handles = new std::unordered_map<cudaStream_t, cudnnHandle_t>();
  std::lock_guard lock(m);
  if (auto it = handles->find(stream); it != handles->end()) return it->second;
  cudnnHandle_t h = nullptr;
  DD_CUDNN_CHECK(cudnnCreate(&h));
  DD_CUDNN_CHECK(cudnnSetStream(h, stream));
  handles->emplace(stream, h);
  return h;
}
inline cudnnHandle_t cudnn_handle() { return cudnn_handle(current_stream()); }

inline cublasHandle_t cublas_handle(cudaStream_t stream) {
  static std::mutex m;
  static auto* handles = new std::unordered_map<cudaStream_t, cublasHandle_t>();
  std::lock_guard lock(m);
  if (auto it = handles->find(stream); it != handles->end()) return it->second;
  cublasHandle_t h = nullptr;
  DD_CUBLAS_CHECK(cublasCreate(&h));
  DD_CUBLAS_CHECK(cublasSetStream(h, stream));
  handles->emplace(stream, h);
  return h;
}
inline cublasHandle_t cublas_handle() { return cublas_handle(current_stream()); }

// ---------------------------------------------------------------------------------------------
// Scratch memory and descriptors
// ---------------------------------------------------------------------------------------------

// Device scratch from the caching allocator, released at scope end. Releasing right after the
// work is enqueued is safe: the block is only handed out again to later work on the same stream.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  explicit DeviceScratch(std::size_t bytes) { reset(bytes); }
  ~DeviceScratch() { CachingAllocator::instance().release(p_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;

  void reset(std::size_t bytes) {
    CachingAllocator::instance().release(p_);
    p_ = nullptr;
    if (bytes) p_ = CachingAllocator::instance().allocate(bytes);
  }
  void* get() const { return p_; }
  float* floats() const { return static_cast<float*>(p_); }

 private:
  void* p_ = nullptr;
};

// cuDNN's legacy API takes int dimensions.
inline int cudnn_dim(std::int64_t v, const char* what) {
  DD_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "dd::cudnn: {} = {} does not fit cuDNN's int dimensions",
           what, v);
  return static_cast<int>(v);
}

class TensorDescriptor {
 public:
  TensorDescriptor() { DD_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  // Packed NCHW, or packed NHWC (channels-last memory) when nhwc.
  TensorDescriptor(cudnnDataType_t t, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                   bool nhwc = false)
      : TensorDescriptor() {
    set(t, n, c, h, w, nhwc);
  }
  ~TensorDescriptor() {
    if (d_) (void)cudnnDestroyTensorDescriptor(d_);
  }
  TensorDescriptor(const TensorDescriptor&) = delete;
  TensorDescriptor& operator=(const TensorDescriptor&) = delete;

  void set(cudnnDataType_t t, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, bool nhwc = false) {
    // The legacy API indexes with int: a tensor of 2^31 elements or more fails inside cuDNN, or worse.
    DD_CHECK(n * c * h * w <= std::numeric_limits<int>::max(),
             "dd::cudnn: a tensor of [{}, {}, {}, {}] = {} elements is over cuDNN's limit of 2^31 - 1; use a smaller "
             "batch or smaller subimages (a finer grid)", n, c, h, w, n * c * h * w);
    DD_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, t, cudnn_dim(n, "N"),
                                              cudnn_dim(c, "C"), cudnn_dim(h, "H"), cudnn_dim(w, "W")));
  }
  cudnnTensorDescriptor_t get() const { return d_; }
  operator cudnnTensorDescriptor_t() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDescriptor {
 public:
  FilterDescriptor() { DD_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_)); }
  // [K out, C in, R, S] in KCRS memory order, or KRSC when nhwc.
  FilterDescriptor(cudnnDataType_t t, std::int64_t k, std::int64_t c, std::int64_t r, std::int64_t s,
                   bool nhwc = false)
      : FilterDescriptor() {
    set(t, k, c, r, s, nhwc);
  }
  ~FilterDescriptor() {
    if (d_) (void)cudnnDestroyFilterDescriptor(d_);
  }
  FilterDescriptor(const FilterDescriptor&) = delete;
  FilterDescriptor& operator=(const FilterDescriptor&) = delete;

  void set(cudnnDataType_t t, std::int64_t k, std::int64_t c, std::int64_t r, std::int64_t s, bool nhwc = false) {
    DD_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, t, nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, cudnn_dim(k, "K"),
                                              cudnn_dim(c, "C"), cudnn_dim(r, "R"), cudnn_dim(s, "S")));
  }
  cudnnFilterDescriptor_t get() const { return d_; }
  operator cudnnFilterDescriptor_t() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvolutionDescriptor {
 public:
  ConvolutionDescriptor() { DD_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_)); }
  ~ConvolutionDescriptor() {
    if (d_) (void)cudnnDestroyConvolutionDescriptor(d_);
  }
  ConvolutionDescriptor(const ConvolutionDescriptor&) = delete;
  ConvolutionDescriptor& operator=(const ConvolutionDescriptor&) = delete;

  // Cross-correlation (what deep learning calls convolution), square pad/stride/dilation.
  void set_2d(std::int64_t pad, std::int64_t stride, std::int64_t dilation, cudnnDataType_t compute) {
    const int p = cudnn_dim(pad, "pad"), s = cudnn_dim(stride, "stride"), d = cudnn_dim(dilation, "dilation");
    DD_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d_, p, p, s, s, d, d, CUDNN_CROSS_CORRELATION, compute));
  }
  void set_math(cudnnMathType_t m) { DD_CUDNN_CHECK(cudnnSetConvolutionMathType(d_, m)); }
  cudnnConvolutionDescriptor_t get() const { return d_; }
  operator cudnnConvolutionDescriptor_t() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

// fp32: no tensor cores (CUDNN_FMA_MATH), closest to the CPU. tf32: fp32 data, TF32 tensor cores
// allowed. bf16/fp16: inputs and weights rounded to the half type, fp32 accumulation; results fp32,
// or in the half type with ConvSettings::half_activations.
enum class Precision { fp32, tf32, bf16, fp16 };

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::bf16: return "bf16";
    case Precision::fp16: return "fp16";
  }
  return "?";
}

struct ConvSettings {
  Precision precision = Precision::fp32;
  bool deterministic = false;  // only algorithms cuDNN reports as deterministic
  bool benchmark = false;      // time the candidates once per problem (cudnnFind*) instead of heuristics
  // GPU ops keep activations channels-last (NHWC memory): cuDNN's tensor-core convolutions (TF32,
  // bf16, fp16) run on NHWC, and on NCHW they transpose or fall back to slower kernels. Inputs in
  // the other order are converted once, at the first op that sees them.
  bool channels_last = true;
  // With bf16/fp16 precision and channels_last: convolutions give their outputs in the half type,
  // and the ops after them (batch norm and its ReLU-dropout tail, ReLU, dropout, max-pool, concat,
  // the DDU exchange) keep them half, as PyTorch's autocast does: half the activation memory, no
  // casts before each convolution. Parameters, their gradients and optimizer state stay fp32; ops
  // without half kernels (softmax, the losses, anything on the CPU) read widened copies.
  bool half_activations = false;
  std::size_t workspace_limit = std::size_t{1} << 30;
  // Run convolutions through cuDNN's graph API (cudnn_graph.hpp: every engine configuration, as
  // PyTorch does) instead of the legacy algorithm enums; problems without a plan fall back to them.
  bool graph_api = false;
};

// Global, read at the start of every convolution call: change it between steps, not during them.
inline ConvSettings& conv_settings() {
  static ConvSettings s;
  return s;
}

inline bool is_half(Precision p) { return p == Precision::bf16 || p == Precision::fp16; }
// The element type cuDNN reads and writes in precision p (tf32 stores fp32).
inline DType compute_dtype(Precision p) {
  return p == Precision::bf16 ? DType::bf16 : p == Precision::fp16 ? DType::f16 : DType::f32;
}
inline cudnnDataType_t conv_data_type(Precision p) {
  switch (p) {
    case Precision::bf16: return CUDNN_DATA_BFLOAT16;
    case Precision::fp16: return CUDNN_DATA_HALF;
    default: return CUDNN_DATA_FLOAT;
  }
}
// The math type the search starts from; cuDNN may answer with another one per algorithm.
inline cudnnMathType_t conv_math_type(Precision p) {
  switch (p) {
    case Precision::fp32: return CUDNN_FMA_MATH;
    case Precision::tf32: return CUDNN_DEFAULT_MATH;
    default: return CUDNN_TENSOR_OP_MATH;
  }
}

// ---------------------------------------------------------------------------------------------
// Convolution problems and algorithm choice
// ---------------------------------------------------------------------------------------------

// One convolution as cuDNN sees it: input [n, c, h, w], filter [k, c, r, s], output [n, k, Ho, Wo].
struct ConvProblem {
  std::int64_t n, c, h, w;
  std::int64_t k, r, s;
  std::int64_t pad, stride, dilation;
  bool nhwc = false;  // x and y channels-last (the filter then goes to cuDNN as KRSC)

  std::int64_t out_h() const { return (h + 2 * pad - dilation * (r - 1) - 1) / stride + 1; }
  std::int64_t out_w() const { return (w + 2 * pad - dilation * (s - 1) - 1) / stride + 1; }
  std::int64_t input_count() const { return n * c * h * w; }
  std::int64_t filter_count() const { return k * c * r * s; }
  std::int64_t output_count() const { return n * k * out_h() * out_w(); }
  bool operator==(const ConvProblem&) const = default;
};

enum class ConvDirection { forward, backward_data, backward_filter };

inline const char* direction_name(ConvDirection d) {
  switch (d) {
    case ConvDirection::forward: return "forward";
    case ConvDirection::backward_data: return "backward-data";
    case ConvDirection::backward_filter: return "backward-filter";
  }
  return "?";
}

// The descriptors of one problem in the data type of a precision.
struct ConvDescriptors {
  TensorDescriptor x, y;
  FilterDescriptor w;
  ConvolutionDescriptor conv;

  ConvDescriptors(const ConvProblem& p, Precision prec) {
    const cudnnDataType_t t = conv_data_type(prec);
    x.set(t, p.n, p.c, p.h, p.w, p.nhwc);
    w.set(t, p.k, p.c, p.r, p.s, p.nhwc);
    y.set(t, p.n, p.k, p.out_h(), p.out_w(), p.nhwc);
    conv.set_2d(p.pad, p.stride, p.dilation, CUDNN_DATA_FLOAT);  // fp32 accumulation in every precision
    conv.set_math(conv_math_type(prec));
  }
};

struct ConvAlgorithm {
  int algo;              // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t of the direction
  cudnnMathType_t math;  // set on the descriptor before running: cuDNN picks kernels by algo + math type
  std::size_t workspace;
};

// Everything the choice depends on: the problem, the direction, and every setting that filters or
// ranks the candidates.
struct ConvAlgorithmKey {
  ConvProblem problem;
  ConvDirection direction;
  Precision precision;
  bool deterministic, benchmark;
  std::size_t workspace_limit;
  int device;
  bool operator==(const ConvAlgorithmKey&) const = default;
};

// Combines hashes of integer fields (boost's hash_combine).
inline std::size_t hash_fields(std::initializer_list<std::int64_t> fields, std::size_t h = 0) {
  for (const std::int64_t f : fields) h ^= std::hash<std::int64_t>{}(f) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

struct ConvAlgorithmKeyHash {
  std::size_t operator()(const ConvAlgorithmKey& k) const {
    const ConvProblem& p = k.problem;
    return hash_fields({p.n, p.c, p.h, p.w, p.k, p.r, p.s, p.pad, p.stride, p.dilation, p.nhwc,
                        static_cast<std::int64_t>(k.direction), static_cast<std::int64_t>(k.precision),
                        k.deterministic, k.benchmark, static_cast<std::int64_t>(k.workspace_limit), k.device});
  }
};

// The results of searches (algorithms, execution plans), thread-safe. A search runs outside the
// lock (a cudnnFind can take a while); two threads racing on the same key both search and the
// first result is kept.
template <class Key, class Value, class Hash>
class SearchCache {
 public:
  std::optional<Value> find(const Key& key) const {
    std::lock_guard lock(m_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  Value insert(const Key& key, Value v) {
    std::lock_guard lock(m_);
    return map_.emplace(key, std::move(v)).first->second;
  }
  void replace(const Key& key, Value v) {
    std::lock_guard lock(m_);
    map_.insert_or_assign(key, std::move(v));
  }
  void clear() {
    std::lock_guard lock(m_);
    map_.clear();
  }
  std::size_t size() const {
    std::lock_guard lock(m_);
    return map_.size();
  }
  // How many results satisfy pred.
  template <class Pred>
  std::size_t count_if(Pred pred) const {
    std::lock_guard lock(m_);
    std::size_t n = 0;
    for (const auto& kv : map_) n += pred(kv.second) ? 1 : 0;
    return n;
  }

 private:
  mutable std::mutex m_;
  std::unordered_map<Key, Value, Hash> map_;
};

// Chosen legacy algorithms.
class ConvAlgorithmCache : public SearchCache<ConvAlgorithmKey, ConvAlgorithm, ConvAlgorithmKeyHash> {
 public:
  static ConvAlgorithmCache& instance() {
    static auto* c = new ConvAlgorithmCache();
    return *c;
  }

 private:
  ConvAlgorithmCache() = default;
};

namespace detail {

// The three directions differ only in which cuDNN functions they call and in argument order.
struct ConvForwardOps {
  using Perf = cudnnConvolutionFwdAlgoPerf_t;
  using Algo = cudnnConvolutionFwdAlgo_t;
  static cudnnStatus_t max_count(cudnnHandle_t h, int* n) { return cudnnGetConvolutionForwardAlgorithmMaxCount(h, n); }
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, req, got, p);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnFindConvolutionForwardAlgorithm(h, d.x, d.w, d.conv, d.y, req, got, p);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const ConvDescriptors& d, Algo a, std::size_t* bytes) {
    return cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, a, bytes);
  }
};

struct ConvBackwardDataOps {
  using Perf = cudnnConvolutionBwdDataAlgoPerf_t;
  using Algo = cudnnConvolutionBwdDataAlgo_t;
  static cudnnStatus_t max_count(cudnnHandle_t h, int* n) {
    return cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, n);
  }
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, req, got, p);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnFindConvolutionBackwardDataAlgorithm(h, d.w, d.y, d.conv, d.x, req, got, p);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const ConvDescriptors& d, Algo a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, a, bytes);
  }
};

struct ConvBackwardFilterOps {
  using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
  using Algo = cudnnConvolutionBwdFilterAlgo_t;
  static cudnnStatus_t max_count(cudnnHandle_t h, int* n) {
    return cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, n);
  }
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, req, got, p);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvDescriptors& d, int req, int* got, Perf* p) {
    return cudnnFindConvolutionBackwardFilterAlgorithm(h, d.x, d.y, d.conv, d.w, req, got, p);
  }
  static cudnnStatus_t workspace(cudnnHandle_t h, const ConvDescriptors& d, Algo a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w, a, bytes);
  }
};

// DD_CUDNN_LOG=1: every algorithm search prints its problem, the ranked candidates (status, time,
// workspace, math type) and the choice to stderr (to see why a layer got a slow kernel).
inline bool log_algorithm_choices() {
  static const bool on = [] {
    const char* v = std::getenv("DD_CUDNN_LOG");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return on;
}

// Ranks the candidates (by measured time with `benchmark`, else by cuDNN's heuristics) and takes
// the first that succeeded, fits the workspace limit, is deterministic when asked, and in fp32 mode
// does not use tensor cores. Leaves the descriptor's math type set to the choice's.
template <class Ops>
ConvAlgorithm search_algorithm(cudnnHandle_t h, ConvDescriptors& d, const ConvProblem& p, ConvDirection dir,
                               const ConvSettings& s) {
  int max_count = 0;
  DD_CUDNN_CHECK(Ops::max_count(h, &max_count));
  std::vector<typename Ops::Perf> perf(static_cast<std::size_t>(std::max(max_count, 1)));
  int got = 0;
  bool ranked = false;
  if (s.benchmark) {
    // cudnnFind allocates its own buffers with cudaMalloc (and synchronises). When the cached
    // blocks of our allocator leave too little room, give them back and try once more; if it still
    // fails, fall back to the heuristics rather than fail the step.
    cudnnStatus_t st = Ops::find(h, d, max_count, &got, perf.data());
    if (st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ||
        st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED) {
      CachingAllocator::instance().empty_cache();
      st = Ops::find(h, d, max_count, &got, perf.data());
    }
    ranked = st == CUDNN_STATUS_SUCCESS;
  }
  if (!ranked) DD_CUDNN_CHECK(Ops::heuristic(h, d, max_count, &got, perf.data()));
  const bool log = log_algorithm_choices();
  if (log)
    std::fprintf(stderr, "dd::cudnn %s %s [%lld %lld %lld %lld] filter [%lld %lld %lld %lld] pad %lld stride %lld "
                 "dilation %lld, %s, %s:\n", direction_name(dir), p.nhwc ? "NHWC" : "NCHW", (long long)p.n,
                 (long long)p.c, (long long)p.h, (long long)p.w, (long long)p.k, (long long)p.c, (long long)p.r,
                 (long long)p.s, (long long)p.pad, (long long)p.stride, (long long)p.dilation,
                 precision_name(s.precision), ranked ? "timed (cudnnFind)" : "heuristics");

  for (int i = 0; i < got; ++i) {
    const auto& c = perf[static_cast<std::size_t>(i)];
    if (log)
      std::fprintf(stderr, "  algo %d: %s, %.3f ms, %.1f MiB, math %d, %s\n", static_cast<int>(c.algo),
                   cudnnGetErrorString(c.status), double(c.time), double(c.memory) / 1048576.0,
                   static_cast<int>(c.mathType), c.determinism == CUDNN_DETERMINISTIC ? "deterministic" : "");
    if (c.status != CUDNN_STATUS_SUCCESS) continue;
    if (s.deterministic && c.determinism != CUDNN_DETERMINISTIC) continue;
    // fp32 runs every algorithm with FMA math (no TF32), whatever math the search reported for it.
    const cudnnMathType_t math = s.precision == Precision::fp32 ? CUDNN_FMA_MATH : c.mathType;
    // The workspace as the execution call will see it (algo + math type), not the search's estimate.
    d.conv.set_math(math);
    std::size_t bytes = 0;
    if (Ops::workspace(h, d, c.algo, &bytes) != CUDNN_STATUS_SUCCESS) continue;
    if (bytes > s.workspace_limit) continue;
    if (log) std::fprintf(stderr, "  -> algo %d, math %d, %.1f MiB workspace\n", static_cast<int>(c.algo),
                          static_cast<int>(math), double(bytes) / 1048576.0);
    return ConvAlgorithm{static_cast<int>(c.algo), math, bytes};
  }
  fail("dd::cudnn: no {} convolution algorithm for {} input [{}, {}, {}, {}], filter [{}, {}, {}, {}], pad {}, "
       "stride {}, dilation {} in {} precision{} within the workspace limit of {:.1f} MiB ({} candidates)",
       direction_name(dir), p.nhwc ? "NHWC" : "NCHW", p.n, p.c, p.h, p.w, p.k, p.c, p.r, p.s, p.pad, p.stride, p.dilation,
       precision_name(s.precision), s.deterministic ? ", deterministic," : "",
       double(s.workspace_limit) / 1048576.0, got);
}

}  // namespace detail

// The algorithm for a problem and direction under settings `s`: cached, else searched once.
inline ConvAlgorithm conv_algorithm(cudnnHandle_t h, ConvDescriptors& d, const ConvProblem& p, ConvDirection dir,
                                    const ConvSettings& s) {
  int device = 0;
  DD_CUDA_CHECK(cudaGetDevice(&device));
  const ConvAlgorithmKey key{p, dir, s.precision, s.deterministic, s.benchmark, s.workspace_limit, device};
  auto& cache = ConvAlgorithmCache::instance();
  if (auto hit = cache.find(key)) return *hit;
  ConvAlgorithm a{};
  switch (dir) {
    case ConvDirection::forward: a = detail::search_algorithm<detail::ConvForwardOps>(h, d, p, dir, s); break;
    case ConvDirection::backward_data: a = detail::search_algorithm<detail::ConvBackwardDataOps>(h, d, p, dir, s); break;
    case ConvDirection::backward_filter:
      a = detail::search_algorithm<detail::ConvBackwardFilterOps>(h, d, p, dir, s);
      break;
  }
  detail::discard_cudnn_error();
  return cache.insert(key, a);
}

inline void clear_conv_algorithm_cache() { ConvAlgorithmCache::instance().clear(); }

}  // namespace dd::cuda
