// Element-wise launchers: fill, axpy, scale, type conversion, strided copy, ReLU, per-plane scaling.
// Pointers may be views at any element offset, so every kernel is scalar (no vector alignment).
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
// X != Y: from bf16 or f16 the float is exact, so a narrowing result is rounded once.
template <class X, class Y>
__global__ void convert_kernel(const X* x, Y* y, i64 n) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(load(x + i), y + i);
}

// Up to 4 dimensions after merging, innermost last. T is the element type when adding; a copy moves
// the bits unconverted, so bf16 and f16 share its std::uint16_t instantiation.
struct Dims {
  i64 shape[4], dst[4], src[4];
};
template <int D, bool Add, class T>
__global__ void copy_strided_kernel(T* dst, const T* src, Dims g, i64 total) {
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    i64 r = i, od = 0, os = 0;
#pragma unroll
    for (int k = D - 1; k > 0; --k) {
      const i64 q = r / g.shape[k], x = r - q * g.shape[k];
      od += x * g.dst[k];
      os += x * g.src[k];
      r = q;
    }
    const T* from = src + os + r * g.src[0];
    T* to = dst + od + r * g.dst[0];
    if constexpr (Add)
      store(load(to) + load(from), to);
    else
      *to = *from;
  }
}
template <class T>
__global__ void copy_kernel(T* dst, const T* src, i64 n) {
  for (i64 i = first_index(); i < n; i += grid_stride()) dst[i] = src[i];
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
    fill_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<T*>(x), n, value);
  });
}
void axpy(void* y, const void* x, i64 n, float a, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    axpy_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<T*>(y), static_cast<const T*>(x), n, a);
  });
}
void scale(void* x, i64 n, float a, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    scale_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<T*>(x), n, a);
  });
}
void convert(const void* x, DType xt, void* y, DType yt, i64 n, cudaStream_t s) {
  if (n <= 0) return;
  if (xt == yt) {
    check(cudaMemcpyAsync(y, x, static_cast<std::size_t>(n) * dtype_size(xt), cudaMemcpyDeviceToDevice, s), "convert");
    return;
  }
  by_dtype(xt, [&](auto from) {
    by_dtype(yt, [&](auto to) {
      using X = decltype(from);
      using Y = decltype(to);
      if constexpr (!std::is_same_v<X, Y>)  // the same type was copied above
        convert_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<const X*>(x), static_cast<Y*>(y), n);
    });
  });
}

template <bool Add>
void strided(void* dst, const void* src, const StridedCopy& geometry, DType t, cudaStream_t s) {
  // Drop size-1 dimensions, order the rest by destination stride (largest outermost, so neighbouring
  // threads write neighbouring addresses whatever the memory order, NCHW or channels-last), and
  // merge neighbours that are contiguous on both sides: a dense copy becomes 1-D (no index
  // division), a channel slice 2-D (one division per element).
  int order[4], m = 0;
  i64 total = 1;
  for (int k = 0; k < 4; ++k) {
    total *= geometry.shape[k];
    if (geometry.shape[k] != 1) order[m++] = k;
  }
  std::stable_sort(order, order + m, [&](int a, int b) { return geometry.dst_strides[a] > geometry.dst_strides[b]; });
  Dims g{};
  int d = 0;
  for (int i = 0; i < m; ++i) {
    const int k = order[i];
    const i64 len = geometry.shape[k];
    if (d > 0 && g.dst[d - 1] == geometry.dst_strides[k] * len &&
        g.src[d - 1] == geometry.src_strides[k] * len) {
      g.shape[d - 1] *= len;
      g.dst[d - 1] = geometry.dst_strides[k];
      g.src[d - 1] = geometry.src_strides[k];
    } else {
      g.shape[d] = len, g.dst[d] = geometry.dst_strides[k], g.src[d] = geometry.src_strides[k];
      ++d;
    }
  }
  if (total <= 0) return;
  if (d == 0) g.shape[0] = 1, g.dst[0] = 0, g.src[0] = 0, d = 1;  // a single element
  const unsigned grid = grid_for(total);
  const auto launch = [&](auto element) {
    using T = decltype(element);
    auto* y = static_cast<T*>(dst);
    const auto* x = static_cast<const T*>(src);
    switch (d) {
      case 1:
        if constexpr (!Add) {
          if (g.dst[0] == 1 && g.src[0] == 1) {
            copy_kernel<<<grid, kBlock, 0, s>>>(y, x, total);
            break;
          }
        }
        copy_strided_kernel<1, Add><<<grid, kBlock, 0, s>>>(y, x, g, total);
        break;
      case 2:
        copy_strided_kernel<2, Add><<<grid, kBlock, 0, s>>>(y, x, g, total);
        break;
      case 3:
        copy_strided_kernel<3, Add><<<grid, kBlock, 0, s>>>(y, x, g, total);
        break;
      default:
        copy_strided_kernel<4, Add><<<grid, kBlock, 0, s>>>(y, x, g, total);
        break;
    }
  };
  if constexpr (Add)
    by_dtype(t, launch);
  else if (t == DType::f32)
    launch(float{});
  else
    launch(std::uint16_t{});
}

