#pragma once
// Helpers of the MPI test programs: this rank's subimages of an image, and the relative difference
// of two tensors.
#include <algorithm>
#include <cmath>
#include <vector>

#include <dd/ddunet.hpp>

namespace dd::test {

// max |a - b| / max |b| (on the host).
inline double max_rel(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  DD_CHECK(x.size() == y.size(), "max_rel: {} values against {}", x.size(), y.size());
  double d = 0, m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) d = std::max(d, double(std::fabs(x[i] - y[i]))), m = std::max(m, double(std::fabs(y[i])));
  return d / std::max(m, 1e-30);
}

// The subimages of the clones this rank owns, as separate (contiguous, host) tensors.
template <class M>
std::vector<Tensor> my_tiles(const M& m, const Tensor& image) {
  const Grid g = m.grid_for(image.shape());
  const Tensor host = image.to(Device::cpu);
  std::vector<Tensor> out;
  for (const std::int64_t k : m.local_clones(g.count())) {
    const std::int64_t i = k / g.cols(), j = k % g.cols();
    out.push_back(host.tile(g.row_offset(i), g.heights()[std::size_t(i)], g.col_offset(j), g.widths()[std::size_t(j)]).clone());
  }
  return out;
}

}  // namespace dd::test
