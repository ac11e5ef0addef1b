// The GPU test suite on the emulated GPU runs with device memory closed to the host outside device
// work (runtime.cpp): library code that dereferences a device pointer faults there, as on a GPU.
#include <cstdio>

#include "emulated_runtime.hpp"

namespace {
[[maybe_unused]] const bool forbidden = [] {
  const bool ok = dd::cuda::emulation::forbid_host_access();
  if (!ok)
    std::fputs("emulated GPU: no memory protection keys here; host accesses to device memory unchecked\n", stderr);
  return ok;
}();
}  // namespace
