// Tests of the forward normalization operators (include/prenorm/ops/):
// layer_norm_forward, rms_norm_forward, crms_norm_forward, their fused
// residual-add and in-place forms, compress / decompress, and their errors.
// The backward passes are in ops_norm_backward_test.cpp.
//
// Every fast kernel is held against a plain explicit-loop reference in long
// double written here. Typed over float and double, and over fixed widths
// (2, 3, 7, 64, 767, 768, 4096) and a dynamic width (which runs every width,
// plus width 1). Tolerances depend on the dtype and the width; a failure
// prints the max difference.

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
using prenorm::LayerNormSaved;
using prenorm::RmsNormSaved;

// ---------------------------------------------------------------------------
// Helpers (the ones shared with ops_norm_backward_test.cpp are in
// tests/support/ops_test_util.hpp)
// ---------------------------------------------------------------------------

template <class V>
void fill_vector(V& v, std::mt19937_64& rng, double center, double spread) {
  std::normal_distribution<double> normal(center, spread);
  for (Index i = 0; i < v.size(); ++i) v[i] = static_cast<typename V::Scalar>(normal(rng));
}

// max |a - b| / |b| over all coefficients (for positive statistics such as rstd).
template <class A, class B>
LD max_rel_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  LD m = 0;
  for (Index i = 0; i < a.size(); ++i) {
    const LD diff = std::fabs(static_cast<LD>(a(i)) - static_cast<LD>(b(i))) /
                    std::fabs(static_cast<LD>(b(i)));
    if (!(diff <= m)) m = diff;
  }
  return m;
}

#define EXPECT_CLOSE(actual, expected, tol)                                              \
  do {                                                                                   \
    const LD err_ = max_abs_diff((actual), (expected));                                  \
    EXPECT_LE(err_, (tol)) << "max |" #actual " - " #expected "| = " << double(err_)     \
                           << " > tolerance " << double(tol) << " (d = " << d << ")";    \
  } while (0)

// ---------------------------------------------------------------------------
// Long double references: plain explicit loops, straight from the formulas
// in docs/DESIGN.md §1.
// ---------------------------------------------------------------------------

struct LayerNormRef {
  RowMatrix<LD> y;
  Vector<LD> mean, rstd;
};

// y = gamma * (x - mean) / sqrt(var + eps) + beta, var the population variance.
LayerNormRef ref_layer_norm(const RowMatrix<LD>& x, const Vector<LD>* gamma,
                            const Vector<LD>* beta, LD eps) {
  const Index rows = x.rows(), d = x.cols();
  LayerNormRef out{RowMatrix<LD>(rows, d), Vector<LD>(rows), Vector<LD>(rows)};
  for (Index r = 0; r < rows; ++r) {
    LD sum = 0;
    for (Index i = 0; i < d; ++i) sum += x(r, i);
    const LD mean = sum / d;
    LD sq = 0;
    for (Index i = 0; i < d; ++i) sq += (x(r, i) - mean) * (x(r, i) - mean);
    const LD rstd = 1 / std::sqrt(sq / d + eps);
    for (Index i = 0; i < d; ++i) {
      LD v = (x(r, i) - mean) * rstd;
      if (gamma) v *= (*gamma)[i];
      if (beta) v += (*beta)[i];
      out.y(r, i) = v;
    }
    out.mean[r] = mean;
    out.rstd[r] = rstd;
  }
  return out;
}

struct RmsNormRef {
  RowMatrix<LD> y;
  Vector<LD> rrms;
};

// y = gamma * x / sqrt(||x||^2 / d + eps).
RmsNormRef ref_rms_norm(const RowMatrix<LD>& x, const Vector<LD>* gamma, LD eps) {
  const Index rows = x.rows(), d = x.cols();
  RmsNormRef out{RowMatrix<LD>(rows, d), Vector<LD>(rows)};
  for (Index r = 0; r < rows; ++r) {
    LD sq = 0;
    for (Index i = 0; i < d; ++i) sq += x(r, i) * x(r, i);
    const LD rrms = 1 / std::sqrt(sq / d + eps);
    for (Index i = 0; i < d; ++i) out.y(r, i) = x(r, i) * rrms * (gamma ? (*gamma)[i] : LD(1));
    out.rrms[r] = rrms;
  }
  return out;
}

// y = x~ / sqrt((||x~||^2 + (1'x~)^2) / d + eps), x~ [rows x (d-1)].
RmsNormRef ref_crms_norm(const RowMatrix<LD>& xc, LD eps) {
  const Index rows = xc.rows(), n = xc.cols(), d = n + 1;
  RmsNormRef out{RowMatrix<LD>(rows, n), Vector<LD>(rows)};
  for (Index r = 0; r < rows; ++r) {
    LD s = 0, sq = 0;
    for (Index i = 0; i < n; ++i) {
      s += xc(r, i);
      sq += xc(r, i) * xc(r, i);
    }
    const LD rrms = 1 / std::sqrt((sq + s * s) / d + eps);
    for (Index i = 0; i < n; ++i) out.y(r, i) = xc(r, i) * rrms;
    out.rrms[r] = rrms;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Typed fixture: Scalar x width (Dynamic: every width in kWidths, plus 1), from
// tests/support/ops_test_util.hpp.
// ---------------------------------------------------------------------------

template <class C>
class OpsNorm : public NormFixture<C, 0x5eed> {};

TYPED_TEST_SUITE(OpsNorm, Configs, ConfigNames);

// ---------------------------------------------------------------------------
// Forward against the references
// ---------------------------------------------------------------------------

TYPED_TEST(OpsNorm, LayerNormForwardMatchesReference) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);
    const RowMatrix<LD> xl = to_ld(x);
    const Vector<LD> gl = to_ld_vector(gamma), bl = to_ld_vector(beta);
    const LD tol = tolerance<S>(d);

    // With affine, saving the statistics.
    const LayerNormRef ref = ref_layer_norm(xl, &gl, &bl, this->eps());
    Mat y = make<Mat>(rows, d);
    LayerNormSaved<S> saved(rows);
    prenorm::layer_norm_forward(x, gamma, beta, y, this->eps(), &saved);
    EXPECT_CLOSE(y, ref.y, tol);
    EXPECT_CLOSE(saved.mean, ref.mean, tol * (1 + ref.mean.cwiseAbs().maxCoeff()));
    {  // delta = mean - x_0, from which the backward rebuilds xhat
      Vector<LD> delta_ref(rows);
      for (Index r = 0; r < rows; ++r) delta_ref[r] = ref.mean[r] - xl(r, 0);
      EXPECT_CLOSE(saved.delta, delta_ref, tol * (1 + delta_ref.cwiseAbs().maxCoeff()));
    }
    {
      const LD err = max_rel_diff(saved.rstd, ref.rstd);
      EXPECT_LE(err, tol) << "max relative |rstd - ref| = " << double(err) << " (d = " << d << ")";
    }

    // Without affine, without saving.
    const LayerNormRef plain = ref_layer_norm(xl, nullptr, nullptr, this->eps());
    Mat y2 = make<Mat>(rows, d);
    prenorm::layer_norm_forward(x, y2, this->eps());
    EXPECT_CLOSE(y2, plain.y, tol);

    // The default epsilon is 1e-5.
    Mat y3 = make<Mat>(rows, d);
    prenorm::layer_norm_forward(x, y3);
    EXPECT_BITWISE(y3, y2);
  }
}

