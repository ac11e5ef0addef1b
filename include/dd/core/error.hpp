#pragma once
// Errors: one exception type whose message names the offending shape, file or argument.
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace dd {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dd

// Checks a runtime condition and throws dd::Error with a formatted message when it fails.
#define DD_CHECK(cond, ...)  \
  do {                       \
    if (!(cond)) [[unlikely]] \
      ::dd::fail(__VA_ARGS__); \
  } while (0)
