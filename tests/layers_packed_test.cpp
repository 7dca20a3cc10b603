// Tests of weights packed for the GEMM backend (layers/linear.hpp's pack(),
// layers/detail/onednn_product.hpp, models/packing.hpp).
//
// The packed product is held against a plain explicit-loop reference in
// double, at the row counts on both sides of the dispatch (PackedWeight::
// kMinRows), odd widths (Pre-CRMSNorm's d - 1) and outputs wider than the
// layer. Whole models must compute what they compute unpacked. Built without
// oneDNN, packing is a no-op and the backend tests are skipped (the no-op is
// tested).

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/layers.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace {

using prenorm::Arch;
using prenorm::Index;
using prenorm::Linear;
using prenorm::RowMatrix;

#ifdef PRENORM_WITH_ONEDNN
constexpr bool kOneDnn = true;
#else
constexpr bool kOneDnn = false;
#endif

template <class M>
void fill(M& m, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = typename M::Scalar(normal(rng));
}

// y [rows x out] = x W^T + b in double, loop by loop.
std::vector<double> reference_linear(const RowMatrix<float>& x, const Linear<float>& lin) {
  const Index rows = x.rows(), in = lin.in_features(), out = lin.out_features();
  std::vector<double> y(rows * out);
  for (Index r = 0; r < rows; ++r)
    for (Index o = 0; o < out; ++o) {
      double sum = lin.has_bias() ? double(lin.bias[o]) : 0.0;
      for (Index i = 0; i < in; ++i) sum += double(x(r, i)) * double(lin.weight(o, i));
      y[r * out + o] = sum;
    }
  return y;
}

TEST(PackedLinear, MatchesReference) {
  if (!kOneDnn) GTEST_SKIP() << "built without oneDNN";
  std::mt19937_64 rng(7);
  // (in, out): aligned, and d - 1 wide on either side (767-like, odd).
  const std::pair<Index, Index> shapes[] = {{64, 48}, {63, 48}, {64, 47}, {37, 23}};
  for (const auto& [in, out] : shapes)
    for (bool bias : {true, false})
      for (Index rows : {1, 3, 4, 5, 17, 130}) {
        Linear<float> lin(in, out, bias);
        fill(lin.weight, rng);
        fill(lin.bias, rng);
        lin.pack();
        ASSERT_TRUE(lin.is_packed());
        RowMatrix<float> x(rows, in);
        fill(x, rng);
        // A dense y runs on oneDNN (4 rows or more); a y two columns wider
        // than the layer does not (oneDNN 2.6 has no fast kernel for strided
        // outputs) and must come out the same, its extra columns 0.
        RowMatrix<float> y(rows, out);
        lin.forward_padded(x, y);
        RowMatrix<float> wide = RowMatrix<float>::Constant(rows, out + 2, 9.0f);
        lin.forward_padded(x, wide);
        const std::vector<double> expected = reference_linear(x, lin);
        double worst = 0, worst_wide = 0;
        for (Index r = 0; r < rows; ++r) {
          for (Index o = 0; o < out; ++o) {
            const double e = expected[r * out + o];
            worst = std::max(worst, std::abs(double(y(r, o)) - e) / (1.0 + std::abs(e)));
            worst_wide = std::max(worst_wide, std::abs(double(wide(r, o)) - e) / (1.0 + std::abs(e)));
          }
          EXPECT_EQ(wide(r, out), 0.0f);
          EXPECT_EQ(wide(r, out + 1), 0.0f);
        }
        // float products of depth <= 64 of N(0,1) values: a few 1e-6 relative.
        EXPECT_LT(worst, 2e-5) << "in " << in << " out " << out << " rows " << rows
                               << " bias " << bias;
        EXPECT_LT(worst_wide, 2e-5) << "in " << in << " out " << out << " rows " << rows
                                    << " bias " << bias;
        // product_padded: the same without the bias.
        RowMatrix<float> z(rows, out);
        lin.product_padded(x, z);
        for (Index r = 0; r < rows; ++r)
          for (Index o = 0; o < out; ++o) {
            const double e = expected[r * out + o] - (bias ? double(lin.bias[o]) : 0.0);
            ASSERT_NEAR(z(r, o), e, 2e-5 * (1.0 + std::abs(e)));
          }
      }
}

TEST(PackedLinear, CopiesAreUnpackedAndMovesKeepThePacking) {
  Linear<float> lin(8, 4);
  lin.pack();
  EXPECT_EQ(lin.is_packed(), kOneDnn);
  Linear<float> copy = lin;
  EXPECT_FALSE(copy.is_packed());
  Linear<float> assigned;
  assigned = lin;
  EXPECT_FALSE(assigned.is_packed());
  Linear<float> moved = std::move(lin);
  EXPECT_EQ(moved.is_packed(), kOneDnn);
  moved.unpack();
  EXPECT_FALSE(moved.is_packed());
}

TEST(PackedLinear, DoubleIsNeverPacked) {
  Linear<double> lin(8, 4);
  lin.pack();
  EXPECT_FALSE(lin.is_packed());
}

TEST(PackedLinear, ReshapedAfterPackingThrows) {
  if (!kOneDnn) GTEST_SKIP() << "built without oneDNN";
  Linear<float> lin(8, 4);
  lin.pack();
  lin.weight = RowMatrix<float>::Zero(4, 6);
  RowMatrix<float> x = RowMatrix<float>::Zero(5, 6), y(5, 4);
  try {
    lin.forward_padded(x, y);
    FAIL() << "expected prenorm::Error";
  } catch (const prenorm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Linear::forward_padded: the packed weights are (4 x 8, "
                                         "with bias) but the weight is (4 x 6, with bias)"),
              std::string::npos)
        << e.what();
  }
}

