// Tests of the blocks and models (include/prenorm/layers/block.hpp,
// include/prenorm/models/): whole GPT and ViT forwards for all four
// architectures against an explicit-loop reference model in double written
// here (norms included); KV-cache prefill + steps against the full forward;
// the Pre-LN / Pre-RMSNorm / Pre-CRMSNorm block identities; an exact
// hand-made Pre-LN -> Pre-(C)RMSNorm conversion of a tied GPT (the layout the
// converter targets); no allocation on a repeated forward; every bad input
// with its message; empty batches; the presets.
//
// Typed over the architectures and float/double; a failure prints the max
// difference.

#include "support/alloc_count.hpp"  // first: before any Eigen header

#include <gtest/gtest.h>

#include <prenorm/layers.hpp>
#include <prenorm/models.hpp>

#include "../bench/no_norm.hpp"  // the baseline, run by the library through its ArchTraits

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using prenorm::TransformerConfig;
using prenorm::Arch;
using prenorm::Gpt;
using prenorm::GptConfig;
using prenorm::Session;
using prenorm::ImageBatch;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::TokenBatch;
using prenorm::Vector;
using prenorm::Vit;
using prenorm::VitConfig;
using prenorm::Session;
using prenorm_bench::kNoNorm;
using Mat = std::vector<std::vector<double>>;  // reference matrices, [rows][cols]
using Vec = std::vector<double>;

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
  Mat out(m.rows(), Vec(m.cols()));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = static_cast<double>(m(r, c));
  return out;
}

template <class V>
Vec to_vec(const V& v) {
  Vec out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = static_cast<double>(v[i]);
  return out;
}

template <class Derived>
double max_diff(const Eigen::MatrixBase<Derived>& actual, const Mat& expected) {
  if (actual.rows() != Index(expected.size())) return INFINITY;
  double diff = 0;
  for (Index r = 0; r < actual.rows(); ++r) {
    if (actual.cols() != Index(expected[r].size())) return INFINITY;
    for (Index c = 0; c < actual.cols(); ++c) {
      const double d = std::abs(static_cast<double>(actual(r, c)) - expected[r][c]);
      if (!(d <= diff)) diff = d;  // NaN counts as a failure
    }
  }
  return diff;
}