TYPED_TEST(OpsNorm, RmsNormForwardMatchesReference) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    Vec gamma = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    const RowMatrix<LD> xl = to_ld(x);
    const Vector<LD> gl = to_ld_vector(gamma);
    const LD tol = tolerance<S>(d);

    // Without gamma (as in a converted model), saving 1/rms.
    const RmsNormRef ref = ref_rms_norm(xl, nullptr, this->eps());
    Mat y = make<Mat>(rows, d);
    RmsNormSaved<S> saved(rows);
    prenorm::rms_norm_forward(x, y, this->eps(), &saved);
    EXPECT_CLOSE(y, ref.y, tol);
    {
      const LD err = max_rel_diff(saved.rrms, ref.rrms);
      EXPECT_LE(err, tol) << "max relative |rrms - ref| = " << double(err) << " (d = " << d << ")";
    }

    // With gamma.
    const RmsNormRef with_gamma = ref_rms_norm(xl, &gl, this->eps());
    Mat y2 = make<Mat>(rows, d);
    RmsNormSaved<S> saved2(rows);
    prenorm::rms_norm_forward(x, gamma, y2, this->eps(), &saved2);
    EXPECT_CLOSE(y2, with_gamma.y, tol);
    EXPECT_BITWISE(saved2.rrms, saved.rrms);
  }
}

TYPED_TEST(OpsNorm, CrmsNormForwardMatchesReference) {
  using S = typename TestFixture::S;
  using CMat = typename TestFixture::CMat;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    if (d < 2) continue;  // CRMSNorm needs d >= 2 (tested in the errors below)
    CMat x = make<CMat>(rows, d - 1);
    fill_rows(x, this->rng);
    const RmsNormRef ref = ref_crms_norm(to_ld(x), this->eps());
    CMat y = make<CMat>(rows, d - 1);
    RmsNormSaved<S> saved(rows);
    prenorm::crms_norm_forward(x, y, this->eps(), &saved);
    const LD tol = tolerance<S>(d);
    EXPECT_CLOSE(y, ref.y, tol);
    const LD err = max_rel_diff(saved.rrms, ref.rrms);
    EXPECT_LE(err, tol) << "max relative |rrms - ref| = " << double(err) << " (d = " << d << ")";
  }
}

// CRMSNorm(x~) is the first d-1 coordinates of RMSNorm(decompress(x~)), for any x~.
TYPED_TEST(OpsNorm, CrmsNormIsRmsNormOfDecompressed) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    if (d < 2) continue;
    CMat xc = make<CMat>(rows, d - 1);
    fill_rows(xc, this->rng);
    Mat full = make<Mat>(rows, d);
    prenorm::decompress(xc, full);
    Mat y_full = make<Mat>(rows, d);
    prenorm::rms_norm_forward(full, y_full, this->eps());
    CMat y = make<CMat>(rows, d - 1);
    prenorm::crms_norm_forward(xc, y, this->eps());
    EXPECT_CLOSE(y, y_full.leftCols(d - 1), tolerance<S>(d));
  }
}

// ---------------------------------------------------------------------------
// Non-contiguous inputs and outputs
// ---------------------------------------------------------------------------

