#pragma once
// NCCL between the GPUs of an MPI job: rank 0 makes the NCCL unique id, MPI broadcasts it, and
// every rank joins the NCCL communicator with its own GPU (local rank modulo the GPUs it sees).
// The exchange itself then runs over NCCL (backend/cuda/nccl.hpp) instead of through host memory.
// Needs a build with both DD_CUDA and DD_MPI.
#include <string>

#include "dd/backend/cuda/nccl.hpp"
#include "dd/backend/mpi/communicator.hpp"

namespace dd::mpi {

inline cuda::NcclCommunicator nccl_communicator(Communicator& comm, int device = -1) {
  std::string id = comm.rank() == 0 ? cuda::NcclCommunicator::unique_id() : std::string();
  comm.broadcast(id, 0);
  if (device < 0) {
    const int gpus = cuda::device_count();
    DD_CHECK(gpus > 0, "dd::mpi::nccl_communicator: rank {} sees no GPU", comm.rank());
    device = comm.rank() % gpus;
  }
  return cuda::NcclCommunicator(id, comm.size(), comm.rank(), device);
}

}  // namespace dd::mpi
