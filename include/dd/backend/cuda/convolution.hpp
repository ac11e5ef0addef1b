#pragma once
// The precision-aware runner of the three convolution directions (forward, backward-data,
// backward-filter) onto which gpu/conv2d.hpp and gpu/upconv.hpp map their geometries: operand
// staging (alignment, filter order, half-precision copies), cuDNN's legacy calls or, with
// conv_settings().graph_api, an execution plan of the graph API; plus per-channel bias helpers.
// Host code only.
#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "dd/backend/cuda/allocator.hpp"
#include "dd/backend/cuda/cudnn.hpp"
#include "dd/backend/cuda/cudnn_graph.hpp"
#include "dd/backend/cuda/runtime.hpp"
#include "dd/core/memory.hpp"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda {

// ---------------------------------------------------------------------------------------------
// Running convolutions
// ---------------------------------------------------------------------------------------------

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

// An activation array on the GPU: its memory and element type (f32, or half with
// ConvSettings::half_activations). Converts from float pointers, which are f32.
struct DeviceArray {
  void* p = nullptr;
  DType t = DType::f32;
  DeviceArray() = default;
  DeviceArray(std::nullptr_t) {}
  DeviceArray(const float* f) : p(const_cast<float*>(f)) {}
  DeviceArray(const void* q, DType type) : p(const_cast<void*>(q)), t(type) {}
  explicit operator bool() const { return p != nullptr; }
};

// An input as the convolution consumes it (in the precision's compute type): the array itself, or
// a copy in scratch that lives as long as this object, made by one kernel: reordered (a KCRS filter
// for an NHWC problem) and/or converted (f32 to bf16/fp16, or a half activation for an fp32
// problem), or else realigned (the other copies are aligned already).
class ConvOperand {
 public:
  ConvOperand(DeviceArray a, std::int64_t count, Precision prec, const StridedCopy* reorder = nullptr)
      : ptr_(a.p) {
    if (count <= 0) return;
    const DType ct = compute_dtype(prec);
    const bool copy = reorder || a.t != ct || !is_vector_aligned(a.p);
    if (!copy) return;
    buf_.reset(static_cast<std::size_t>(count) * dtype_size(ct));
    kernels::copy_strided(buf_.get(), ct, a.p, a.t, reorder ? *reorder : dense_copy(count), current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    ptr_ = buf_.get();
  }
  const void* get() const { return ptr_; }

 private:
  const void* ptr_;
  DeviceScratch buf_;
};

// One convolution problem on the current stream, with the settings read once at construction.
// Inputs come as ConvOperands (already in the compute data type); outputs are written in their
// own type (DeviceArray), converted from the compute type when they differ.
class Convolution {
 public:
  explicit Convolution(const ConvProblem& p)
      : p_(p), s_(conv_settings()), stream_(current_stream()), h_(cudnn_handle(stream_)) {}

  Precision precision() const { return s_.precision; }
  ConvOperand operand(DeviceArray a, std::int64_t count) const { return ConvOperand(a, count, s_.precision); }
  // The weight [k, c, r, s] (KCRS memory) as the filter: reordered to KRSC for an NHWC problem.
  ConvOperand filter(const float* w) const {
    if (!reorders_filter()) return operand(w, p_.filter_count());
    const StridedCopy g = kernels::filter_order(p_.k, p_.c, p_.r, p_.s, true);
    return ConvOperand(w, p_.filter_count(), s_.precision, &g);
  }

  // y = conv(x, w), written.
  void forward(const void* x, const void* w, DeviceArray y) {
    Output out(*this, y, p_.output_count());
    if (run_plan(ConvDirection::forward, x, w, out.get())) return out.finish();
    const ConvAlgorithm a = prepare(ConvDirection::forward);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f, zero = 0.0f;
    DD_CUDNN_CHECK(cudnnConvolutionForward(h_, &one, d_->x, x, d_->w, w, d_->conv,
                                           static_cast<cudnnConvolutionFwdAlgo_t>(a.algo), ws.get(), a.workspace,
                                           &zero, d_->y, out.get()));
    out.finish();
  }