// x a block of a larger row-major matrix, y a block of another; and a
// column-major x (handled by a copy). All must equal the contiguous result
// bitwise (a row's arithmetic depends on its length only).
TYPED_TEST(OpsNorm, NonContiguousInputsAndOutputs) {
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
    RowMatrix<S> big_x(rows + 3, d + 5), big_y(rows + 2, d + 9);
    fill_rows(big_x, this->rng);
    big_y.setConstant(S(-7));
    const RowMatrix<S> big_y_before = big_y;
    const auto xb = big_x.template block<Dynamic, W>(1, 2, rows, d);
    auto yb = big_y.template block<Dynamic, W>(2, 3, rows, d);
    const Mat x = xb;  // the contiguous copy
    const ColMat x_col = x;
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);
    const RowMatrix<LD> xl = to_ld(x);
    const Vector<LD> gl = to_ld_vector(gamma), bl = to_ld_vector(beta);
    const LD tol = tolerance<S>(d);

    // Only the block of big_y may change.
    auto outside_unchanged = [&] {
      RowMatrix<S> masked = big_y;
      masked.block(2, 3, rows, d) = big_y_before.block(2, 3, rows, d);
      return bitwise_mismatches(masked, big_y_before) == 0;
    };

    // LayerNorm with affine.
    {
      Mat y = make<Mat>(rows, d);
      LayerNormSaved<S> saved(rows), saved_b(rows), saved_c(rows);
      prenorm::layer_norm_forward(x, gamma, beta, y, eps, &saved);
      EXPECT_CLOSE(y, ref_layer_norm(xl, &gl, &bl, eps).y, tol);
      prenorm::layer_norm_forward(xb, gamma, beta, yb, eps, &saved_b);
      EXPECT_BITWISE(yb, y);
      EXPECT_BITWISE(saved_b.mean, saved.mean);
      EXPECT_BITWISE(saved_b.rstd, saved.rstd);
      EXPECT_BITWISE(saved_b.delta, saved.delta);
      EXPECT_TRUE(outside_unchanged());
      Mat y_col = make<Mat>(rows, d);
      prenorm::layer_norm_forward(x_col, gamma, beta, y_col, eps, &saved_c);
      EXPECT_BITWISE(y_col, y);
      EXPECT_BITWISE(saved_c.rstd, saved.rstd);
      // Expression arguments are evaluated once.
      Mat y_expr = make<Mat>(rows, d);
      prenorm::layer_norm_forward(x * S(1), gamma, beta, y_expr, eps);
      EXPECT_BITWISE(y_expr, y);
    }
    // RMSNorm, without and with gamma.
    {
      Mat y = make<Mat>(rows, d), yg = make<Mat>(rows, d);
      RmsNormSaved<S> saved(rows), saved_b(rows);
      prenorm::rms_norm_forward(x, y, eps, &saved);
      prenorm::rms_norm_forward(x, gamma, yg, eps);
      EXPECT_CLOSE(y, ref_rms_norm(xl, nullptr, eps).y, tol);
      EXPECT_CLOSE(yg, ref_rms_norm(xl, &gl, eps).y, tol);
      prenorm::rms_norm_forward(xb, yb, eps, &saved_b);
      EXPECT_BITWISE(yb, y);
      EXPECT_BITWISE(saved_b.rrms, saved.rrms);
      EXPECT_TRUE(outside_unchanged());
      prenorm::rms_norm_forward(xb, gamma, yb, eps);
      EXPECT_BITWISE(yb, yg);
      Mat y_col = make<Mat>(rows, d);
      prenorm::rms_norm_forward(x_col, y_col, eps);
      EXPECT_BITWISE(y_col, y);
    }
    // CRMSNorm on the first d-1 columns.
    if (d >= 2) {
      using CColMat = Eigen::Matrix<S, Dynamic, CW, Eigen::ColMajor>;
      const auto xcb = big_x.template block<Dynamic, CW>(1, 2, rows, d - 1);
      auto ycb = big_y.template block<Dynamic, CW>(2, 3, rows, d - 1);
      const CMat xc = xcb;
      const CColMat xc_col = xc;
      CMat y = make<CMat>(rows, d - 1);
      RmsNormSaved<S> saved(rows), saved_b(rows);
      prenorm::crms_norm_forward(xc, y, eps, &saved);
      EXPECT_CLOSE(y, ref_crms_norm(to_ld(xc), eps).y, tol);
      prenorm::crms_norm_forward(xcb, ycb, eps, &saved_b);
      EXPECT_BITWISE(ycb, y);
      EXPECT_BITWISE(saved_b.rrms, saved.rrms);
      EXPECT_TRUE(outside_unchanged());
      CMat y_col = make<CMat>(rows, d - 1);
      prenorm::crms_norm_forward(xc_col, y_col, eps);
      EXPECT_BITWISE(y_col, y);
    }
  }
}

// ---------------------------------------------------------------------------
// Identities (docs/DESIGN.md §1)
// ---------------------------------------------------------------------------

// Rows that are exactly zero-mean in long double, then rounded to Scalar:
// their mean is zero up to one rounding per element.
template <class M>
void fill_zero_mean(M& m, std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> normal(0.0, stddev);
  for (Index r = 0; r < m.rows(); ++r) {
    std::vector<LD> v(static_cast<size_t>(m.cols()));
    LD sum = 0;
    for (auto& e : v) sum += (e = normal(rng));
    for (Index c = 0; c < m.cols(); ++c)
      m(r, c) = static_cast<typename M::Scalar>(v[c] - sum / m.cols());
  }
}

// LN(x + c*1) = LN(x). x is on a grid of 2^-12 with |x| < 8 and c an integer
// with |c| <= 1000, so x + c is exact in float and double alike.
TYPED_TEST(OpsNorm, LayerNormIsShiftInvariant) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d);
    fill_rows(x, this->rng, 1.0);
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < d; ++c)
        x(r, c) = std::clamp(std::round(x(r, c) * S(4096)) / S(4096), S(-7.5), S(7.5));
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);
    Mat y = make<Mat>(rows, d);
    prenorm::layer_norm_forward(x, gamma, beta, y, this->eps());
    for (const S c : {S(1), S(-3), S(250), S(-1000)}) {
      const Mat shifted = (x.array() + c).matrix();
      ASSERT_EQ(max_abs_diff((shifted.array() - c).matrix(), x), 0) << "x + c is not exact";
      Mat ys = make<Mat>(rows, d);
      prenorm::layer_norm_forward(shifted, gamma, beta, ys, this->eps());
      EXPECT_CLOSE(ys, y, tolerance<S>(d)) ;
    }
  }
}

