// Tests of the backward normalization operators (include/prenorm/ops/):
// layer_norm_backward, rms_norm_backward, crms_norm_backward, and the
// thread-count determinism of every normalization kernel. The forward passes
// are in ops_norm_test.cpp.
//
// The backward passes are held against explicit-loop long double references
// (typed over float and double, fixed and dynamic widths) and against central
// finite differences of loss = sum(dy * y) in double.

#include <gtest/gtest.h>

#include <prenorm/ops.hpp>

#include "support/ops_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace prenorm_test;  // tests/support/ops_test_util.hpp
using prenorm::GradWrite;
using prenorm::LayerNormSaved;
using prenorm::RmsNormSaved;

// ---------------------------------------------------------------------------
// Helpers (the ones shared with ops_norm_test.cpp are in
// tests/support/ops_test_util.hpp)
// ---------------------------------------------------------------------------

// N(center, spread^2) for every coefficient.
template <class M>
void fill_normal(M& m, std::mt19937_64& rng, double center = 0.0, double spread = 1.0) {
  std::normal_distribution<double> normal(center, spread);
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) m(r, c) = static_cast<typename M::Scalar>(normal(rng));
}

template <class A>
LD max_abs(const Eigen::MatrixBase<A>& a) {
  LD m = 0;
  for (Index r = 0; r < a.rows(); ++r)
    for (Index c = 0; c < a.cols(); ++c) m = std::max(m, std::fabs(static_cast<LD>(a(r, c))));
  return m;
}

// The tolerances here (tolerance<Scalar>(d), in tests/support/ops_test_util.hpp)
// are relative to the largest magnitude of the expected values: a few ulps,
// growing like sqrt(d) (float: 3e-5 at d = 768, double: 6e-14).

// |actual - expected| <= tol * max(1, max |expected|).
#define EXPECT_CLOSE_SCALED(actual, expected, tol)                                             \
  do {                                                                                         \
    const LD scale_ = std::max(LD(1), max_abs(expected));                                      \
    const LD err_ = max_abs_diff((actual), (expected));                                        \
    EXPECT_LE(err_, (tol) * scale_)                                                            \
        << "max |" #actual " - " #expected "| = " << double(err_) << " > tolerance "           \
        << double((tol) * scale_) << " (d = " << d << ", max |expected| = " << double(scale_)  \
        << ")";                                                                                \
  } while (0)

// |actual - expected| <= tol * scale, scale given: for dx, the conditioning of
// the problem, max_r rstd_r * max |dy * gamma| (a row with a small variance or a
// width of 1 or 2 has a large rstd, and dx then cancels to much less than that).
#define EXPECT_CLOSE_WITH_SCALE(actual, expected, tol, scale)                                \
  do {                                                                                       \
    const LD scale_ = std::max({LD(1), max_abs(expected), LD(scale)});                        \
    const LD err_ = max_abs_diff((actual), (expected));                                      \
    EXPECT_LE(err_, (tol) * scale_)                                                          \
        << "max |" #actual " - " #expected "| = " << double(err_) << " > tolerance "         \
        << double((tol) * scale_) << " (d = " << d << ", scale = " << double(scale_) << ")"; \
  } while (0)

// max_r inv_r * max |dy * gamma|: the scale of dx for a norm whose rows have
// 1/rms (or 1/std) inv_r.
template <class DY, class G, class Inv>
LD dx_scale(const DY& dy, const G* gamma, const Inv& inv) {
  LD g = 0;
  for (Index r = 0; r < dy.rows(); ++r)
    for (Index c = 0; c < dy.cols(); ++c)
      g = std::max(g, std::fabs(LD(dy(r, c)) * (gamma ? LD((*gamma)[c]) : LD(1))));
  LD m = 0;
  for (Index r = 0; r < inv.size(); ++r) m = std::max(m, LD(inv[r]));
  return m * g;
}

// ---------------------------------------------------------------------------
// Long double references: explicit loops. With xhat_i = (x_i - mean) * rstd,
// d xhat_i / d x_j = rstd * (delta_ij - 1/d - xhat_i xhat_j / d) for LayerNorm
// and rrms * (delta_ij - xhat_i xhat_j / d) for RMSNorm (xhat = x * rrms);
// dx_j = sum_i dy_i gamma_i d xhat_i / d x_j. CRMSNorm goes through the
// chain rule of decompress.
// ---------------------------------------------------------------------------

struct Grads {
  RowMatrix<LD> dx;
  Vector<LD> dgamma, dbeta;
};

Grads ref_layer_norm_backward(const RowMatrix<LD>& dy, const RowMatrix<LD>& x,
                              const Vector<LD>* gamma, LD eps) {
  const Index rows = x.rows(), d = x.cols();
  Grads out{RowMatrix<LD>(rows, d), Vector<LD>::Zero(d), Vector<LD>::Zero(d)};
  std::vector<LD> xhat(static_cast<size_t>(d)), g(static_cast<size_t>(d));
  for (Index r = 0; r < rows; ++r) {
    LD sum = 0;
    for (Index i = 0; i < d; ++i) sum += x(r, i);
    const LD mean = sum / d;
    LD sq = 0;
    for (Index i = 0; i < d; ++i) sq += (x(r, i) - mean) * (x(r, i) - mean);
    const LD rstd = 1 / std::sqrt(sq / d + eps);
    LD g_sum = 0, g_xhat_sum = 0;
    for (Index i = 0; i < d; ++i) {
      xhat[i] = (x(r, i) - mean) * rstd;
      g[i] = dy(r, i) * (gamma ? (*gamma)[i] : LD(1));
      g_sum += g[i];
      g_xhat_sum += g[i] * xhat[i];
      out.dgamma[i] += dy(r, i) * xhat[i];
      out.dbeta[i] += dy(r, i);
    }
    for (Index j = 0; j < d; ++j)
      out.dx(r, j) = rstd * (g[j] - g_sum / d - xhat[j] * g_xhat_sum / d);
  }
  return out;
}

