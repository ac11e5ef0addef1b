// The emulator itself (src/cuda/emulation.cuh): barriers keep CUDA's meaning, block-shared memory is
// the block's, and what CUDA refuses or leaves undefined is an error, not a silent result.
#include <doctest/doctest.h>

#include <numeric>
#include <vector>

#include "common.cuh"
#include "emulated.hpp"

namespace dd::cuda::kernels {
namespace {
// Each block reverses its chunk through shared memory: only right with a real barrier in between.
__global__ void reverse_chunks(const int* x, int* y) {
  __shared__ int sh[kBlock];
  const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  sh[t] = x[base + t];
  __syncthreads();
  y[base + t] = sh[blockDim.x - 1 - t];
}
// Two barriers in a loop; the dynamic shared array sized by the launch.
__global__ void prefix_sums(int* x, int rounds) {
  int* sh = dynamic_shared<int>(blockDim.x);
  for (int r = 0; r < rounds; ++r) {
    sh[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    if (threadIdx.x >= 1u << r) x[threadIdx.x] += sh[threadIdx.x - (1u << r)];
    __syncthreads();
  }
}
__global__ void divergent_barrier(int* x) {
  if (threadIdx.x % 2 == 0) __syncthreads();
  x[threadIdx.x] = 1;
}
__global__ void barrier_after_thread_zero_left(int* x) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  x[threadIdx.x] = 1;
}
__global__ void grid_2d(int* x) {
  x[(blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x * blockDim.y + threadIdx.y * blockDim.x + threadIdx.x] =
      static_cast<int>(blockIdx.y * 1000 + blockIdx.x * 100 + threadIdx.y * 10 + threadIdx.x);
}
}  // namespace

TEST_CASE("emulated CUDA: barriers, shared memory, 2-D grids and refused launches") {
  dd::emulated_test::GuardCheck guard;
  std::vector<int> x(4 * kBlock), y(x.size(), -1);
  std::iota(x.begin(), x.end(), 0);
  launch(reverse_chunks, 4, kBlock, 0, nullptr, x.data(), y.data());
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < kBlock; ++t) REQUIRE(y[b * kBlock + t] == b * kBlock + kBlock - 1 - t);

  std::vector<int> p(64, 1);
  launch(prefix_sums, 1, 64, 64 * sizeof(int), nullptr, p.data(), 6);
  for (int i = 0; i < 64; ++i) REQUIRE(p[i] == i + 1);
  CHECK_THROWS_WITH_AS(launch(prefix_sums, 1, 64, 16 * sizeof(int), nullptr, p.data(), 6),
                       doctest::Contains("more dynamic shared memory"), std::logic_error);

  std::vector<int> g(2 * 3 * 4 * 2, -1);
  launch(grid_2d, dim3(2, 3), dim3(4, 2), 0, nullptr, g.data());
  CHECK(g[0] == 0);
  CHECK(g[(1 * 2 + 1) * 8 + 1 * 4 + 3] == 1113);
  CHECK(g.back() == 2113);

  std::vector<int> z(64);
  CHECK_THROWS_WITH_AS(launch(divergent_barrier, 1, 64, 0, nullptr, z.data()), doctest::Contains("__syncthreads"),
                       std::logic_error);
  CHECK_THROWS_WITH_AS(launch(barrier_after_thread_zero_left, 1, 64, 0, nullptr, z.data()),
                       doctest::Contains("__syncthreads"), std::logic_error);
  CHECK_THROWS_WITH_AS(launch(grid_2d, 1, 1025, 0, nullptr, z.data()), doctest::Contains("block shape"),
                       std::logic_error);
  CHECK_THROWS_WITH_AS(launch(grid_2d, dim3(1, 65536), 1, 0, nullptr, z.data()), doctest::Contains("grid shape"),
                       std::logic_error);
  CHECK_THROWS_WITH_AS(launch(prefix_sums, 1, 64, 49 * 1024, nullptr, z.data(), 1), doctest::Contains("dynamic shared"),
                       std::logic_error);
  // after an error the emulator runs the next launch normally
  std::fill(y.begin(), y.end(), -1);
  launch(reverse_chunks, 4, kBlock, 0, nullptr, x.data(), y.data());
  CHECK(y[0] == kBlock - 1);
}

}  // namespace dd::cuda::kernels
