// What every kernel file shares: launches, 64-bit grid-stride loops, the element types of
// activations, launch-error checks, stream-ordered scratch and the fixed-order block sum behind the
// deterministic reductions. Private to src/cuda (nvcc, or the C++ compiler with DD_CUDA_EMULATION:
// emulation.cuh; of the dd headers only dtype.hpp, which depends on nothing: the others pull fmt).
#pragma once
#ifdef DD_CUDA_EMULATION
#include "emulation.cuh"
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "dd/core/dtype.hpp"

namespace dd::cuda::kernels {
namespace {

using i64 = std::int64_t;
constexpr int kBlock = 256;  // threads per block; a power of two (block_sum)

// Every launch goes through here: kernel<<<grid, block, shared, s>>>(args...) on the GPU, the
// emulator's launch on the CPU. Template kernels are named with all their arguments.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shared, cudaStream_t s, A&&... args) {
#ifdef DD_CUDA_EMULATION
  emulation::launch(s, kernel, grid, block, shared, std::forward<A>(args)...);
#else
  kernel<<<grid, block, shared, s>>>(std::forward<A>(args)...);
#endif
}

// The launch's dynamic shared memory, n elements of T (the launch gives the bytes).
template <class T>
__device__ T* dynamic_shared(std::size_t n) {
#ifdef DD_CUDA_EMULATION
  return emulation::dynamic_shared<T>(n);
#else
  (void)n;
  extern __shared__ __align__(16) unsigned char dd_dynamic_shared[];
  return reinterpret_cast<T*>(dd_dynamic_shared);
#endif
}

// Grid-stride loops cover any n, so the grid is capped; n == 0 must not reach a launch.
unsigned grid_for(i64 n) { return static_cast<unsigned>(std::min<i64>((n + kBlock - 1) / kBlock, 65535)); }
__device__ i64 first_index() { return static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ i64 grid_stride() { return static_cast<i64>(gridDim.x) * blockDim.x; }

// Calls launch(I{}) with the index type for `total` elements: 32-bit where it suffices (with room
// for the grid-stride step past the end), since integer division is the cost of the channels-last
// kernels, 64-bit beyond.
template <class Launch>
void by_index_type(i64 total, Launch launch) {
  if (total < (i64{1} << 31))
    launch(std::uint32_t{});
  else
    launch(i64{});
}

// Activation elements T (float, __nv_bfloat16, __half): kernels load them into float, compute in
// float, and round each result once when they store it. For float both are plain memory accesses,
// so the f32 kernels do exactly the arithmetic they did before the other types came.
__device__ float load(const float* x) { return *x; }
__device__ float load(const __nv_bfloat16* x) { return __bfloat162float(*x); }
__device__ float load(const __half* x) { return __half2float(*x); }
__device__ void store(float v, float* y) { *y = v; }
__device__ void store(float v, __nv_bfloat16* y) { *y = __float2bfloat16_rn(v); }
__device__ void store(float v, __half* y) { *y = __float2half_rn(v); }

// Calls f(T{}) with the element type of DType t.
template <class F>
void by_dtype(DType t, F f) {
  switch (t) {
    case DType::f32:
      f(float{});
      return;
    case DType::bf16:
      f(__nv_bfloat16{});
      return;
    case DType::f16:
      f(__half{});
      return;
  }
  throw std::invalid_argument("dd::cuda::kernels: unknown DType");
}
// Both: calls f(T{}, I{}) for the element type of t and the index type for `total` elements.
template <class F>
void by_types(DType t, i64 total, F f) {
  by_dtype(t, [&](auto element) { by_index_type(total, [&](auto index) { f(element, index); }); });
}

// The conv block's ReLU-dropout tail on channels-last memory at element i of channel ch: k holds
// the dropout factors per [sample, channel] (null: ReLU only), sample = h * w * c elements. The
// forward of a value v, and the gradient handed back for output y with output gradient d.
template <class I>
__device__ float relu_tail(float v, const float* k, I i, I ch, I c, I sample) {
  v = v > 0.0f ? v : 0.0f;
  return k ? v * k[(i / sample) * c + ch] : v;
}
template <class I>
__device__ float relu_tail_grad(float y, float d, const float* k, I i, I ch, I c, I sample) {
  return y > 0.0f ? (k ? d * k[(i / sample) * c + ch] : d) : 0.0f;
}

void check(cudaError_t e, const char* who) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("dd::cuda::kernels::") + who + ": " + cudaGetErrorString(e));
}

// The device's memory pool (cudaMallocAsync's) keeps what it holds across synchronisations: with
// the default release threshold (0) it returns its memory to the driver at every stream or device
// wait, so the next scratch of a training step (batch norm's partial sums, the losses') maps memory
// again. An optimisation only: a failure here is cleared, not reported.
inline void keep_pool_memory() {
  static std::once_flag once[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    (void)cudaGetLastError();
    return;
  }
  std::call_once(once[device], [device] {
    cudaMemPool_t pool;
    std::uint64_t keep = ~std::uint64_t{0};
    if (cudaDeviceGetMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
      (void)cudaGetLastError();
  });
}

// Stream-ordered device scratch from the default pool (small: partial sums), freed (stream-ordered)
// on every exit path.
struct Scratch {
  void* p = nullptr;
  cudaStream_t s;
  Scratch(std::size_t bytes, cudaStream_t stream, const char* who) : s(stream) {
    keep_pool_memory();
    check(cudaMallocAsync(&p, bytes, s), who);
  }
  ~Scratch() {
    if (p) (void)cudaFreeAsync(p, s);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Tree sum over the block in a fixed order (deterministic); every thread gets the result.
template <class T>
__device__ T block_sum(T v, T* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned half = kBlock / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  const T r = sh[0];
  __syncthreads();  // sh may be reused right away
  return r;
}

// out[r] = sum of part[r * cols .. r * cols + cols), one block per row, in block_sum's fixed order:
// the second pass of every two-pass reduction (per-block partials, then this).
template <class T>
__global__ void reduce_rows_kernel(const T* part, i64 rows, i64 cols, T* out) {
  __shared__ T sh[kBlock];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    T acc = 0;
    for (i64 j = threadIdx.x; j < cols; j += kBlock) acc += part[r * cols + j];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) out[r] = acc;
  }
}
template <class T>
void reduce_rows(const T* part, i64 rows, i64 cols, T* out, cudaStream_t s) {
  launch(reduce_rows_kernel<T>, static_cast<unsigned>(std::min<i64>(rows, 65535)), kBlock, 0, s, part, rows, cols, out);
}

}  // namespace
}  // namespace dd::cuda::kernels