// A packed model computes its unpacked logits (the products differ in
// rounding only), for prefill and for decoding through the KV cache.
// Tied heads: the Pre-LN head reads the token table, the converted ones keep
// the original table (TiedPolicy::Keep), both through the packed table.
template <Arch A>
void expect_gpt_packed_equal(bool tied) {
  prenorm::GptConfig config{.vocab = 61, .context = 32, .width = 48, .heads = 4, .layers = 2,
                            .mlp_width = 96, .tied = tied};
  prenorm::Gpt<Arch::PreLN, float> source(config);
  source.init_random(3, 0.2, /*random_affine=*/true);
  prenorm::Gpt<A, float> model = [&] {
    if constexpr (A == Arch::PreLN) return source;
    else return prenorm::convert<A>(source, {.tied = prenorm::TiedPolicy::Keep});
  }();
  std::vector<int> ids(2 * 9);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = int((i * 7 + 3) % config.vocab);
  const prenorm::TokenBatch tokens(ids, 2, 9);
  const RowMatrix<float> plain = model.forward(tokens);
  prenorm::pack_weights(model);
  EXPECT_EQ(prenorm::has_packed_weights(model), kOneDnn);
  const RowMatrix<float> packed = model.forward(tokens);
  const float scale = plain.cwiseAbs().maxCoeff();
  EXPECT_LT((packed - plain).cwiseAbs().maxCoeff(), 1e-5f * scale)
      << prenorm::arch_name(A) << (tied ? " tied" : " untied");
  // Decoding: prefill 5 tokens (10 rows, packed), then steps of 2 rows (plain).
  prenorm::Session<A, float> session(model);
  const std::vector<int> first(ids.begin(), ids.begin() + 5);
  session.prefill(prenorm::TokenBatch(first, 1, 5), 9);
  RowMatrix<float> last;
  for (int t = 5; t < 9; ++t) {
    const std::vector<int> next{ids[t]};
    last = session.step(next);
  }
  EXPECT_LT((last.row(0) - plain.row(8)).cwiseAbs().maxCoeff(), 1e-5f * scale);
}

TEST(PackedModels, GptComputesItsUnpackedLogits) {
  for (bool tied : {false, true}) {
    expect_gpt_packed_equal<Arch::PreLN>(tied);
    expect_gpt_packed_equal<Arch::PreRMSNorm>(tied);
    expect_gpt_packed_equal<Arch::PreCRMSNorm>(tied);
  }
}

TEST(PackedModels, VitComputesItsUnpackedLogits) {
  prenorm::VitConfig config{.image_size = 8, .patch_size = 4, .channels = 3, .classes = 10,
                            .width = 32, .heads = 4, .layers = 2, .mlp_width = 64};
  prenorm::Vit<Arch::PreLN, float> source(config);
  source.init_random(5, 0.2, /*random_affine=*/true);
  prenorm::Vit<Arch::PreCRMSNorm, float> model = prenorm::convert<Arch::PreCRMSNorm>(source);
  RowMatrix<float> images(3, config.channels * config.image_size * config.image_size);
  std::mt19937_64 rng(9);
  fill(images, rng);
  const prenorm::ImageBatch<float> batch{
      .pixels = {images.data(), std::size_t(images.size())}, .batch = 3,
      .channels = config.channels, .height = config.image_size, .width = config.image_size};
  const RowMatrix<float> plain = model.forward(batch);
  prenorm::pack_weights(model);
  const RowMatrix<float> packed = model.forward(batch);
  EXPECT_LT((packed - plain).cwiseAbs().maxCoeff(), 1e-5f * plain.cwiseAbs().maxCoeff());
}

// README: results do not depend on the thread count. oneDNN's kernels split
// the rows and columns of a product between threads, never its depth.
TEST(PackedModels, ThreadCountDoesNotChangeTheLogits) {
  prenorm::GptConfig config{.vocab = 300, .context = 64, .width = 96, .heads = 4, .layers = 2,
                            .mlp_width = 384, .tied = false};
  prenorm::Gpt<Arch::PreCRMSNorm, float> model(config);
  model.init_random(11, 0.2, /*random_affine=*/true);
  prenorm::pack_weights(model);
  std::vector<int> ids(64);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = int((i * 13 + 1) % config.vocab);
  const prenorm::TokenBatch tokens(ids, 1, 64);
  const int before = prenorm::num_threads();
  prenorm::set_num_threads(1);
  const RowMatrix<float> one = model.forward(tokens);
  prenorm::set_num_threads(2);
  const RowMatrix<float> two = model.forward(tokens);
  prenorm::set_num_threads(before);
  EXPECT_TRUE(one == two) << "max difference " << (one - two).cwiseAbs().maxCoeff();
}

TEST(PackedModels, TrainingAndConvertIntoUnpack) {
  prenorm::GptConfig config{.vocab = 17, .context = 8, .width = 16, .heads = 2, .layers = 1,
                            .mlp_width = 32};
  prenorm::Gpt<Arch::PreLN, float> model(config);
  model.init_random(1);
  prenorm::Gpt<Arch::PreCRMSNorm, float> phi = prenorm::convert<Arch::PreCRMSNorm>(model);
  prenorm::pack_weights(model);
  prenorm::pack_weights(phi);
  prenorm::convert_into(model, phi);
  EXPECT_FALSE(prenorm::has_packed_weights(phi));
  prenorm::Trainer trainer(std::move(model), prenorm::Sgd<float>{});
  EXPECT_FALSE(prenorm::has_packed_weights(trainer.model()));
}

}  // namespace