Grads ref_rms_norm_backward(const RowMatrix<LD>& dy, const RowMatrix<LD>& x,
                            const Vector<LD>* gamma, LD eps) {
  const Index rows = x.rows(), d = x.cols();
  Grads out{RowMatrix<LD>(rows, d), Vector<LD>::Zero(d), Vector<LD>::Zero(d)};
  for (Index r = 0; r < rows; ++r) {
    LD sq = 0;
    for (Index i = 0; i < d; ++i) sq += x(r, i) * x(r, i);
    const LD rrms = 1 / std::sqrt(sq / d + eps);
    LD g_xhat_sum = 0;
    for (Index i = 0; i < d; ++i) {
      const LD xhat = x(r, i) * rrms;
      g_xhat_sum += dy(r, i) * (gamma ? (*gamma)[i] : LD(1)) * xhat;
      out.dgamma[i] += dy(r, i) * xhat;
    }
    for (Index j = 0; j < d; ++j)
      out.dx(r, j) =
          rrms * (dy(r, j) * (gamma ? (*gamma)[j] : LD(1)) - x(r, j) * rrms * g_xhat_sum / d);
  }
  return out;
}

// y~ = first d-1 coordinates of RMSNorm(decompress(x~)), decompress(x~) =
// [x~, -1'x~]. So with dy_full = [dy~, 0] and dfull = RMSNorm backward:
// dx~_j = dfull_j - dfull_{d-1}.
RowMatrix<LD> ref_crms_norm_backward(const RowMatrix<LD>& dy, const RowMatrix<LD>& xc, LD eps) {
  const Index rows = xc.rows(), n = xc.cols();
  RowMatrix<LD> full(rows, n + 1), dy_full = RowMatrix<LD>::Zero(rows, n + 1);
  for (Index r = 0; r < rows; ++r) {
    LD s = 0;
    for (Index i = 0; i < n; ++i) {
      full(r, i) = xc(r, i);
      dy_full(r, i) = dy(r, i);
      s += xc(r, i);
    }
    full(r, n) = -s;
  }
  const RowMatrix<LD> dfull = ref_rms_norm_backward(dy_full, full, nullptr, eps).dx;
  RowMatrix<LD> dx(rows, n);
  for (Index r = 0; r < rows; ++r)
    for (Index j = 0; j < n; ++j) dx(r, j) = dfull(r, j) - dfull(r, n);
  return dx;
}

// ---------------------------------------------------------------------------
// Typed fixture: Scalar x width (Dynamic: every width, plus width 1), from
// tests/support/ops_test_util.hpp.
// ---------------------------------------------------------------------------

template <class C>
class OpsNormBackward : public NormFixture<C, 0xbac4> {};

TYPED_TEST_SUITE(OpsNormBackward, Configs, ConfigNames);

// ---------------------------------------------------------------------------
// Against the references
// ---------------------------------------------------------------------------

TYPED_TEST(OpsNormBackward, LayerNormMatchesReference) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d), dy = make<Mat>(rows, d), y = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    fill_normal(dy, this->rng);
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_normal(gamma, this->rng, 1.0, 0.3);
    fill_normal(beta, this->rng, 0.0, 0.3);
    const Vector<LD> gl = to_ld_vector(gamma);
    const LD tol = tolerance<S>(d);

    LayerNormSaved<S> saved(rows);
    prenorm::layer_norm_forward(x, gamma, beta, y, eps, &saved);
    Mat dx = make<Mat>(rows, d);
    Vec dgamma = Vec::Zero(d), dbeta = Vec::Zero(d);
    prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dgamma, dbeta);
    const Grads ref = ref_layer_norm_backward(to_ld(dy), to_ld(x), &gl, eps);
    EXPECT_CLOSE_WITH_SCALE(dx, ref.dx, tol, dx_scale(dy, &gamma, saved.rstd));
    EXPECT_CLOSE_SCALED(dgamma, ref.dgamma, tol);
    EXPECT_CLOSE_SCALED(dbeta, ref.dbeta, tol);

    // Without affine.
    LayerNormSaved<S> saved_plain(rows);
    prenorm::layer_norm_forward(x, y, eps, &saved_plain);
    prenorm::layer_norm_backward(dy, x, saved_plain, dx);
    const Grads plain = ref_layer_norm_backward(to_ld(dy), to_ld(x), nullptr, eps);
    EXPECT_CLOSE_WITH_SCALE(dx, plain.dx, tol, dx_scale(dy, static_cast<Vec*>(nullptr), saved.rstd));
  }
}

TYPED_TEST(OpsNormBackward, RmsNormMatchesReference) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d), dy = make<Mat>(rows, d), y = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    fill_normal(dy, this->rng);
    Vec gamma = make_vector<Vec>(d);
    fill_normal(gamma, this->rng, 1.0, 0.3);
    const Vector<LD> gl = to_ld_vector(gamma);
    const LD tol = tolerance<S>(d);

    RmsNormSaved<S> saved(rows);
    prenorm::rms_norm_forward(x, gamma, y, eps, &saved);
    Mat dx = make<Mat>(rows, d);
    Vec dgamma = Vec::Zero(d);
    prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dgamma);
    const Grads ref = ref_rms_norm_backward(to_ld(dy), to_ld(x), &gl, eps);
    EXPECT_CLOSE_WITH_SCALE(dx, ref.dx, tol, dx_scale(dy, &gamma, saved.rrms));
    EXPECT_CLOSE_SCALED(dgamma, ref.dgamma, tol);

    // Without gamma.
    prenorm::rms_norm_backward(dy, x, saved, dx);
    const Grads plain = ref_rms_norm_backward(to_ld(dy), to_ld(x), nullptr, eps);
    EXPECT_CLOSE_WITH_SCALE(dx, plain.dx, tol, dx_scale(dy, static_cast<Vec*>(nullptr), saved.rrms));
  }
}

