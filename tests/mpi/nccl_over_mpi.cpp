// NCCL communicator from an MPI job (CUDA + MPI builds). Skips without a GPU; with one, rank 0
// shares the NCCL id over MPI and the ranks all-reduce a buffer on their GPUs (one rank per GPU).
#include <cstdio>
#include <vector>

#include "dd/backend/mpi/environment.hpp"
#include "dd/backend/mpi/nccl.hpp"

int main(int argc, char** argv) {
  return dd::mpi::run_ranks(argc, argv, [&]() -> int {
    dd::mpi::Communicator world = dd::mpi::Communicator::world();
    if (dd::cuda::device_count() < world.size()) {
      if (world.rank() == 0) std::printf("nccl_over_mpi: %d ranks, %d GPUs: skipped\n", world.size(), dd::cuda::device_count());
      return 0;
    }
    dd::cuda::NcclCommunicator nccl = dd::mpi::nccl_communicator(world);
    const std::size_t n = 1000;
    std::vector<float> host(n, float(world.rank() + 1));
    float* buf = nullptr;
    DD_CUDA_CHECK(cudaMalloc(&buf, n * sizeof(float)));
    DD_CUDA_CHECK(cudaMemcpy(buf, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    nccl.all_reduce_sum(buf, n, dd::cuda::main_stream());
    nccl.wait(dd::cuda::main_stream(), std::chrono::seconds(60));
    DD_CUDA_CHECK(cudaMemcpy(host.data(), buf, n * sizeof(float), cudaMemcpyDeviceToHost));
    DD_CUDA_CHECK(cudaFree(buf));
    const float want = float(world.size() * (world.size() + 1) / 2);
    for (float v : host) DD_CHECK(v == want, "nccl_over_mpi: all-reduce gave {} instead of {}", v, want);
    if (world.rank() == 0) std::printf("nccl_over_mpi: %d ranks: all-reduce over NCCL correct\n", world.size());
    return 0;
  });
}