template <class Derived>
::testing::AssertionResult close_to(const Eigen::MatrixBase<Derived>& actual, const Mat& expected,
                                    double tol) {
  const double diff = max_diff(actual, expected);
  if (diff <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| = " << diff << " > tolerance " << tol << " ("
                                       << actual.rows() << " x " << actual.cols() << " vs "
                                       << expected.size() << " rows)";
}
#define EXPECT_CLOSE(actual, expected, tol) EXPECT_TRUE(close_to(actual, expected, tol))

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

// Logits-sized tolerance per dtype.
template <class S>
constexpr double tol() {
  return std::is_same_v<S, float> ? 1e-4 : 1e-10;
}

// ---------------------------------------------------------------------------
// The reference model, in double with explicit loops
// ---------------------------------------------------------------------------

Vec ref_layer_norm(const Vec& x, const Vec& gamma, const Vec& beta, double eps) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= double(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= double(x.size());
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    y[i] = (x[i] - mean) / std::sqrt(var + eps) * gamma[i] + beta[i];
  return y;
}

Vec ref_rms_norm(const Vec& x, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= double(x.size());
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + eps);
  return y;
}

// x~ [d-1]: divides by sqrt((|x~|^2 + (sum x~)^2) / d + eps).
Vec ref_crms_norm(const Vec& x, double eps) {
  const double d = double(x.size() + 1);
  double ss = 0, s = 0;
  for (double v : x) {
    ss += v * v;
    s += v;
  }
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt((ss + s * s) / d + eps);
  return y;
}

Vec ref_norm(Arch arch, const Vec& x, const Vec& gamma, const Vec& beta, double eps) {
  if (arch == kNoNorm) return x;
  switch (arch) {
    case Arch::PreLN: return ref_layer_norm(x, gamma, beta, eps);
    case Arch::PreRMSNorm: return ref_rms_norm(x, eps);
    case Arch::PreCRMSNorm: return ref_crms_norm(x, eps);
  }
  ADD_FAILURE() << "ref_norm: no reference for architecture " << int(arch);
  return x;
}

double gelu(prenorm::Activation a, double x) {
  if (a == prenorm::Activation::GeluTanh)
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}

template <class S>
Vec ref_linear(const prenorm::Linear<S>& lin, const Vec& x) {
  Vec y(lin.weight.rows());
  for (Index o = 0; o < lin.weight.rows(); ++o) {
    double acc = lin.bias.size() ? double(lin.bias[o]) : 0.0;
    for (Index i = 0; i < lin.weight.cols(); ++i) acc += double(lin.weight(o, i)) * x[i];
    y[o] = acc;
  }
  return y;
}

// Attention over one sequence x [T][width].
template <class S>
Mat ref_attention(const prenorm::MultiHeadAttention<S>& a, const Mat& x) {
  const Index T = Index(x.size()), H = a.heads, hd = a.head_dim, I = H * hd;
  Mat qkv;
  for (const Vec& row : x) qkv.push_back(ref_linear(a.qkv, row));
  Mat out;
  for (Index t = 0; t < T; ++t) {
    Vec ctx(I, 0.0);
    for (Index h = 0; h < H; ++h) {
      const Index seen = a.causal ? t + 1 : T;
      Vec p(seen);
      double max = -INFINITY, sum = 0;
      for (Index u = 0; u < seen; ++u) {
        double dot = 0;
        for (Index j = 0; j < hd; ++j) dot += qkv[t][h * hd + j] * qkv[u][I + h * hd + j];
        p[u] = dot / std::sqrt(double(hd));
        max = std::max(max, p[u]);
      }
      for (double& v : p) sum += v = std::exp(v - max);
      for (Index u = 0; u < seen; ++u)
        for (Index j = 0; j < hd; ++j) ctx[h * hd + j] += p[u] / sum * qkv[u][2 * I + h * hd + j];
    }
    out.push_back(ref_linear(a.out, ctx));
  }
  return out;
}

// One block over one sequence h [T][main], in place.
template <class Block>
void ref_block(const Block& b, Mat& h) {
  constexpr Arch A = Block::arch;
  const double eps = double(b.epsilon);
  Mat x;
  for (const Vec& row : h) x.push_back(ref_norm(A, row, to_vec(b.norm1_gamma), to_vec(b.norm1_beta), eps));
  const Mat a = ref_attention(b.attn, x);
  for (std::size_t t = 0; t < h.size(); ++t)
    for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += a[t][i];
  for (std::size_t t = 0; t < h.size(); ++t) {
    Vec y = ref_norm(A, h[t], to_vec(b.norm2_gamma), to_vec(b.norm2_beta), eps);
    Vec hidden = ref_linear(b.mlp.fc, y);
    for (double& v : hidden) v = gelu(b.mlp.activation, v);
    const Vec m = ref_linear(b.mlp.proj, hidden);
    for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += m[i];
  }
}

// Logits [batch*T][vocab] of a GPT.
template <Arch A, class S>
Mat ref_gpt(const Gpt<A, S>& g, const std::vector<std::vector<int>>& batch) {
  const Index d = g.config.width, m = g.main();
  const double eps = g.config.epsilon;
  const auto& E = g.token_embedding.table;
  const auto& P = g.position_embedding.table;
  Mat logits;
  for (const auto& seq : batch) {
    Mat h;
    for (std::size_t t = 0; t < seq.size(); ++t) {
      Vec row(m);
      double mean = 0;
      if (g.tied_affine()) {  // the original row, recentered over d, first m coordinates
        for (Index i = 0; i < d; ++i) mean += double(E(seq[t], i));
        mean /= double(d);
      }
      for (Index i = 0; i < m; ++i) row[i] = double(E(seq[t], i)) - mean + double(P(t, i));
      h.push_back(row);
    }
    for (const auto& b : g.blocks) ref_block(b, h);
    for (const Vec& row : h) {
      Vec x = ref_norm(A, row, to_vec(g.final_gamma), to_vec(g.final_beta), eps);
      Vec out(g.config.vocab, 0.0);
      if (g.tied_affine()) {  // decompress, tied affine, then E
        double sum = 0;
        for (double v : x) sum += v;
        if (m < d) x.push_back(-sum);
        for (Index i = 0; i < d; ++i) x[i] = x[i] * double(g.tied_gamma[i]) + double(g.tied_beta[i]);
      }
      const auto& W = g.config.tied ? E : g.head.weight;
      for (Index v = 0; v < g.config.vocab; ++v) {
        for (Index i = 0; i < W.cols(); ++i) out[v] += double(W(v, i)) * x[i];
        if (g.config.head_bias) out[v] += double(g.head_bias[v]);
      }
      logits.push_back(out);
    }
  }
  return logits;
}

// Logits [batch][classes] of a ViT on images [B x C x H x W]; the patch
// linear is evaluated as the convolution it stands for, from the pixels.
template <Arch A, class S>
Mat ref_vit(const Vit<A, S>& v, const std::vector<S>& pixels, Index B) {
  const TransformerConfig& c = v.config;
  const Index p = c.patch_size, G = c.grid(), C = c.channels, n = c.image_size, m = v.main();
  Mat logits;
  for (Index b = 0; b < B; ++b) {
    Mat h(c.tokens(), Vec(m));
    for (Index i = 0; i < m; ++i) h[0][i] = double(v.cls_token[i]) + double(v.position_embedding.table(0, i));
    for (Index py = 0; py < G; ++py)
      for (Index px = 0; px < G; ++px) {
        const Index t = 1 + py * G + px;
        for (Index o = 0; o < m; ++o) {
          double acc = double(v.patch.bias[o]) + double(v.position_embedding.table(t, o));
          for (Index ch = 0; ch < C; ++ch)
            for (Index ky = 0; ky < p; ++ky)
              for (Index kx = 0; kx < p; ++kx)
                acc += double(v.patch.weight(o, (ch * p + ky) * p + kx)) *
                       double(pixels[((b * C + ch) * n + py * p + ky) * n + px * p + kx]);
          h[t][o] = acc;
        }
      }
    for (const auto& blk : v.blocks) ref_block(blk, h);
    const Vec x = ref_norm(A, h[0], to_vec(v.final_gamma), to_vec(v.final_beta), c.epsilon);
    logits.push_back(ref_linear(v.head, x));
  }
  return logits;
}

// ---------------------------------------------------------------------------
// Test cases: every architecture, float and double
// ---------------------------------------------------------------------------

template <Arch A_, class S_>
struct Case {
  static constexpr Arch A = A_;
  using S = S_;
};
using Cases = ::testing::Types<Case<Arch::PreLN, float>, Case<Arch::PreRMSNorm, float>,
                               Case<Arch::PreCRMSNorm, float>, Case<kNoNorm, float>,
                               Case<Arch::PreLN, double>, Case<Arch::PreRMSNorm, double>,
                               Case<Arch::PreCRMSNorm, double>, Case<kNoNorm, double>>;
struct CaseNames {
  template <class C>
  static std::string GetName(int) {
    return std::string(prenorm::ArchTraits<C::A>::name) + (std::is_same_v<typename C::S, float> ? "_float" : "_double");
  }
};

template <class C>
class ModelsTest : public ::testing::Test {};
TYPED_TEST_SUITE(ModelsTest, Cases, CaseNames);

GptConfig small_gpt(bool tied, bool head_bias) {
  return GptConfig{.vocab = 37, .context = 16, .width = 12, .heads = 3, .layers = 2, .mlp_width = 20,
                   .epsilon = 1e-5, .tied = tied, .head_bias = head_bias};
}

VitConfig small_vit() {
  return VitConfig{.image_size = 8, .patch_size = 4, .channels = 3, .classes = 5, .width = 12,
                   .heads = 2, .layers = 2, .mlp_width = 16, .epsilon = 1e-6};
}

std::vector<std::vector<int>> random_tokens(Index batch, Index T, Index vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> id(0, int(vocab) - 1);
  std::vector<std::vector<int>> out(batch, std::vector<int>(T));
  for (auto& seq : out)
    for (int& t : seq) t = id(rng);
  return out;
}

TYPED_TEST(ModelsTest, GptMatchesReference) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  std::mt19937_64 rng(11);
  for (bool tied : {true, false})
    for (bool head_bias : {false, true}) {
      Gpt<A, S> g(small_gpt(tied, head_bias));
      g.init_random(7, 0.2, /*random_affine=*/true);
      EXPECT_EQ(g.token_embedding.table.cols(), g.tied_affine() ? 12 : g.main());
      const auto tokens = random_tokens(2, 7, 37, rng);
      const RowMatrix<S>& logits = g.forward(tokens);
      EXPECT_EQ(logits.rows(), 14);
      EXPECT_EQ(logits.cols(), 37);
      EXPECT_CLOSE(logits, ref_gpt(g, tokens), tol<S>()) << "tied " << tied << " head_bias " << head_bias;
    }
}