TYPED_TEST(OpsNormBackward, CrmsNormMatchesReference) {
  using S = typename TestFixture::S;
  using CMat = typename TestFixture::CMat;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    if (d < 2) continue;
    CMat x = make<CMat>(rows, d - 1), dy = make<CMat>(rows, d - 1), y = make<CMat>(rows, d - 1);
    fill_rows(x, this->rng);
    fill_normal(dy, this->rng);
    RmsNormSaved<S> saved(rows);
    prenorm::crms_norm_forward(x, y, eps, &saved);
    CMat dx = make<CMat>(rows, d - 1);
    prenorm::crms_norm_backward(dy, x, saved, dx);
    EXPECT_CLOSE_WITH_SCALE(dx, ref_crms_norm_backward(to_ld(dy), to_ld(x), eps), tolerance<S>(d),
                            dx_scale(dy, static_cast<Vector<S>*>(nullptr), saved.rrms));
  }
}

// GradWrite::Accumulate adds into dx; dgamma and dbeta always accumulate.
TYPED_TEST(OpsNormBackward, AccumulateAdds) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d), dy = make<Mat>(rows, d), y = make<Mat>(rows, d);
    Mat dx0 = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    fill_normal(dy, this->rng);
    fill_normal(dx0, this->rng);
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    Vec dgamma0 = make_vector<Vec>(d), dbeta0 = make_vector<Vec>(d);
    fill_normal(gamma, this->rng, 1.0, 0.3);
    fill_normal(beta, this->rng, 0.0, 0.3);
    fill_normal(dgamma0, this->rng);
    fill_normal(dbeta0, this->rng);
    // dx0 + v rounds once more than v: a few ulps of the sum. dgamma and dbeta
    // add one row after another into what they hold, so a sum over rows
    // started from dgamma0 rounds differently from dgamma0 + (the sum from 0).
    const LD tol = 4 * std::numeric_limits<S>::epsilon();
    const LD tol_params = 2 * rows * std::numeric_limits<S>::epsilon();

    // LayerNorm.
    {
      LayerNormSaved<S> saved(rows);
      prenorm::layer_norm_forward(x, gamma, beta, y, eps, &saved);
      Mat dx = make<Mat>(rows, d), dx_acc = dx0;
      Vec dgamma = Vec::Zero(d), dbeta = Vec::Zero(d), dgamma_acc = dgamma0, dbeta_acc = dbeta0;
      prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dgamma, dbeta);
      prenorm::layer_norm_backward(dy, x, gamma, saved, dx_acc, dgamma_acc, dbeta_acc,
                                   GradWrite::Accumulate);
      const Mat dx_sum = dx0 + dx;
      const Vec dgamma_sum = dgamma0 + dgamma, dbeta_sum = dbeta0 + dbeta;
      EXPECT_CLOSE_SCALED(dx_acc, dx_sum, tol);
      EXPECT_CLOSE_SCALED(dgamma_acc, dgamma_sum, tol_params);
      EXPECT_CLOSE_SCALED(dbeta_acc, dbeta_sum, tol_params);
      // A second Overwrite call overwrites dx, and still adds to dgamma and dbeta.
      Vec dgamma2 = dgamma, dbeta2 = dbeta;
      Mat dx2 = dx0;
      prenorm::layer_norm_backward(dy, x, gamma, saved, dx2, dgamma2, dbeta2);
      EXPECT_BITWISE(dx2, dx);
      const Vec dgamma_twice = S(2) * dgamma, dbeta_twice = S(2) * dbeta;
      EXPECT_CLOSE_SCALED(dgamma2, dgamma_twice, tol_params);
      EXPECT_CLOSE_SCALED(dbeta2, dbeta_twice, tol_params);
      // Without affine.
      LayerNormSaved<S> saved_plain(rows);
      prenorm::layer_norm_forward(x, y, eps, &saved_plain);
      prenorm::layer_norm_backward(dy, x, saved_plain, dx);
      dx_acc = dx0;
      prenorm::layer_norm_backward(dy, x, saved_plain, dx_acc, GradWrite::Accumulate);
      const Mat dx_plain_sum = dx0 + dx;
      EXPECT_CLOSE_SCALED(dx_acc, dx_plain_sum, tol);
    }
    // RMSNorm, with and without gamma.
    {
      RmsNormSaved<S> saved(rows);
      prenorm::rms_norm_forward(x, gamma, y, eps, &saved);
      Mat dx = make<Mat>(rows, d), dx_acc = dx0;
      Vec dgamma = Vec::Zero(d), dgamma_acc = dgamma0;
      prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dgamma);
      prenorm::rms_norm_backward(dy, x, gamma, saved, dx_acc, dgamma_acc, GradWrite::Accumulate);
      const Mat dx_sum = dx0 + dx;
      const Vec dgamma_sum = dgamma0 + dgamma;
      EXPECT_CLOSE_SCALED(dx_acc, dx_sum, tol);
      EXPECT_CLOSE_SCALED(dgamma_acc, dgamma_sum, tol_params);
      Vec dgamma2 = dgamma;
      prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dgamma2);
      const Vec dgamma_twice = S(2) * dgamma;
      EXPECT_CLOSE_SCALED(dgamma2, dgamma_twice, tol_params);
      prenorm::rms_norm_backward(dy, x, saved, dx);
      dx_acc = dx0;
      prenorm::rms_norm_backward(dy, x, saved, dx_acc, GradWrite::Accumulate);
      const Mat dx_plain_sum = dx0 + dx;
      EXPECT_CLOSE_SCALED(dx_acc, dx_plain_sum, tol);
    }
    // CRMSNorm.
    if (d >= 2) {
      const CMat xc = x.leftCols(d - 1), dyc = dy.leftCols(d - 1), dxc0 = dx0.leftCols(d - 1);
      CMat yc = make<CMat>(rows, d - 1), dxc = make<CMat>(rows, d - 1), dxc_acc = dxc0;
      RmsNormSaved<S> saved(rows);
      prenorm::crms_norm_forward(xc, yc, eps, &saved);
      prenorm::crms_norm_backward(dyc, xc, saved, dxc);
      prenorm::crms_norm_backward(dyc, xc, saved, dxc_acc, GradWrite::Accumulate);
      const CMat dxc_sum = dxc0 + dxc;
      EXPECT_CLOSE_SCALED(dxc_acc, dxc_sum, tol);
    }
  }
}

