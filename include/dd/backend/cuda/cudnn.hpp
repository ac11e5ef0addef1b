#pragma once
// cuDNN and cuBLAS as the CUDA backend uses them: checked calls, one handle of each per stream,
// RAII descriptors, the global convolution settings (precision, determinism, algorithm search,
// workspace limit), the algorithm cache, and one precision-aware runner for the three convolution
// directions, onto which gpu/conv2d.hpp and gpu/upconv.hpp map their geometries. Host code only.
#include <cublas_v2.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdint>
#include <functional>
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
// allowed. bf16/fp16: inputs and weights rounded to the half type, fp32 accumulation, fp32 results.
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
  std::size_t workspace_limit = std::size_t{1} << 30;
};

// Global, read at the start of every convolution call: change it between steps, not during them.
inline ConvSettings& conv_settings() {
  static ConvSettings s;
  return s;
}

inline bool is_half(Precision p) { return p == Precision::bf16 || p == Precision::fp16; }
inline kernels::HalfType half_type(Precision p) {
  return p == Precision::bf16 ? kernels::HalfType::bf16 : kernels::HalfType::fp16;
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

struct ConvAlgorithmKeyHash {
  std::size_t operator()(const ConvAlgorithmKey& k) const {
    const ConvProblem& p = k.problem;
    const std::int64_t fields[] = {p.n, p.c, p.h, p.w, p.k, p.r, p.s, p.pad, p.stride, p.dilation, p.nhwc,
                                   static_cast<std::int64_t>(k.direction), static_cast<std::int64_t>(k.precision),
                                   k.deterministic, k.benchmark, static_cast<std::int64_t>(k.workspace_limit),
                                   k.device};
    std::size_t h = 0;
    for (std::int64_t f : fields) h ^= std::hash<std::int64_t>{}(f) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
  }
};

// Chosen algorithms, thread-safe. The search runs outside the lock (a cudnnFind can take a
// while); two threads racing on the same key both search and the first result is kept.
class ConvAlgorithmCache {
 public:
  static ConvAlgorithmCache& instance() {
    static auto* c = new ConvAlgorithmCache();
    return *c;
  }
  std::optional<ConvAlgorithm> find(const ConvAlgorithmKey& key) const {
    std::lock_guard lock(m_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  ConvAlgorithm insert(const ConvAlgorithmKey& key, const ConvAlgorithm& a) {
    std::lock_guard lock(m_);
    return map_.emplace(key, a).first->second;
  }
  void clear() {
    std::lock_guard lock(m_);
    map_.clear();
  }
  std::size_t size() const {
    std::lock_guard lock(m_);
    return map_.size();
  }

 private:
  ConvAlgorithmCache() = default;
  mutable std::mutex m_;
  std::unordered_map<ConvAlgorithmKey, ConvAlgorithm, ConvAlgorithmKeyHash> map_;
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
    if (st == CUDNN_STATUS_ALLOC_FAILED) {
      CachingAllocator::instance().empty_cache();
      st = Ops::find(h, d, max_count, &got, perf.data());
    }
    ranked = st == CUDNN_STATUS_SUCCESS;
  }
  if (!ranked) DD_CUDNN_CHECK(Ops::heuristic(h, d, max_count, &got, perf.data()));

  for (int i = 0; i < got; ++i) {
    const auto& c = perf[static_cast<std::size_t>(i)];
    if (c.status != CUDNN_STATUS_SUCCESS) continue;
    if (s.deterministic && c.determinism != CUDNN_DETERMINISTIC) continue;
    // fp32 runs every algorithm with FMA math (no TF32), whatever math the search reported for it.
    const cudnnMathType_t math = s.precision == Precision::fp32 ? CUDNN_FMA_MATH : c.mathType;
    // The workspace as the execution call will see it (algo + math type), not the search's estimate.
    d.conv.set_math(math);
    std::size_t bytes = 0;
    if (Ops::workspace(h, d, c.algo, &bytes) != CUDNN_STATUS_SUCCESS) continue;
    if (bytes > s.workspace_limit) continue;
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
  return cache.insert(key, a);
}

inline void clear_conv_algorithm_cache() { ConvAlgorithmCache::instance().clear(); }

// ---------------------------------------------------------------------------------------------
// Running convolutions
// ---------------------------------------------------------------------------------------------

// The copy between a [k, c, r, s] filter in KCRS memory (our weights) and KRSC (cuDNN's NHWC filter).
inline kernels::StridedCopy filter_order(std::int64_t k, std::int64_t c, std::int64_t r, std::int64_t s, bool to_krsc) {
  const std::int64_t kcrs[4] = {c * r * s, r * s, s, 1}, krsc[4] = {r * s * c, 1, s * c, c};
  kernels::StridedCopy g{{k, c, r, s}, {}, {}};
  for (int i = 0; i < 4; ++i) {
    g.dst_strides[i] = to_krsc ? krsc[i] : kcrs[i];
    g.src_strides[i] = to_krsc ? kcrs[i] : krsc[i];
  }
  return g;
}

// Every pointer handed to cuDNN is 16-byte aligned (dd::is_vector_aligned): unaligned views are
// staged through aligned scratch by the classes below.
// A float array as cuDNN reads (and updates) it: the array itself, or an aligned copy when it is an
// unaligned view; write_back() returns updates to it.
class AlignedFloats {
 public:
  AlignedFloats(const float* p, std::int64_t count) : p_(const_cast<float*>(p)), count_(count) {
    if (!p || count <= 0 || is_vector_aligned(p)) return;
    buf_.reset(bytes());
    copy_on_device(buf_.get(), p, bytes());
  }
  float* get() const { return buf_.get() ? buf_.floats() : p_; }
  void write_back() const {
    if (buf_.get()) copy_on_device(p_, buf_.get(), bytes());
  }

 private:
  std::size_t bytes() const { return static_cast<std::size_t>(count_) * sizeof(float); }
  float* p_;
  std::int64_t count_;
  DeviceScratch buf_;
};

// An fp32 input as the convolution consumes it: the pointer itself, or a copy in scratch that lives
// as long as this object: reordered (a KCRS filter for an NHWC problem), rounded (bf16/fp16), or
// else realigned (AlignedFloats; the other two copies are aligned already).
class ConvOperand {
 public:
  ConvOperand(const float* p, std::int64_t count, Precision prec, const kernels::StridedCopy* reorder = nullptr)
      : aligned_(reorder || is_half(prec) ? nullptr : p, count), ptr_(aligned_.get() ? aligned_.get() : p) {
    if (count <= 0) return;
    if (reorder) {
      order_.reset(static_cast<std::size_t>(count) * sizeof(float));
      kernels::copy_strided(order_.floats(), p, *reorder, current_stream());
      DD_CUDA_CHECK(cudaGetLastError());
      ptr_ = p = order_.floats();
    }
    if (!is_half(prec)) return;
    buf_.reset(static_cast<std::size_t>(count) * 2);
    kernels::to_half(p, buf_.get(), count, half_type(prec), current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    ptr_ = buf_.get();
  }
  const void* get() const { return ptr_; }

 private:
  AlignedFloats aligned_;
  const void* ptr_;
  DeviceScratch order_, buf_;
};

// One convolution problem on the current stream, with the settings read once at construction.
// Inputs come as ConvOperands (already in the compute data type); outputs are fp32.
class Convolution {
 public:
  explicit Convolution(const ConvProblem& p)
      : p_(p), s_(conv_settings()), stream_(current_stream()), h_(cudnn_handle(stream_)), d_(p, s_.precision) {}

  Precision precision() const { return s_.precision; }
  ConvOperand operand(const float* ptr, std::int64_t count) const { return ConvOperand(ptr, count, s_.precision); }
  // The weight [k, c, r, s] (KCRS memory) as the filter: reordered to KRSC for an NHWC problem.
  ConvOperand filter(const float* w) const {
    if (!reorders_filter()) return operand(w, p_.filter_count());
    const kernels::StridedCopy g = filter_order(p_.k, p_.c, p_.r, p_.s, true);
    return ConvOperand(w, p_.filter_count(), s_.precision, &g);
  }

  // y = conv(x, w), written.
  void forward(const void* x, const void* w, float* y) {
    const ConvAlgorithm a = prepare(ConvDirection::forward);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f, zero = 0.0f;
    Output out(*this, y, p_.output_count());
    DD_CUDNN_CHECK(cudnnConvolutionForward(h_, &one, d_.x, x, d_.w, w, d_.conv,
                                           static_cast<cudnnConvolutionFwdAlgo_t>(a.algo), ws.get(), a.workspace,
                                           &zero, d_.y, out.get()));
    out.finish();
  }

  // dx = conv_backward_data(w, dy), written.
  void backward_data(const void* w, const void* dy, float* dx) {
    const ConvAlgorithm a = prepare(ConvDirection::backward_data);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f, zero = 0.0f;
    Output out(*this, dx, p_.input_count());
    DD_CUDNN_CHECK(cudnnConvolutionBackwardData(h_, &one, d_.w, w, d_.y, dy, d_.conv,
                                                static_cast<cudnnConvolutionBwdDataAlgo_t>(a.algo), ws.get(),
                                                a.workspace, &zero, d_.x, out.get()));
    out.finish();
  }

  // dw += conv_backward_filter(x, dy), dw in KCRS memory. cuDNN accumulates into dw itself when it
  // can (fp32, the filter's order is ours, dw aligned); otherwise the gradient goes to scratch in the
  // data type and the filter order of the problem, and is widened, reordered and added.
  void backward_filter(const void* x, const void* dy, float* dw) {
    const ConvAlgorithm a = prepare(ConvDirection::backward_filter);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f, zero = 0.0f;
    if (!is_half(s_.precision) && !reorders_filter() && is_vector_aligned(dw)) {
      DD_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h_, &one, d_.x, x, d_.y, dy, d_.conv,
                                                    static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws.get(),
                                                    a.workspace, &one, d_.w, dw));
      return;
    }
    const std::int64_t count = p_.filter_count();
    DeviceScratch wide(static_cast<std::size_t>(count) * sizeof(float)), half;
    if (is_half(s_.precision)) half.reset(static_cast<std::size_t>(count) * 2);
    DD_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h_, &one, d_.x, x, d_.y, dy, d_.conv,
                                                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws.get(),
                                                  a.workspace, &zero, d_.w, half.get() ? half.get() : wide.get()));
    if (half.get()) from_half(half.get(), wide.floats(), count);
    add_filter(wide.floats(), dw);
  }

 private:
  // Where cuDNN writes an fp32 result of `count` elements: dst itself, or (half precision, or dst not
  // aligned) scratch that finish() widens or copies into dst.
  class Output {
   public:
    Output(Convolution& c, float* dst, std::int64_t count) : c_(c), dst_(dst), count_(count) {
      if (!is_half(c.s_.precision) && is_vector_aligned(dst)) return;
      buf_.reset(static_cast<std::size_t>(count) * (is_half(c.s_.precision) ? 2 : sizeof(float)));
    }
    void* get() const { return buf_.get() ? buf_.get() : dst_; }
    void finish() {
      if (!buf_.get()) return;
      if (is_half(c_.s_.precision))
        c_.from_half(buf_.get(), dst_, count_);
      else
        copy_on_device(dst_, buf_.get(), static_cast<std::size_t>(count_) * sizeof(float));
    }

   private:
    Convolution& c_;
    float* dst_;
    std::int64_t count_;
    DeviceScratch buf_;
  };

  // An NHWC problem's filter is KRSC; for 1x1 filters that is the same memory as KCRS.
  bool reorders_filter() const { return p_.nhwc && p_.r * p_.s > 1 && p_.c > 1; }
  // dw (KCRS) += g (the filter gradient in cuDNN's order for this problem).
  void add_filter(const float* g, float* dw) {
    if (reorders_filter())
      kernels::add_strided(dw, g, filter_order(p_.k, p_.c, p_.r, p_.s, false), stream_);
    else
      kernels::axpy(dw, g, p_.filter_count(), 1.0f, stream_);
    DD_CUDA_CHECK(cudaGetLastError());
  }
  ConvAlgorithm prepare(ConvDirection dir) {
    const ConvAlgorithm a = conv_algorithm(h_, d_, p_, dir, s_);
    d_.conv.set_math(a.math);  // a cache hit must run with the math type the algorithm was chosen with
    return a;
  }
  void from_half(const void* src, float* dst, std::int64_t count) {
    kernels::from_half(src, dst, count, half_type(s_.precision), stream_);
    DD_CUDA_CHECK(cudaGetLastError());
  }

  ConvProblem p_;
  ConvSettings s_;
  cudaStream_t stream_;
  cudnnHandle_t h_;
  ConvDescriptors d_;
};

