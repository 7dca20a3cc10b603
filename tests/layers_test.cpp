// Tests of the layers (include/prenorm/layers/) and the ops they use
// (ops/activation.hpp, ops/softmax.hpp): Linear, Embedding, MultiHeadAttention
// (with and without a causal mask, through a KV cache), Mlp, both GELUs and
// softmax.
//
// Every layer is held against a plain explicit-loop reference in double
// written here. Typed over float and double; a failure prints the max
// difference. The blocks and whole models are tested in models_test.cpp.

#include <gtest/gtest.h>

#include <prenorm/layers.hpp>
#include <prenorm/ops/activation.hpp>
#include <prenorm/ops/softmax.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using prenorm::Activation;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;
using Mat = std::vector<std::vector<double>>;  // reference matrices, [rows][cols]

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

template <class M>
void fill(M& m, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<typename M::Scalar>(normal(rng));
}

template <class Derived>
Mat to_ref(const Eigen::MatrixBase<Derived>& m) {
  Mat out(m.rows(), std::vector<double>(m.cols()));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = static_cast<double>(m(r, c));
  return out;
}

template <class V>
std::vector<double> to_ref_vector(const V& v) {
  std::vector<double> out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = static_cast<double>(v[i]);
  return out;
}

// Max |actual - expected| over all elements (shapes must agree).
template <class Derived>
double max_diff(const Eigen::MatrixBase<Derived>& actual, const Mat& expected) {
  EXPECT_EQ(actual.rows(), Index(expected.size()));
  double diff = 0;
  for (Index r = 0; r < actual.rows() && r < Index(expected.size()); ++r) {
    EXPECT_EQ(actual.cols(), Index(expected[r].size()));
    for (Index c = 0; c < actual.cols() && c < Index(expected[r].size()); ++c)
      diff = std::max(diff, std::abs(static_cast<double>(actual(r, c)) - expected[r][c]));
  }
  return diff;
}

// Success when max |actual - expected| <= tol; the failure message names the max difference.
template <class Derived>
::testing::AssertionResult close_to(const Eigen::MatrixBase<Derived>& actual, const Mat& expected,
                                    double tol) {
  const double diff = max_diff(actual, expected);
  if (diff <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| = " << diff << " > tolerance " << tol;
}
#define EXPECT_CLOSE(actual, expected, tol) EXPECT_TRUE(close_to(actual, expected, tol))

// Expects a prenorm::Error whose message contains `needle`.
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected prenorm::Error containing \"" << needle << "\"";
  } catch (const prenorm::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << needle;
  }
}

// Tolerance per dtype, for values of order one.
template <class S>
constexpr double tol() {
  return std::is_same_v<S, float> ? 2e-5 : 1e-12;
}

// --- References ------------------------------------------------------------

Mat ref_linear(const Mat& x, const Mat& w, const std::vector<double>& b) {
  Mat y(x.size(), std::vector<double>(w.size()));
  for (std::size_t t = 0; t < x.size(); ++t)
    for (std::size_t o = 0; o < w.size(); ++o) {
      double acc = b.empty() ? 0.0 : b[o];
      for (std::size_t i = 0; i < w[o].size(); ++i) acc += w[o][i] * x[t][i];
      y[t][o] = acc;
    }
  return y;
}

