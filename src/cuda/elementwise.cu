// Element-wise launchers: fill, axpy, scale, type conversion, strided copy, ReLU, per-plane scaling.
// Pointers may be views at any element offset, so every kernel is scalar (no vector alignment),
// except the row copy, whose plan checks the addresses it moves 16 bytes at a time from.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

template <class T>
__global__ void fill_kernel(T* x, i64 n, float v) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(v, x + i);
}
template <class T>
__global__ void axpy_kernel(T* y, const T* x, i64 n, float a) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(load(y + i) + a * load(x + i), y + i);
}
template <class T>
__global__ void scale_kernel(T* x, i64 n, float a) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(load(x + i) * a, x + i);
}

// The element-wise strided copy (copy_plan.hpp): D dimensions, index type I. TD and TS are the
// element types of the two sides: a copy between equal types moves bits (bf16 and f16 share the
// std::uint16_t instantiation), any other copy or an add goes through float and rounds once.
template <int D, bool Add, class TD, class TS, class I>
__global__ void copy_strided_kernel(TD* dst, const TS* src, CopyDims g, I total) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride())) {
    i64 od, os;
    g.offsets<D>(i, od, os);
    if constexpr (Add)
      store(load(dst + od) + load(src + os), dst + od);
    else if constexpr (std::is_same_v<TD, TS>)
      dst[od] = src[os];
    else
      store(load(src + os), dst + od);
  }
}
// Rows contiguous on both sides, moved in units U of 2 to 16 bytes (RowCopy).
template <class U, class I>
__global__ void copy_rows_kernel(U* dst, const U* src, RowCopy p, I total) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride())) {
    i64 od, os;
    p.offsets(i, od, os);
    dst[od] = src[os];
  }
}

template <class T>
__global__ void relu_forward_kernel(const T* x, i64 n, T* y) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    const float v = load(x + i);
    store(v > 0.0f ? v : 0.0f, y + i);
  }
}
template <class T>
__global__ void relu_backward_kernel(const T* y, const T* dy, i64 n, T* dx) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(load(y + i) > 0.0f ? load(dy + i) : 0.0f, dx + i);
}

__global__ void scale_planes_kernel(const float* x, const float* scale, i64 total, i64 plane, float* y) {
  for (i64 i = first_index(); i < total; i += grid_stride()) y[i] = x[i] * scale[i / plane];
}

// Conv-block tail: planes along grid.y (no per-element division), elements of a plane along grid.x.
__global__ void relu_scale_planes_kernel(float* y, const float* scale, i64 planes, i64 plane) {
  for (i64 p = blockIdx.y; p < planes; p += gridDim.y) {
    float* q = y + p * plane;
    const float k = scale ? scale[p] : 1.0f;
    for (i64 i = first_index(); i < plane; i += grid_stride()) {
      const float v = q[i] > 0.0f ? q[i] : 0.0f;
      q[i] = scale ? v * k : v;
    }
  }
}
__global__ void relu_scale_planes_backward_kernel(const float* y, const float* dy, const float* scale, i64 planes,
                                                  i64 plane, float* dx) {
  for (i64 p = blockIdx.y; p < planes; p += gridDim.y) {
    const i64 o = p * plane;
    const float k = scale ? scale[p] : 1.0f;
    for (i64 i = first_index(); i < plane; i += grid_stride()) dx[o + i] = y[o + i] > 0.0f ? dy[o + i] * k : 0.0f;
  }
}
// The same two in channels-last memory: element i belongs to channel i % c of sample i / (plane * c).
// T is the element type; I the index type: 32-bit where the tensor allows (integer division is the cost here).
template <class T, class I>
__global__ void relu_scale_nhwc_kernel(T* y, const float* scale, I c, I sample, I total) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    store(relu_tail(load(y + i), scale, i, i % c, c, sample), y + i);
}
template <class T, class I>
__global__ void relu_scale_nhwc_backward_kernel(const T* y, const T* dy, const float* scale, I c, I sample, I total,
                                                T* dx) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    store(relu_tail_grad(load(y + i), load(dy + i), scale, i, i % c, c, sample), dx + i);
}
template <class T, class I>
__global__ void scale_nhwc_kernel(const T* x, const float* scale, I c, I sample, I total, T* y) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    store(load(x + i) * scale[(i / sample) * c + i % c], y + i);
}

dim3 plane_grid(i64 planes, i64 plane) {
  // About 64K blocks in all: enough to fill the GPU, few enough to amortise the plane loop.
  const i64 gy = std::min<i64>(planes, 65535);
  const i64 gx = std::max<i64>(1, std::min<i64>((plane + kBlock - 1) / kBlock, 65536 / gy + 1));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

}  // namespace

void fill(void* x, i64 n, float value, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    launch(fill_kernel<T>, grid_for(n), kBlock, 0, s, static_cast<T*>(x), n, value);
  });
}
void axpy(void* y, const void* x, i64 n, float a, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    launch(axpy_kernel<T>, grid_for(n), kBlock, 0, s, static_cast<T*>(y), static_cast<const T*>(x), n, a);
  });
}
void scale(void* x, i64 n, float a, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    launch(scale_kernel<T>, grid_for(n), kBlock, 0, s, static_cast<T*>(x), n, a);
  });
}
// Calls f(TD{}, TS{}) with the element types of a copy's two sides: equal types as their bits (a float,
// or std::uint16_t for both half types), an add or a conversion as the types themselves.
template <bool Add, class F>
void by_copy_types(DType dt, DType st, F f) {
  if constexpr (!Add) {
    if (dt == st) {
      if (dtype_size(dt) == 4)
        f(float{}, float{});
      else if (dtype_size(dt) == 2)
        f(std::uint16_t{}, std::uint16_t{});
      else
        throw std::invalid_argument("dd::cuda::kernels: copies move 2- and 4-byte elements only");
      return;
    }
  }
  by_dtype(dt, [&](auto to) {
    by_dtype(st, [&](auto from) {
      // equal types were dispatched above (or are an add): no kernel for a pair never launched
      if constexpr (Add || !std::is_same_v<decltype(to), decltype(from)>) f(to, from);
    });
  });
}

