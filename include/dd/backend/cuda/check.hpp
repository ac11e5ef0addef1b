#pragma once
// A CUDA runtime call whose failure becomes a dd::Error naming the call and the error.
#include <cuda_runtime.h>

#include "dd/core/error.hpp"

#define DD_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    const cudaError_t dd_cuda_status_ = (expr);                                              \
    if (dd_cuda_status_ != cudaSuccess) [[unlikely]]                                         \
      ::dd::fail("dd::cuda: {} failed: {} ({})", #expr, cudaGetErrorString(dd_cuda_status_), \
                 cudaGetErrorName(dd_cuda_status_));                                         \
  } while (0)