// mean(x) = 0  =>  LN(x) = RMSNorm(x), eps included (checked with an eps that
// dominates the variance, and with the default one).
TYPED_TEST(OpsNorm, LayerNormEqualsRmsNormOnZeroMeanRows) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    if (d < 2) continue;  // a zero-mean width-1 row is 0; covered by the reference tests
    for (const double stddev : {1.0, 0.1}) {
      for (const S eps : {S(1e-5), S(0.05)}) {
        Mat x = make<Mat>(rows, d);
        fill_zero_mean(x, this->rng, stddev);
        Vec gamma = make_vector<Vec>(d);
        fill_vector(gamma, this->rng, 1.0, 0.3);
        Mat y_ln = make<Mat>(rows, d), y_rms = make<Mat>(rows, d);
        prenorm::layer_norm_forward(x, y_ln, eps);
        prenorm::rms_norm_forward(x, y_rms, eps);
        EXPECT_CLOSE(y_ln, y_rms, tolerance<S>(d));
        // With gamma (and beta = 0) on both sides.
        const Vec zero = Vec::Zero(d);
        prenorm::layer_norm_forward(x, gamma, zero, y_ln, eps);
        prenorm::rms_norm_forward(x, gamma, y_rms, eps);
        EXPECT_CLOSE(y_ln, y_rms, tolerance<S>(d));
        // eps matters here: RMSNorm with another eps differs.
        if (stddev == 0.1 && eps == S(0.05)) {
          prenorm::rms_norm_forward(x, gamma, y_rms, S(1e-5));
          EXPECT_GT(max_abs_diff(y_ln, y_rms), 0.1);
        }
      }
    }
  }
}

// CRMSNorm(compress(x)) = compress(RMSNorm(x)) and decompress(compress(x)) = x,
// for zero-mean x.
TYPED_TEST(OpsNorm, CompressionIdentities) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  const Index rows = TestFixture::kRows;
  for (const Index d : TestFixture::widths()) {
    if (d < 2) continue;
    Mat x = make<Mat>(rows, d);
    fill_zero_mean(x, this->rng, 1.0);
    CMat xc = make<CMat>(rows, d - 1);
    prenorm::compress(x, xc);
    EXPECT_BITWISE(xc, x.leftCols(d - 1));

    Mat back = make<Mat>(rows, d);
    prenorm::decompress(xc, back);
    EXPECT_BITWISE(back.leftCols(d - 1), x.leftCols(d - 1));
    // The restored last column is -sum(x~): exact up to the rounding of the sum.
    EXPECT_CLOSE(back, x, tolerance<S>(d) * std::sqrt(LD(d)));

    Mat y = make<Mat>(rows, d);
    prenorm::rms_norm_forward(x, y, this->eps());
    CMat y_compressed = make<CMat>(rows, d - 1), yc = make<CMat>(rows, d - 1);
    prenorm::compress(y, y_compressed);
    prenorm::crms_norm_forward(xc, yc, this->eps());
    EXPECT_CLOSE(yc, y_compressed, tolerance<S>(d));
  }
}

// ---------------------------------------------------------------------------
// Fused add + norm: bitwise equal to the add followed by the norm.
// ---------------------------------------------------------------------------

TYPED_TEST(OpsNorm, FusedAddNormEqualsAddThenNorm) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    Mat h0 = make<Mat>(rows, d), branch = make<Mat>(rows, d);
    fill_rows(h0, this->rng);
    fill_rows(branch, this->rng);
    Mat h_sum = h0;
    h_sum += branch;  // the unfused add
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);

    // LayerNorm, with and without affine.
    {
      Mat h = h0, y = make<Mat>(rows, d), y_ref = make<Mat>(rows, d);
      LayerNormSaved<S> saved(rows), saved_ref(rows);
      prenorm::layer_norm_add_forward(h, branch, gamma, beta, y, eps, &saved);
      prenorm::layer_norm_forward(h_sum, gamma, beta, y_ref, eps, &saved_ref);
      EXPECT_BITWISE(h, h_sum);
      EXPECT_BITWISE(y, y_ref);
      EXPECT_BITWISE(saved.mean, saved_ref.mean);
      EXPECT_BITWISE(saved.rstd, saved_ref.rstd);
      EXPECT_BITWISE(saved.delta, saved_ref.delta);
      h = h0;
      prenorm::layer_norm_add_forward(h, branch, y, eps);
      prenorm::layer_norm_forward(h_sum, y_ref, eps);
      EXPECT_BITWISE(h, h_sum);
      EXPECT_BITWISE(y, y_ref);
    }
    // RMSNorm, without and with gamma.
    {
      Mat h = h0, y = make<Mat>(rows, d), y_ref = make<Mat>(rows, d);
      RmsNormSaved<S> saved(rows), saved_ref(rows);
      prenorm::rms_norm_add_forward(h, branch, y, eps, &saved);
      prenorm::rms_norm_forward(h_sum, y_ref, eps, &saved_ref);
      EXPECT_BITWISE(h, h_sum);
      EXPECT_BITWISE(y, y_ref);
      EXPECT_BITWISE(saved.rrms, saved_ref.rrms);
      h = h0;
      prenorm::rms_norm_add_forward(h, branch, gamma, y, eps);
      prenorm::rms_norm_forward(h_sum, gamma, y_ref, eps);
      EXPECT_BITWISE(h, h_sum);
      EXPECT_BITWISE(y, y_ref);
    }
    // CRMSNorm on the first d-1 columns.
    if (d >= 2) {
      CMat hc = h0.leftCols(d - 1), bc = branch.leftCols(d - 1);
      const CMat hc_sum = h_sum.leftCols(d - 1);
      CMat y = make<CMat>(rows, d - 1), y_ref = make<CMat>(rows, d - 1);
      RmsNormSaved<S> saved(rows), saved_ref(rows);
      prenorm::crms_norm_add_forward(hc, bc, y, eps, &saved);
      prenorm::crms_norm_forward(hc_sum, y_ref, eps, &saved_ref);
      EXPECT_BITWISE(hc, hc_sum);
      EXPECT_BITWISE(y, y_ref);
      EXPECT_BITWISE(saved.rrms, saved_ref.rrms);
    }
  }
}

// ---------------------------------------------------------------------------
// In-place forms equal the out-of-place ones.
// ---------------------------------------------------------------------------

