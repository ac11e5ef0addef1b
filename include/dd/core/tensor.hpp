#pragma once
// Tensor with NCHW indexing: shared storage (host, or GPU memory in a CUDA build) + offset + shape +
// strides + element type (f32; bf16 / f16 for half-precision activations on the GPU, see
// core/dtype.hpp: data() is for f32 tensors, raw() for kernels that take the element type).
// Slices along N, C, H, W are views (no copy); kernels ask for contiguous() (NCHW) memory, which
// copies only when needed. GPU ops may also keep activations channels-last (NHWC
// memory order behind the same NCHW indices, MemoryFormat::nhwc), the layout cuDNN's tensor-core
// kernels want; dense() keeps a tensor in its own format. Element access from the host (at, randn,
// from) is for CPU tensors; move data with to(Device) and copy_from, which work across devices.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "dd/core/dtype.hpp"
#include "dd/core/error.hpp"
#include "dd/core/memory.hpp"
#include "dd/core/rng.hpp"
#include "dd/core/shape.hpp"
#include "dd/core/strided_copy.hpp"
#if DD_WITH_CUDA
#include "dd/kernels/gpu/kernels.hpp"
#endif

namespace dd {

// The memory order behind a tensor's NCHW indices: nchw (W fastest) or nhwc (C fastest).
enum class MemoryFormat { nchw, nhwc };

class Tensor {
 public:
  using Strides = std::array<std::int64_t, 4>;

  Tensor() = default;

