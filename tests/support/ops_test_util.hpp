// Helpers shared by the normalization operator tests: ops_norm_test.cpp (the
// forwards) and ops_norm_backward_test.cpp (the backwards). Builders and
// fillers for fixed and dynamic sizes, long double copies, max differences
// and bitwise comparisons, the tolerance, the typed Scalar x width fixture,
// and the checks of error messages.
//
// Everything is in namespace prenorm_test; a test file brings it in with
// `using namespace prenorm_test;`. The macros expect a `d` (the width) in
// scope at the point of use: it is printed on failure.

#pragma once

#include <gtest/gtest.h>

#include <prenorm/ops.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace prenorm_test {

using prenorm::Dynamic;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;
using LD = long double;

// ---------------------------------------------------------------------------
// Builders, fillers, long double copies
// ---------------------------------------------------------------------------

// A matrix or vector of the given shape (works for fixed and dynamic sizes).
template <class M>
M make(Index rows, Index cols) {
  M m;
  m.resize(rows, cols);
  return m;
}
template <class V>
V make_vector(Index n) {
  V v;
  v.resize(n);
  return v;
}

// Fills m with N(mean_r, std_r^2) per row, where each row gets its own mean
// (in [-offset, offset]) and std (in [0.5, 2]), so centering matters.
template <class M>
void fill_rows(M& m, std::mt19937_64& rng, double offset = 2.0) {
  std::uniform_real_distribution<double> mean_dist(-offset, offset), std_dist(0.5, 2.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index r = 0; r < m.rows(); ++r) {
    const double mean = mean_dist(rng), stddev = std_dist(rng);
    for (Index c = 0; c < m.cols(); ++c)
      m(r, c) = static_cast<typename M::Scalar>(mean + stddev * normal(rng));
  }
}

// Any matrix or vector, copied to long double.
template <class Derived>
RowMatrix<LD> to_ld(const Eigen::MatrixBase<Derived>& m) {
  RowMatrix<LD> out(m.rows(), m.cols());
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out(r, c) = static_cast<LD>(m(r, c));
  return out;
}
template <class Derived>
Vector<LD> to_ld_vector(const Eigen::MatrixBase<Derived>& v) {
  Vector<LD> out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = static_cast<LD>(v[i]);
  return out;
}

// ---------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------

// max |a - b| over all coefficients, in long double; infinity on a shape mismatch.
template <class A, class B>
LD max_abs_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<LD>::infinity();
  LD m = 0;
  for (Index r = 0; r < a.rows(); ++r)
    for (Index c = 0; c < a.cols(); ++c) {
      const LD diff = std::fabs(static_cast<LD>(a(r, c)) - static_cast<LD>(b(r, c)));
      if (!(diff <= m)) m = diff;  // also catches NaN
    }
  return m;
}

// Number of coefficients whose bytes differ (0: bitwise equal). -1 on a shape mismatch.
template <class A, class B>
Index bitwise_mismatches(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>);
  if (a.rows() != b.rows() || a.cols() != b.cols()) return -1;
  Index count = 0;
  for (Index r = 0; r < a.rows(); ++r)
    for (Index c = 0; c < a.cols(); ++c) {
      const typename A::Scalar x = a(r, c), y = b(r, c);
      if (std::memcmp(&x, &y, sizeof x) != 0) ++count;
    }
  return count;
}

// Tolerance for an O(1) output of a width-d row reduction in Scalar (float:
// 3e-5 at d = 768, double: 6e-14): a few ulps, growing like sqrt(d). The observed
// errors stay below a tenth of it. The backward tests scale it by the largest
// magnitude of the expected values (EXPECT_CLOSE_SCALED there).
template <class Scalar>
LD tolerance(Index d) {
  const LD ulp = std::numeric_limits<Scalar>::epsilon();
  return 8 * ulp * (4 + std::sqrt(static_cast<LD>(d)));
}

#define EXPECT_BITWISE(actual, expected)                                                 \
  EXPECT_EQ(::prenorm_test::bitwise_mismatches((actual), (expected)), 0)                 \
      << #actual " and " #expected " differ bitwise (d = " << d                          \
      << ", max |diff| = " << double(::prenorm_test::max_abs_diff((actual), (expected))) \
      << ")"

// ---------------------------------------------------------------------------
// Typed fixture: Scalar x width (Dynamic: every width, plus width 1). Each test
// file derives its own fixture (the test suite's name) with its own seed:
//   template <class C> class OpsNorm : public NormFixture<C, 0x5eed> {};
// ---------------------------------------------------------------------------

template <class S, int W>
struct Config {
  using Scalar = S;
  static constexpr int kWidth = W;
};

template <class C, int kSeed>
class NormFixture : public ::testing::Test {
 public:
  using S = typename C::Scalar;
  static constexpr int W = C::kWidth;
  static constexpr int CW = (W == Dynamic ? Dynamic : W - 1);  // compressed width
  using Mat = RowMatrix<S, W>;
  using CMat = RowMatrix<S, CW>;
  using Vec = Vector<S, W>;

  // Model widths d to test. Width 1 is dynamic only (fixed width 1 is unsupported).
  static std::vector<Index> widths() {
    if constexpr (W == Dynamic) {
      return {1, 2, 3, 7, 9, 17, 64, 191, 767, 768, 4096};
    } else {
      return {W};
    }
  }
  static constexpr Index kRows = 7;
  static S eps() { return S(1e-5); }

  std::mt19937_64 rng{kSeed + W};
};

// The kernels take the width at run time; a fixed width W only changes the
// Eigen types at the API. So the fixed widths are one per kind: 2 (the
// compressed width is 1), 7 (shorter than a packet, a tail only) and 768 (whole
// packets; compressed 767, a tail). Dynamic runs every width of widths().
using Configs =
    ::testing::Types<Config<float, Dynamic>, Config<double, Dynamic>, Config<float, 2>,
                     Config<double, 2>, Config<float, 7>, Config<double, 7>,
                     Config<float, 768>, Config<double, 768>>;

class ConfigNames {
 public:
  template <class C>
  static std::string GetName(int) {
    const std::string scalar = std::is_same_v<typename C::Scalar, float> ? "float" : "double";
    return scalar + "_" + (C::kWidth == Dynamic ? std::string("dynamic") : std::to_string(C::kWidth));
  }
};

// The scalars of the untyped-width suites (errors, thread determinism).
using Scalars = ::testing::Types<float, double>;

// ---------------------------------------------------------------------------
// Error messages
// ---------------------------------------------------------------------------

// The message of the prenorm::Error that f throws ("<no exception>" if none).
inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const prenorm::Error& e) {
    // prenorm::Error is a std::invalid_argument.
    const std::invalid_argument& base = e;
    return base.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no exception>";
}

// f throws a prenorm::Error whose message contains every one of parts.
inline void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts,
                         const char* what) {
  const std::string message = error_message(f);
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << what << ": message \"" << message << "\" lacks \"" << part << "\"";
}

}  // namespace prenorm_test
