#pragma once
// Element types of tensor memory. Parameters, optimizer state and everything host code reads are
// f32; bf16 and f16 exist for activations on the GPU in mixed precision (half the bytes: the
// memory that decides how large an image fits). Host copies of half tensors are widened to f32.
// No dd dependencies: the CUDA kernel declarations (compiled by nvcc too) include this header.
#include <cstdint>
#include <cstring>

namespace dd {

enum class DType : std::uint8_t { f32, bf16, f16 };

constexpr std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }
constexpr bool is_half(DType t) { return t != DType::f32; }
constexpr const char* dtype_name(DType t) { return t == DType::f32 ? "f32" : t == DType::bf16 ? "bf16" : "f16"; }
// The type of a result made of values of types a and b: theirs when they agree, else f32.
constexpr DType common_dtype(DType a, DType b) { return a == b ? a : DType::f32; }

// Host conversions, round to nearest even (as the GPU's __float2bfloat16_rn / __float2half_rn),
// NaN kept NaN, overflow to infinity.
namespace half_bits {

inline std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t to_bf16(float f) {
  const std::uint32_t u = bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t round = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + round) >> 16);
}
inline float from_bf16(std::uint16_t h) { return from_bits(static_cast<std::uint32_t>(h) << 16); }

inline std::uint16_t to_f16(float f) {
  const std::uint32_t u = bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504: infinity
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): a subnormal, in units of 2^-24, rounded to nearest even.
    if (a < 0x33000000u) return sign;  // below half of 2^-24: zero
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(a >> 23);  // 14..24 for a in [2^-25, 2^-14)
    const std::uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    const std::uint32_t r = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
  const std::uint32_t v = a - 0x38000000u;
  const std::uint32_t r = v + 0xfffu + ((v >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (r >> 13));
}
inline float from_f16(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return from_bits(sign | 0x7f800000u | (m << 13));  // infinity, NaN
  if (e != 0) return from_bits(sign | ((e + 112u) << 23) | (m << 13));
  // Subnormal (or zero): m * 2^-24, exact in float.
  const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

}  // namespace half_bits

}  // namespace dd