TYPED_TEST(OpsNorm, InPlaceEqualsOutOfPlace) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = S(1e-3);
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d), y = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);

    Mat z = x;
    prenorm::layer_norm_forward(x, gamma, beta, y, eps);
    prenorm::layer_normalize(z, gamma, beta, eps);
    EXPECT_BITWISE(z, y);
    z = x;
    prenorm::layer_norm_forward(x, y, eps);
    prenorm::layer_normalize(z, eps);
    EXPECT_BITWISE(z, y);
    z = x;
    prenorm::rms_norm_forward(x, y, eps);
    prenorm::rms_normalize(z, eps);
    EXPECT_BITWISE(z, y);
    z = x;
    prenorm::rms_norm_forward(x, gamma, y, eps);
    prenorm::rms_normalize(z, gamma, eps);
    EXPECT_BITWISE(z, y);
    // In place on a block of a larger matrix.
    RowMatrix<S> big = RowMatrix<S>::Zero(rows + 2, d + 3);
    big.block(1, 1, rows, d) = x;
    prenorm::rms_normalize(big.block(1, 1, rows, d), gamma, eps);
    EXPECT_BITWISE(big.block(1, 1, rows, d), y);
    if (d >= 2) {
      const CMat xc = x.leftCols(d - 1);
      CMat yc = make<CMat>(rows, d - 1), zc = xc;
      prenorm::crms_norm_forward(xc, yc, eps);
      prenorm::crms_normalize(zc, eps);
      EXPECT_BITWISE(zc, yc);
    }
  }
}

// ---------------------------------------------------------------------------
// A row's result does not depend on the rows around it: the forwards write a
// row in the same loop that reduces the next one, and the first and last rows
// of a block take other code paths. All rows in one call must equal each row
// normalized alone, bitwise.
// ---------------------------------------------------------------------------

TYPED_TEST(OpsNorm, RowsInOneCallEqualRowsAlone) {
  using S = typename TestFixture::S;
  using Mat = typename TestFixture::Mat;
  using CMat = typename TestFixture::CMat;
  using Vec = typename TestFixture::Vec;
  const Index rows = TestFixture::kRows;
  const S eps = this->eps();
  for (const Index d : TestFixture::widths()) {
    Mat x = make<Mat>(rows, d), branch = make<Mat>(rows, d);
    fill_rows(x, this->rng);
    fill_rows(branch, this->rng);
    Vec gamma = make_vector<Vec>(d), beta = make_vector<Vec>(d);
    fill_vector(gamma, this->rng, 1.0, 0.3);
    fill_vector(beta, this->rng, 0.0, 0.3);

    // run(in, out, r0) normalizes the rows of `in` (rows r0.. of the problem) into
    // `out`. Compares one call over all rows with one call per row.
    const auto check = [&](const auto& in, auto run, const char* what) {
      using M = std::decay_t<decltype(in)>;
      M all = in, alone = in;
      M in_all = in, in_alone = in;  // the fused forms update their input
      run(in_all, all, 0);
      for (Index r = 0; r < rows; ++r) {
        auto out_row = alone.middleRows(r, 1);
        auto in_row = in_alone.middleRows(r, 1);
        run(in_row, out_row, r);
      }
      EXPECT_EQ(bitwise_mismatches(all, alone), 0) << what << ", d = " << d;
      EXPECT_EQ(bitwise_mismatches(in_all, in_alone), 0) << what << " (input), d = " << d;
    };
    check(x, [&](auto& in, auto& out, Index) { prenorm::layer_norm_forward(in, gamma, beta, out, eps); },
          "layer_norm_forward");
    check(x, [&](auto& in, auto& out, Index) { prenorm::layer_norm_forward(in, out, eps); },
          "layer_norm_forward without affine");
    check(x, [&](auto& in, auto& out, Index) { prenorm::rms_norm_forward(in, out, eps); },
          "rms_norm_forward");
    check(x, [&](auto& in, auto& out, Index) { prenorm::rms_norm_forward(in, gamma, out, eps); },
          "rms_norm_forward with gamma");
    check(x, [&](auto& in, auto& out, Index r0) {
      prenorm::layer_norm_add_forward(in, branch.middleRows(r0, in.rows()), gamma, beta, out, eps);
    }, "layer_norm_add_forward");
    check(x, [&](auto& in, auto& out, Index r0) {
      prenorm::rms_norm_add_forward(in, branch.middleRows(r0, in.rows()), out, eps);
    }, "rms_norm_add_forward");
    if (d >= 2) {
      const CMat xc = x.leftCols(d - 1), bc = branch.leftCols(d - 1);
      check(xc, [&](auto& in, auto& out, Index) { prenorm::crms_norm_forward(in, out, eps); },
            "crms_norm_forward");
      check(xc, [&](auto& in, auto& out, Index r0) {
        prenorm::crms_norm_add_forward(in, bc.middleRows(r0, in.rows()), out, eps);
      }, "crms_norm_add_forward");
    }
  }
}

// ---------------------------------------------------------------------------
// Numerics: LayerNorm stays accurate when |mean| >> std.
// ---------------------------------------------------------------------------

TEST(OpsNormNumerics, LayerNormLargeMeanFloat) {
  constexpr Index d = 4096, rows = 16;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 1.0);
  RowMatrix<float> x(rows, d);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < d; ++c) x(r, c) = static_cast<float>(1e4 + normal(rng));
  const float eps = 1e-5f;
  RowMatrix<float> y(rows, d);
  LayerNormSaved<float> saved(rows);
  prenorm::layer_norm_forward(x, y, eps, &saved);
  const LayerNormRef ref = ref_layer_norm(to_ld(x), nullptr, nullptr, eps);
  const LD err = max_abs_diff(y, ref.y);

  // For contrast: the one-pass E[x^2] - E[x]^2 in float.
  RowMatrix<float> naive(rows, d);
  for (Index r = 0; r < rows; ++r) {
    float s = 0, sq = 0;
    for (Index c = 0; c < d; ++c) {
      s += x(r, c);
      sq += x(r, c) * x(r, c);
    }
    const float mean = s / d, var = std::max(sq / d - mean * mean, 0.0f);
    for (Index c = 0; c < d; ++c) naive(r, c) = (x(r, c) - mean) / std::sqrt(var + eps);
  }
  std::cout << "[ numerics ] float LayerNorm, d = 4096, mean 1e4, std 1: max |y - ref| = "
            << double(err) << " (E[x^2]-E[x]^2 in float: " << double(max_abs_diff(naive, ref.y))
            << ")\n";
  RecordProperty("layer_norm_large_mean_max_abs_error", std::to_string(double(err)));
  EXPECT_LE(err, 1e-3) << "max |y - ref| = " << double(err);
  const LD rstd_err = max_rel_diff(saved.rstd, ref.rstd);
  EXPECT_LE(rstd_err, 1e-4) << "max relative rstd error " << double(rstd_err);
}

