#pragma once
// Seeded generator (xoshiro256** seeded through splitmix64). Written out rather than taken from
// <random> because the standard distributions differ between library implementations, and we
// promise the same weights for the same seed everywhere.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dd {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& s : s_) s = splitmix(x);
    has_spare_ = false;
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 24 random bits, exactly representable in float.
  float uniform() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }
  // Uniform integer in [lo, hi] (inclusive).
  std::int64_t uniform_int(std::int64_t lo, std::int64_t hi) {
    const auto span = static_cast<std::uint64_t>(hi - lo + 1);
    return lo + static_cast<std::int64_t>(next() % span);
  }
  bool bernoulli(float p) { return uniform() < p; }

  // Standard normal by Box-Muller, in double so results do not depend on float contraction.
  float normal() {
    if (has_spare_) {
      has_spare_ = false;
      return static_cast<float>(spare_);
    }
    double u1 = 0;
    do u1 = static_cast<double>(next() >> 11) * 0x1.0p-53; while (u1 <= 0.0);
    const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return static_cast<float>(r * std::cos(2.0 * M_PI * u2));
  }

  // The whole generator state as text (for checkpoints), and back.
  std::string state() const {
    std::string out;
    for (auto v : s_) out += std::to_string(v) + " ";
    std::uint64_t bits;
    std::memcpy(&bits, &spare_, sizeof bits);
    return out + std::to_string(bits) + " " + (has_spare_ ? "1" : "0");
  }
  void set_state(const std::string& text) {
    std::istringstream in(text);
    std::uint64_t v[6];
    for (auto& x : v)
      if (!(in >> x)) throw std::invalid_argument("dd::Rng: malformed generator state '" + text + "'");
    for (int i = 0; i < 4; ++i) s_[i] = v[i];
    std::memcpy(&spare_, &v[4], sizeof spare_);
    has_spare_ = v[5] != 0;
  }

  // A new independent stream, e.g. one per clone or per worker.
  Rng fork(std::uint64_t stream) {
    return Rng(next() ^ (0x9E3779B97F4A7C15ull * (stream + 1)));
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t s_[4]{};
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace dd
