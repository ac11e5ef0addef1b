#pragma once
// Scaffolding for tests that write files: a temporary directory removed with its contents, and the
// message of the dd::Error a call throws.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

#include "dd/core/error.hpp"

namespace ddtest {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  std::filesystem::path dir;
  explicit TempDir(const std::string& prefix) {
    static std::atomic<int> counter{0};
    const auto tick = std::chrono::steady_clock::now().time_since_epoch().count();
    dir = std::filesystem::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(counter++) + "_" + std::to_string(tick));
    std::filesystem::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  std::size_t entries() const {
    return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(dir), {}));
  }
};

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dd::Error& e) {
    return e.what();
  }
  return "<no dd::Error thrown>";
}
inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace ddtest