// ---------------------------------------------------------------------------
// Bad inputs (dynamic widths: fixed-width mismatches are compile errors, see
// tests/compile_fail/).
// ---------------------------------------------------------------------------

// error_message and expect_error: tests/support/ops_test_util.hpp.

template <class S>
class OpsNormErrors : public ::testing::Test {};
TYPED_TEST_SUITE(OpsNormErrors, Scalars);

TYPED_TEST(OpsNormErrors, WidthMismatchNamesOperatorAndSizes) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  using V = Vector<S>;
  const Index rows = 4, d = 768;
  const M x = M::Random(rows, d), x_short = M::Random(rows, d - 1);
  M y(rows, d), y_short(rows, d - 1), y_rows(rows + 1, d);
  const V g = V::Ones(d), g_short = V::Ones(d - 1);
  LayerNormSaved<S> ln_saved(rows), ln_bad(rows + 2);
  RmsNormSaved<S> rms_saved(rows), rms_bad(rows - 1);
  const S eps = S(1e-5);

  // LayerNorm forward.
  expect_error([&] { prenorm::layer_norm_forward(x, g_short, g, y, eps); },
               {"prenorm::layer_norm_forward", "gamma", "767", "768"}, "LN gamma");
  expect_error([&] { prenorm::layer_norm_forward(x, g, g_short, y, eps); },
               {"prenorm::layer_norm_forward", "beta", "767", "768"}, "LN beta");
  expect_error([&] { prenorm::layer_norm_forward(x, g, g, y_short, eps); },
               {"prenorm::layer_norm_forward", "y", "767", "768"}, "LN y width");
  expect_error([&] { prenorm::layer_norm_forward(x, y_short, eps); },
               {"prenorm::layer_norm_forward", "y", "767", "768"}, "LN (no affine) y width");
  expect_error([&] { prenorm::layer_norm_forward(x, g, g, y_rows, eps); },
               {"prenorm::layer_norm_forward", "y", "5", "4"}, "LN y rows");
  expect_error([&] { prenorm::layer_norm_forward(x, g, g, y, eps, &ln_bad); },
               {"prenorm::layer_norm_forward", "saved.mean", "6", "4"}, "LN saved");
  {
    LayerNormSaved<S> half(rows);
    half.rstd.resize(rows + 1);
    expect_error([&] { prenorm::layer_norm_forward(x, y, eps, &half); },
                 {"prenorm::layer_norm_forward", "saved.rstd", "5", "4"}, "LN saved.rstd");
    half.rstd.resize(rows);
    half.delta.resize(rows + 3);
    expect_error([&] { prenorm::layer_norm_forward(x, y, eps, &half); },
                 {"prenorm::layer_norm_forward", "saved.delta", "7", "4"}, "LN saved.delta");
  }
  // RMSNorm forward.
  expect_error([&] { prenorm::rms_norm_forward(x, g_short, y, eps); },
               {"prenorm::rms_norm_forward", "gamma", "767", "768"}, "RMS gamma");
  expect_error([&] { prenorm::rms_norm_forward(x, y_short, eps); },
               {"prenorm::rms_norm_forward", "y", "767", "768"}, "RMS y");
  expect_error([&] { prenorm::rms_norm_forward(x, y, eps, &rms_bad); },
               {"prenorm::rms_norm_forward", "saved.rrms", "3", "4"}, "RMS saved");
  {
    const V g3 = V::Ones(3);
    EXPECT_EQ(error_message([&] { prenorm::rms_norm_forward(x, g3, y, eps); }),
              "prenorm::rms_norm_forward: gamma has 3 elements, expected 768 (the width of x)");
  }
  // CRMSNorm forward.
  expect_error([&] { prenorm::crms_norm_forward(x_short, y, eps); },
               {"prenorm::crms_norm_forward", "y", "768", "767"}, "CRMS y");
  expect_error([&] { prenorm::crms_norm_forward(x_short, y_short, eps, &rms_bad); },
               {"prenorm::crms_norm_forward", "saved.rrms", "3", "4"}, "CRMS saved");
  // Fused add + norm.
  {
    M h = x, h_short = x_short;
    expect_error([&] { prenorm::layer_norm_add_forward(h, x_short, g, g, y, eps); },
                 {"prenorm::layer_norm_add_forward", "branch", "767", "768"}, "LN add branch");
    expect_error([&] { prenorm::layer_norm_add_forward(h, x, g, g_short, y, eps); },
                 {"prenorm::layer_norm_add_forward", "beta", "767", "768"}, "LN add beta");
    expect_error([&] { prenorm::layer_norm_add_forward(h, x, y_short, eps); },
                 {"prenorm::layer_norm_add_forward", "y", "767", "768"}, "LN add y");
    expect_error([&] { prenorm::layer_norm_add_forward(h, x, y, eps, &ln_bad); },
                 {"prenorm::layer_norm_add_forward", "saved.mean", "6", "4"}, "LN add saved");
    expect_error([&] { prenorm::rms_norm_add_forward(h, x, g_short, y, eps); },
                 {"prenorm::rms_norm_add_forward", "gamma", "767", "768"}, "RMS add gamma");
    expect_error([&] { prenorm::rms_norm_add_forward(h, x_short, y, eps); },
                 {"prenorm::rms_norm_add_forward", "branch", "767", "768"}, "RMS add branch");
    expect_error([&] { prenorm::rms_norm_add_forward(h, x, y, eps, &rms_bad); },
                 {"prenorm::rms_norm_add_forward", "saved.rrms", "3", "4"}, "RMS add saved");
    expect_error([&] { prenorm::crms_norm_add_forward(h_short, x, y_short, eps); },
                 {"prenorm::crms_norm_add_forward", "branch", "768", "767"}, "CRMS add branch");
    expect_error([&] { prenorm::crms_norm_add_forward(h_short, x_short, y, eps); },
                 {"prenorm::crms_norm_add_forward", "y", "768", "767"}, "CRMS add y");
    // Nothing was modified by the failed calls.
    EXPECT_EQ(bitwise_mismatches(h, x), 0);
    EXPECT_EQ(bitwise_mismatches(h_short, x_short), 0);
  }
  // compress / decompress.
  expect_error([&] { prenorm::compress(x, y); }, {"prenorm::compress", "y", "768", "767"},
               "compress");
  expect_error([&] { prenorm::decompress(x_short, y_short); },
               {"prenorm::decompress", "y", "767", "768"}, "decompress");
  // A column-major output (its rows are not contiguous) is rejected.
  {
    Eigen::Matrix<S, Dynamic, Dynamic, Eigen::ColMajor> y_col(rows, d);
    expect_error([&] { prenorm::rms_norm_forward(x, y_col, eps); },
                 {"prenorm::rms_norm_forward", "y", "row-major"}, "column-major y");
  }
}