TYPED_TEST(ModelsTest, GptWithDecoupledHeadDim) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  GptConfig c = small_gpt(true, false);
  c.heads = 2;
  c.head_dim = 8;  // attention width 16 != d = 12, as GPT-3 XL
  c.activation = prenorm::Activation::GeluErf;
  Gpt<A, S> g(c);
  g.init_random(8, 0.2, true);
  EXPECT_EQ(g.blocks[0].attn.qkv.weight.rows(), 48);
  EXPECT_EQ(g.blocks[0].attn.out.weight.cols(), 16);
  std::mt19937_64 rng(12);
  const auto tokens = random_tokens(3, 5, 37, rng);
  EXPECT_CLOSE(g.forward(tokens), ref_gpt(g, tokens), tol<S>());
}

TYPED_TEST(ModelsTest, VitMatchesReference) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Vit<A, S> v(small_vit());
  v.init_random(9, 0.2, true);
  EXPECT_EQ(v.patch.weight.rows(), v.main());
  EXPECT_EQ(v.patch.weight.cols(), 48);
  EXPECT_EQ(v.position_embedding.rows(), 5);
  std::mt19937_64 rng(13);
  const Index B = 3;
  std::vector<S> pixels(B * 3 * 8 * 8);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (S& p : pixels) p = S(normal(rng));
  const ImageBatch<S> images{pixels, B, 3, 8, 8};
  const RowMatrix<S> logits = v.forward(images);
  EXPECT_EQ(logits.rows(), B);
  EXPECT_EQ(logits.cols(), 5);
  EXPECT_CLOSE(logits, ref_vit(v, pixels, B), tol<S>());

  // Pre-flattened patches give the same bits.
  RowMatrix<S> patches;
  v.patchify(images, patches);
  EXPECT_EQ(patches.rows(), B * 4);
  EXPECT_EQ(patches.cols(), 48);
  EXPECT_EQ(v.forward_patches(patches), logits);

  // With a hook, every block's main branch is shown and the logits do not change.
  Index calls = 0;
  const RowMatrix<S> hooked = v.forward(images, [&](Index i, const RowMatrix<S>& h) {
    EXPECT_EQ(i, calls - 1);
    EXPECT_EQ(h.rows(), B * 5);
    EXPECT_EQ(h.cols(), v.main());
    ++calls;
  });
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(hooked, logits);
}

TYPED_TEST(ModelsTest, GptHookShowsEveryBlockAndChangesNothing) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(true, true));
  g.init_random(10, 0.2, true);
  std::mt19937_64 rng(14);
  const auto tokens = random_tokens(2, 6, 37, rng);
  const RowMatrix<S> plain = g.forward(tokens);

  // The reference main branch after the embeddings and after each block.
  std::vector<Mat> expected;
  std::vector<RowMatrix<S>> seen;
  const RowMatrix<S> hooked =
      g.forward(tokens, [&](Index, const RowMatrix<S>& h) { seen.push_back(h); });
  EXPECT_EQ(hooked, plain);  // fused and unfused adds agree bit for bit
  ASSERT_EQ(seen.size(), 3u);
  for (std::size_t b = 0; b < 2; ++b) {
    Mat h;
    const Index d = g.config.width, m = g.main();
    for (std::size_t t = 0; t < 6; ++t) {
      Vec row(m);
      double mean = 0;
      if (g.tied_affine()) {
        for (Index i = 0; i < d; ++i) mean += double(g.token_embedding.table(tokens[b][t], i));
        mean /= double(d);
      }
      for (Index i = 0; i < m; ++i)
        row[i] = double(g.token_embedding.table(tokens[b][t], i)) - mean +
                 double(g.position_embedding.table(t, i));
      h.push_back(row);
    }
    for (std::size_t layer = 0; layer <= 2; ++layer) {
      if (layer > 0) ref_block(g.blocks[layer - 1], h);
      EXPECT_CLOSE(seen[layer].middleRows(b * 6, 6), h, tol<S>()) << "after block " << int(layer) - 1;
    }
  }
}