double ref_gelu_tanh(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
double ref_gelu_erf(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

// softmax of v[0, limit), zeros after.
std::vector<double> ref_softmax(const std::vector<double>& v, std::size_t limit) {
  std::vector<double> out(v.size(), 0.0);
  if (limit == 0) return out;
  double max = v[0];
  for (std::size_t i = 0; i < limit; ++i) max = std::max(max, v[i]);
  double sum = 0;
  for (std::size_t i = 0; i < limit; ++i) sum += out[i] = std::exp(v[i] - max);
  for (std::size_t i = 0; i < limit; ++i) out[i] /= sum;
  return out;
}

// Attention of `batch` sequences of T tokens each, x [batch*T][width].
template <class S>
Mat ref_attention(const prenorm::MultiHeadAttention<S>& a, const Mat& x, Index batch) {
  const Index T = Index(x.size()) / batch, H = a.heads, hd = a.head_dim, I = H * hd;
  const Mat qkv = ref_linear(x, to_ref(a.qkv.weight), to_ref_vector(a.qkv.bias));
  Mat ctx(x.size(), std::vector<double>(I, 0.0));
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index t = 0; t < T; ++t) {
        std::vector<double> s(T);
        for (Index u = 0; u < T; ++u) {
          double dot = 0;
          for (Index j = 0; j < hd; ++j) dot += qkv[b * T + t][h * hd + j] * qkv[b * T + u][I + h * hd + j];
          s[u] = dot / std::sqrt(double(hd));
        }
        const std::vector<double> p = ref_softmax(s, a.causal ? t + 1 : T);
        for (Index u = 0; u < T; ++u)
          for (Index j = 0; j < hd; ++j) ctx[b * T + t][h * hd + j] += p[u] * qkv[b * T + u][2 * I + h * hd + j];
      }
  return ref_linear(ctx, to_ref(a.out.weight), to_ref_vector(a.out.bias));
}

template <class S>
Mat ref_mlp(const prenorm::Mlp<S>& m, const Mat& x) {
  Mat hidden = ref_linear(x, to_ref(m.fc.weight), to_ref_vector(m.fc.bias));
  for (auto& row : hidden)
    for (double& v : row)
      v = m.activation == Activation::GeluTanh ? ref_gelu_tanh(v) : ref_gelu_erf(v);
  return ref_linear(hidden, to_ref(m.proj.weight), to_ref_vector(m.proj.bias));
}

template <class S>
class LayersTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LayersTest, Scalars);

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, GeluMatchesFormulas) {
  using S = TypeParam;
  std::mt19937_64 rng(1);
  RowMatrix<S> x(7, 37);
  fill(x, rng, 3.0);
  x(0, 0) = S(-30);  // far tails: exactly 0 and x
  x(0, 1) = S(30);
  x(0, 2) = S(0);
  Mat tanh_ref = to_ref(x), erf_ref = to_ref(x);
  for (auto& row : tanh_ref) for (double& v : row) v = ref_gelu_tanh(v);
  for (auto& row : erf_ref) for (double& v : row) v = ref_gelu_erf(v);

  RowMatrix<S> y(7, 37);
  prenorm::gelu_tanh_forward(x, y);
  EXPECT_CLOSE(y, tanh_ref, 4 * tol<S>());
  prenorm::gelu_erf_forward(x, y);
  EXPECT_CLOSE(y, erf_ref, 4 * tol<S>());

  // In place, and on a block of a larger matrix.
  RowMatrix<S> big = RowMatrix<S>::Zero(9, 40);
  big.block(1, 2, 7, 37) = x;
  prenorm::activation_forward(Activation::GeluTanh, big.block(1, 2, 7, 37), big.block(1, 2, 7, 37));
  EXPECT_CLOSE(big.block(1, 2, 7, 37), tanh_ref, 4 * tol<S>());
  EXPECT_EQ(big.row(0).squaredNorm(), S(0));
  RowMatrix<S> z = x;
  prenorm::activation_forward(Activation::GeluErf, z, z);
  EXPECT_CLOSE(z, erf_ref, 4 * tol<S>());
}

// Float GELUs on [-10, 10] in steps of 1/256 against the formulas in double:
// within a few float ulp of max(1, |x|). Both use Eigen's vectorized
// approximations (tanh, erf); the two GELUs differ by up to 5e-4, so using
// one for the other fails here.
TEST(Activation, FloatGelusAreAccurateOverTheirRange) {
  const Index n = 20 * 256 + 1;
  RowMatrix<float> x(1, n), y(1, n);
  for (Index i = 0; i < n; ++i) x(0, i) = -10.0f + float(i) / 256.0f;
  for (Activation act : {Activation::GeluTanh, Activation::GeluErf}) {
    prenorm::activation_forward(act, x, y);
    double worst = 0, at = 0;
    for (Index i = 0; i < n; ++i) {
      const double v = x(0, i);
      const double ref = act == Activation::GeluTanh ? ref_gelu_tanh(v) : ref_gelu_erf(v);
      const double err = std::abs(double(y(0, i)) - ref) / std::max(1.0, std::abs(v));
      if (err > worst) worst = err, at = v;
    }
    EXPECT_LE(worst, 5e-7) << prenorm::activation_name(act) << " at x = " << at;
  }
}