// dy, x blocks of larger matrices, dx into a block, and a column-major dy:
// bitwise equal to the contiguous results.
TYPED_TEST(OpsNormBackward, NonContiguous) {
  using S = typename TestFixture::S;
  constexpr int W = TestFixture::W;
  constexpr int CW = TestFixture::CW;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  using Vec = typename TestFixture::Vec;
  using ColMat = Eigen::Matrix<S, Dynamic, W, Eigen::ColMajor>;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    RowMatrix<S> big_x(rows + 3, d + 4), big_dy(rows + 1, d + 2);
    RowMatrix<S> big_dx = RowMatrix<S>::Constant(rows + 4, d + 6, S(-3));
    fill_rows(big_x, this->rng);
    fill_normal(big_dy, this->rng);
    const auto xb = big_x.template block<Dynamic, W>(2, 1, rows, d);
    const auto dyb = big_dy.template block<Dynamic, W>(1, 2, rows, d);
    auto dxb = big_dx.template block<Dynamic, W>(3, 5, rows, d);
    const Mat x = xb, dy = dyb;
    const ColMat dy_col = dy;
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_normal(gamma, this->rng, 1.0, 0.3);
    fill_normal(beta, this->rng, 0.0, 0.3);
    Mat y = make<Mat>(rows, d), dx = make<Mat>(rows, d), dx_col = make<Mat>(rows, d);

    {
      LayerNormSaved<S> saved(rows);
      prenorm::layer_norm_forward(x, gamma, beta, y, eps, &saved);
      Vec dg = Vec::Zero(d), db = Vec::Zero(d), dg_b = Vec::Zero(d), db_b = Vec::Zero(d);
      Vec dg_c = Vec::Zero(d), db_c = Vec::Zero(d);
      prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dg, db);
      prenorm::layer_norm_backward(dyb, xb, gamma, saved, dxb, dg_b, db_b);
      prenorm::layer_norm_backward(dy_col, x, gamma, saved, dx_col, dg_c, db_c);
      EXPECT_BITWISE(dxb, dx);
      EXPECT_BITWISE(dg_b, dg);
      EXPECT_BITWISE(db_b, db);
      EXPECT_BITWISE(dx_col, dx);
      EXPECT_BITWISE(dg_c, dg);
    }
    {
      RmsNormSaved<S> saved(rows);
      prenorm::rms_norm_forward(x, gamma, y, eps, &saved);
      Vec dg = Vec::Zero(d), dg_b = Vec::Zero(d);
      prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dg);
      prenorm::rms_norm_backward(dyb, xb, gamma, saved, dxb, dg_b);
      EXPECT_BITWISE(dxb, dx);
      EXPECT_BITWISE(dg_b, dg);
      prenorm::rms_norm_backward(dy_col, x, saved, dx_col);
      prenorm::rms_norm_backward(dy, x, saved, dx);
      EXPECT_BITWISE(dx_col, dx);
    }
    if (d >= 2) {
      const auto xcb = big_x.template block<Dynamic, CW>(2, 1, rows, d - 1);
      const auto dycb = big_dy.template block<Dynamic, CW>(1, 2, rows, d - 1);
      auto dxcb = big_dx.template block<Dynamic, CW>(3, 5, rows, d - 1);
      const CMat xc = xcb, dyc = dycb;
      CMat yc = make<CMat>(rows, d - 1), dxc = make<CMat>(rows, d - 1);
      RmsNormSaved<S> saved(rows);
      prenorm::crms_norm_forward(xc, yc, eps, &saved);
      prenorm::crms_norm_backward(dyc, xc, saved, dxc);
      prenorm::crms_norm_backward(dycb, xcb, saved, dxcb);
      EXPECT_BITWISE(dxcb, dxc);
    }
    // Only the blocks of big_dx were written.
    RowMatrix<S> outside = big_dx;
    outside.block(3, 5, rows, d).setConstant(S(-3));
    EXPECT_TRUE((outside.array() == S(-3)).all());
  }
}

// ---------------------------------------------------------------------------
// Central finite differences in double: loss = sum(dy * y).
// ---------------------------------------------------------------------------

using Md = RowMatrix<double>;
using Vd = Vector<double>;

LD loss(const Md& dy, const Md& y) {
  LD s = 0;
  for (Index r = 0; r < y.rows(); ++r)
    for (Index c = 0; c < y.cols(); ++c) s += LD(dy(r, c)) * LD(y(r, c));
  return s;
}

// Fourth-order central difference of f at the coefficient v (restored after).
LD central_difference(double& v, const std::function<LD()>& f) {
  const double v0 = v, h = 1e-3 * std::max(1.0, std::fabs(v0));
  auto at = [&](double t) {
    v = v0 + t;
    return f();
  };
  const LD d1 = at(h) - at(-h), d2 = at(2 * h) - at(-2 * h);
  v = v0;
  return (8 * d1 - d2) / (12 * LD(h));
}

// Numerical gradient of f with respect to every coefficient of m.
template <class M>
RowMatrix<LD> numerical_gradient(M& m, const std::function<LD()>& f) {
  RowMatrix<LD> g(m.rows(), m.cols());
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) g(r, c) = central_difference(m(r, c), f);
  return g;
}