TYPED_TEST(ModelsTest, KvCacheMatchesFullForward) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(true, true));
  g.init_random(15, 0.2, true);
  std::mt19937_64 rng(16);
  const Index B = 2, T = 9;
  const auto tokens = random_tokens(B, T, 37, rng);
  const RowMatrix<S> full = g.forward(tokens);

  Session<A, S> session(g);
  const Index prompt = 4;
  std::vector<int> ids;
  for (const auto& seq : tokens) ids.insert(ids.end(), seq.begin(), seq.begin() + prompt);
  const RowMatrix<S> first = session.prefill(TokenBatch{ids, B, prompt}, 12);
  const auto& cache = session.cache();
  EXPECT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.keys[0].rows(), B * 12);
  EXPECT_EQ(cache.keys[0].cols(), 12);
  for (Index b = 0; b < B; ++b)
    EXPECT_CLOSE(first.middleRows(b * prompt, prompt), to_ref(full.middleRows(b * T, prompt)), tol<S>());
  for (Index t = prompt; t < T; ++t) {
    std::vector<int> next;
    for (const auto& seq : tokens) next.push_back(seq[t]);
    const RowMatrix<S>& step = session.step(next);
    ASSERT_EQ(step.rows(), B);
    for (Index b = 0; b < B; ++b)
      EXPECT_CLOSE(step.row(b), to_ref(full.row(b * T + t)), tol<S>()) << "position " << t << " sequence " << b;
  }
  EXPECT_EQ(cache.length, T);

  // Rewound to position 6, the step at 6 computes what it computed the first time.
  session.rewind(6);
  std::vector<int> at6;
  for (const auto& seq : tokens) at6.push_back(seq[6]);
  const RowMatrix<S> again6 = session.step(at6);
  for (Index b = 0; b < B; ++b) EXPECT_CLOSE(again6.row(b), to_ref(full.row(b * T + 6)), tol<S>());
  EXPECT_EQ(cache.length, 7);

  // A second prefill starts over, in the same storage.
  const S* storage = cache.keys[0].data();
  const RowMatrix<S> again = session.prefill(TokenBatch{ids, B, prompt}, 12);
  EXPECT_EQ(cache.keys[0].data(), storage);
  EXPECT_EQ(again, first);
  EXPECT_EQ(cache.length, prompt);
}

// The architecture policy (ops/arch_traits.hpp), and the baseline's (bench/no_norm.hpp).
using prenorm::ArchTraits;
static_assert(ArchTraits<Arch::PreLN>::affine && !ArchTraits<Arch::PreRMSNorm>::affine &&
              !ArchTraits<Arch::PreCRMSNorm>::affine && !ArchTraits<kNoNorm>::affine);
static_assert(ArchTraits<Arch::PreLN>::has_norm && ArchTraits<Arch::PreCRMSNorm>::has_norm &&
              !ArchTraits<kNoNorm>::has_norm);
static_assert(ArchTraits<Arch::PreLN>::main_width(768) == 768 &&
              ArchTraits<Arch::PreRMSNorm>::main_width(768) == 768 &&
              ArchTraits<Arch::PreCRMSNorm>::main_width(768) == 767 &&
              ArchTraits<kNoNorm>::main_width(768) == 768);
static_assert(ArchTraits<Arch::PreCRMSNorm>::main_width(prenorm::Dynamic) == prenorm::Dynamic);
static_assert(std::is_same_v<prenorm::NormSaved<Arch::PreLN, float>, prenorm::LayerNormSaved<float>> &&
              std::is_same_v<prenorm::NormSaved<Arch::PreCRMSNorm, double>, prenorm::RmsNormSaved<double>>);
static_assert(ArchTraits<Arch::PreRMSNorm>::name == "pre_rmsnorm" && ArchTraits<kNoNorm>::name == "no_norm");
static_assert(!prenorm::is_public_arch(kNoNorm) && prenorm::is_public_arch(Arch::PreCRMSNorm));

// A block with a compile-time width (8) computes what the dynamic one does.
TYPED_TEST(ModelsTest, FixedWidthBlockEqualsDynamic) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  prenorm::PreNormBlock<A, S> dyn(8, 2, 3, 10, /*causal=*/true, prenorm::Activation::GeluTanh, S(1e-5));
  std::mt19937_64 rng(17);
  prenorm::detail::init_block_random(dyn, rng, 0.3, 0.3, 0.1);
  prenorm::PreNormBlock<A, S, 8> fixed(8, 2, 3, 10, true, prenorm::Activation::GeluTanh, S(1e-5));
  fixed.norm1_gamma = dyn.norm1_gamma;
  fixed.norm1_beta = dyn.norm1_beta;
  fixed.norm2_gamma = dyn.norm2_gamma;
  fixed.norm2_beta = dyn.norm2_beta;
  fixed.attn = dyn.attn;
  fixed.mlp = dyn.mlp;
  static_assert(decltype(fixed)::kMainWidth == (A == Arch::PreCRMSNorm ? 7 : 8));
  fixed.validate("test", "fixed", 2, 3, 10);

  const Index B = 2, T = 5, m = dyn.main();
  RowMatrix<S> h(B * T, m);
  fill(h, rng);
  typename decltype(fixed)::Main hf = h;
  Mat expected;
  for (Index b = 0; b < B; ++b) {
    Mat seq = to_ref(h.middleRows(b * T, T));
    ref_block(dyn, seq);
    expected.insert(expected.end(), seq.begin(), seq.end());
  }
  dyn.forward(h, B);
  fixed.forward(hf, B);
  EXPECT_CLOSE(h, expected, tol<S>());
  EXPECT_CLOSE(hf, expected, tol<S>());
}

// ---------------------------------------------------------------------------
// The identities behind the conversion
// ---------------------------------------------------------------------------

// W' = W diag(gamma), b' = b + W beta: a reader of a LayerNorm absorbs its affine.
template <class S>
void fold_affine(prenorm::Linear<S>& lin, const Vector<S>& gamma, const Vector<S>& beta) {
  lin.bias += lin.weight * beta;
  lin.weight = lin.weight * gamma.asDiagonal();
}
// W' = W - 1 (1'W) / d, b' = b - mean(b): a writer to the main branch keeps it zero-mean.
template <class S>
void recenter_writer(prenorm::Linear<S>& lin) {
  const RowMatrix<S> mean = lin.weight.colwise().mean();
  lin.weight.rowwise() -= mean.row(0);
  lin.bias.array() -= lin.bias.mean();
}
// Writer: drop the last output. Reader: W'' = W[:, :d-1] - W[:, d-1] 1'.
template <class S>
void compress_writer(prenorm::Linear<S>& lin) {
  const Index d = lin.weight.rows();
  lin.weight = RowMatrix<S>(lin.weight.topRows(d - 1));
  lin.bias = Vector<S>(lin.bias.head(d - 1));
}
template <class S>
void compress_reader(prenorm::Linear<S>& lin) {
  const Index d = lin.weight.cols();
  RowMatrix<S> w = lin.weight.leftCols(d - 1);
  w.colwise() -= lin.weight.col(d - 1);
  lin.weight = w;
}