// ---------------------------------------------------------------------------------------------
// Per-channel bias of NCHW or NHWC tensors (fp32 in every precision)
// ---------------------------------------------------------------------------------------------

// y[n, c, :, :] += b[c]
inline void add_channel_bias(const float* b, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                             float* y, bool nhwc = false) {
  if (nhwc && kernels::channels_last_supported(c)) {
    kernels::add_bias_nhwc(b, n * h * w, c, y, current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const TensorDescriptor bd(CUDNN_DATA_FLOAT, 1, c, 1, 1), yd(CUDNN_DATA_FLOAT, n, c, h, w, nhwc);
  const float one = 1.0f;
  const AlignedFloats bias(b, c);  // realigned when b is a view
  DD_CUDNN_CHECK(cudnnAddTensor(cudnn_handle(), &one, bd, bias.get(), &one, yd, y));
}

// db[c] += sum over n, h, w of dy[n, c, :, :]
inline void accumulate_channel_bias_grad(const float* dy, std::int64_t n, std::int64_t c, std::int64_t h,
                                         std::int64_t w, float* db, bool nhwc = false) {
  // Our deterministic per-channel sums (cuDNN's bias-gradient kernels took milliseconds on 2 x 1024^2).
  if (nhwc && kernels::channels_last_supported(c)) {
    kernels::bias_grad_nhwc(dy, n * h * w, c, db, current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (!nhwc) {
    kernels::batchnorm_backward_eval(nullptr, dy, nullptr, nullptr, nullptr, n, c, h * w, nullptr, nullptr, db, false,
                                     current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const TensorDescriptor dyd(CUDNN_DATA_FLOAT, n, c, h, w, nhwc), bd(CUDNN_DATA_FLOAT, 1, c, 1, 1);
  const float one = 1.0f;
  const AlignedFloats acc(db, c);  // realigned when db is a view, written back after the sum
  DD_CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn_handle(), &one, dyd, dy, &one, bd, acc.get()));
  acc.write_back();
}

// Zero-fills `count` floats on the current stream (results of convolutions over empty inputs).
inline void zero_floats(float* p, std::int64_t count) {
  if (p && count > 0)
    DD_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<std::size_t>(count) * sizeof(float), current_stream()));
}

}  // namespace dd::cuda