// max |analytic - numeric| / max(max |analytic|, max |numeric|, 1e-6). The
// floor makes a gradient that vanishes (LayerNorm at d = 1, where y = beta)
// pass when the kernel's value is zero up to rounding (rstd * ulp ~ 1e-14).
template <class A>
LD relative_error(const Eigen::MatrixBase<A>& analytic, const RowMatrix<LD>& numeric) {
  const RowMatrix<LD> a = to_ld(analytic);
  const LD scale = std::max({max_abs(a), max_abs(numeric), LD(1e-6)});
  return max_abs_diff(a, numeric) / scale;
}

#define EXPECT_GRADIENT(analytic, numeric)                                                  \
  do {                                                                                      \
    const LD rel_ = relative_error((analytic), (numeric));                                  \
    EXPECT_LE(rel_, 1e-6) << #analytic " vs finite differences: relative error "            \
                          << double(rel_) << " (d = " << d << ")";                          \
  } while (0)

class FiniteDifferences : public ::testing::TestWithParam<Index> {
 protected:
  static constexpr Index kRows = 3;
  static constexpr double kEps = 1e-5;
  std::mt19937_64 rng{1234};
};

TEST_P(FiniteDifferences, LayerNorm) {
  const Index d = GetParam(), rows = kRows;
  Md x(rows, d), dy(rows, d), y(rows, d);
  fill_rows(x, rng);
  fill_normal(dy, rng);
  Vd gamma(d), beta(d);
  fill_normal(gamma, rng, 1.0, 0.3);
  fill_normal(beta, rng, 0.0, 0.3);

  LayerNormSaved<double> saved(rows);
  prenorm::layer_norm_forward(x, gamma, beta, y, kEps, &saved);
  Md dx(rows, d);
  Vd dgamma = Vd::Zero(d), dbeta = Vd::Zero(d);
  prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dgamma, dbeta);

  auto f = [&]() -> LD {
    Md yy(rows, d);
    prenorm::layer_norm_forward(x, gamma, beta, yy, kEps);
    return loss(dy, yy);
  };
  EXPECT_GRADIENT(dx, numerical_gradient(x, f));
  EXPECT_GRADIENT(dgamma, numerical_gradient(gamma, f));
  EXPECT_GRADIENT(dbeta, numerical_gradient(beta, f));

  // Without affine.
  prenorm::layer_norm_forward(x, y, kEps, &saved);
  prenorm::layer_norm_backward(dy, x, saved, dx);
  auto f_plain = [&]() -> LD {
    Md yy(rows, d);
    prenorm::layer_norm_forward(x, yy, kEps);
    return loss(dy, yy);
  };
  EXPECT_GRADIENT(dx, numerical_gradient(x, f_plain));
}

TEST_P(FiniteDifferences, RmsNorm) {
  const Index d = GetParam(), rows = kRows;
  Md x(rows, d), dy(rows, d), y(rows, d);
  fill_rows(x, rng);
  fill_normal(dy, rng);
  Vd gamma(d);
  fill_normal(gamma, rng, 1.0, 0.3);

  RmsNormSaved<double> saved(rows);
  prenorm::rms_norm_forward(x, gamma, y, kEps, &saved);
  Md dx(rows, d);
  Vd dgamma = Vd::Zero(d);
  prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dgamma);
  auto f = [&]() -> LD {
    Md yy(rows, d);
    prenorm::rms_norm_forward(x, gamma, yy, kEps);
    return loss(dy, yy);
  };
  EXPECT_GRADIENT(dx, numerical_gradient(x, f));
  EXPECT_GRADIENT(dgamma, numerical_gradient(gamma, f));

  // Without gamma.
  prenorm::rms_norm_forward(x, y, kEps, &saved);
  prenorm::rms_norm_backward(dy, x, saved, dx);
  auto f_plain = [&]() -> LD {
    Md yy(rows, d);
    prenorm::rms_norm_forward(x, yy, kEps);
    return loss(dy, yy);
  };
  EXPECT_GRADIENT(dx, numerical_gradient(x, f_plain));
}

// d is the model width (>= 2); CRMSNorm runs on d-1 columns.
class CrmsFiniteDifferences : public FiniteDifferences {};

TEST_P(CrmsFiniteDifferences, CrmsNorm) {
  const Index d = GetParam(), rows = kRows;
  Md x(rows, d - 1), dy(rows, d - 1), y(rows, d - 1), dx(rows, d - 1);
  fill_rows(x, rng);
  fill_normal(dy, rng);
  RmsNormSaved<double> saved(rows);
  prenorm::crms_norm_forward(x, y, kEps, &saved);
  prenorm::crms_norm_backward(dy, x, saved, dx);
  auto f = [&]() -> LD {
    Md yy(rows, d - 1);
    prenorm::crms_norm_forward(x, yy, kEps);
    return loss(dy, yy);
  };
  EXPECT_GRADIENT(dx, numerical_gradient(x, f));
}

std::string width_name(const ::testing::TestParamInfo<Index>& info) {
  return "d" + std::to_string(info.param);
}
INSTANTIATE_TEST_SUITE_P(Widths, FiniteDifferences, ::testing::Values(1, 2, 3, 7, 64, 767, 768),
                         width_name);
INSTANTIATE_TEST_SUITE_P(Widths, CrmsFiniteDifferences, ::testing::Values(2, 3, 7, 64, 767, 768),
                         width_name);

// ---------------------------------------------------------------------------
// Numerics of the LayerNorm backward when |mean| >> std (float, d = 4096,
// mean 1e4, std 1). The backward rebuilds xhat = ((x - x_0) - delta) * rstd
// as the forward did, from the saved delta. (From the saved mean, rounded to
// float, every xhat of a row was off by up to ulp(1e4)/2 * rstd ~ 5e-4: dx
// had a relative error of 3e-5 and dgamma 5e-3; now both are about 1.2e-7
// and 1.8e-7.)
// ---------------------------------------------------------------------------