TEST(Activation, Names) {
  EXPECT_EQ(prenorm::activation_name(Activation::GeluTanh), "gelu_tanh");
  EXPECT_EQ(prenorm::activation_name(Activation::GeluErf), "gelu_erf");
}

TEST(Activation, ShapeMismatchThrows) {
  RowMatrix<float> x(2, 3), y(3, 2);
  expect_error([&] { prenorm::gelu_tanh_forward(x, y); }, "prenorm::gelu_tanh_forward: y is 3 x 2, expected 2 x 3");
}

// ---------------------------------------------------------------------------
// Softmax
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, SoftmaxMatchesReference) {
  using S = TypeParam;
  std::mt19937_64 rng(2);
  RowMatrix<S> x(6, 19);
  fill(x, rng, 4.0);
  x.row(1).array() += S(1000);  // exp would overflow without the max shift
  x.row(2).array() -= S(1000);
  Mat ref = to_ref(x);
  for (auto& row : ref) row = ref_softmax(row, row.size());

  RowMatrix<S> y(6, 19);
  prenorm::softmax_forward(x, y);
  EXPECT_CLOSE(y, ref, tol<S>());
  prenorm::softmax(x);  // in place
  EXPECT_CLOSE(x, ref, tol<S>());
  for (Index r = 0; r < x.rows(); ++r) EXPECT_NEAR(double(x.row(r).sum()), 1.0, tol<S>());
}

TYPED_TEST(LayersTest, SoftmaxCausalLimit) {
  using S = TypeParam;
  std::mt19937_64 rng(3);
  RowMatrix<S> x(5, 8);
  fill(x, rng, 2.0);
  x(4, 7) = std::numeric_limits<S>::infinity();  // masked columns are never read
  const auto limit = [](Index r) { return r * 2 - 1; };  // -1 (nothing), 1, 3, 5, 7
  Mat ref = to_ref(x);
  for (std::size_t r = 0; r < ref.size(); ++r) ref[r] = ref_softmax(ref[r], std::max<Index>(0, limit(r)));

  RowMatrix<S> y(5, 8);
  prenorm::softmax_forward(x, y, limit);
  EXPECT_CLOSE(y, ref, tol<S>());
  EXPECT_EQ(y.row(0).squaredNorm(), S(0));
}

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, LinearMatchesReference) {
  using S = TypeParam;
  std::mt19937_64 rng(4);
  for (bool bias : {true, false}) {
    prenorm::Linear<S> lin(13, 7, bias);
    fill(lin.weight, rng);
    fill(lin.bias, rng);
    EXPECT_EQ(lin.in_features(), 13);
    EXPECT_EQ(lin.out_features(), 7);
    EXPECT_EQ(lin.has_bias(), bias);
    RowMatrix<S> x(5, 13), y(5, 7);
    fill(x, rng);
    lin.forward(x, y);
    const Mat ref = ref_linear(to_ref(x), to_ref(lin.weight), to_ref_vector(lin.bias));
    EXPECT_CLOSE(y, ref, 4 * tol<S>());

    // Blocks of larger matrices in and out.
    RowMatrix<S> xb(8, 20), yb = RowMatrix<S>::Zero(9, 11);
    xb.block(2, 3, 5, 13) = x;
    lin.forward(xb.block(2, 3, 5, 13), yb.block(1, 2, 5, 7));
    EXPECT_CLOSE(yb.block(1, 2, 5, 7), ref, 4 * tol<S>());
    EXPECT_EQ(yb.row(0).squaredNorm(), S(0));
  }
}