// Copies a Pre-LN block into a block of architecture A2 with the conversion
// of the design notes (fold, recenter, compress).
template <Arch A2, class S>
prenorm::PreNormBlock<A2, S> convert_block(const prenorm::PreNormBlock<Arch::PreLN, S>& src) {
  prenorm::PreNormBlock<A2, S> dst(src.width, src.attn.heads, src.attn.head_dim, src.mlp.inner(),
                                   src.attn.causal, src.mlp.activation, src.epsilon);
  dst.attn.qkv = src.attn.qkv;
  dst.attn.out = src.attn.out;
  dst.mlp.fc = src.mlp.fc;
  dst.mlp.proj = src.mlp.proj;
  fold_affine(dst.attn.qkv, src.norm1_gamma, src.norm1_beta);
  fold_affine(dst.mlp.fc, src.norm2_gamma, src.norm2_beta);
  recenter_writer(dst.attn.out);
  recenter_writer(dst.mlp.proj);
  if constexpr (A2 == Arch::PreCRMSNorm) {
    compress_writer(dst.attn.out);
    compress_writer(dst.mlp.proj);
    compress_reader(dst.attn.qkv);
    compress_reader(dst.mlp.fc);
  }
  return dst;
}

// On zero-mean input, a Pre-LN block with gamma = 1, beta = 0 and recentered
// writers equals the Pre-RMSNorm block with the same linear weights, and the
// Pre-CRMSNorm block with compressed weights gives the compressed result.
template <class S>
void check_block_identity() {
  {
    std::mt19937_64 rng(18);
    prenorm::PreNormBlock<Arch::PreLN, S> ln(10, 2, 4, 14, true, prenorm::Activation::GeluTanh, S(1e-5));
    prenorm::detail::init_block_random(ln, rng, 0.3, 0.3, 0.1);
    recenter_writer(ln.attn.out);
    recenter_writer(ln.mlp.proj);
    ln.norm1_gamma.setOnes();
    ln.norm1_beta.setZero();
    ln.norm2_gamma.setOnes();
    ln.norm2_beta.setZero();
    auto rms = convert_block<Arch::PreRMSNorm>(ln);
    auto crms = convert_block<Arch::PreCRMSNorm>(ln);
    EXPECT_EQ(rms.attn.qkv.weight, ln.attn.qkv.weight);  // gamma = 1, beta = 0: nothing to fold

    const Index B = 2, T = 6;
    RowMatrix<S> h(B * T, 10);
    fill(h, rng);
    h.colwise() -= h.rowwise().mean();  // zero-mean rows
    RowMatrix<S> h_ln = h, h_rms = h, h_crms = h.leftCols(9);
    ln.forward(h_ln, B);
    rms.forward(h_rms, B);
    crms.forward(h_crms, B);
    EXPECT_CLOSE(h_rms, to_ref(h_ln), tol<S>() / 10);
    EXPECT_CLOSE(h_crms, to_ref(h_ln.leftCols(9)), tol<S>() / 10);
    EXPECT_LT(double(h_ln.rowwise().sum().cwiseAbs().maxCoeff()), tol<S>());  // still zero-mean
  }
}

TEST(Models, PreLnBlockEqualsPreRmsNormBlockOnZeroMeanInputFloat) { check_block_identity<float>(); }
TEST(Models, PreLnBlockEqualsPreRmsNormBlockOnZeroMeanInputDouble) { check_block_identity<double>(); }

// A tied Pre-LN GPT converted by hand, with the "keep tied" layout (original
// E, tied_gamma / tied_beta), computes the same logits in Pre-RMSNorm and
// Pre-CRMSNorm; in Pre-RMSNorm the main branch stays zero-mean.
template <Arch A2>
void check_tied_conversion() {
  using S = double;
  GptConfig c = small_gpt(true, true);
  Gpt<Arch::PreLN, S> ln(c);
  ln.init_random(19, 0.3, true);
  ln.token_embedding.table.array() += 0.5;  // a table far from zero-mean
  Gpt<A2, S> g(c);
  ASSERT_TRUE(g.tied_affine());
  g.token_embedding.table = ln.token_embedding.table;  // the original table, (vocab, d)
  RowMatrix<S> P = ln.position_embedding.table;
  P.colwise() -= P.rowwise().mean();
  g.position_embedding.table = P.leftCols(g.main());
  for (std::size_t i = 0; i < ln.blocks.size(); ++i) g.blocks[i] = convert_block<A2>(ln.blocks[i]);
  g.tied_gamma = ln.final_gamma;
  g.tied_beta = ln.final_beta;
  g.head_bias = ln.head_bias;
  g.validate();

  std::mt19937_64 rng(20);
  const auto tokens = random_tokens(2, 8, c.vocab, rng);
  const RowMatrix<S> expected = ln.forward(tokens);
  double max_mean = 0;
  const RowMatrix<S> logits = g.forward(tokens, [&](Index, const RowMatrix<S>& h) {
    if (A2 == Arch::PreRMSNorm) max_mean = std::max(max_mean, h.rowwise().mean().cwiseAbs().maxCoeff());
  });
  EXPECT_CLOSE(logits, to_ref(expected), 1e-10) << prenorm::arch_name(A2);
  EXPECT_LT(max_mean, 1e-12);
}

