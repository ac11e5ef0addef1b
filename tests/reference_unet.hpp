#pragma once
// An independent double-precision U-Net written as plain loops: the reference the framework's
// float forward and tape gradients are checked against. It reads the parameters in the order
// the framework lays them out (PyTorch's module order) and replays the same dropout draws.
#include <cmath>
#include <vector>

#include <dd/ddunet.hpp>

namespace ddtest {

struct Map {  // n x c x h x w, double
  int n = 0, c = 0, h = 0, w = 0;
  std::vector<double> v;
  Map() = default;
  Map(int n_, int c_, int h_, int w_) : n(n_), c(c_), h(h_), w(w_), v(std::size_t(n_) * c_ * h_ * w_, 0.0) {}
  double& at(int a, int b, int y, int x) { return v[((std::size_t(a) * c + b) * h + y) * w + x]; }
  double at(int a, int b, int y, int x) const { return v[((std::size_t(a) * c + b) * h + y) * w + x]; }
};

class ReferenceUNet {
 public:
  ReferenceUNet(int depth, int base, int classes, float dropout) : depth_(depth), base_(base), classes_(classes), p_(dropout) {}

  // Mean cross-entropy of the network on x with the given parameters (double copies).
  double loss(const std::vector<double>& params, const Map& x, const std::vector<int>& labels, std::uint64_t seed) {
    logits_ = forward(params, x, seed);
    const Map& z = logits_;
    double total = 0;
    for (int b = 0; b < z.n; ++b)
      for (int y = 0; y < z.h; ++y)
        for (int xx = 0; xx < z.w; ++xx) {
          double mx = -1e300, s = 0;
          for (int c = 0; c < z.c; ++c) mx = std::max(mx, z.at(b, c, y, xx));
          for (int c = 0; c < z.c; ++c) s += std::exp(z.at(b, c, y, xx) - mx);
          const int k = labels[(std::size_t(b) * z.h + y) * z.w + xx];
          total -= z.at(b, k, y, xx) - mx - std::log(s);
        }
    return total / double(z.n * z.h * z.w);
  }
  const Map& logits() const { return logits_; }

 private:
  Map forward(const std::vector<double>& params, const Map& x, std::uint64_t seed) {
    at_ = 0;
    P_ = &params;
    rng_.reseed(seed);
    std::vector<Map> skips;
    Map h = double_conv(x, base_);
    for (int l = 1; l <= depth_; ++l) {
      skips.push_back(h);
      h = double_conv(pool(h), base_ << l);
    }
    for (int l = depth_ - 1; l >= 0; --l) {
      const Map up = upconv(h, base_ << l);
      Map cat(up.n, 2 * up.c, up.h, up.w);
      const Map& s = skips[std::size_t(l)];
      for (int b = 0; b < up.n; ++b)
        for (int c = 0; c < up.c; ++c)
          for (int y = 0; y < up.h; ++y)
            for (int xx = 0; xx < up.w; ++xx) {
              cat.at(b, c, y, xx) = s.at(b, c, y, xx);
              cat.at(b, up.c + c, y, xx) = up.at(b, c, y, xx);
            }
      h = double_conv(cat, base_ << l);
    }
    return conv(h, classes_, 1, true);
  }

  double next() { return (*P_)[at_++]; }

