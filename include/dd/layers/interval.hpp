#pragma once
// Receptive-field algebra. Every layer maps the interval of OUTPUT pixels (one axis) to the
// interval of INPUT pixels they depend on. Composing these maps along the network gives the exact
// input extent of any output pixel; pooling and up-sampling make it depend on the pixel's
// position modulo 2^D, so the receptive field we report is the extent every output pixel is
// guaranteed to see (the minimum over positions), which is what the paper's Table 4 lists.
#include <algorithm>
#include <cstdint>

namespace dd {

struct Interval {
  std::int64_t lo, hi;
  constexpr std::int64_t size() const { return hi - lo + 1; }
};

constexpr std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Smallest interval containing both (a union of overlapping dependency intervals).
constexpr Interval hull(Interval a, Interval b) { return {std::min(a.lo, b.lo), std::max(a.hi, b.hi)}; }

}  // namespace dd
