// NCCL and cuBLAS for the emulated GPU (host memory, one device). A communicator of one rank runs
// its collectives as copies; one of several ranks never completes its initialisation (no peer will
// ever join in a single process), which is what the library's bounded waits must turn into an error.
// cuBLAS: handles only (the library creates them; no op calls a BLAS routine).
#include <cublas_v2.h>
#include <nccl.h>

#include <cstring>
#include <string>

#include "emulated_runtime.hpp"

struct ncclComm {
  int nranks = 1;
  bool aborted = false;
};
struct cublasContext {};

namespace {
std::size_t nccl_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    default:
      return 8;
  }
}
// A collective of one rank, in the stream's order.
ncclResult_t copy(const void* send, void* recv, std::size_t count, ncclDataType_t t, ncclComm_t comm,
                  cudaStream_t stream) {
  if (!comm || comm->aborted || !send || !recv) return ncclInvalidArgument;
  if (comm->nranks != 1) return ncclInvalidUsage;  // never initialised (see above)
  const std::size_t bytes = count * nccl_size(t);
  if (send != recv) dd::cuda::emulation::enqueue(stream, [=] { std::memmove(recv, send, bytes); });
  return ncclSuccess;
}
}  // namespace

extern "C" {
const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclInProgress:
      return "operation in progress";
    default:
      return "NCCL error (emulated)";
  }
}
const char* ncclGetLastError(ncclComm_t) {
  return "";
}
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  std::strcpy(id->internal, "emulated");
  return ncclSuccess;
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId, int rank, ncclConfig_t* config) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  if (nranks > 1 && !(config && config->blocking == 0)) return ncclSystemError;  // would wait forever
  *comm = new ncclComm{nranks};
  return nranks == 1 ? ncclSuccess : ncclInProgress;
}
ncclResult_t ncclCommInitAll(ncclComm_t* comms, int ndev, const int* devlist) {
  if (ndev != 1 || (devlist && devlist[0] != 0)) return ncclInvalidArgument;  // one emulated device
  comms[0] = new ncclComm{1};
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
  if (!comm) return ncclInvalidArgument;
  *state = comm->nranks == 1 ? ncclSuccess : ncclInProgress;  // the peers never come
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclGroupStart() {
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  return ncclSuccess;
}
ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t, ncclComm_t comm,
                           cudaStream_t stream) {
  return copy(send, recv, count, t, comm, stream);  // the sum over one rank
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t stream) {
  return copy(send, recv, count, t, comm, stream);
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  if (root != 0) return ncclInvalidArgument;
  return copy(send, recv, count, t, comm, stream);
}

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR (emulated)";
}
const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "success" : "error";
}
}
