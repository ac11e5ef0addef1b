#pragma once
// A small trivially copyable value kept in the memory of a device (a step counter, a loss scale):
// GPU kernels read and update it where it lives, so the host need not wait for the GPU between
// steps; read() brings it back (on the GPU that waits for the work before it).
#include <cstring>
#include <type_traits>

#include "dd/core/tensor.hpp"

namespace dd {

template <class T>
class DeviceValue {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % sizeof(float) == 0);

 public:
  DeviceValue(const T& v, Device d)
      : mem_(Tensor::empty({1, 1, 1, static_cast<std::int64_t>(sizeof(T) / sizeof(float))}, d)) {
    write(v);
  }

  Device device() const { return mem_.device(); }
  T* get() const { return static_cast<T*>(mem_.raw()); }
  // The memory as floats (for views of a float member).
  const Tensor& memory() const { return mem_; }

  T read() const {
    T v{};
    if (device() == Device::cpu) {
      std::memcpy(&v, mem_.raw(), sizeof(T));
    } else {
#if DD_WITH_CUDA
      cuda::copy_to_host(&v, mem_.raw(), sizeof(T));
#else
      detail::no_cuda();
#endif
    }
    return v;
  }
  // Ordered after the work already enqueued on the device; the host does not wait.
  void write(const T& v) {
    if (device() == Device::cpu) {
      std::memcpy(mem_.raw(), &v, sizeof(T));
    } else {
#if DD_WITH_CUDA
      cuda::copy_to_device(mem_.raw(), &v, sizeof(T));
#else
      detail::no_cuda();
#endif
    }
  }

 private:
  Tensor mem_;
};

}  // namespace dd
