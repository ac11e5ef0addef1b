// The GPU test suite (and every program of the library) on the emulated GPU runs with device memory
// closed to the host outside device work (runtime.cpp): library code that dereferences a device
// pointer faults there, as on a GPU. And with deferred streams: work runs only when something waits
// for it, so a missing stream wait shows in the results.
#include <cstdio>

#include "emulated_runtime.hpp"

namespace {
[[maybe_unused]] const bool forbidden = [] {
  const bool ok = dd::cuda::emulation::forbid_host_access();
  if (!ok)
    std::fputs("emulated GPU: no memory protection keys here; host accesses to device memory unchecked\n", stderr);
  return ok;
}();
[[maybe_unused]] const bool deferred = dd::cuda::emulation::defer_streams();
}  // namespace