TYPED_TEST(OpsNormErrors, BadEpsilon) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  const Index rows = 3, d = 8;
  const M x = M::Random(rows, d), xc = M::Random(rows, d - 1);
  const Vector<S> g = Vector<S>::Ones(d);
  M y(rows, d), yc(rows, d - 1);
  for (const S eps : {S(0), S(-1e-5), std::numeric_limits<S>::quiet_NaN(),
                      std::numeric_limits<S>::infinity(), -std::numeric_limits<S>::infinity()}) {
    M h = x;
    expect_error([&] { prenorm::layer_norm_forward(x, g, g, y, eps); },
                 {"prenorm::layer_norm_forward", "epsilon"}, "LN eps");
    expect_error([&] { prenorm::layer_norm_forward(x, y, eps); },
                 {"prenorm::layer_norm_forward", "epsilon"}, "LN eps");
    expect_error([&] { prenorm::layer_normalize(h, eps); },
                 {"prenorm::layer_norm_forward", "epsilon"}, "layer_normalize eps");
    expect_error([&] { prenorm::rms_norm_forward(x, y, eps); },
                 {"prenorm::rms_norm_forward", "epsilon"}, "RMS eps");
    expect_error([&] { prenorm::rms_norm_forward(x, g, y, eps); },
                 {"prenorm::rms_norm_forward", "epsilon"}, "RMS gamma eps");
    expect_error([&] { prenorm::crms_norm_forward(xc, yc, eps); },
                 {"prenorm::crms_norm_forward", "epsilon"}, "CRMS eps");
    expect_error([&] { prenorm::layer_norm_add_forward(h, x, g, g, y, eps); },
                 {"prenorm::layer_norm_add_forward", "epsilon"}, "LN add eps");
    expect_error([&] { prenorm::rms_norm_add_forward(h, x, y, eps); },
                 {"prenorm::rms_norm_add_forward", "epsilon"}, "RMS add eps");
    M hc = xc;
    expect_error([&] { prenorm::crms_norm_add_forward(hc, xc, yc, eps); },
                 {"prenorm::crms_norm_add_forward", "epsilon"}, "CRMS add eps");
    EXPECT_EQ(bitwise_mismatches(h, x), 0) << "a failed call modified h";
    EXPECT_EQ(bitwise_mismatches(hc, xc), 0) << "a failed call modified h";
  }
}

TYPED_TEST(OpsNormErrors, CrmsNormNeedsWidthTwo) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  const Index rows = 3;
  M x(rows, 0), y(rows, 0), y1(rows, 1);
  RmsNormSaved<S> saved(rows);
  expect_error([&] { prenorm::crms_norm_forward(x, y, S(1e-5), &saved); },
               {"prenorm::crms_norm_forward", "d = 1"}, "CRMS d = 1");
  expect_error([&] { prenorm::crms_normalize(x, S(1e-5)); }, {"prenorm::crms_norm_forward", "d = 1"},
               "crms_normalize d = 1");
  expect_error([&] { prenorm::crms_norm_add_forward(x, x, y, S(1e-5)); },
               {"prenorm::crms_norm_add_forward", "d = 1"}, "CRMS add d = 1");
  expect_error([&] { prenorm::decompress(x, y1); }, {"prenorm::decompress", "d = 1"},
               "decompress d = 1");
  expect_error([&] { prenorm::compress(y1, x); }, {"prenorm::compress", "d = 1"},
               "compress d = 1");
  // d = 2 is the smallest valid width.
  M x1 = M::Random(rows, 1), z1(rows, 1);
  EXPECT_NO_THROW(prenorm::crms_norm_forward(x1, z1, S(1e-5)));
}

TYPED_TEST(OpsNormErrors, ZeroRowsIsANoOp) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  const Index d = 768;
  M x(0, d), y(0, d), xc(0, d - 1), yc(0, d - 1);
  const Vector<S> g = Vector<S>::Ones(d);
  LayerNormSaved<S> ln_saved(0);
  RmsNormSaved<S> rms_saved(0);
  const S eps = S(1e-5);
  EXPECT_NO_THROW(prenorm::layer_norm_forward(x, g, g, y, eps, &ln_saved));
  EXPECT_NO_THROW(prenorm::layer_norm_forward(x, y, eps));
  EXPECT_NO_THROW(prenorm::layer_normalize(x, g, g, eps));
  EXPECT_NO_THROW(prenorm::rms_norm_forward(x, y, eps, &rms_saved));
  EXPECT_NO_THROW(prenorm::rms_norm_forward(x, g, y, eps));
  EXPECT_NO_THROW(prenorm::rms_normalize(x, eps));
  EXPECT_NO_THROW(prenorm::crms_norm_forward(xc, yc, eps, &rms_saved));
  EXPECT_NO_THROW(prenorm::crms_normalize(xc, eps));
  EXPECT_NO_THROW(prenorm::layer_norm_add_forward(x, x, g, g, y, eps, &ln_saved));
  EXPECT_NO_THROW(prenorm::rms_norm_add_forward(x, x, y, eps, &rms_saved));
  EXPECT_NO_THROW(prenorm::crms_norm_add_forward(xc, xc, yc, eps, &rms_saved));
  EXPECT_NO_THROW(prenorm::compress(x, yc));
  EXPECT_NO_THROW(prenorm::decompress(xc, y));
  EXPECT_EQ(y.rows(), 0);
  EXPECT_EQ(ln_saved.mean.size(), 0);
  EXPECT_EQ(rms_saved.rrms.size(), 0);
}

