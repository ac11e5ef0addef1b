#pragma once
// Central finite differences against the tape's gradients. The loss for the differences is
// computed in double from float outputs, so rounding noise stays far below the tolerance.
#include <algorithm>
#include <cmath>
#include <dd/ddunet.hpp>
#include <functional>
#include <vector>

namespace ddtest {

// || fd - analytic || / max(|| fd ||, || analytic ||) over the given coordinates.
inline double fd_relative_error(const std::function<double()>& loss, const std::vector<float*>& coords,
                                const std::vector<float>& analytic, float eps) {
  double diff = 0, nf = 0, na = 0;
  for (std::size_t i = 0; i < coords.size(); ++i) {
    float* p = coords[i];
    const float saved = *p;
    *p = saved + eps;
    const double up = loss();
    *p = saved - eps;
    const double down = loss();
    *p = saved;
    const double fd = (up - down) / (2.0 * static_cast<double>(eps));
    diff += (fd - analytic[i]) * (fd - analytic[i]);
    nf += fd * fd;
    na += double(analytic[i]) * analytic[i];
  }
  return std::sqrt(diff) / std::max({std::sqrt(nf), std::sqrt(na), 1e-12});
}

// Up to `count` coordinates of t, spread evenly over it.
inline std::vector<std::int64_t> spread(std::int64_t numel, std::int64_t count) {
  std::vector<std::int64_t> idx;
  const std::int64_t n = std::min(numel, count);
  for (std::int64_t i = 0; i < n; ++i) idx.push_back(i * numel / n);
  return idx;
}

// max |a[i] - b[i]| over two results of the same size.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst;
}
// max |a[i]|
inline double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (const float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

inline double dot(const dd::Tensor& a, const dd::Tensor& b) {
  double s = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) s += double(a.data()[i]) * b.data()[i];
  return s;
}

// Checks op(inputs) against finite differences for every input, with the scalar head
// L = sum(R * op(inputs)) for a fixed random R. Returns the worst relative error.
inline double check_op(const std::function<dd::Var(const std::vector<dd::Var>&)>& op, std::vector<dd::Tensor> inputs,
                       float eps = 1e-2f, std::int64_t coords_per_input = 150) {
  std::vector<dd::Var> vars;
  for (auto& t : inputs) vars.emplace_back(t, true);
  const dd::Var y = op(vars);
  const dd::Tensor R = dd::Tensor::randn(y.shape(), 99);
  dd::weighted_sum(y, R).backward();

  auto loss = [&] {
    dd::NoGrad ng;
    std::vector<dd::Var> plain;
    for (auto& t : inputs) plain.emplace_back(t, false);
    return dot(op(plain).value().contiguous(), R);
  };
  double worst = 0;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!vars[k].grad().defined()) return 1.0;  // no gradient reached an input: fail loudly
    std::vector<float*> coords;
    std::vector<float> analytic;
    for (auto i : spread(inputs[k].numel(), coords_per_input)) {
      coords.push_back(inputs[k].data() + i);
      analytic.push_back(vars[k].grad().data()[i]);
    }
    worst = std::max(worst, fd_relative_error(loss, coords, analytic, eps));
  }
  return worst;
}

}  // namespace ddtest