void copy_strided(void* dst, const void* src, const StridedCopy& geometry, DType t, cudaStream_t s) {
  strided<false>(dst, src, geometry, t, s);
}
void add_strided(void* dst, const void* src, const StridedCopy& geometry, DType t, cudaStream_t s) {
  strided<true>(dst, src, geometry, t, s);
}

void relu_forward(const void* x, i64 n, void* y, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    relu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<const T*>(x), n, static_cast<T*>(y));
  });
}
void relu_backward(const void* y, const void* dy, i64 n, void* dx, DType t, cudaStream_t s) {
  if (n <= 0) return;
  by_dtype(t, [&](auto element) {
    using T = decltype(element);
    relu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<const T*>(y), static_cast<const T*>(dy), n,
                                                        static_cast<T*>(dx));
  });
}

void scale_planes(const float* x, const float* scale, i64 planes, i64 plane, float* y, cudaStream_t s) {
  const i64 total = planes * plane;
  if (planes > 0 && plane > 0)
    scale_planes_kernel<<<grid_for(total), kBlock, 0, s>>>(x, scale, total, plane, y);
}

void relu_scale_planes(float* y, const float* scale, i64 planes, i64 plane, cudaStream_t s) {
  if (planes > 0 && plane > 0) relu_scale_planes_kernel<<<plane_grid(planes, plane), kBlock, 0, s>>>(y, scale, planes, plane);
}
void relu_scale_planes_backward(const float* y, const float* dy, const float* scale, i64 planes, i64 plane, float* dx,
                                cudaStream_t s) {
  if (planes > 0 && plane > 0)
    relu_scale_planes_backward_kernel<<<plane_grid(planes, plane), kBlock, 0, s>>>(y, dy, scale, planes, plane, dx);
}

void scale_planes_nhwc(const void* x, const float* scale, i64 n, i64 c, i64 plane, void* y, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    scale_nhwc_kernel<T, I><<<grid_for(total), kBlock, 0, s>>>(static_cast<const T*>(x), scale, I(c), I(plane * c),
                                                               I(total), static_cast<T*>(y));
  });
}
void relu_scale_planes_nhwc(void* y, const float* scale, i64 n, i64 c, i64 plane, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    relu_scale_nhwc_kernel<T, I>
        <<<grid_for(total), kBlock, 0, s>>>(static_cast<T*>(y), scale, I(c), I(plane * c), I(total));
  });
}
void relu_scale_planes_nhwc_backward(const void* y, const void* dy, const float* scale, i64 n, i64 c, i64 plane,
                                     void* dx, DType t, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_types(t, total, [&](auto element, auto index) {
    using T = decltype(element);
    using I = decltype(index);
    relu_scale_nhwc_backward_kernel<T, I><<<grid_for(total), kBlock, 0, s>>>(
        static_cast<const T*>(y), static_cast<const T*>(dy), scale, I(c), I(plane * c), I(total), static_cast<T*>(dx));
  });
}

}  // namespace dd::cuda::kernels