TEST(Models, TiedPreLnConvertsExactlyToPreRmsNorm) { check_tied_conversion<Arch::PreRMSNorm>(); }
TEST(Models, TiedPreLnConvertsExactlyToPreCrmsNorm) { check_tied_conversion<Arch::PreCRMSNorm>(); }

// ---------------------------------------------------------------------------
// No allocation on a repeated forward
// ---------------------------------------------------------------------------

using alloc_count::Allocations;
using alloc_count::count_allocations;

// The counters see what they are meant to see.
TEST(Models, AllocationCountersWork) {
  const Allocations a = count_allocations([] {
    RowMatrix<float> m(10, 10);
    std::vector<int> v(10);
    m.setZero();
    v[0] = int(m(0, 0));
  });
  EXPECT_EQ(a.eigen, 1);
  EXPECT_EQ(a.news, 1);
}

TYPED_TEST(ModelsTest, RepeatedForwardDoesNotAllocate) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(true, true));
  g.init_random(21, 0.2, true);
  std::mt19937_64 rng(22);
  const auto tokens = random_tokens(2, 9, 37, rng);
  std::vector<int> flat;
  for (const auto& seq : tokens) flat.insert(flat.end(), seq.begin(), seq.end());
  const TokenBatch batch{flat, 2, 9};

  Session<A, S> session(g);
  const RowMatrix<S> first = session.forward(tokens);
  Allocations a = count_allocations([&] { session.forward(tokens); });
  EXPECT_EQ(a.eigen, 0) << "Eigen allocations in a repeated GPT forward";
  EXPECT_EQ(a.news, 0) << "operator new calls in a repeated GPT forward";
  a = count_allocations([&] { session.forward(batch); });
  EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a repeated GPT forward (TokenBatch)";
  EXPECT_EQ(session.forward(batch), first);
  EXPECT_EQ(g.forward(batch), first);  // the model's own forward: a session of its own

  // Decoding: after the first step, steps allocate nothing.
  session.prefill(TokenBatch{std::span<const int>(flat).first(4), 2, 2}, 16);
  const std::vector<int> next{1, 2};
  session.step(next);
  a = count_allocations([&] { session.step(next); });
  EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a decoding step";

  Vit<A, S> v(small_vit());
  v.init_random(23, 0.2, true);
  std::vector<S> pixels(2 * 3 * 8 * 8, S(0.25));
  const ImageBatch<S> images{pixels, 2, 3, 8, 8};
  Session<A, S> vit_session(v);
  vit_session.forward(images);
  a = count_allocations([&] { vit_session.forward(images); });
  EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a repeated ViT forward";
}

// One model, two sessions on two threads at once, each with its own inputs
// (full forwards, then KV-cache decoding): bit for bit what the same sessions
// compute one after the other. The model is const: a forward writes only its
// session.
TYPED_TEST(ModelsTest, SessionsOnTwoThreadsShareOneModel) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> writable(small_gpt(false, true));
  writable.init_random(41, 0.2, true);
  const Gpt<A, S>& g = writable;
  Vit<A, S> writable_vit(small_vit());
  writable_vit.init_random(42, 0.2, true);
  const Vit<A, S>& v = writable_vit;
  std::mt19937_64 rng(43);
  struct Work {
    std::vector<std::vector<int>> tokens;  // [2][9]
    std::vector<S> pixels;                 // [2 x 3 x 8 x 8]
    std::vector<RowMatrix<S>> results;     // every output, in order
  };
  Work work[2];
  for (Work& w : work) {
    w.tokens = random_tokens(2, 9, 37, rng);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (int i = 0; i < 2 * 3 * 8 * 8; ++i) w.pixels.push_back(S(normal(rng)));
  }
  const auto run = [&](Work& w) {
    Session<A, S> session(g);
    Session<A, S> vit_session(v);
    std::vector<RowMatrix<S>> out;
    for (int repeat = 0; repeat < 3; ++repeat) {
      out.push_back(session.forward(w.tokens));
      out.push_back(vit_session.forward(ImageBatch<S>{w.pixels, 2, 3, 8, 8}));
    }
    std::vector<int> prompt{w.tokens[0][0], w.tokens[1][0]};
    out.push_back(session.prefill(TokenBatch{prompt, 2, 1}, 9));
    for (Index t = 1; t < 9; ++t) {
      const std::vector<int> next{w.tokens[0][t], w.tokens[1][t]};
      out.push_back(session.step(next));
    }
    return out;
  };
  const std::vector<RowMatrix<S>> sequential[2] = {run(work[0]), run(work[1])};
  std::thread first([&] { work[0].results = run(work[0]); });
  std::thread second([&] { work[1].results = run(work[1]); });
  first.join();
  second.join();
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(work[i].results.size(), sequential[i].size());
    for (std::size_t k = 0; k < sequential[i].size(); ++k)
      EXPECT_EQ(work[i].results[k], sequential[i][k]) << "thread " << i << ", output " << k;
  }
  // The two inputs differ, so the comparison above can fail.
  EXPECT_NE(sequential[0][0], sequential[1][0]);
}

