#pragma once
// The subimage grid: row heights and column widths in pixels. Tiles may differ in size as long
// as each stays a multiple of the network's down-sampling factor.
#include <numeric>
#include <vector>

#include "dd/core/error.hpp"
#include "dd/core/shape.hpp"

namespace dd {

struct GridSpec {
  std::int64_t rows = 1, cols = 1;
};

class Grid {
 public:
  Grid() = default;
  Grid(std::vector<std::int64_t> heights, std::vector<std::int64_t> widths)
      : heights_(std::move(heights)), widths_(std::move(widths)) {
    DD_CHECK(!heights_.empty() && !widths_.empty(), "dd::Grid: a grid needs at least one row and one column");
  }

  // Splits an h x w image into spec.rows x spec.cols tiles whose sides are multiples of
  // `multiple` (2^Depth), as equal as possible; the first rows/columns get any extra.
  static Grid split(std::int64_t h, std::int64_t w, GridSpec spec, std::int64_t multiple) {
    DD_CHECK(spec.rows > 0 && spec.cols > 0, "dd::Grid: grid {}x{} must have positive sides", spec.rows, spec.cols);
    return Grid(split_axis(h, spec.rows, multiple, "height", spec, h, w),
                split_axis(w, spec.cols, multiple, "width", spec, h, w));
  }

  std::int64_t rows() const { return static_cast<std::int64_t>(heights_.size()); }
  std::int64_t cols() const { return static_cast<std::int64_t>(widths_.size()); }
  std::int64_t count() const { return rows() * cols(); }
  std::int64_t height() const { return std::accumulate(heights_.begin(), heights_.end(), std::int64_t{0}); }
  std::int64_t width() const { return std::accumulate(widths_.begin(), widths_.end(), std::int64_t{0}); }
  const std::vector<std::int64_t>& heights() const { return heights_; }
  const std::vector<std::int64_t>& widths() const { return widths_; }
  std::int64_t row_offset(std::int64_t i) const { return std::accumulate(heights_.begin(), heights_.begin() + i, std::int64_t{0}); }
  std::int64_t col_offset(std::int64_t j) const { return std::accumulate(widths_.begin(), widths_.begin() + j, std::int64_t{0}); }

  // The same grid with every side divided by f (the bottleneck grid for f = 2^Depth).
  Grid coarsened(std::int64_t f) const {
    auto div = [f](std::vector<std::int64_t> v) {
      for (auto& x : v) x /= f;
      return v;
    };
    return Grid(div(heights_), div(widths_));
  }

  std::string str() const { return fmt::format("{}x{}", rows(), cols()); }

 private:
  static std::vector<std::int64_t> split_axis(std::int64_t size, std::int64_t parts, std::int64_t multiple,
                                              const char* what, GridSpec spec, std::int64_t h, std::int64_t w) {
    DD_CHECK(size % multiple == 0,
             "subimage grid {}x{} does not fit image {}x{} (HxW): {} {} is not a multiple of {} (the network "
             "down-samples by {})",
             spec.rows, spec.cols, h, w, what, size, multiple, multiple);
    const std::int64_t units = size / multiple;
    DD_CHECK(units >= parts,
             "subimage grid {}x{} does not fit image {}x{} (HxW): {} {} gives fewer than {} tiles of at least {} "
             "pixels",
             spec.rows, spec.cols, h, w, what, size, parts, multiple);
    std::vector<std::int64_t> out(static_cast<std::size_t>(parts), (units / parts) * multiple);
    for (std::int64_t i = 0; i < units % parts; ++i) out[static_cast<std::size_t>(i)] += multiple;
    return out;
  }

  std::vector<std::int64_t> heights_, widths_;
};

}  // namespace dd