template <bool Add>
void strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& geometry, cudaStream_t s) {
  const CopyDims g = reduce_dims(geometry);
  if (g.total <= 0) return;
  if (!Add && dt == st) {
    if (g.dims == 1 && g.dst[0] == 1 && g.src[0] == 1) {  // one dense block, at any alignment
      check(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(g.total) * dtype_size(dt), cudaMemcpyDeviceToDevice, s),
            "copy_strided");
      return;
    }
    const RowCopy rows =
        plan_rows(g, dtype_size(dt), reinterpret_cast<std::uintptr_t>(dst), reinterpret_cast<std::uintptr_t>(src));
    if (rows.unit != 0) {
      const i64 total = rows.total();
      by_index_type(total, [&](auto index) {
        using I = decltype(index);
        const auto move_rows = [&](auto unit) {
          using U = decltype(unit);
          launch(copy_rows_kernel<U, I>, grid_for(total), kBlock, 0, s, static_cast<U*>(dst),
                 static_cast<const U*>(src), rows, static_cast<I>(total));
        };
        if (rows.unit == 16)
          move_rows(uint4{});
        else if (rows.unit == 8)
          move_rows(uint2{});
        else if (rows.unit == 4)
          move_rows(std::uint32_t{});
        else
          move_rows(std::uint16_t{});
      });
      return;
    }
  }
  by_copy_types<Add>(dt, st, [&](auto to, auto from) {
    using TD = decltype(to);
    using TS = decltype(from);
    by_index_type(g.total, [&](auto index) {
      using I = decltype(index);
      auto* y = static_cast<TD*>(dst);
      const auto* x = static_cast<const TS*>(src);
      const unsigned grid = grid_for(g.total);
      const I total = static_cast<I>(g.total);
      if (g.dims == 1)
        launch(copy_strided_kernel<1, Add, TD, TS, I>, grid, kBlock, 0, s, y, x, g, total);
      else if (g.dims == 2)
        launch(copy_strided_kernel<2, Add, TD, TS, I>, grid, kBlock, 0, s, y, x, g, total);
      else if (g.dims == 3)
        launch(copy_strided_kernel<3, Add, TD, TS, I>, grid, kBlock, 0, s, y, x, g, total);
      else
        launch(copy_strided_kernel<4, Add, TD, TS, I>, grid, kBlock, 0, s, y, x, g, total);
    });
  });
}

void convert(const void* x, DType xt, void* y, DType yt, i64 n, cudaStream_t s) {
  if (n > 0) strided<false>(y, yt, x, xt, dense_copy(n), s);
}
void copy_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& geometry, cudaStream_t s) {
  strided<false>(dst, dt, src, st, geometry, s);
}
void add_strided(void* dst, DType dt, const void* src, DType st, const StridedCopy& geometry, cudaStream_t s) {
  strided<true>(dst, dt, src, st, geometry, s);
}

void relu_forward(const void* x, i64 n, void* y, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    launch(relu_forward_kernel<T>, grid_for(n), kBlock, 0, s, static_cast<const T*>(x), n, static_cast<T*>(y));
  });
}
void relu_backward(const void* y, const void* dy, i64 n, void* dx, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    launch(relu_backward_kernel<T>, grid_for(n), kBlock, 0, s, static_cast<const T*>(y), static_cast<const T*>(dy), n,
           static_cast<T*>(dx));
  });
}

void scale_planes(const float* x, const float* scale, i64 planes, i64 plane, float* y, cudaStream_t s) {
  const i64 total = planes * plane;
  if (planes > 0 && plane > 0) launch(scale_planes_kernel, grid_for(total), kBlock, 0, s, x, scale, total, plane, y);
}

void relu_scale_planes(float* y, const float* scale, i64 planes, i64 plane, cudaStream_t s) {
  if (planes > 0 && plane > 0)
    launch(relu_scale_planes_kernel, plane_grid(planes, plane), kBlock, 0, s, y, scale, planes, plane);
}
void relu_scale_planes_backward(const float* y, const float* dy, const float* scale, i64 planes, i64 plane, float* dx,
                                cudaStream_t s) {
  if (planes > 0 && plane > 0)
    launch(relu_scale_planes_backward_kernel, plane_grid(planes, plane), kBlock, 0, s, y, dy, scale, planes, plane, dx);
}

void scale_planes_nhwc(const void* x, const float* scale, i64 n, i64 c, i64 plane, void* y, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(scale_nhwc_kernel<T, I>, grid_for(total), kBlock, 0, s, static_cast<const T*>(x), scale, I(c), I(plane * c),
           I(total), static_cast<T*>(y));
  });
}
void relu_scale_planes_nhwc(void* y, const float* scale, i64 n, i64 c, i64 plane, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(relu_scale_nhwc_kernel<T, I>, grid_for(total), kBlock, 0, s, static_cast<T*>(y), scale, I(c), I(plane * c),
           I(total));
  });
}
void relu_scale_planes_nhwc_backward(const void* y, const void* dy, const float* scale, i64 n, i64 c, i64 plane,
                                     void* dx, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    launch(relu_scale_nhwc_backward_kernel<T, I>, grid_for(total), kBlock, 0, s, static_cast<const T*>(y),
           static_cast<const T*>(dy), scale, I(c), I(plane * c), I(total), static_cast<T*>(dx));
  });
}

}  // namespace dd::cuda::kernels