// At width 48, the Pre-CRMSNorm main branch (47) is one short of a GEMM
// register block on every x86 SIMD width: the blocks' writers then run
// padded into a branch buffer of width 48 (Linear::forward_padded). The models
// still match the reference, the KV cache the full forward, and a repeated
// forward allocates nothing (on one thread: at these sizes Eigen's own
// parallel GEMM takes its shared packing buffer from the heap per product).
TYPED_TEST(ModelsTest, WritersPaddedToTheRegisterBlockMatchReference) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  const int threads = prenorm::num_threads();
  prenorm::set_num_threads(1);
  GptConfig gc = small_gpt(false, true);
  gc.width = 48;
  gc.heads = 4;
  gc.mlp_width = 64;
  Gpt<A, S> g(gc);
  g.init_random(31, 0.2, true);
  EXPECT_EQ(g.blocks[0].branch_width(), A == Arch::PreCRMSNorm ? 48 : g.main());
  std::mt19937_64 rng(32);
  const Index B = 2, T = 10;
  const auto tokens = random_tokens(B, T, 37, rng);
  Session<A, S> session(g);
  const RowMatrix<S> full = session.forward(tokens);
  EXPECT_CLOSE(full, ref_gpt(g, tokens), tol<S>());
  Allocations a = count_allocations([&] { session.forward(tokens); });
  EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a repeated GPT forward";

  std::vector<int> prompt_ids;
  const Index prompt = 9;  // B * prompt = 18 rows: the padded product
  for (const auto& seq : tokens) prompt_ids.insert(prompt_ids.end(), seq.begin(), seq.begin() + prompt);
  const RowMatrix<S> first = session.prefill(TokenBatch{prompt_ids, B, prompt}, T);
  for (Index b = 0; b < B; ++b)
    EXPECT_CLOSE(first.middleRows(b * prompt, prompt), to_ref(full.middleRows(b * T, prompt)), tol<S>());
  const std::vector<int> next{tokens[0][prompt], tokens[1][prompt]};
  const RowMatrix<S>& step = session.step(next);
  for (Index b = 0; b < B; ++b) EXPECT_CLOSE(step.row(b), to_ref(full.row(b * T + prompt)), tol<S>());

  VitConfig vc = small_vit();
  vc.width = 48;
  vc.heads = 4;
  vc.patch_size = 2;  // 16 patches + cls: 34 rows for 2 images
  Vit<A, S> v(vc);
  v.init_random(33, 0.2, true);
  std::vector<S> pixels(B * 3 * 8 * 8);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (S& p : pixels) p = S(normal(rng));
  const ImageBatch<S> images{pixels, B, 3, 8, 8};
  Session<A, S> vit_session(v);
  EXPECT_CLOSE(vit_session.forward(images), ref_vit(v, pixels, B), tol<S>());
  a = count_allocations([&] { vit_session.forward(images); });
  EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a repeated ViT forward";
  prenorm::set_num_threads(threads);
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

TYPED_TEST(ModelsTest, GptBadInputThrows) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(true, false));
  g.init_random(24);
  expect_error([&] { g.forward({{1, 2, 3}, {4, 5, 37}}); },
               "prenorm::Transformer::forward: token id 37 at sequence 1, position 2 is out of range [0, 37)");
  expect_error([&] { g.forward({{-1}}); },
               "prenorm::Transformer::forward: token id -1 at sequence 0, position 0 is out of range [0, 37)");
  expect_error([&] { g.forward({std::vector<int>(17, 1)}); },
               "prenorm::Transformer::forward: sequence length 17 exceeds the context 16");
  expect_error([&] { g.forward({{1, 2, 3, 4}, {1, 2, 3}}); },
               "prenorm::Transformer::forward: ragged batch: sequence 1 has 3 tokens, expected 4 (the length of sequence 0)");
  const std::vector<int> five{1, 2, 3, 4, 5};
  expect_error([&] { g.forward(TokenBatch{five, 2, 3}); },
               "prenorm::Transformer::forward: the token batch has 5 ids, expected batch 2 x seq 3");

  // A weight of the wrong shape, named with expected and actual shapes.
  const Index m = g.main();
  const RowMatrix<S> saved = g.blocks[1].attn.qkv.weight;
  g.blocks[1].attn.qkv.weight.resize(36, m + 1);
  const std::string shape = "blocks[1].attn.qkv.weight is (36 x " + std::to_string(m + 1) +
                            "), expected (36 x " + std::to_string(m) + ")";
  expect_error([&] { g.validate(); }, "prenorm::Transformer::validate: " + shape);
  expect_error([&] { g.forward({{1, 2}}); }, "prenorm::Transformer::forward: " + shape);
  g.blocks[1].attn.qkv.weight = saved;
  g.blocks[0].mlp.proj.bias.resize(3);
  expect_error([&] { g.validate(); },
               "prenorm::Transformer::validate: blocks[0].mlp.proj.bias has 3 elements, expected " + std::to_string(m));
  g.blocks[0].mlp.proj.bias.setZero(m);
  if constexpr (A == Arch::PreLN) {
    g.final_beta.resize(5);
    expect_error([&] { g.validate(); }, "prenorm::Transformer::validate: final_beta has 5 elements, expected 12");
    g.final_beta.setZero(12);
  } else {
    g.blocks[0].norm1_gamma.setOnes(12);
    expect_error([&] { g.validate(); },
                 "prenorm::Transformer::validate: blocks[0].norm1_gamma has 12 elements, expected 0 (no norm affine in this architecture)");
    g.blocks[0].norm1_gamma.resize(0);
  }
  g.token_embedding.table.resize(37, 3);
  expect_error([&] { g.validate(); }, "prenorm::Transformer::validate: token_embedding.table is (37 x 3), expected (37 x " +
                                          std::to_string(g.tied_affine() ? 12 : m) + ")");
  g.token_embedding.table.setZero(37, g.tied_affine() ? 12 : m);
  g.blocks.pop_back();
  expect_error([&] { g.validate(); }, "prenorm::Transformer::validate: blocks has 1 blocks, expected 2 (layers)");
}

TYPED_TEST(ModelsTest, KvCacheBadInputThrows) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(true, false));
  g.init_random(25);
  Session<A, S> session(g);
  const std::vector<int> two{1, 2}, three{1, 2, 3};
  expect_error([&] { session.step(two); },
               "prenorm::Session::step: no decoding started: call prefill first");
  session.prefill(TokenBatch{two, 2, 1}, 3);
  session.step(two);
  session.step(two);
  expect_error([&] { session.step(two); },
               "prenorm::Session::step: the cache is full: 3 + 1 positions exceed its capacity 3");
  expect_error([&] { session.step(three); },
               "prenorm::Session::step: the batch has 3 sequences, the cache holds 2");
  expect_error([&] { session.extend(TokenBatch{three, 3, 1}); },
               "prenorm::Session::extend: the batch has 3 sequences, the cache holds 2");
  expect_error([&] { session.prefill(TokenBatch{two, 1, 2}, 17); },
               "prenorm::Session::prefill: batch 1 and capacity 17 must be >= 0, and the capacity at most the context 16");
  const std::vector<int> bad{37};
  session.prefill(TokenBatch{two, 1, 2});
  EXPECT_EQ(session.cache().capacity, 16);
  expect_error([&] { session.step(bad); },
               "prenorm::Session::step: token id 37 at sequence 0, position 2 is out of range [0, 37)");
  expect_error([&] { session.rewind(3); },
               "prenorm::Session::rewind: length 3 is outside [0, 2] (the positions in the cache)");
  expect_error([&] { session.forward(TokenBatch{bad, 1, 1}); },
               "prenorm::Session::forward: token id 37 at sequence 0, position 0 is out of range [0, 37)");
}