  Map conv(const Map& x, int out, int k, bool bias) {
    std::vector<double> w(std::size_t(out) * x.c * k * k);
    for (auto& v : w) v = next();
    std::vector<double> b(std::size_t(out), 0.0);
    if (bias)
      for (auto& v : b) v = next();
    Map y(x.n, out, x.h, x.w);
    const int r = k / 2;
    for (int n = 0; n < x.n; ++n)
      for (int o = 0; o < out; ++o)
        for (int yy = 0; yy < x.h; ++yy)
          for (int xx = 0; xx < x.w; ++xx) {
            double s = b[std::size_t(o)];
            for (int i = 0; i < x.c; ++i)
              for (int dy = 0; dy < k; ++dy)
                for (int dx = 0; dx < k; ++dx) {
                  const int iy = yy + dy - r, ix = xx + dx - r;
                  if (iy >= 0 && iy < x.h && ix >= 0 && ix < x.w)
                    s += w[((std::size_t(o) * x.c + i) * k + dy) * k + dx] * x.at(n, i, iy, ix);
                }
            y.at(n, o, yy, xx) = s;
          }
    return y;
  }
  Map batchnorm_relu_dropout(Map x) {
    std::vector<double> g(std::size_t(x.c)), be(std::size_t(x.c));
    for (auto& v : g) v = next();
    for (auto& v : be) v = next();
    const double m = double(x.n) * x.h * x.w;
    for (int c = 0; c < x.c; ++c) {
      double mean = 0, var = 0;
      for (int n = 0; n < x.n; ++n)
        for (int i = 0; i < x.h * x.w; ++i) mean += x.at(n, c, i / x.w, i % x.w);
      mean /= m;
      for (int n = 0; n < x.n; ++n)
        for (int i = 0; i < x.h * x.w; ++i) var += std::pow(x.at(n, c, i / x.w, i % x.w) - mean, 2);
      var /= m;
      for (int n = 0; n < x.n; ++n)
        for (int i = 0; i < x.h * x.w; ++i) {
          double& v = x.at(n, c, i / x.w, i % x.w);
          v = std::max(0.0, g[std::size_t(c)] * (v - mean) / std::sqrt(var + 1e-5) + be[std::size_t(c)]);
        }
    }
    if (p_ > 0)  // the framework draws one Bernoulli per (sample, channel), in this order
      for (int n = 0; n < x.n; ++n)
        for (int c = 0; c < x.c; ++c) {
          const double k = rng_.bernoulli(p_) ? 0.0 : 1.0 / (1.0 - double(p_));
          for (int i = 0; i < x.h * x.w; ++i) x.at(n, c, i / x.w, i % x.w) *= k;
        }
    return x;
  }
  Map double_conv(const Map& x, int out) {
    return batchnorm_relu_dropout(conv(batchnorm_relu_dropout(conv(x, out, 3, false)), out, 3, false));
  }
  Map pool(const Map& x) {
    Map y(x.n, x.c, x.h / 2, x.w / 2);
    for (int n = 0; n < x.n; ++n)
      for (int c = 0; c < x.c; ++c)
        for (int yy = 0; yy < y.h; ++yy)
          for (int xx = 0; xx < y.w; ++xx)
            y.at(n, c, yy, xx) = std::max(std::max(x.at(n, c, 2 * yy, 2 * xx), x.at(n, c, 2 * yy, 2 * xx + 1)),
                                          std::max(x.at(n, c, 2 * yy + 1, 2 * xx), x.at(n, c, 2 * yy + 1, 2 * xx + 1)));
    return y;
  }
  Map upconv(const Map& x, int out) {  // weight [in, out, 2, 2], then bias
    std::vector<double> w(std::size_t(x.c) * out * 4), b(static_cast<std::size_t>(out), 0.0);
    for (auto& v : w) v = next();
    for (auto& v : b) v = next();
    Map y(x.n, out, 2 * x.h, 2 * x.w);
    for (int n = 0; n < x.n; ++n)
      for (int o = 0; o < out; ++o)
        for (int yy = 0; yy < y.h; ++yy)
          for (int xx = 0; xx < y.w; ++xx) {
            double s = b[std::size_t(o)];
            for (int i = 0; i < x.c; ++i)
              s += w[((std::size_t(i) * out + o) * 2 + yy % 2) * 2 + xx % 2] * x.at(n, i, yy / 2, xx / 2);
            y.at(n, o, yy, xx) = s;
          }
    return y;
  }

  int depth_, base_, classes_;
  float p_;
  std::size_t at_ = 0;
  const std::vector<double>* P_ = nullptr;
  dd::Rng rng_;
  Map logits_;
};

}  // namespace ddtest
