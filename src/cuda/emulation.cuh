// The kernels of src/cuda run on the CPU when built with DD_CUDA_EMULATION (the C++ compiler, no
// nvcc, no GPU): so their index arithmetic, reductions, element types and launch shapes are tested
// in CI on every change, not only on the rare machine with a GPU (tests/cuda_emulated).
//
// A launch runs its blocks one after another; the threads of a block are fibers on one OS thread,
// switched at __syncthreads (tests/cuda_emulated/emulator.cpp), so block-shared memory (`static`
// here: blocks never overlap) and barriers keep CUDA's meaning. A block runs its thread 0 first;
// if that thread finishes without a barrier, the kernel takes none in this block (CUDA requires
// every thread of a block to reach the same barriers) and the other threads run as plain calls. A barrier that
// only some threads reach, a launch shape CUDA refuses (block over 1024 threads, grid over its
// limits, dynamic shared memory over 48 KiB) or a dynamic shared array larger than the launch gave
// throws std::logic_error. The runtime calls the kernel files make (cudaMallocAsync,
// cudaMemcpyAsync, ...) are defined on host memory by tests/cuda_emulated/runtime.cpp. What it cannot show: races
// between threads, the memory model, timing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <functional>
#include <tuple>
#include <utility>

// common.cuh's helpers in an anonymous namespace, not all used by every file (nvcc does not warn).
#pragma GCC diagnostic ignored "-Wunused-function"

// The CUDA headers define these as attributes for the GPU compiler; here they are plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static  // one block at a time: a function's static array is its block's
#define __forceinline__ inline
#define __launch_bounds__(...)  // a register budget for the GPU compiler

// The builtin variables (set by the launcher for the thread that runs).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Correctly rounded float arithmetic: the host's float operations are (no contraction at -O2
// without -ffast-math; the emulated library is built with -ffp-contract=off).
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
inline unsigned __float_as_uint(float a) {
  return std::bit_cast<unsigned>(a);
}

namespace dd::cuda::emulation {

// The scheduler (tests/cuda_emulated/emulator.cpp): runs body on every thread of the grid, block
// after block, with `shared` bytes of dynamic shared memory; rethrows what a thread threw, and
// throws std::logic_error for a launch shape CUDA refuses or a barrier some threads skip.
void run_grid(dim3 grid, dim3 block, std::size_t shared, const std::function<void()>& body);
void barrier();                                  // __syncthreads
void* dynamic_shared_memory(std::size_t bytes);  // throws if the launch gave fewer bytes

// Enqueues run_grid(grid, block, shared, body) on stream s (tests/cuda_emulated/runtime.cpp: at
// once, or when the stream is drained); a launch shape CUDA refuses throws here, at the launch.
void enqueue_grid(cudaStream_t s, dim3 grid, dim3 block, std::size_t shared, std::function<void()> body);

// Runs kernel(args...) on every thread of the grid, in stream order on s; args are converted to the
// kernel's parameter types once, when launched, as a launch copies its arguments.
template <class... P, class... A>
void launch(cudaStream_t s, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shared, A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  enqueue_grid(s, grid, block, shared, [kernel, params] { std::apply([&](auto... p) { kernel(p...); }, params); });
}

template <class T>
T* dynamic_shared(std::size_t n) {
  return static_cast<T*>(dynamic_shared_memory(n * sizeof(T)));
}

}  // namespace dd::cuda::emulation

inline void __syncthreads() {
  dd::cuda::emulation::barrier();
}