TYPED_TEST(ModelsTest, VitBadInputThrows) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Vit<A, S> v(small_vit());
  v.init_random(26);
  std::vector<S> pixels(3 * 12 * 12);
  expect_error([&] { v.forward(ImageBatch<S>{std::span<const S>(pixels).first(64), 1, 1, 8, 8}); },
               "prenorm::Transformer::forward: images have 1 channels, expected 3");
  expect_error([&] { v.forward(ImageBatch<S>{std::span<const S>(pixels).first(240), 1, 3, 10, 8}); },
               "prenorm::Transformer::forward: image size 10 x 8 is not divisible by the patch size 4");
  expect_error([&] { v.forward(ImageBatch<S>{pixels, 1, 3, 12, 12}); },
               "prenorm::Transformer::forward: image size 12 x 12, expected 8 x 8");
  expect_error([&] { v.forward(ImageBatch<S>{std::span<const S>(pixels).first(10), 1, 3, 8, 8}); },
               "prenorm::Transformer::forward: the image buffer has 10 values, expected batch 1 x channels 3 x height 8 x width 8");
  RowMatrix<S> patches(5, 48);
  expect_error([&] { v.forward_patches(patches); },
               "prenorm::Transformer::forward_patches: patches is 5 x 48, expected (batch*4) x 48");
  v.position_embedding.table.resize(4, v.main());
  expect_error([&] { v.validate(); }, "prenorm::Transformer::validate: position_embedding is (4 x " +
                                          std::to_string(v.main()) + "), expected (5 x " +
                                          std::to_string(v.main()) + ")");
}

TEST(Models, BadConfigsThrow) {
  GptConfig c = small_gpt(true, false);
  c.width = 13;
  expect_error([&] { Gpt<Arch::PreLN, float> g(c); }, "prenorm::Gpt: width 13 is not divisible by heads 3");
  c = small_gpt(true, false);
  c.vocab = 0;
  expect_error([&] { Gpt<Arch::PreLN, float> g(c); }, "prenorm::Gpt: vocab is 0, expected > 0");
  VitConfig v = small_vit();
  v.image_size = 10;
  expect_error([&] { Vit<Arch::PreRMSNorm, float> m(v); },
               "prenorm::Vit: image_size 10 is not divisible by patch_size 4");
  v = small_vit();
  v.epsilon = 0;
  expect_error([&] { Vit<Arch::PreRMSNorm, float> m(v); }, "prenorm::Vit: epsilon is 0, expected > 0");
}

// ---------------------------------------------------------------------------
// Empty batches
// ---------------------------------------------------------------------------

TYPED_TEST(ModelsTest, EmptyBatchGivesEmptyOutput) {
  constexpr Arch A = TypeParam::A;
  using S = typename TypeParam::S;
  Gpt<A, S> g(small_gpt(false, true));
  g.init_random(27);
  const RowMatrix<S>& none = g.forward(std::vector<std::vector<int>>{});
  EXPECT_EQ(none.rows(), 0);
  EXPECT_EQ(none.cols(), 37);
  EXPECT_EQ(g.forward(std::vector<std::vector<int>>{{}, {}}).rows(), 0);
  EXPECT_EQ(g.forward(TokenBatch{{}, 0, 0}).rows(), 0);

  Vit<A, S> v(small_vit());
  v.init_random(28);
  const RowMatrix<S>& empty = v.forward(ImageBatch<S>{{}, 0, 3, 8, 8});
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 5);
  EXPECT_EQ(v.forward_patches(RowMatrix<S>(0, 48)).rows(), 0);
}

// ---------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------

TEST(Models, PresetsAreValid) {
  namespace p = prenorm::presets;
  for (const TransformerConfig& c : {p::vit_ti16, p::vit_s16, p::vit_b16, p::vit_l16, p::vit_h14, p::vit_g14}) {
    EXPECT_NO_THROW(c.validate());
    EXPECT_EQ(c.image_size, 224);
    EXPECT_EQ(c.classes, 1000);
    EXPECT_EQ(c.attention_width(), c.width);
  }
  static_assert(p::vit_ti16.description().tokens() == 197 && p::vit_ti16.description().patch_features() == 768);
  static_assert(p::vit_h14.description().tokens() == 257 && p::vit_h14.description().patch_features() == 588);
  static_assert(p::vit_b16.width == 768 && p::vit_b16.heads == 12 && p::vit_b16.mlp_width == 3072);
  static_assert(p::vit_g14.width == 1664 && p::vit_g14.layers == 48 && p::vit_g14.mlp_width == 8192);
  for (const TransformerConfig& c : {p::gpt3_small, p::gpt3_medium, p::gpt3_large, p::gpt3_xl, p::gpt2_small}) {
    EXPECT_NO_THROW(c.validate());
    EXPECT_EQ(c.vocab, 50257);
  }
  static_assert(p::gpt3_small.context == 2048 && p::gpt2_small.context == 1024);
  static_assert(p::gpt3_large.description().head_size() == 96);
  static_assert(p::gpt3_xl.description().head_size() == 128 && p::gpt3_xl.description().attention_width() == 3072);
}

}  // namespace