TEST(Linear, Errors) {
  prenorm::Linear<float> lin(4, 3);
  RowMatrix<float> x(2, 5), y(2, 3);
  expect_error([&] { lin.forward(x, y); },
               "prenorm::Linear::forward: x has 5 columns, expected 4 (the input features of weight (3 x 4))");
  RowMatrix<float> x2(2, 4), y2(3, 3);
  expect_error([&] { lin.forward(x2, y2); }, "prenorm::Linear::forward: y is 3 x 3, expected 2 x 3");
  expect_error([&] { lin.validate("test", "blocks[3].attn.qkv", 5, 3); },
               "prenorm::test: blocks[3].attn.qkv.weight is (3 x 4), expected (3 x 5)");
  lin.bias.resize(2);
  expect_error([&] { lin.validate("test", "x", 4, 3); }, "prenorm::test: x.bias has 2 elements, expected 3");
  RowMatrix<float> empty_x(0, 4), empty_y(0, 3);
  lin.bias.resize(3);
  lin.forward(empty_x, empty_y);  // empty input: nothing to do
}

// forward_padded and product_padded, as a Pre-CRMSNorm block's d - 1 wide
// writers and its readers use them. 47 outputs are one short of a GEMM
// register block with every x86 SIMD width (48, 24, 12 or 6 rows), so those
// shapes with 16 rows or more take the padded product; too few rows, 30
// outputs or 48 take Eigen's product. A single row of x whose depth is not a
// whole number of packets (767, 191, 33, 17, 8201 with a row over 32 KB)
// takes the masked-tail matrix-vector product, through its 8-, 4- and 1-row
// loops (47 = 5 x 8 + 4 + 3 outputs). Columns past the outputs are 0.
TYPED_TEST(LayersTest, LinearPaddedMatchesReference) {
  using S = TypeParam;
  using Product = prenorm::detail::PaddedProduct<S>;
  ASSERT_EQ(Product::padded_outputs(47), 48);
  ASSERT_EQ(Product::padded_outputs(191), 192);
  ASSERT_EQ(Product::padded_outputs(767), 768);
  EXPECT_EQ(Product::padded_outputs(48), 0);
  EXPECT_EQ(Product::padded_outputs(30), 0);
  for (Index k : {767, 1001, 3001, 191, 33}) ASSERT_TRUE(Product::realigns(k)) << k;
  for (Index k : {768, 1024, 192}) EXPECT_FALSE(Product::realigns(k)) << k;
  using Gemv = prenorm::detail::MaskedTailGemv<S>;
  for (Index k : {767, 191, 33, 17, 8201}) ASSERT_TRUE(Gemv::applies(k)) << k;
  EXPECT_FALSE(Gemv::applies(768));
  std::mt19937_64 rng(21);
  struct Shape { Index rows, out, in, y_cols; };
  // Realigned rows (depths not a whole number of packets: 33, 767, 1001, 3001,
  // and 40 and 70 with 16-float packets): several blocks of W's rows (300
  // outputs), depth split in blocks (1001, 3001), with the output padding
  // (47 -> 48) after a larger product has left W's rows in the copy's unused
  // rows. Depths 64, 96 and 1024: padded, not realigned.
  const Shape shapes[] = {{40, 47, 33, 48},    {40, 47, 33, 53},    {40, 300, 767, 300},
                          {40, 300, 3001, 301}, {64, 47, 1001, 48}, {64, 47, 1024, 48},
                          {20, 767, 767, 768},  {300, 191, 64, 192}, {70, 767, 96, 768},
                          {300, 191, 70, 192},  {70, 767, 40, 768}, {3, 47, 33, 48},
                          {40, 30, 33, 31},     {40, 48, 33, 49},   {1, 47, 767, 48},
                          {1, 13, 191, 13},     {1, 9, 33, 9},      {1, 5, 17, 5},
                          {1, 3, 8201, 3},      {1, 48, 768, 48}};
  for (const Shape& sh : shapes)
    for (bool bias : {true, false}) {
      prenorm::Linear<S> lin(sh.in, sh.out, bias);
      fill(lin.weight, rng, 0.3);
      fill(lin.bias, rng);
      RowMatrix<S> x(sh.rows, sh.in);
      fill(x, rng);
      const Mat ref = ref_linear(to_ref(x), to_ref(lin.weight), to_ref_vector(lin.bias));
      const Mat ref_no_bias = ref_linear(to_ref(x), to_ref(lin.weight), {});
      const double tolerance = 4 * tol<S>() * std::sqrt(double(sh.in));
      const int threads = prenorm::num_threads();
      for (int t : {1, 3}) {
        prenorm::set_num_threads(t);
        const auto where = [&] {
          return testing::Message() << " rows " << sh.rows << " out " << sh.out << " in " << sh.in
                                    << " y_cols " << sh.y_cols << " threads " << t;
        };
        RowMatrix<S> y = RowMatrix<S>::Constant(sh.rows, sh.y_cols, std::numeric_limits<S>::quiet_NaN());
        lin.forward_padded(x, y);
        EXPECT_CLOSE(y.leftCols(sh.out), ref, tolerance) << where();
        EXPECT_TRUE((y.rightCols(sh.y_cols - sh.out).array() == S(0)).all())
            << where() << ": the padding columns are not 0";
        y.setConstant(std::numeric_limits<S>::quiet_NaN());
        lin.product_padded(x, y);
        EXPECT_CLOSE(y.leftCols(sh.out), ref_no_bias, tolerance) << where() << " (no bias)";
        EXPECT_TRUE((y.rightCols(sh.y_cols - sh.out).array() == S(0)).all())
            << where() << ": the padding columns are not 0 (no bias)";
      }
      prenorm::set_num_threads(threads);
    }
}

