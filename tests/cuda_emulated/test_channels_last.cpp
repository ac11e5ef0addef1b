// The channels-last batch-norm kernels of src/cuda/channels_last.cu, run by the emulator, against
// batch norm written out in double: statistics in one pass, the conv block's fused ReLU-dropout
// tail forward and taken back out in the backward, bias gradient and bias, every element type, and
// channel counts that give every block shape (c divides 256, does not, c >= 256 up to 1024).
#include <array>
#include <cmath>

#include "dd/kernels/cpu/batchnorm.hpp"
#include "emulated.hpp"

namespace dd::emulated_test {
namespace {

struct Problem {
  i64 n, plane, c;
  i64 rows() const { return n * plane; }
  i64 total() const { return n * plane * c; }
};

// Half types: the kernel rounds its float result once; the reference is exact, so allow a few
// units in the last place of the type relative to the largest value (f32: float arithmetic).
double tolerance(DType t) {
  return t == DType::bf16 ? 1.0 / 256 : t == DType::f16 ? 1.0 / 2048 : 2e-5;
}

struct Stats {
  std::vector<double> mean, var;
};
Stats statistics(const std::vector<float>& x, i64 rows, i64 c) {
  Stats s{std::vector<double>(c, 0.0), std::vector<double>(c, 0.0)};
  for (i64 r = 0; r < rows; ++r)
    for (i64 ch = 0; ch < c; ++ch) s.mean[ch] += x[r * c + ch];
  for (auto& m : s.mean) m /= static_cast<double>(rows);
  for (i64 r = 0; r < rows; ++r)
    for (i64 ch = 0; ch < c; ++ch) s.var[ch] += std::pow(x[r * c + ch] - s.mean[ch], 2);
  for (auto& v : s.var) v /= static_cast<double>(rows);
  return s;
}

std::vector<double> as_double(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

}  // namespace

TEST_CASE("emulated kernels: channels-last batch norm, training and eval, with and without the ReLU-dropout tail") {
  GuardCheck guard;
  std::mt19937 rng(21);
  const float eps = 1e-5f, momentum = 0.1f;
  for (const Problem p :
       {Problem{2, 50, 1}, Problem{3, 37, 3}, Problem{2, 300, 16}, Problem{1, 40, 300}, Problem{2, 9, 1024}})
    for (const DType t : kTypes)
      for (const int tail : {0, 1, 2}) {  // none, ReLU, ReLU and dropout factors
        INFO("n ", p.n, " plane ", p.plane, " c ", p.c, " type ", dtype_name(t), " tail ", tail);
        const i64 c = p.c, rows = p.rows(), total = p.total();
        // an offset mean per channel, as activations have (the one-pass sums must not cancel it away)
        auto xv = random_values(rng, total, -2.0f, 2.0f);
        for (i64 i = 0; i < total; ++i) xv[i] = round_to(xv[i] + 0.5f * static_cast<float>(i % c % 5), t);
        Array x(xv, t), y(total, t), mean(c, DType::f32), invstd(c, DType::f32);
        Array gamma(random_values(rng, c, 0.5f, 1.5f), DType::f32),
            beta(random_values(rng, c, -0.5f, 0.5f), DType::f32);
        const auto rm0 = random_values(rng, c, -1.0f, 1.0f), rv0 = random_values(rng, c, 0.5f, 2.0f);
        Array rmean(rm0, DType::f32), rvar(rv0, DType::f32);
        Array factors(random_values(rng, p.n * c, 0.0f, 2.0f), DType::f32);
        k::ReluTail relu_tail{tail > 0, tail == 2 ? factors.f() : nullptr, p.plane};
        k::batchnorm_nhwc_forward_train(x.raw(), gamma.f(), beta.f(), rows, c, eps, momentum, y.raw(), mean.f(),
                                        invstd.f(), rmean.f(), rvar.f(), relu_tail, t, nullptr);

        const Stats s = statistics(x.values(), rows, c);
        std::vector<double> want_invstd(c), want_rm(c), want_rv(c), want_y(total);
        for (i64 ch = 0; ch < c; ++ch) {
          want_invstd[ch] = 1.0 / std::sqrt(s.var[ch] + eps);
          want_rm[ch] = (1 - momentum) * rm0[ch] + momentum * s.mean[ch];
          const double unbiased = rows > 1 ? s.var[ch] * rows / (rows - 1) : s.var[ch];
          want_rv[ch] = (1 - momentum) * rv0[ch] + momentum * unbiased;
        }
        const auto g = gamma.values(), b = beta.values(), kf = factors.values();
        const auto forward = [&](const std::vector<double>& m, const std::vector<double>& is) {
          for (i64 i = 0; i < total; ++i) {
            const i64 ch = i % c;
            double v = (xv[i] - m[ch]) * is[ch] * g[ch] + b[ch];
            if (tail > 0) v = std::max(v, 0.0);
            if (tail == 2) v *= kf[(i / (p.plane * c)) * c + ch];
            want_y[i] = v;
          }
        };
        forward(s.mean, want_invstd);
        CHECK(max_rel_error(mean.values(), s.mean) < 1e-6);
        CHECK(max_rel_error(invstd.values(), want_invstd) < 1e-6);
        CHECK(max_rel_error(rmean.values(), want_rm) < 1e-6);
        CHECK(max_rel_error(rvar.values(), want_rv) < 1e-6);
        CHECK(max_rel_error(y.values(), want_y) < tolerance(t));

        // eval: the given statistics (here the running ones, turned into invstd)
        std::vector<float> is_run(c);
        for (i64 ch = 0; ch < c; ++ch) is_run[ch] = static_cast<float>(1.0 / std::sqrt(rv0[ch] + eps));
        Array run_invstd(is_run, DType::f32), rm_in(rm0, DType::f32);
        k::batchnorm_nhwc_forward_eval(x.raw(), gamma.f(), beta.f(), rm_in.f(), run_invstd.f(), rows, c, y.raw(),
                                       relu_tail, t, nullptr);
        forward(as_double(rm0), as_double(is_run));
        CHECK(max_rel_error(y.values(), want_y) < tolerance(t));
      }
}

TEST_CASE("emulated kernels: channels-last batch norm backward, the tail taken back out, bias gradient and bias") {
  GuardCheck guard;
  std::mt19937 rng(22);
  for (const Problem p :
       {Problem{2, 50, 1}, Problem{3, 37, 3}, Problem{2, 300, 16}, Problem{1, 40, 300}, Problem{2, 9, 1024}})
    for (const DType t : kTypes)
      for (const int tail : {0, 1, 2})
        for (const bool batch_stats : {true, false}) {
          INFO("n ", p.n, " plane ", p.plane, " c ", p.c, " type ", dtype_name(t), " tail ", tail, " batch stats ",
               batch_stats);
          const i64 c = p.c, rows = p.rows(), total = p.total();
          const auto xv = random_values(rng, total, -2.0f, 2.0f, t);
          const auto dyv = random_values(rng, total, -1.0f, 1.0f, t);
          // the forward's output: its sign decides where the ReLU let the gradient through
          const auto yv = random_values(rng, total, -1.0f, 1.0f, t);
          Array x(xv, t), dy(dyv, t), y(yv, t), dx(total, t);
          const auto mv = random_values(rng, c, -0.3f, 0.3f), isv = random_values(rng, c, 0.5f, 2.0f);
          const auto gv = random_values(rng, c, 0.5f, 1.5f);
          Array mean(mv, DType::f32), invstd(isv, DType::f32), gamma(gv, DType::f32);
          const auto dg0 = random_values(rng, c, -1.0f, 1.0f), db0 = random_values(rng, c, -1.0f, 1.0f);
          Array dgamma(dg0, DType::f32), dbeta(db0, DType::f32);
          Array factors(random_values(rng, p.n * c, 0.0f, 2.0f), DType::f32);
          const auto kf = factors.values();
          k::ReluTail relu_tail{tail > 0, tail == 2 ? factors.f() : nullptr, p.plane, y.raw()};
          k::batchnorm_nhwc_backward(x.raw(), dy.raw(), gamma.f(), mean.f(), invstd.f(), rows, c, batch_stats, dx.raw(),
                                     dgamma.f(), dbeta.f(), relu_tail, t, nullptr);

          // what reaches batch norm: dy through the ReLU and the dropout factors
          std::vector<double> d(total), sum_d(c, 0.0), sum_dx(c, 0.0);
          for (i64 i = 0; i < total; ++i) {
            const i64 ch = i % c;
            d[i] = dyv[i];
            if (tail > 0) d[i] = yv[i] > 0 ? d[i] : 0.0;
            if (tail == 2) d[i] *= kf[(i / (p.plane * c)) * c + ch];
            sum_d[ch] += d[i];
            sum_dx[ch] += d[i] * (xv[i] - mv[ch]) * isv[ch];
          }
          std::vector<double> want_dx(total), want_dg(c), want_db(c);
          for (i64 i = 0; i < total; ++i) {
            const i64 ch = i % c;
            const double xhat = (xv[i] - mv[ch]) * isv[ch];
            want_dx[i] = batch_stats ? gv[ch] * isv[ch] * (d[i] - sum_d[ch] / rows - xhat * sum_dx[ch] / rows)
                                     : gv[ch] * isv[ch] * d[i];
          }
          for (i64 ch = 0; ch < c; ++ch) want_dg[ch] = dg0[ch] + sum_dx[ch], want_db[ch] = db0[ch] + sum_d[ch];
          CHECK(max_rel_error(dx.values(), want_dx) < tolerance(t));
          CHECK(max_rel_error(dgamma.values(), want_dg) < 1e-5);
          CHECK(max_rel_error(dbeta.values(), want_db) < 1e-5);

          if (tail != 0 || batch_stats) continue;
          // bias gradient (accumulated) and bias, on the same arrays
          const auto b0 = random_values(rng, c, -1.0f, 1.0f);
          Array db(b0, DType::f32);
          k::bias_grad_nhwc(dy.raw(), rows, c, db.f(), t, nullptr);
          std::vector<double> want_b(b0.begin(), b0.end());
          for (i64 i = 0; i < total; ++i) want_b[i % c] += dyv[i];
          CHECK(max_rel_error(db.values(), want_b) < 1e-5);
          k::add_bias_nhwc(db.f(), rows, c, x.raw(), t, nullptr);
          const auto bv = db.values();
          std::vector<double> want_x(total);
          for (i64 i = 0; i < total; ++i) want_x[i] = static_cast<double>(xv[i]) + bv[i % c];
          CHECK(max_rel_error(x.values(), want_x) < tolerance(t));
          // bias and ReLU in one pass (a folded batch norm's epilogue); NaN gives 0, as dd::relu
          std::vector<float> zv0 = xv;
          if (t == DType::f32) zv0[0] = std::nanf("");
          Array z(zv0, t);
          k::add_bias_nhwc(db.f(), rows, c, z.raw(), t, nullptr, true);
          for (i64 i = 0; i < total; ++i) want_x[i] = std::max(want_x[i], 0.0);
          if (t == DType::f32) want_x[0] = 0.0;
          const auto zv = z.values();
          CHECK(max_rel_error(zv, want_x) < tolerance(t));
          if (t == DType::f32) CHECK(zv[0] == 0.0f);
        }
}

TEST_CASE("emulated kernels: a batch norm folded into the convolution before it, as the CPU folds it") {
  GuardCheck guard;
  std::mt19937 rng(23);
  for (const i64 per_output : {1, 9, 25 * 3})
    for (const bool bias : {false, true}) {
      INFO("per output ", per_output, " bias ", bias);
      const i64 c = 7, n = c * per_output;
      const auto wv = random_values(rng, n, -1.0f, 1.0f), bv = random_values(rng, c, -1.0f, 1.0f);
      const auto gv = random_values(rng, c, 0.5f, 1.5f), bev = random_values(rng, c, -1.0f, 1.0f);
      const auto mv = random_values(rng, c, -0.5f, 0.5f), vv = random_values(rng, c, 0.1f, 2.0f);
      Array w(wv, DType::f32), b(bv, DType::f32), g(gv, DType::f32), be(bev, DType::f32), m(mv, DType::f32),
          v(vv, DType::f32), w_out(n, DType::f32), b_out(c, DType::f32);
      k::fold_batchnorm(w.f(), bias ? b.f() : nullptr, g.f(), be.f(), m.f(), v.f(), c, per_output, 1e-5f, w_out.f(),
                        b_out.f(), nullptr);
      std::vector<float> want_w(n), want_b(c);
      cpu::fold_batchnorm(wv.data(), bias ? bv.data() : nullptr, gv.data(), bev.data(), mv.data(), vv.data(), c,
                          per_output, 1e-5f, want_w.data(), want_b.data());
      // The same float operations; the host compiler may fuse a multiply-add (one rounding fewer).
      CHECK(max_rel_error(w_out.values(), as_double(want_w)) < 1e-6);
      CHECK(max_rel_error(b_out.values(), as_double(want_b)) < 1e-6);
      // and against the definition, in double
      std::vector<double> exact_w(n), exact_b(c);
      for (i64 k = 0; k < c; ++k) {
        const double scale = gv[k] / std::sqrt(double(vv[k]) + 1e-5);
        for (i64 i = k * per_output; i < (k + 1) * per_output; ++i) exact_w[i] = wv[i] * scale;
        exact_b[k] = (bias ? bv[k] * scale : 0.0) + bev[k] - mv[k] * scale;
      }
      CHECK(max_rel_error(w_out.values(), exact_w) < 1e-6);
      CHECK(max_rel_error(b_out.values(), exact_b) < 1e-5);
    }
}

}  // namespace dd::emulated_test