TEST(OpsNormBackwardNumerics, LayerNormLargeMeanFloat) {
  const Index rows = 16, d = 4096;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 1.0);
  RowMatrix<float> x(rows, d), dy(rows, d), y(rows, d), dx(rows, d);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < d; ++c) {
      x(r, c) = static_cast<float>(1e4 + normal(rng));
      dy(r, c) = static_cast<float>(normal(rng));
    }
  const Vector<float> gamma = Vector<float>::Ones(d), beta = Vector<float>::Zero(d);
  Vector<float> dgamma = Vector<float>::Zero(d), dbeta = Vector<float>::Zero(d);
  LayerNormSaved<float> saved(rows);
  prenorm::layer_norm_forward(x, gamma, beta, y, 1e-5f, &saved);
  prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dgamma, dbeta);
  const Vector<LD> gl = to_ld_vector(gamma);
  const Grads ref = ref_layer_norm_backward(to_ld(dy), to_ld(x), &gl, 1e-5L);
  const LD dx_err = max_abs_diff(dx, ref.dx) / max_abs(ref.dx);
  const LD dgamma_err = max_abs_diff(dgamma, ref.dgamma) / max_abs(ref.dgamma);
  const LD dbeta_err = max_abs_diff(dbeta, ref.dbeta) / max_abs(ref.dbeta);
  std::cout << "[ numerics ] float LayerNorm backward, d = 4096, mean 1e4, std 1: relative "
               "max error dx "
            << double(dx_err) << ", dgamma " << double(dgamma_err) << ", dbeta "
            << double(dbeta_err) << "\n";
  EXPECT_LE(dx_err, 1e-6);
  EXPECT_LE(dgamma_err, 1e-6);
  EXPECT_LE(dbeta_err, 1e-6);
}

// ---------------------------------------------------------------------------
// Thread-count determinism: every kernel gives bitwise identical results with
// 1 and 2 threads (each row, and each column of dgamma / dbeta, is reduced by
// exactly one thread).
// ---------------------------------------------------------------------------

template <class S>
struct AllOutputs {
  RowMatrix<S> ln_y, rms_y, crms_y, ln_add_y, ln_add_h, rms_add_y, crms_add_y;
  RowMatrix<S> ln_dx, rms_dx, crms_dx;
  Vector<S> ln_mean, ln_rstd, rms_rrms, crms_rrms, ln_dgamma, ln_dbeta, rms_dgamma;
};

template <class S>
AllOutputs<S> run_all(const RowMatrix<S>& x, const RowMatrix<S>& branch, const RowMatrix<S>& dy,
                      const Vector<S>& gamma, const Vector<S>& beta) {
  const Index rows = x.rows(), d = x.cols();
  const S eps = S(1e-5);
  AllOutputs<S> o;
  o.ln_y.resize(rows, d);
  o.rms_y.resize(rows, d);
  o.crms_y.resize(rows, d - 1);
  o.ln_add_y.resize(rows, d);
  o.rms_add_y.resize(rows, d);
  o.crms_add_y.resize(rows, d - 1);
  o.ln_dx.resize(rows, d);
  o.rms_dx.resize(rows, d);
  o.crms_dx.resize(rows, d - 1);
  o.ln_dgamma = Vector<S>::Zero(d);
  o.ln_dbeta = Vector<S>::Zero(d);
  o.rms_dgamma = Vector<S>::Zero(d);

  LayerNormSaved<S> ln_saved(rows);
  RmsNormSaved<S> rms_saved(rows), crms_saved(rows);
  prenorm::layer_norm_forward(x, gamma, beta, o.ln_y, eps, &ln_saved);
  prenorm::rms_norm_forward(x, gamma, o.rms_y, eps, &rms_saved);
  prenorm::crms_norm_forward(x.leftCols(d - 1), o.crms_y, eps, &crms_saved);
  o.ln_mean = ln_saved.mean;
  o.ln_rstd = ln_saved.rstd;
  o.rms_rrms = rms_saved.rrms;
  o.crms_rrms = crms_saved.rrms;

  o.ln_add_h = x;
  prenorm::layer_norm_add_forward(o.ln_add_h, branch, gamma, beta, o.ln_add_y, eps);
  RowMatrix<S> h = x;
  prenorm::rms_norm_add_forward(h, branch, o.rms_add_y, eps);
  RowMatrix<S> hc = x.leftCols(d - 1);
  prenorm::crms_norm_add_forward(hc, branch.leftCols(d - 1), o.crms_add_y, eps);

  prenorm::layer_norm_backward(dy, x, gamma, ln_saved, o.ln_dx, o.ln_dgamma, o.ln_dbeta);
  prenorm::rms_norm_backward(dy, x, gamma, rms_saved, o.rms_dx, o.rms_dgamma);
  prenorm::crms_norm_backward(dy.leftCols(d - 1), x.leftCols(d - 1), crms_saved, o.crms_dx);
  return o;
}

template <class S>
class ThreadDeterminism : public ::testing::Test {};
TYPED_TEST_SUITE(ThreadDeterminism, Scalars);