  // dx = conv_backward_data(w, dy), written.
  void backward_data(const void* w, const void* dy, DeviceArray dx) {
    Output out(*this, dx, p_.input_count());
    if (run_plan(ConvDirection::backward_data, out.get(), w, dy)) return out.finish();
    const ConvAlgorithm a = prepare(ConvDirection::backward_data);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f, zero = 0.0f;
    DD_CUDNN_CHECK(cudnnConvolutionBackwardData(h_, &one, d_->w, w, d_->y, dy, d_->conv,
                                                static_cast<cudnnConvolutionBwdDataAlgo_t>(a.algo), ws.get(),
                                                a.workspace, &zero, d_->x, out.get()));
    out.finish();
  }

  // dw += conv_backward_filter(x, dy), dw in KCRS memory. The legacy call accumulates into dw itself
  // when it can (fp32, the filter's order is ours, dw aligned); otherwise (and always through the
  // graph API, whose plans write their output) the gradient goes to scratch in the compute type and
  // the filter order of the problem, and one kernel widens, reorders and adds it.
  void backward_filter(const void* x, const void* dy, float* dw) {
    if (!s_.graph_api && !is_half(s_.precision) && !reorders_filter() && is_vector_aligned(dw)) {
      legacy_backward_filter(x, dy, dw, 1.0f);
      return;
    }
    const DType ct = compute_dtype(s_.precision);
    DeviceScratch g(static_cast<std::size_t>(p_.filter_count()) * dtype_size(ct));
    if (!run_plan(ConvDirection::backward_filter, x, g.get(), dy)) legacy_backward_filter(x, dy, g.get(), 0.0f);
    const StridedCopy order =
        reorders_filter() ? kernels::filter_order(p_.k, p_.c, p_.r, p_.s, false) : dense_copy(p_.filter_count());
    kernels::add_strided(dw, DType::f32, g.get(), ct, order, stream_);
    DD_CUDA_CHECK(cudaGetLastError());
  }

 private:
  // Where cuDNN writes a result of `count` elements in the compute type: dst itself when it has
  // that type and is aligned, else scratch that finish() converts (or copies) into dst.
  class Output {
   public:
    Output(Convolution& c, DeviceArray dst, std::int64_t count)
        : c_(c), dst_(dst), ct_(compute_dtype(c.s_.precision)), count_(count) {
      if (dst.t == ct_ && is_vector_aligned(dst.p)) return;
      buf_.reset(static_cast<std::size_t>(count) * dtype_size(ct_));
    }
    void* get() const { return buf_.get() ? buf_.get() : dst_.p; }
    void finish() {
      if (buf_.get()) c_.convert(buf_.get(), ct_, dst_.p, dst_.t, count_);
    }

   private:
    Convolution& c_;
    DeviceArray dst_;
    DType ct_;
    std::int64_t count_;
    DeviceScratch buf_;
  };

  // An NHWC problem's filter is KRSC; for 1x1 filters that is the same memory as KCRS.
  bool reorders_filter() const { return p_.nhwc && p_.r * p_.s > 1 && p_.c > 1; }
  // The direction through a graph-API execution plan (conv_settings().graph_api) on (x-shaped,
  // filter-shaped, y-shaped) pointers; false when that is off or no plan exists for the problem.
  bool run_plan(ConvDirection dir, const void* x, const void* w, const void* y) {
    if (!s_.graph_api) return false;
    const auto plan = graph::plan_for(h_, stream_, p_, dir, s_, x, w, y);
    if (!plan) return false;
    try {
      plan->execute(h_, x, w, y);
    } catch (const dd::Error& e) {
      // It ran in the search; now it fails before writing (cuDNN checks, or its workspace does not
      // fit): the legacy call runs the problem, now and from now on. A broken context fails there too.
      graph::forget_plan(h_, p_, dir, s_, e.what());
      detail::discard_cudnn_error();
      (void)cudaGetLastError();
      return false;
    }
    return true;
  }
  // dw = beta * dw + conv_backward_filter(x, dy) with the legacy algorithms.
  void legacy_backward_filter(const void* x, const void* dy, void* dw, float beta) {
    const ConvAlgorithm a = prepare(ConvDirection::backward_filter);
    DeviceScratch ws(a.workspace);
    const float one = 1.0f;
    DD_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h_, &one, d_->x, x, d_->y, dy, d_->conv,
                                                  static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws.get(),
                                                  a.workspace, &beta, d_->w, dw));
  }
  ConvAlgorithm prepare(ConvDirection dir) {
    if (!d_) d_.emplace(p_, s_.precision);  // the legacy path's descriptors, made when it runs
    const ConvAlgorithm a = conv_algorithm(h_, *d_, p_, dir, s_);
    d_->conv.set_math(a.math);  // a cache hit must run with the math type the algorithm was chosen with
    return a;
  }
  void convert(const void* src, DType st, void* dst, DType dt, std::int64_t count) {
    kernels::convert(src, st, dst, dt, count, stream_);
    DD_CUDA_CHECK(cudaGetLastError());
  }

  ConvProblem p_;
  ConvSettings s_;
  cudaStream_t stream_;
  cudnnHandle_t h_;
  std::optional<ConvDescriptors> d_;
};

