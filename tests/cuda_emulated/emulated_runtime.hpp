#pragma once
// Device memory of the emulated CUDA runtime (runtime.cpp): host memory with guard pages and bytes.
#include <cstddef>
#include <cstdint>

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
// Device work in scope (a launch, a copy, a cuDNN or NCCL call): device memory is accessible.
struct DeviceWork {
  DeviceWork();
  ~DeviceWork();
  DeviceWork(const DeviceWork&) = delete;
  DeviceWork& operator=(const DeviceWork&) = delete;
};
}  // namespace dd::cuda::emulation