TYPED_TEST(ThreadDeterminism, OneAndTwoThreadsAgreeBitwise) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  using S = TypeParam;
  const Index rows = 512, d = 768;  // well above the parallel threshold
  std::mt19937_64 rng(99);
  RowMatrix<S> x(rows, d), branch(rows, d), dy(rows, d);
  fill_rows(x, rng);
  fill_normal(branch, rng);
  fill_normal(dy, rng);
  Vector<S> gamma(d), beta(d);
  fill_normal(gamma, rng, 1.0, 0.3);
  fill_normal(beta, rng, 0.0, 0.3);

  const int before = prenorm::num_threads();
  prenorm::set_num_threads(1);
  ASSERT_EQ(prenorm::num_threads(), 1);
  const AllOutputs<S> one = run_all(x, branch, dy, gamma, beta);
  prenorm::set_num_threads(2);
  ASSERT_EQ(prenorm::num_threads(), 2);
  const AllOutputs<S> two = run_all(x, branch, dy, gamma, beta);
  prenorm::set_num_threads(before);

  const Index d_ = d;
  {
    const Index d = d_;  // for the failure messages
    EXPECT_BITWISE(two.ln_y, one.ln_y);
    EXPECT_BITWISE(two.ln_mean, one.ln_mean);
    EXPECT_BITWISE(two.ln_rstd, one.ln_rstd);
    EXPECT_BITWISE(two.rms_y, one.rms_y);
    EXPECT_BITWISE(two.rms_rrms, one.rms_rrms);
    EXPECT_BITWISE(two.crms_y, one.crms_y);
    EXPECT_BITWISE(two.crms_rrms, one.crms_rrms);
    EXPECT_BITWISE(two.ln_add_h, one.ln_add_h);
    EXPECT_BITWISE(two.ln_add_y, one.ln_add_y);
    EXPECT_BITWISE(two.rms_add_y, one.rms_add_y);
    EXPECT_BITWISE(two.crms_add_y, one.crms_add_y);
    EXPECT_BITWISE(two.ln_dx, one.ln_dx);
    EXPECT_BITWISE(two.ln_dgamma, one.ln_dgamma);
    EXPECT_BITWISE(two.ln_dbeta, one.ln_dbeta);
    EXPECT_BITWISE(two.rms_dx, one.rms_dx);
    EXPECT_BITWISE(two.rms_dgamma, one.rms_dgamma);
    EXPECT_BITWISE(two.crms_dx, one.crms_dx);
  }
#endif
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

// error_message and expect_error: tests/support/ops_test_util.hpp.

template <class S>
class OpsNormBackwardErrors : public ::testing::Test {};
TYPED_TEST_SUITE(OpsNormBackwardErrors, Scalars);

TYPED_TEST(OpsNormBackwardErrors, ShapeMismatchNamesOperatorAndSizes) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  using V = Vector<S>;
  const Index rows = 4, d = 768;
  const M x = M::Random(rows, d), dy = M::Random(rows, d), dy_short = M::Random(rows, d - 1);
  const M dy_rows = M::Random(rows + 1, d);
  M dx(rows, d), dx_short(rows, d - 1);
  const V g = V::Ones(d), g_short = V::Ones(d - 1);
  V dg = V::Zero(d), db = V::Zero(d), dg_short = V::Zero(d - 1);
  LayerNormSaved<S> ln(rows), ln_bad(rows + 1);
  RmsNormSaved<S> rms(rows), rms_bad(rows - 2);
  ln.mean.setZero();
  ln.rstd.setOnes();
  rms.rrms.setOnes();

  expect_error([&] { prenorm::layer_norm_backward(dy_short, x, g, ln, dx, dg, db); },
               {"prenorm::layer_norm_backward", "dy", "767", "768"}, "LN dy");
  expect_error([&] { prenorm::layer_norm_backward(dy_rows, x, g, ln, dx, dg, db); },
               {"prenorm::layer_norm_backward", "dy", "5", "4"}, "LN dy rows");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, g, ln, dx_short, dg, db); },
               {"prenorm::layer_norm_backward", "dx", "767", "768"}, "LN dx");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, g_short, ln, dx, dg, db); },
               {"prenorm::layer_norm_backward", "gamma", "767", "768"}, "LN gamma");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, g, ln, dx, dg_short, db); },
               {"prenorm::layer_norm_backward", "dgamma", "767", "768"}, "LN dgamma");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, g, ln, dx, dg, dg_short); },
               {"prenorm::layer_norm_backward", "dbeta", "767", "768"}, "LN dbeta");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, g, ln_bad, dx, dg, db); },
               {"prenorm::layer_norm_backward", "saved.mean", "5", "4"}, "LN saved");
  expect_error([&] { prenorm::layer_norm_backward(dy, x, ln_bad, dx); },
               {"prenorm::layer_norm_backward", "saved.mean", "5", "4"}, "LN (no affine) saved");
  {  // mean and rstd alone (delta, which the backward needs, missing)
    auto no_delta = ln;
    no_delta.delta.resize(0);
    expect_error([&] { prenorm::layer_norm_backward(dy, x, g, no_delta, dx, dg, db); },
                 {"prenorm::layer_norm_backward", "saved.delta", "0", "4"}, "LN saved.delta");
    expect_error([&] { prenorm::layer_norm_backward(dy, x, no_delta, dx); },
                 {"prenorm::layer_norm_backward", "saved.delta", "0", "4"}, "LN (no affine) saved.delta");
  }
  expect_error([&] { prenorm::layer_norm_backward(dy_short, x, ln, dx); },
               {"prenorm::layer_norm_backward", "dy", "767", "768"}, "LN (no affine) dy");

  expect_error([&] { prenorm::rms_norm_backward(dy_short, x, g, rms, dx, dg); },
               {"prenorm::rms_norm_backward", "dy", "767", "768"}, "RMS dy");
  expect_error([&] { prenorm::rms_norm_backward(dy, x, g, rms, dx_short, dg); },
               {"prenorm::rms_norm_backward", "dx", "767", "768"}, "RMS dx");
  expect_error([&] { prenorm::rms_norm_backward(dy, x, g_short, rms, dx, dg); },
               {"prenorm::rms_norm_backward", "gamma", "767", "768"}, "RMS gamma");
  expect_error([&] { prenorm::rms_norm_backward(dy, x, g, rms, dx, dg_short); },
               {"prenorm::rms_norm_backward", "dgamma", "767", "768"}, "RMS dgamma");
  expect_error([&] { prenorm::rms_norm_backward(dy, x, g, rms_bad, dx, dg); },
               {"prenorm::rms_norm_backward", "saved.rrms", "2", "4"}, "RMS saved");
  expect_error([&] { prenorm::rms_norm_backward(dy, x, rms_bad, dx); },
               {"prenorm::rms_norm_backward", "saved.rrms", "2", "4"}, "RMS (no gamma) saved");

  const M xc = M::Random(rows, d - 1);
  expect_error([&] { prenorm::crms_norm_backward(dy, xc, rms, dx_short); },
               {"prenorm::crms_norm_backward", "dy", "768", "767"}, "CRMS dy");
  expect_error([&] { prenorm::crms_norm_backward(dy_short, xc, rms, dx); },
               {"prenorm::crms_norm_backward", "dx", "768", "767"}, "CRMS dx");
  expect_error([&] { prenorm::crms_norm_backward(dy_short, xc, rms_bad, dx_short); },
               {"prenorm::crms_norm_backward", "saved.rrms", "2", "4"}, "CRMS saved");

  // A column-major dx is rejected.
  Eigen::Matrix<S, Dynamic, Dynamic, Eigen::ColMajor> dx_col(rows, d);
  expect_error([&] { prenorm::rms_norm_backward(dy, x, rms, dx_col); },
               {"prenorm::rms_norm_backward", "dx", "row-major"}, "column-major dx");

  // The failed calls did not touch the gradients.
  EXPECT_TRUE(dg.isZero(0));
  EXPECT_TRUE(db.isZero(0));
}