// The masked-tail product masks W's lanes that the whole packets already
// summed, not only x's: an infinite weight there gives an infinite output as
// in the plain product (0 * inf would make it NaN).
TYPED_TEST(LayersTest, LinearMaskedTailKeepsInfiniteWeights) {
  using S = TypeParam;
  using Gemv = prenorm::detail::MaskedTailGemv<S>;
  const Index in = 767, overlap = in - Gemv::kPacket;  // in the last whole packet and the tail's
  ASSERT_TRUE(Gemv::applies(in));
  prenorm::Linear<S> lin(in, 8, false);
  lin.weight.setConstant(S(1));
  lin.weight(3, overlap) = std::numeric_limits<S>::infinity();
  const RowMatrix<S> x = RowMatrix<S>::Constant(1, in, S(0.5));
  RowMatrix<S> y(1, 8);
  lin.forward_padded(x, y);
  EXPECT_EQ(y(0, 3), std::numeric_limits<S>::infinity());
  EXPECT_EQ(y(0, 2), S(383.5));
}

TEST(Linear, PaddedErrors) {
  prenorm::Linear<float> lin(4, 47);
  RowMatrix<float> x(20, 4), narrow(20, 46), short_y(19, 48), wide_x(20, 5), y(20, 48);
  expect_error([&] { lin.forward_padded(x, narrow); },
               "prenorm::Linear::forward_padded: y has 46 columns, expected at least 47");
  expect_error([&] { lin.forward_padded(x, short_y); },
               "prenorm::Linear::forward_padded: y has 19 rows, expected 20 (the rows of x)");
  expect_error([&] { lin.forward_padded(wide_x, y); },
               "prenorm::Linear::forward_padded: x has 5 columns, expected 4");
  expect_error([&] { lin.product_padded(x, narrow); },
               "prenorm::Linear::product_padded: y has 46 columns, expected at least 47");
  RowMatrix<float> empty_x(0, 4), empty_y(0, 48);
  lin.forward_padded(empty_x, empty_y);  // empty input: nothing to do
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, EmbeddingGathersRows) {
  using S = TypeParam;
  std::mt19937_64 rng(5);
  prenorm::Embedding<S> emb(6, 9);
  fill(emb.table, rng);
  const std::vector<int> ids{5, 0, 3, 3};
  RowMatrix<S> y(4, 9);
  emb.forward(ids, y);
  for (Index r = 0; r < 4; ++r) EXPECT_EQ(y.row(r), emb.table.row(ids[r])) << "row " << r;
}

