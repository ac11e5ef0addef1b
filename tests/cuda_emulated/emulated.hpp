#pragma once
// What the emulated-kernel tests share: device arrays of the emulated runtime, the element types
// (dd's own host conversions: an independent reference for the kernels' CUDA ones), a seeded RNG.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "dd/core/dtype.hpp"
#include "dd/kernels/cuda/kernels.hpp"
#include "emulated_runtime.hpp"

namespace dd::emulated_test {

namespace k = dd::cuda::kernels;
using namespace dd::half_bits;
using i64 = std::int64_t;
inline constexpr DType kTypes[] = {DType::f32, DType::bf16, DType::f16};

// A value as stored in type t and read back (the rounding a kernel's store does).
inline float round_to(float v, DType t) {
  if (t == DType::bf16) return from_bf16(to_bf16(v));
  if (t == DType::f16) return from_f16(to_f16(v));
  return v;
}

// n elements of type t in emulated device memory (guarded), read and written as floats.
class Array {
 public:
  Array(i64 n, DType t)
      : n_(n), t_(t), p_(cuda::emulation::device_alloc(static_cast<std::size_t>(n) * dtype_size(t))) {}
  Array(const std::vector<float>& v, DType t) : Array(static_cast<i64>(v.size()), t) { set(v); }
  ~Array() { cuda::emulation::device_free(p_); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  void* raw() const { return p_; }
  float* f() const { return static_cast<float*>(p_); }
  DType dtype() const { return t_; }
  i64 size() const { return n_; }
  float get(i64 i) const {
    if (t_ == DType::f32) return f()[i];
    std::uint16_t h;
    std::memcpy(&h, static_cast<const char*>(p_) + 2 * i, 2);
    return t_ == DType::bf16 ? from_bf16(h) : from_f16(h);
  }
  void put(i64 i, float v) {
    if (t_ == DType::f32) {
      f()[i] = v;
      return;
    }
    const std::uint16_t h = t_ == DType::bf16 ? to_bf16(v) : to_f16(v);
    std::memcpy(static_cast<char*>(p_) + 2 * i, &h, 2);
  }
  void set(const std::vector<float>& v) {
    for (i64 i = 0; i < n_; ++i) put(i, v[static_cast<std::size_t>(i)]);
  }
  std::vector<float> values() const {
    std::vector<float> v(static_cast<std::size_t>(n_));
    for (i64 i = 0; i < n_; ++i) v[static_cast<std::size_t>(i)] = get(i);
    return v;
  }

 private:
  i64 n_;
  DType t_;
  void* p_;
};

// Uniform values in [lo, hi), already representable in type t (so a kernel's load is exact).
inline std::vector<float> random_values(std::mt19937& rng, i64 n, float lo, float hi, DType t = DType::f32) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = round_to(u(rng), t);
  return v;
}

// Relative L-infinity distance, scaled by the reference's largest magnitude (at least `floor`);
// NaN if any element is NaN.
inline double max_rel_error(const std::vector<float>& got, const std::vector<double>& want, double floor = 1e-6) {
  REQUIRE(got.size() == want.size());
  double scale = floor, worst = 0.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(got[i] - want[i]);
    if (!(e <= worst)) worst = e;  // NaN (an element never written) wins and fails every bound
  }
  return worst / scale;
}

// Every case ends with all emulated allocations freed and no guard byte touched.
struct GuardCheck {
  std::int64_t live = cuda::emulation::live_allocations();
  ~GuardCheck() {
    CHECK(cuda::emulation::guard_violations() == 0);
    CHECK(cuda::emulation::live_allocations() == live);
  }
};

}  // namespace dd::emulated_test
