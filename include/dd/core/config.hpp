#pragma once
// Build configuration. DD_WITH_CUDA is set to 1 by CMake (option DD_CUDA) for every target that
// links dd::dd; without it the library is CPU-only and asking for a GPU tensor is a clear error.
#include "dd/core/error.hpp"

#ifndef DD_WITH_CUDA
#define DD_WITH_CUDA 0
#endif

namespace dd::detail {
[[noreturn]] inline void no_cuda() {
  fail("dd: this program was built without CUDA; configure with -DDD_CUDA=ON to use the GPU");
}
}  // namespace dd::detail

// Calls dd::gpu::<call> in a CUDA build; throws the "built without CUDA" error otherwise, so device
// dispatch in ops needs no #if.
#if DD_WITH_CUDA
#define DD_GPU(...) ::dd::gpu::__VA_ARGS__
#else
#define DD_GPU(...) ::dd::detail::no_cuda()
#endif
