// Element-wise launchers: fill, axpy, scale, strided copy, ReLU, per-plane scaling, half casts.
// Pointers may be views at any float offset, so every kernel is scalar (no float4 alignment).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "dd/kernels/cuda/kernels.hpp"

namespace dd::cuda::kernels {
namespace {

__global__ void fill_kernel(float* x, i64 n, float v) {
  for (i64 i = first_index(); i < n; i += grid_stride()) x[i] = v;
}
__global__ void axpy_kernel(float* y, const float* x, i64 n, float a) {
  for (i64 i = first_index(); i < n; i += grid_stride()) y[i] += a * x[i];
}
__global__ void scale_kernel(float* x, i64 n, float a) {
  for (i64 i = first_index(); i < n; i += grid_stride()) x[i] *= a;
}

// Up to 4 dimensions after merging, innermost last.
struct Dims {
  i64 shape[4], dst[4], src[4];
};
template <int D, bool Add>
__global__ void copy_strided_kernel(float* dst, const float* src, Dims g, i64 total) {
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    i64 r = i, od = 0, os = 0;
#pragma unroll
    for (int k = D - 1; k > 0; --k) {
      const i64 q = r / g.shape[k], x = r - q * g.shape[k];
      od += x * g.dst[k];
      os += x * g.src[k];
      r = q;
    }
    if constexpr (Add)
      dst[od + r * g.dst[0]] += src[os + r * g.src[0]];
    else
      dst[od + r * g.dst[0]] = src[os + r * g.src[0]];
  }
}
__global__ void copy_kernel(float* dst, const float* src, i64 n) {
  for (i64 i = first_index(); i < n; i += grid_stride()) dst[i] = src[i];
}

__global__ void relu_forward_kernel(const float* x, i64 n, float* y) {
  for (i64 i = first_index(); i < n; i += grid_stride()) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
__global__ void relu_backward_kernel(const float* y, const float* dy, i64 n, float* dx) {
  for (i64 i = first_index(); i < n; i += grid_stride()) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
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
// I is the index type: 32-bit where the tensor allows (integer division is the cost here).
template <class I>
__global__ void relu_scale_nhwc_kernel(float* y, const float* scale, I c, I sample, I total) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    y[i] = relu_tail(y[i], scale, i, i % c, c, sample);
}
template <class I>
__global__ void relu_scale_nhwc_backward_kernel(const float* y, const float* dy, const float* scale, I c, I sample,
                                                I total, float* dx) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    dx[i] = relu_tail_grad(y[i], dy[i], scale, i, i % c, c, sample);
}
template <class I>
__global__ void scale_nhwc_kernel(const float* x, const float* scale, I c, I sample, I total, float* y) {
  for (I i = static_cast<I>(first_index()); i < total; i += static_cast<I>(grid_stride()))
    y[i] = x[i] * scale[(i / sample) * c + i % c];
}

dim3 plane_grid(i64 planes, i64 plane) {
  // About 64K blocks in all: enough to fill the GPU, few enough to amortise the plane loop.
  const i64 gy = std::min<i64>(planes, 65535);
  const i64 gx = std::max<i64>(1, std::min<i64>((plane + kBlock - 1) / kBlock, 65536 / gy + 1));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

__device__ void store(float v, __nv_bfloat16* y) {
  *y = __float2bfloat16_rn(v);
}
__device__ void store(float v, __half* y) {
  *y = __float2half_rn(v);
}
__device__ float load(const __nv_bfloat16* x) {
  return __bfloat162float(*x);
}
__device__ float load(const __half* x) {
  return __half2float(*x);
}

template <class H>
__global__ void to_half_kernel(const float* x, H* y, i64 n) {
  for (i64 i = first_index(); i < n; i += grid_stride()) store(x[i], y + i);
}
template <class H>
__global__ void from_half_kernel(const H* x, float* y, i64 n) {
  for (i64 i = first_index(); i < n; i += grid_stride()) y[i] = load(x + i);
}

}  // namespace

void fill(float* x, i64 n, float value, cudaStream_t s) {
  if (n > 0) fill_kernel<<<grid_for(n), kBlock, 0, s>>>(x, n, value);
}
void axpy(float* y, const float* x, i64 n, float a, cudaStream_t s) {
  if (n > 0) axpy_kernel<<<grid_for(n), kBlock, 0, s>>>(y, x, n, a);
}
void scale(float* x, i64 n, float a, cudaStream_t s) {
  if (n > 0) scale_kernel<<<grid_for(n), kBlock, 0, s>>>(x, n, a);
}

template <bool Add>
void strided(float* dst, const float* src, const StridedCopy& geometry, cudaStream_t s) {
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
  switch (d) {
    case 1:
      if (!Add && g.dst[0] == 1 && g.src[0] == 1)
        copy_kernel<<<grid, kBlock, 0, s>>>(dst, src, total);
      else
        copy_strided_kernel<1, Add><<<grid, kBlock, 0, s>>>(dst, src, g, total);
      break;
    case 2:
      copy_strided_kernel<2, Add><<<grid, kBlock, 0, s>>>(dst, src, g, total);
      break;
    case 3:
      copy_strided_kernel<3, Add><<<grid, kBlock, 0, s>>>(dst, src, g, total);
      break;
    default:
      copy_strided_kernel<4, Add><<<grid, kBlock, 0, s>>>(dst, src, g, total);
      break;
  }
}

void copy_strided(float* dst, const float* src, const StridedCopy& geometry, cudaStream_t s) {
  strided<false>(dst, src, geometry, s);
}
void add_strided(float* dst, const float* src, const StridedCopy& geometry, cudaStream_t s) {
  strided<true>(dst, src, geometry, s);
}

void relu_forward(const float* x, i64 n, float* y, cudaStream_t s) {
  if (n > 0) relu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(x, n, y);
}
void relu_backward(const float* y, const float* dy, i64 n, float* dx, cudaStream_t s) {
  if (n > 0) relu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(y, dy, n, dx);
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

void scale_planes_nhwc(const float* x, const float* scale, i64 n, i64 c, i64 plane, float* y, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_index_type(total, [&](auto index) {
    using I = decltype(index);
    scale_nhwc_kernel<I><<<grid_for(total), kBlock, 0, s>>>(x, scale, I(c), I(plane * c), I(total), y);
  });
}
void relu_scale_planes_nhwc(float* y, const float* scale, i64 n, i64 c, i64 plane, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_index_type(total, [&](auto index) {
    using I = decltype(index);
    relu_scale_nhwc_kernel<I><<<grid_for(total), kBlock, 0, s>>>(y, scale, I(c), I(plane * c), I(total));
  });
}
void relu_scale_planes_nhwc_backward(const float* y, const float* dy, const float* scale, i64 n, i64 c, i64 plane,
                                     float* dx, cudaStream_t s) {
  const i64 total = n * c * plane;
  if (total <= 0) return;
  by_index_type(total, [&](auto index) {
    using I = decltype(index);
    relu_scale_nhwc_backward_kernel<I><<<grid_for(total), kBlock, 0, s>>>(y, dy, scale, I(c), I(plane * c), I(total),
                                                                          dx);
  });
}

void to_half(const float* x, void* y, i64 n, HalfType t, cudaStream_t s) {
  if (n <= 0) return;
  if (t == HalfType::bf16)
    to_half_kernel<<<grid_for(n), kBlock, 0, s>>>(x, static_cast<__nv_bfloat16*>(y), n);
  else
    to_half_kernel<<<grid_for(n), kBlock, 0, s>>>(x, static_cast<__half*>(y), n);
}
void from_half(const void* x, float* y, i64 n, HalfType t, cudaStream_t s) {
  if (n <= 0) return;
  if (t == HalfType::bf16)
    from_half_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<const __nv_bfloat16*>(x), y, n);
  else
    from_half_kernel<<<grid_for(n), kBlock, 0, s>>>(static_cast<const __half*>(x), y, n);
}

}  // namespace dd::cuda::kernels