// NaN or Inf in one row: that row's output is non-finite, every other row is
// exactly the clean result, and nothing throws. Run with enough rows for the
// parallel path, with the current thread count.
TYPED_TEST(OpsNormErrors, NonFiniteRowStaysInItsRow) {
  using S = TypeParam;
  using M = RowMatrix<S>;
  const Index rows = 64, d = 768;  // 64 x 768 is above the parallel threshold
  std::mt19937_64 rng(7);
  M clean(rows, d);
  fill_rows(clean, rng);
  const Vector<S> g = Vector<S>::Ones(d), b = Vector<S>::Zero(d);
  const S eps = S(1e-5);
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();
  const std::vector<std::pair<Index, S>> bad = {{3, nan}, {17, inf}, {40, -inf}};
  M dirty = clean;
  for (const auto& [row, value] : bad) dirty(row, 100 + row) = value;
  // One NaN in the very first element of a row (LayerNorm shifts by x_0).
  dirty(50, 0) = nan;

  auto is_bad_row = [&](Index r) {
    if (r == 50) return true;
    for (const auto& [row, value] : bad)
      if (row == r) return true;
    return false;
  };
  auto check = [&](const M& y_clean, const M& y_dirty, const char* op) {
    for (Index r = 0; r < rows; ++r) {
      if (is_bad_row(r)) {
        EXPECT_FALSE(y_dirty.row(r).allFinite()) << op << ": row " << r << " is finite";
      } else {
        EXPECT_EQ(bitwise_mismatches(y_dirty.row(r), y_clean.row(r)), 0)
            << op << ": clean row " << r << " changed";
      }
    }
  };

  M y_clean(rows, d), y_dirty(rows, d);
  EXPECT_NO_THROW(prenorm::layer_norm_forward(clean, g, b, y_clean, eps));
  EXPECT_NO_THROW(prenorm::layer_norm_forward(dirty, g, b, y_dirty, eps));
  check(y_clean, y_dirty, "layer_norm_forward");
  EXPECT_NO_THROW(prenorm::rms_norm_forward(clean, y_clean, eps));
  EXPECT_NO_THROW(prenorm::rms_norm_forward(dirty, y_dirty, eps));
  check(y_clean, y_dirty, "rms_norm_forward");
  {
    M yc_clean(rows, d - 1), yc_dirty(rows, d - 1);
    EXPECT_NO_THROW(prenorm::crms_norm_forward(clean.leftCols(d - 1), yc_clean, eps));
    EXPECT_NO_THROW(prenorm::crms_norm_forward(dirty.leftCols(d - 1), yc_dirty, eps));
    for (Index r = 0; r < rows; ++r) {
      if (is_bad_row(r)) {
        EXPECT_FALSE(yc_dirty.row(r).allFinite()) << "crms_norm_forward: row " << r;
      } else {
        EXPECT_EQ(bitwise_mismatches(yc_dirty.row(r), yc_clean.row(r)), 0)
            << "crms_norm_forward: clean row " << r << " changed";
      }
    }
  }
  // Fused: the bad value arrives through the branch.
  {
    const M zero = M::Zero(rows, d);
    M h_clean = zero, h_dirty = zero;
    EXPECT_NO_THROW(prenorm::layer_norm_add_forward(h_clean, clean, g, b, y_clean, eps));
    EXPECT_NO_THROW(prenorm::layer_norm_add_forward(h_dirty, dirty, g, b, y_dirty, eps));
    check(y_clean, y_dirty, "layer_norm_add_forward");
    h_clean = zero;
    h_dirty = zero;
    EXPECT_NO_THROW(prenorm::rms_norm_add_forward(h_clean, clean, y_clean, eps));
    EXPECT_NO_THROW(prenorm::rms_norm_add_forward(h_dirty, dirty, y_dirty, eps));
    check(y_clean, y_dirty, "rms_norm_add_forward");
  }
}

}  // namespace

// Rows of width 0 cannot be normalized: an error, not a read past the row.
TEST(OpsNormBadInput, ZeroWidthRowsAreRefused) {
  prenorm::RowMatrix<float> x(3, 0), y(3, 0), h(3, 0), dx(3, 0);
  prenorm::LayerNormSaved<float> ln_saved(3);
  prenorm::RmsNormSaved<float> rms_saved(3);
  const auto expect_message = [](auto&& call, const std::string& op) {
    try {
      call();
      FAIL() << op << " accepted rows of width 0";
    } catch (const prenorm::Error& e) {
      EXPECT_NE(std::string(e.what()).find("prenorm::" + op + ": x has 3 rows of width 0"),
                std::string::npos)
          << e.what();
    }
  };
  expect_message([&] { prenorm::layer_norm_forward(x, y); }, "layer_norm_forward");
  expect_message([&] { prenorm::rms_norm_forward(x, y); }, "rms_norm_forward");
  expect_message([&] { prenorm::layer_norm_backward(y, x, ln_saved, dx); }, "layer_norm_backward");
  expect_message([&] { prenorm::rms_norm_backward(y, x, rms_saved, dx); }, "rms_norm_backward");
  EXPECT_THROW(prenorm::rms_norm_add_forward(h, x, y), prenorm::Error);
}
