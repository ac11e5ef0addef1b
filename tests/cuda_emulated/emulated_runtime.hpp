#pragma once
// Device memory of the emulated CUDA runtime (runtime.cpp): host memory with guard pages and bytes.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>

namespace dd::cuda::emulation {
void* device_alloc(std::size_t bytes);  // as cudaMalloc; the bytes start as 0xFF (NaN floats)
void device_free(void* p);
bool is_device_memory(const void* p);  // inside a live allocation
std::int64_t guard_violations();       // allocations whose guard bytes changed (also freed ones), bad frees
std::int64_t live_allocations();
// Times the host has waited for the "GPU" so far: stream, event and device synchronisations,
// synchronous copies, and copies a GPU would make the host wait for (into pageable host memory;
// from pageable host memory to the device, which the driver may stage by waiting for the stream).
std::int64_t host_waits();

// From now on device memory is inaccessible to the host outside device work: a host access faults
// with a message saying so (the GPU test suite runs this way; the kernel tests read device memory).
// False where the CPU or kernel has no memory protection keys (then nothing is checked).
bool forbid_host_access();
// Streams run their work in order. Eagerly by default (work runs when it is enqueued: the kernel
// tests read results right after a call). Deferred after defer_streams(): work waits in its stream's
// queue until the host waits for it (a stream, event or device synchronisation, a copy into pageable
// memory, cudaFree) or another stream is made to wait for it (cudaStreamWaitEvent, run when the
// waiting stream gets there). So a consumer on one stream that was never made to wait for its
// producer on another runs first and reads what was there before, as it may on a GPU, and a test
// that compares results sees it. DD_EMULATED_EAGER=1 in the environment keeps streams eager.
bool defer_streams();
bool streams_deferred();
// Enqueues work on stream s (null, cudaStreamLegacy, cudaStreamPerThread: the legacy stream, which
// runs work at once after all other streams' work). The work runs as device work (see below).
void enqueue(cudaStream_t s, std::function<void()> work);
// Work enqueued on any stream and not yet run (0 when streams are eager).
std::int64_t pending_work();

// Device work in scope (a launch, a copy, a cuDNN or NCCL call): device memory is accessible.
struct DeviceWork {
  DeviceWork();
  ~DeviceWork();
  DeviceWork(const DeviceWork&) = delete;
  DeviceWork& operator=(const DeviceWork&) = delete;
};
}  // namespace dd::cuda::emulation