TEST(Embedding, OutOfRangeIdsThrow) {
  prenorm::Embedding<float> emb(6, 2);
  RowMatrix<float> y(2, 2);
  const std::vector<int> high{1, 6}, low{-1, 0};
  expect_error([&] { emb.forward(high, y); },
               "prenorm::Embedding::forward: id 6 at index 1 is out of range [0, 6)");
  expect_error([&] { emb.forward(low, y); },
               "prenorm::Embedding::forward: id -1 at index 0 is out of range [0, 6)");
  RowMatrix<float> wrong(3, 2);
  expect_error([&] { emb.forward(high, wrong); }, "y is 3 x 2, expected 2 x 2");
}

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, AttentionMatchesReference) {
  using S = TypeParam;
  std::mt19937_64 rng(6);
  // heads*head_dim (12) differs from the width (10), as in GPT-3 XL.
  for (bool causal : {false, true}) {
    for (Index T : {1, 5, 70}) {  // 70 > the 64-query causal chunk
      prenorm::MultiHeadAttention<S> attn(10, 3, 4, causal);
      fill(attn.qkv.weight, rng, 0.5);
      fill(attn.qkv.bias, rng, 0.5);
      fill(attn.out.weight, rng, 0.5);
      fill(attn.out.bias, rng, 0.5);
      const Index batch = 2;
      RowMatrix<S> x(batch * T, 10), y(batch * T, 10);
      fill(x, rng);
      attn.forward(x, batch, y);
      const Mat ref = ref_attention(attn, to_ref(x), batch);
      EXPECT_CLOSE(y, ref, 8 * tol<S>()) << " causal " << causal << " T " << T;

      // The same again (workspace reused) gives the same bits.
      RowMatrix<S> y2(batch * T, 10);
      attn.forward(x, batch, y2);
      EXPECT_EQ(y, y2);
    }
  }
}

TYPED_TEST(LayersTest, AttentionCachedEqualsFull) {
  using S = TypeParam;
  std::mt19937_64 rng(7);
  prenorm::MultiHeadAttention<S> attn(8, 2, 5, /*causal=*/true);
  fill(attn.qkv.weight, rng, 0.5);
  fill(attn.qkv.bias, rng, 0.5);
  fill(attn.out.weight, rng, 0.5);
  fill(attn.out.bias, rng, 0.5);
  const Index batch = 3, T = 9, capacity = 12;
  RowMatrix<S> x(batch * T, 8), y(batch * T, 8);
  fill(x, rng);
  attn.forward(x, batch, y);

  // Prefill 4 tokens, then 1, then 4, through the cache.
  RowMatrix<S> keys = RowMatrix<S>::Zero(batch * capacity, 10), values = keys;
  prenorm::AttentionWorkspace<S> ws;
  Index past = 0;
  for (Index chunk : {4, 1, 4}) {
    RowMatrix<S> xc(batch * chunk, 8), yc(batch * chunk, 8);
    for (Index b = 0; b < batch; ++b) xc.middleRows(b * chunk, chunk) = x.middleRows(b * T + past, chunk);
    attn.forward_cached(xc, batch, past, keys, values, yc, ws);
    for (Index b = 0; b < batch; ++b) {
      const RowMatrix<S> expected = y.middleRows(b * T + past, chunk);
      EXPECT_CLOSE(yc.middleRows(b * chunk, chunk), to_ref(expected), 8 * tol<S>())
          << " past " << past << " sequence " << b;
    }
    past += chunk;
  }
  RowMatrix<S> xc(batch * 4, 8), yc(batch * 4, 8);
  expect_error([&] { attn.forward_cached(xc, batch, past, keys, values, yc, ws); },
               "positions [9, 13) do not fit the cache capacity 12");
}

// Large enough for the (sequence, head) tasks to run on several threads.
TYPED_TEST(LayersTest, AttentionOnThreadsMatchesReference) {
  using S = TypeParam;
  std::mt19937_64 rng(9);
  for (bool causal : {false, true}) {
    prenorm::MultiHeadAttention<S> attn(24, 4, 16, causal);
    fill(attn.qkv.weight, rng, 0.3);
    fill(attn.qkv.bias, rng, 0.3);
    fill(attn.out.weight, rng, 0.3);
    fill(attn.out.bias, rng, 0.3);
    const Index batch = 2, T = 130;
    RowMatrix<S> x(batch * T, 24), y1(batch * T, 24), y3(batch * T, 24);
    fill(x, rng);
    const int threads = prenorm::num_threads();
    prenorm::set_num_threads(1);
    attn.forward(x, batch, y1);
    // Bit for bit whichever thread runs a head, however often: the
    // non-causal scores slot (130 x 130) is not a whole number of packets.
    for (int repeat = 0; repeat < 8; ++repeat) {
      prenorm::set_num_threads(repeat % 2 == 0 ? 3 : 2);
      attn.forward(x, batch, y3);
      ASSERT_EQ(y3, y1) << " causal " << causal << ", repeat " << repeat;
    }
    prenorm::set_num_threads(threads);
    const Mat ref = ref_attention(attn, to_ref(x), batch);
    EXPECT_CLOSE(y1, ref, 8 * tol<S>()) << " causal " << causal;
    EXPECT_CLOSE(y3, ref, 8 * tol<S>()) << " causal " << causal;
  }
}

