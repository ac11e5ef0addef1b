#pragma once
// DomainDecomposed over the GPUs of an MPI job, one GPU per rank: MpiDistribution's host-side
// collectives (Dice sums, running statistics, the trainer's counters) plus NCCL for the two that
// carry the bulk, on the GPU and the current stream (Distribution's direct collectives):
// the all-gather of the bottleneck's F-channel tiles (and of their gradients in backward) and the
// all-reduce of the shared weights' gradient. The gradient sum is then NCCL's, not one process's
// bits (chain_sum); every rank still ends with the same values. Needs DD_CUDA and DD_MPI.
//   dd::mpi::Communicator world = dd::mpi::Communicator::world();
//   auto dist = std::make_shared<dd::mpi::NcclDistribution>(world);  // sets this rank's GPU
//   model.to(dd::Device::cuda);
//   model.distribute(dist);
#include <cuda_runtime.h>

#include "dd/backend/cuda/runtime.hpp"
#include "dd/backend/mpi/distribution.hpp"
#include "dd/backend/mpi/nccl.hpp"

namespace dd::mpi {

class NcclDistribution : public MpiDistribution {
 public:
  // device < 0: this rank's GPU is rank % (GPUs visible); it becomes the current device.
  explicit NcclDistribution(Communicator& comm, int device = -1)
      : MpiDistribution(comm), nccl_(nccl_communicator(comm, device)) {}

  bool direct_collectives() const override { return true; }
  void all_gather_direct(const float* local, std::int64_t n, float* all) override {
    on_gpu(local, "all_gather_direct");
    on_gpu(all, "all_gather_direct");
    nccl_.all_gather(local, all, static_cast<std::size_t>(n), cuda::current_stream());
  }
  void all_reduce_sum_direct(float* x, std::int64_t n) override {
    on_gpu(x, "all_reduce_sum_direct");
    nccl_.all_reduce_sum(x, static_cast<std::size_t>(n), cuda::current_stream());
  }
  cuda::NcclCommunicator& nccl() { return nccl_; }

 private:
  // NCCL reads and writes GPU memory only: a model left on the CPU is a clear error, not a crash.
  static void on_gpu(const void* p, const char* what) {
    cudaPointerAttributes a{};
    const bool device = cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeDevice;
    if (!device) (void)cudaGetLastError();
    DD_CHECK(device, "dd::mpi::NcclDistribution::{}: the tensors are not in GPU memory (move the model and its "
             "inputs to the GPU, or use MpiDistribution on the CPU)", what);
  }

  cuda::NcclCommunicator nccl_;
};

}  // namespace dd::mpi