  static Tensor empty(Shape s, Device d = Device::cpu, MemoryFormat f = MemoryFormat::nchw,
                      DType t = DType::f32) {
    DD_CHECK(s.n >= 0 && s.c >= 0 && s.h >= 0 && s.w >= 0, "dd::Tensor: negative extent in shape {}", s);
    Tensor r;
    r.storage_ = std::make_shared<Storage>(static_cast<std::size_t>(s.numel()) * dtype_size(t), d);
    r.shape_ = s;
    r.strides_ = dense_strides(s, f);
    r.dtype_ = t;
    return r;
  }
  // Uninitialised, with t's shape, device, memory format and element type.
  static Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.device(), t.format(), t.dtype()); }
  static Tensor zeros(Shape s, Device d = Device::cpu, MemoryFormat f = MemoryFormat::nchw, DType t = DType::f32) {
    return full(s, 0.0f, d, f, t);
  }
  static Tensor full(Shape s, float v, Device d = Device::cpu, MemoryFormat f = MemoryFormat::nchw,
                     DType t = DType::f32) {
    Tensor r = empty(s, d, f, t);
    r.fill(v);
    return r;
  }
  static Tensor randn(Shape s, std::uint64_t seed, float stddev = 1.0f) {
    Rng rng(seed);
    return randn(s, rng, stddev);
  }
  static Tensor randn(Shape s, Rng& rng, float stddev = 1.0f) {
    Tensor t = empty(s);
    for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = stddev * rng.normal();
    return t;
  }
  static Tensor from(Shape s, const std::vector<float>& values) {
    DD_CHECK(static_cast<std::int64_t>(values.size()) == s.numel(),
             "dd::Tensor::from: {} values given for shape {} ({} elements)", values.size(), s, s.numel());
    Tensor t = empty(s);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  std::int64_t numel() const { return shape_.numel(); }
  bool empty_extent() const { return numel() == 0; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }
  DType dtype() const { return dtype_; }
  // Dense in NCHW order; the stride of a dimension of extent 1 does not matter (a channel slice
  // of a batch-1 tensor is contiguous).
  bool is_contiguous() const { return is_dense(MemoryFormat::nchw); }
  // Dense in the memory order f (strides of extent-1 dimensions ignored, as above).
  bool is_dense(MemoryFormat f) const {
    const auto want = dense_strides(shape_, f);
    const std::int64_t ext[4] = {shape_.n, shape_.c, shape_.h, shape_.w};
    for (int d = 0; d < 4; ++d)
      if (ext[d] != 1 && strides_[static_cast<std::size_t>(d)] != want[static_cast<std::size_t>(d)]) return false;
    return true;
  }
  // The order this tensor (or the tensor it is a view of) keeps: nhwc when its channels are
  // adjacent in memory and there is more than one of them and more than one pixel. A view of a
  // channels-last tensor reports nhwc too, so copies of it (clone, dense) stay channels-last.
  MemoryFormat format() const {
    return shape_.c > 1 && shape_.h * shape_.w > 1 && strides_[1] == 1 ? MemoryFormat::nhwc : MemoryFormat::nchw;
  }
  // Two tensors whose elements lie at the same offsets (both dense in one order): element-wise
  // kernels can run over their memory as flat arrays.
  bool same_layout(const Tensor& o) const {
    return shape_ == o.shape_ && ((is_contiguous() && o.is_contiguous()) ||
                                  (is_dense(MemoryFormat::nhwc) && o.is_dense(MemoryFormat::nhwc)));
  }
  // Two tensors alias when they view the same storage.
  bool shares_storage(const Tensor& o) const { return storage_ == o.storage_; }

  // Pointer to element (0,0,0,0) of an f32 tensor. Use with strides(), or after checking
  // is_contiguous(). A half tensor is an error here: widen it with to(DType::f32), or take raw().
  float* data() const {
    if (dtype_ != DType::f32) [[unlikely]]
      fail("dd::Tensor: data() of a {} tensor of shape {}: float access needs to(dd::DType::f32)", dtype_name(dtype_),
           shape_);
    return static_cast<float*>(raw());
  }
  // Untyped pointer to element (0,0,0,0), for kernels that take dtype() along with it.
  void* raw() const {
    return storage_ ? static_cast<char*>(storage_->data()) + offset_ * static_cast<std::int64_t>(dtype_size(dtype_))
                    : nullptr;
  }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  float& at(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const {
    return data()[n * strides_[0] + c * strides_[1] + h * strides_[2] + w * strides_[3]];
  }
  float item() const {
    DD_CHECK(numel() == 1, "dd::Tensor::item: tensor of shape {} is not a single value", shape_);
    return *host_f32().data();
  }

  // View of [start, start+len) along dim (0=N, 1=C, 2=H, 3=W).
  Tensor slice(int dim, std::int64_t start, std::int64_t len) const {
    DD_CHECK(dim >= 0 && dim < 4, "dd::Tensor::slice: dimension {} is not one of 0..3 (N, C, H, W)", dim);
    const std::int64_t extent = extent_of(dim);
    DD_CHECK(start >= 0 && len >= 0 && start + len <= extent,
             "dd::Tensor::slice: range [{}, {}) is outside dimension {} of size {} (shape {})", start,
             start + len, "NCHW"[dim], extent, shape_);
    Tensor t = *this;
    t.offset_ += start * strides_[dim];
    t.extent_ref(dim) = len;
    return t;
  }
  Tensor batch(std::int64_t start, std::int64_t len = 1) const { return slice(0, start, len); }
  Tensor channels(std::int64_t start, std::int64_t len) const { return slice(1, start, len); }
  // A rectangular spatial tile (subimage) as a view.
  Tensor tile(std::int64_t h0, std::int64_t hlen, std::int64_t w0, std::int64_t wlen) const {
    return slice(2, h0, hlen).slice(3, w0, wlen);
  }
  // Same storage, new shape; only for contiguous tensors with the same element count.
  Tensor reshape(Shape s) const {
    DD_CHECK(is_contiguous(), "dd::Tensor::reshape: tensor of shape {} is a strided view", shape_);
    DD_CHECK(s.numel() == numel(), "dd::Tensor::reshape: cannot view {} elements as shape {}", numel(), s);
    Tensor t = *this;
    t.shape_ = s;
    t.strides_ = contiguous_strides(s);
    return t;
  }

  // A dense copy in this tensor's format().
  Tensor clone() const { return clone_as(format()); }
  Tensor clone_as(MemoryFormat f) const {
    Tensor t = empty(shape_, device(), f, dtype_);
    t.copy_from(*this);
    return t;
  }
  // Dense NCHW memory (what the CPU kernels take).
  Tensor contiguous() const { return as_format(MemoryFormat::nchw); }
  // Dense memory in order f: this tensor when it already is, else a copy.
  Tensor as_format(MemoryFormat f) const { return is_dense(f) ? *this : clone_as(f); }
  // Dense memory in this tensor's own format (a strided view is copied, an NHWC tensor stays NHWC).
  Tensor dense() const { return as_format(format()); }
  // Dense memory laid out like `like` (for element-wise work on both), this tensor when it is.
  Tensor dense_like(const Tensor& like) const { return same_layout(like) ? *this : clone_as(like.format()); }
  // A copy on device d (this tensor itself when it is already there): a GPU tensor's host copy is
  // NCHW f32 (what host code indexes; half elements widened), a host tensor's GPU copy keeps its
  // format and type.
  Tensor to(Device d) const {
    if (d == device()) return *this;
    const bool host = d == Device::cpu;
    Tensor t = empty(shape_, d, host ? MemoryFormat::nchw : format(), host ? DType::f32 : dtype_);
    t.copy_from(*this);
    return t;
  }
  // What host code indexes: f32 values in NCHW order on the host (this tensor when it is that).
  Tensor host_f32() const { return to(Device::cpu).to(DType::f32).contiguous(); }
  // A copy with elements of type t (rounded to nearest even when narrowing), in this tensor's
  // format on its device; this tensor itself when it already has that type.
  Tensor to(DType t) const {
    if (t == dtype_) return *this;
    Tensor r = empty(shape_, device(), format(), t);
    r.copy_from(*this);
    return r;
  }

  // Element-wise copy between tensors of equal shape; either may be a strided view, they may live
  // on different devices and have different element types (converted). Views must not overlap.
  void copy_from(const Tensor& src) const {
    DD_CHECK(src.shape_ == shape_, "dd::Tensor::copy_from: source shape {} differs from destination {}",
             src.shape_, shape_);
    if (device() != Device::cpu || src.device() != Device::cpu) {
      copy_across(src);
      return;
    }
    copy_on_host(raw(), dtype_, src.raw(), src.dtype_, geometry_from(src));
  }
  void fill(float v) const {
    if (device() != Device::cpu) {
      if (is_dense(format())) {
        DD_GPU(fill(raw(), numel(), v, dtype_));
      } else {
        copy_from(full(shape_, v, device(), format(), dtype_));
      }
      return;
    }
    if (dtype_ == DType::f32 && is_dense(format())) {
      std::fill_n(data(), numel(), v);
      return;
    }
    // A copy from the one value v (source strides 0), converted to this tensor's type.
    StridedCopy g = geometry_from(*this);
    std::fill_n(g.src_strides, 4, std::int64_t{0});
    copy_on_host(raw(), dtype_, &v, DType::f32, g);
  }
  // this += other (same shape, both dense in the same order, the same element type).
  void add_(const Tensor& other) const {
    DD_CHECK(other.shape_ == shape_, "dd::Tensor::add_: shape {} differs from {}", other.shape_, shape_);
    DD_CHECK(same_layout(other), "dd::Tensor::add_: needs two dense tensors of the same memory format");
    DD_CHECK(device() == other.device(), "dd::Tensor::add_: tensors on {} and {}", device_name(device()),
             device_name(other.device()));
    DD_CHECK(dtype_ == other.dtype_, "dd::Tensor::add_: {} and {} tensors", dtype_name(dtype_),
             dtype_name(other.dtype_));
    if (device() != Device::cpu) {
      DD_GPU(axpy(raw(), other.raw(), numel(), 1.0f, dtype_));
      return;
    }
    if (dtype_ != DType::f32) {  // host half tensors (rare): in f32, rounded once
      const Tensor sum = to(DType::f32);
      sum.add_(other.to(DType::f32));
      copy_from(sum);
      return;
    }
    float* d = data();
    const float* s = other.data();
    const std::int64_t n = numel();
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) d[i] += s[i];
  }

  // this *= k (dense).
  void scale_(float k) const {
    DD_CHECK(is_dense(format()), "dd::Tensor::scale_: needs a dense tensor");
    if (device() != Device::cpu) {
      DD_GPU(scale(raw(), numel(), k, dtype_));
      return;
    }
    if (dtype_ != DType::f32) {
      const Tensor scaled = to(DType::f32);
      scaled.scale_(k);
      copy_from(scaled);
      return;
    }
    for (std::int64_t i = 0; i < numel(); ++i) data()[i] *= k;
  }

  std::vector<float> to_vector() const {
    const Tensor c = host_f32();
    return std::vector<float>(c.data(), c.data() + c.numel());
  }

  static Strides contiguous_strides(Shape s) { return {s.c * s.h * s.w, s.h * s.w, s.w, 1}; }
  static Strides dense_strides(Shape s, MemoryFormat f) {
    if (f == MemoryFormat::nchw) return contiguous_strides(s);
    return {s.h * s.w * s.c, 1, s.w * s.c, s.c};
  }

 private:
  // The copy of src into this tensor as geometry (core/strided_copy.hpp).
  StridedCopy geometry_from(const Tensor& src) const {
    return {{shape_.n, shape_.c, shape_.h, shape_.w},
            {strides_[0], strides_[1], strides_[2], strides_[3]},
            {src.strides_[0], src.strides_[1], src.strides_[2], src.strides_[3]}};
  }

  // copy_from when either side is on the GPU.
  void copy_across([[maybe_unused]] const Tensor& src) const {
#if DD_WITH_CUDA
    if (numel() == 0) return;
    if (device() == src.device()) {
      // Both on the GPU: one strided copy, converting when the types differ; its plan makes a dense
      // block of one type a cudaMemcpyAsync (copy_plan.hpp), so there is no separate memcpy case here.
      gpu::copy_strided(raw(), dtype_, src.raw(), src.dtype_, geometry_from(src));
      return;
    }
    // Across devices: move a dense image, then place it. Layout changes and conversions run on
    // the GPU: the host only moves bytes (a host NHWC -> NCHW copy takes ~7 memcpy's time).
    if (device() == Device::cpu) {
      // To the host: src in this tensor's memory order and type first (one GPU kernel when either
      // differs), then straight into this tensor when it is dense, else into a dense image of it.
      // When the GPU has no room for that copy, src moves as it is and the host reorders.
      const MemoryFormat f = format();
      Tensor s = src;
      if (!src.is_dense(f) || src.dtype_ != dtype_) {
        Tensor t;
        try {
          t = empty(shape_, src.device(), f, dtype_);
        } catch (const Error&) {
          if (!src.is_dense(src.format())) throw;  // a strided view needs a GPU copy either way
        }
        if (t.defined()) {
          t.copy_from(src);
          s = t;
        }
      }
      const bool placed = s.is_dense(f) && s.dtype_ == dtype_;
      const Tensor d = placed && is_dense(f) ? *this
                                             : empty(shape_, Device::cpu, s.is_dense(f) ? f : s.format(), s.dtype_);
      cuda::copy_to_host(d.raw(), s.raw(), s.bytes());
      if (!d.shares_storage(*this)) copy_from(d);
      return;
    }
    // To the GPU: a dense host image moves as it is, and the GPU places (and converts) it.
    const Tensor s = src.dense();
    const Tensor d = same_layout(s) && dtype_ == s.dtype_ ? *this : empty(shape_, device(), s.format(), s.dtype_);
    cuda::copy_to_device(d.raw(), s.raw(), s.bytes());
    if (!d.shares_storage(*this)) copy_from(d);
#else
    detail::no_cuda();
#endif
  }

  std::int64_t extent_of(int dim) const {
    return dim == 0 ? shape_.n : dim == 1 ? shape_.c : dim == 2 ? shape_.h : shape_.w;
  }
  std::int64_t& extent_ref(int dim) {
    return dim == 0 ? shape_.n : dim == 1 ? shape_.c : dim == 2 ? shape_.h : shape_.w;
  }

  std::shared_ptr<Storage> storage_;
  std::int64_t offset_ = 0;
  Shape shape_{};
  Strides strides_{};
  DType dtype_ = DType::f32;
};

// Euclidean norm of all elements, accumulated in double.
inline double l2_norm(const Tensor& t) {
  const Tensor c = t.dense().to(DType::f32);
  if (c.device() != Device::cpu) {
#if DD_WITH_CUDA
    return std::sqrt(gpu::sum_squares(c.data(), c.numel()));
#else
    detail::no_cuda();
#endif
  }
  double s = 0;
  for (std::int64_t i = 0; i < c.numel(); ++i) s += double(c.data()[i]) * c.data()[i];
  return std::sqrt(s);
}

}  // namespace dd