// ---------------------------------------------------------------------------------------------
// Per-channel bias of NCHW or NHWC tensors (the bias fp32 in every precision; half activations
// only channels-last with at most 1024 channels, where our kernels run)
// ---------------------------------------------------------------------------------------------

// For the paths that run cuDNN's (or our NCHW) kernels, which take f32 activations only.
inline void require_f32(DType t, const char* who) {
  DD_CHECK(t == DType::f32, "dd::{}: {} activations need the channels-last kernels (at most 1024 channels)", who,
           dtype_name(t));
}

// y[n, c, :, :] += b[c]; with relu, y = max(0, y + b) (NaN gives 0, as dd::relu).
inline void add_channel_bias(const float* b, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                             DeviceArray y, bool nhwc = false, bool relu = false) {
  if (nhwc && kernels::channels_last_supported(c)) {
    kernels::add_bias_nhwc(b, n * h * w, c, y.p, y.t, current_stream(), relu);
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  require_f32(y.t, "cuda::add_channel_bias");
  const TensorDescriptor bd(CUDNN_DATA_FLOAT, 1, c, 1, 1), yd(CUDNN_DATA_FLOAT, n, c, h, w, nhwc);
  const float one = 1.0f;
  const AlignedFloats bias(b, c);  // realigned when b is a view
  DD_CUDNN_CHECK(cudnnAddTensor(cudnn_handle(), &one, bd, bias.get(), &one, yd, y.p));
  if (relu) {  // elementwise: the memory order does not matter
    kernels::relu_forward(y.p, n * c * h * w, y.p, y.t, current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
  }
}

// db[c] += sum over n, h, w of dy[n, c, :, :]
inline void accumulate_channel_bias_grad(DeviceArray dy, std::int64_t n, std::int64_t c, std::int64_t h,
                                         std::int64_t w, float* db, bool nhwc = false) {
  // Our deterministic per-channel sums (cuDNN's bias-gradient kernels took milliseconds on 2 x 1024^2).
  if (nhwc && kernels::channels_last_supported(c)) {
    kernels::bias_grad_nhwc(dy.p, n * h * w, c, db, dy.t, current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (!nhwc) {
    kernels::batchnorm_backward_eval(nullptr, dy.p, nullptr, nullptr, nullptr, n, c, h * w, nullptr, nullptr, db, false,
                                     dy.t, current_stream());
    DD_CUDA_CHECK(cudaGetLastError());
    return;
  }
  require_f32(dy.t, "cuda::accumulate_channel_bias_grad");
  const TensorDescriptor dyd(CUDNN_DATA_FLOAT, n, c, h, w, nhwc), bd(CUDNN_DATA_FLOAT, 1, c, 1, 1);
  const float one = 1.0f;
  const AlignedFloats acc(db, c);  // realigned when db is a view, written back after the sum
  DD_CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn_handle(), &one, dyd, dy.p, &one, bd, acc.get()));
  acc.write_back();
}

// Zero-fills `count` elements on the current stream (results of convolutions over empty inputs).
inline void zero_fill(DeviceArray a, std::int64_t count) {
  if (a.p && count > 0)
    DD_CUDA_CHECK(cudaMemsetAsync(a.p, 0, static_cast<std::size_t>(count) * dtype_size(a.t), current_stream()));
}

}  // namespace dd::cuda
