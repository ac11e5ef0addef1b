#pragma once
// NCHW shape of a 4-D tensor. Vectors and scalars use trailing ones (a bias is {C,1,1,1}).
#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace dd {

struct Shape {
  std::int64_t n = 0, c = 0, h = 0, w = 0;

  constexpr std::int64_t numel() const { return n * c * h * w; }
  constexpr std::int64_t plane() const { return h * w; }
  constexpr bool operator==(const Shape&) const = default;
  std::string str() const { return fmt::format("{}x{}x{}x{}", n, c, h, w); }
};

}  // namespace dd

template <>
struct fmt::formatter<dd::Shape> : fmt::formatter<std::string> {
  auto format(const dd::Shape& s, format_context& ctx) const {
    return fmt::formatter<std::string>::format(s.str(), ctx);
  }
};