TYPED_TEST(OpsNormBackwardErrors, CrmsNormNeedsWidthTwo) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  M x(3, 0), dy(3, 0), dx(3, 0);
  RmsNormSaved<S> saved(3);
  expect_error([&] { prenorm::crms_norm_backward(dy, x, saved, dx); },
               {"prenorm::crms_norm_backward", "d = 1"}, "CRMS backward d = 1");
}

TYPED_TEST(OpsNormBackwardErrors, ZeroRowsIsANoOp) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  using V = Vector<S>;
  const Index d = 768;
  const M x(0, d), dy(0, d), xc(0, d - 1), dyc(0, d - 1);
  M dx(0, d), dxc(0, d - 1);
  const V g = V::Ones(d);
  V dg = V::Constant(d, S(0.5)), db = V::Constant(d, S(0.25));
  LayerNormSaved<S> ln(0);
  RmsNormSaved<S> rms(0);
  EXPECT_NO_THROW(prenorm::layer_norm_backward(dy, x, g, ln, dx, dg, db));
  EXPECT_NO_THROW(prenorm::layer_norm_backward(dy, x, ln, dx, GradWrite::Accumulate));
  EXPECT_NO_THROW(prenorm::rms_norm_backward(dy, x, g, rms, dx, dg));
  EXPECT_NO_THROW(prenorm::rms_norm_backward(dy, x, rms, dx));
  EXPECT_NO_THROW(prenorm::crms_norm_backward(dyc, xc, rms, dxc));
  EXPECT_TRUE((dg.array() == S(0.5)).all()) << "dgamma changed";
  EXPECT_TRUE((db.array() == S(0.25)).all()) << "dbeta changed";
}

// NaN or Inf in one row of dy or x: that row's dx is non-finite, every other
// row's dx is exactly the clean result, and nothing throws.
TYPED_TEST(OpsNormBackwardErrors, NonFiniteRowStaysInItsRow) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  using V = Vector<S>;
  const Index rows = 64, d = 768;
  std::mt19937_64 rng(5);
  M x(rows, d), dy(rows, d), y(rows, d);
  fill_rows(x, rng);
  fill_normal(dy, rng);
  const V g = V::Ones(d), b = V::Zero(d);
  const S eps = S(1e-5);
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();
  M dy_bad = dy, x_bad = x;
  dy_bad(5, 10) = nan;
  x_bad(20, 30) = inf;
  auto check = [&](const M& clean, const M& dirty, const char* op) {
    for (Index r = 0; r < rows; ++r) {
      if (r == 5 || r == 20) {
        EXPECT_FALSE(dirty.row(r).allFinite()) << op << ": row " << r << " is finite";
      } else {
        EXPECT_EQ(bitwise_mismatches(dirty.row(r), clean.row(r)), 0)
            << op << ": clean row " << r << " changed";
      }
    }
  };
  M dx(rows, d), dx_bad(rows, d);
  {
    LayerNormSaved<S> saved(rows), saved_bad(rows);
    V dg = V::Zero(d), db = V::Zero(d);
    prenorm::layer_norm_forward(x, g, b, y, eps, &saved);
    prenorm::layer_norm_forward(x_bad, g, b, y, eps, &saved_bad);
    EXPECT_NO_THROW(prenorm::layer_norm_backward(dy, x, g, saved, dx, dg, db));
    EXPECT_NO_THROW(prenorm::layer_norm_backward(dy_bad, x_bad, g, saved_bad, dx_bad, dg, db));
    check(dx, dx_bad, "layer_norm_backward");
  }
  {
    RmsNormSaved<S> saved(rows), saved_bad(rows);
    prenorm::rms_norm_forward(x, y, eps, &saved);
    prenorm::rms_norm_forward(x_bad, y, eps, &saved_bad);
    EXPECT_NO_THROW(prenorm::rms_norm_backward(dy, x, saved, dx));
    EXPECT_NO_THROW(prenorm::rms_norm_backward(dy_bad, x_bad, saved_bad, dx_bad));
    check(dx, dx_bad, "rms_norm_backward");
  }
  {
    M yc(rows, d - 1), dxc(rows, d - 1), dxc_bad(rows, d - 1);
    RmsNormSaved<S> saved(rows), saved_bad(rows);
    prenorm::crms_norm_forward(x.leftCols(d - 1), yc, eps, &saved);
    prenorm::crms_norm_forward(x_bad.leftCols(d - 1), yc, eps, &saved_bad);
    EXPECT_NO_THROW(prenorm::crms_norm_backward(dy.leftCols(d - 1), x.leftCols(d - 1), saved, dxc));
    EXPECT_NO_THROW(prenorm::crms_norm_backward(dy_bad.leftCols(d - 1), x_bad.leftCols(d - 1),
                                                saved_bad, dxc_bad));
    check(dxc, dxc_bad, "crms_norm_backward");
  }
}

}  // namespace