// A y wider than the layer (a Pre-CRMSNorm block's branch buffer of width d
// for a main branch of d - 1 = 47) gets the output in its first columns and
// zeros after, through the padded output projection.
TYPED_TEST(LayersTest, AttentionAndMlpIntoAWiderY) {
  using S = TypeParam;
  std::mt19937_64 rng(22);
  const Index width = 47, batch = 2, T = 20;
  prenorm::MultiHeadAttention<S> attn(width, 2, 8, /*causal=*/true);
  prenorm::Mlp<S> mlp(width, 64, Activation::GeluErf);
  for (auto* m : {&attn.qkv.weight, &attn.out.weight, &mlp.fc.weight, &mlp.proj.weight}) fill(*m, rng, 0.3);
  for (auto* b : {&attn.qkv.bias, &attn.out.bias, &mlp.fc.bias, &mlp.proj.bias}) fill(*b, rng, 0.3);
  RowMatrix<S> x(batch * T, width);
  fill(x, rng);
  const S nan = std::numeric_limits<S>::quiet_NaN();
  RowMatrix<S> y = RowMatrix<S>::Constant(batch * T, width + 1, nan);
  attn.forward(x, batch, y);
  EXPECT_CLOSE(y.leftCols(width), ref_attention(attn, to_ref(x), batch), 8 * tol<S>());
  EXPECT_TRUE((y.col(width).array() == S(0)).all());
  y.setConstant(nan);
  mlp.forward(x, y);
  EXPECT_CLOSE(y.leftCols(width), ref_mlp(mlp, to_ref(x)), 8 * tol<S>());
  EXPECT_TRUE((y.col(width).array() == S(0)).all());
  RowMatrix<S> narrow(batch * T, width - 1);
  expect_error([&] { mlp.forward(x, narrow); }, "(tokens x width, or wider)");
  expect_error([&] { attn.forward(x, batch, narrow); }, "(tokens x width, or wider)");
}

TEST(Attention, Errors) {
  prenorm::MultiHeadAttention<float> attn(8, 2, 4, true);
  RowMatrix<float> x(6, 8), y(6, 8), bad(6, 7);
  expect_error([&] { attn.forward(x, 4, y); }, "x has 6 rows, not a multiple of the batch 4");
  expect_error([&] { attn.forward(bad, 2, y); }, "x has 7 columns, expected 8");
  expect_error([&] { attn.validate("Gpt::validate", "blocks[1].attn", 9); },
               "prenorm::Gpt::validate: blocks[1].attn.qkv.weight is (24 x 8), expected (24 x 9)");
}

// ---------------------------------------------------------------------------
// MLP
// ---------------------------------------------------------------------------

TYPED_TEST(LayersTest, MlpMatchesReference) {
  using S = TypeParam;
  std::mt19937_64 rng(8);
  for (Activation act : {Activation::GeluTanh, Activation::GeluErf}) {
    prenorm::Mlp<S> mlp(11, 23, act);
    fill(mlp.fc.weight, rng, 0.5);
    fill(mlp.fc.bias, rng, 0.5);
    fill(mlp.proj.weight, rng, 0.5);
    fill(mlp.proj.bias, rng, 0.5);
    RowMatrix<S> x(6, 11), y(6, 11);
    fill(x, rng);
    mlp.forward(x, y);
    EXPECT_CLOSE(y, ref_mlp(mlp, to_ref(x)), 8 * tol<S>()) << prenorm::activation_name(act);
  }
}

}  // namespace
