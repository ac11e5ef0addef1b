#pragma once
// Differentiable cutting of a map into grid tiles and stitching tiles back in image order.
// The local exchange is built from these; other backends (MPI, NCCL) move the same tiles.
#include <vector>

#include "dd/decomposition/grid.hpp"
#include "dd/ops/concat.hpp"

namespace dd {

// Tiles in row-major grid order.
inline std::vector<Var> cut(const Var& x, const Grid& g) {
  DD_CHECK(x.shape().h == g.height() && x.shape().w == g.width(),
           "dd::cut: map {} does not match grid {} covering {}x{}", x.shape(), g.str(), g.height(), g.width());
  std::vector<Var> tiles;
  tiles.reserve(static_cast<std::size_t>(g.count()));
  for (std::int64_t i = 0; i < g.rows(); ++i) {
    const Var row = g.rows() == 1 ? x : slice(x, 2, g.row_offset(i), g.heights()[static_cast<std::size_t>(i)]);
    for (std::int64_t j = 0; j < g.cols(); ++j)
      tiles.push_back(g.cols() == 1 ? row : slice(row, 3, g.col_offset(j), g.widths()[static_cast<std::size_t>(j)]));
  }
  return tiles;
}

inline Var stitch(const std::vector<Var>& tiles, const Grid& g) {
  DD_CHECK(static_cast<std::int64_t>(tiles.size()) == g.count(), "dd::stitch: {} tiles for a {} grid", tiles.size(),
           g.str());
  std::vector<Var> rows;
  for (std::int64_t i = 0; i < g.rows(); ++i) {
    std::vector<Var> row(tiles.begin() + i * g.cols(), tiles.begin() + (i + 1) * g.cols());
    rows.push_back(row.size() == 1 ? row[0] : concat(row, 3));
  }
  return rows.size() == 1 ? rows[0] : concat(rows, 2);
}

}  // namespace dd
