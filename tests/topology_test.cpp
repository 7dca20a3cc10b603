// Tests of the activations Relu and QuickGelu (ops/activation.hpp and their
// backward in train/layers_backward.hpp) and of the block topologies
// (layers/topology.hpp): Sequential, ParallelSharedNorm, ParallelTwoNorms.
//
//   - Relu and QuickGelu forward against an explicit-loop long double
//     reference, their backward against the analytic derivative in long
//     double and against central differences of the forward (double).
//   - PreNormBlock of each topology against an explicit-loop long double
//     block written here (LayerNorm, linear, attention, activation).
//   - Gpt and Vit of each topology: convert<PreRMSNorm>, <PreCRMSNorm> and
//     back keep the logits, with random affines and an offset on the residual
//     stream (a wrong norm pairing fails); convert_adjoint against central
//     differences of convert_into (exact: the map is quadratic); Session
//     prefill + steps equal the full forward.
//   - Training: GPT and ViT gradients of each topology against central
//     differences of the loss; training through the converter gives the
//     Pre-LN gradient (a shared norm's two readers summed), and Pre-LN and
//     reparameterized training (AdamW) follow the same trajectory.
//
// Typed over float and double; tolerances relative 1e-5 (float) and 1e-12
// (double) for the ops, logits-sized ones for whole models.

#include "support/alloc_count.hpp"  // first: before any Eigen header

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/layers.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using alloc_count::Allocations;
using alloc_count::count_allocations;
using prenorm::TransformerConfig;
using prenorm::Activation;
using prenorm::Arch;
using prenorm::BlockTopology;
using prenorm::Gpt;
using prenorm::GptConfig;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;
using prenorm::Vit;
using prenorm::VitConfig;
using LD = long double;
using LMat = std::vector<std::vector<LD>>;  // reference matrices [rows][cols]
using LVec = std::vector<LD>;

constexpr BlockTopology kTopologies[] = {BlockTopology::Sequential, BlockTopology::ParallelSharedNorm,
                                         BlockTopology::ParallelTwoNorms};
constexpr Activation kActivations[] = {Activation::GeluTanh, Activation::GeluErf, Activation::Relu,
                                       Activation::QuickGelu};

template <class S>
constexpr double rel_tol() {
  return std::is_same_v<S, float> ? 1e-5 : 1e-12;
}
// Whole-model logits (sums over many terms, converted in the model's scalar).
template <class S>
constexpr double model_tol() {
  return std::is_same_v<S, float> ? 2e-4 : 1e-10;
}

template <class M>
void fill(M& m, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<typename M::Scalar>(normal(rng));
}

template <class Derived>
LMat to_ld(const Eigen::MatrixBase<Derived>& m) {
  LMat out(m.rows(), LVec(m.cols()));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = LD(m(r, c));
  return out;
}

template <class V>
LVec vec_ld(const V& v) {
  LVec out(v.size());
  for (Index i = 0; i < v.size(); ++i) out[i] = LD(v[i]);
  return out;
}

// max |actual - expected| / (|expected| + floor) over all elements.
template <class Derived>
::testing::AssertionResult rel_close(const Eigen::MatrixBase<Derived>& actual, const LMat& expected,
                                     double tol, double floor = 1.0) {
  if (actual.rows() != Index(expected.size()))
    return ::testing::AssertionFailure() << "rows " << actual.rows() << " vs " << expected.size();
  double worst = 0;
  for (Index r = 0; r < actual.rows(); ++r)
    for (Index c = 0; c < actual.cols(); ++c) {
      const double e = double(expected[r][c]);
      const double d = std::abs(double(actual(r, c)) - e) / (std::abs(e) + floor);
      if (!(d <= worst)) worst = d;  // NaN counts as a failure
    }
  if (worst <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max relative difference " << worst << " > " << tol;
}

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

template <class S>
class TopologyTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(TopologyTest, Scalars);

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

LD ref_activation(Activation a, LD x) {
  switch (a) {
    case Activation::GeluTanh:
      return 0.5L * x * (1 + std::tanh(std::sqrt(2 / LD(M_PI)) * (x + 0.044715L * x * x * x)));
    case Activation::GeluErf: return 0.5L * x * (1 + std::erf(x / std::sqrt(2.0L)));
    case Activation::Relu: return x > 0 ? x : 0;
    case Activation::QuickGelu: return x / (1 + std::exp(-1.702L * x));
    case Activation::GeluTanhBloom:
      return 0.5L * x * (1 + std::tanh(0.79788456L * (x + 0.044715L * x * x * x)));
  }
  ADD_FAILURE() << "no reference for activation " << int(a);
  return 0;
}

// d/dx of ref_activation, analytic (Relu and QuickGelu).
LD ref_activation_derivative(Activation a, LD x) {
  if (a == Activation::Relu) return x > 0 ? 1 : 0;
  const LD s = 1 / (1 + std::exp(-1.702L * x));
  return s + 1.702L * x * s * (1 - s);
}

// Inputs over [-6, 6] and a few exact points (0, +-tiny, large).
template <class S>
RowMatrix<S> activation_inputs() {
  std::mt19937_64 rng(11);
  RowMatrix<S> x(7, 75);  // not a multiple of 64 or of a packet
  fill(x, rng, 3.0);
  x(0, 0) = 0, x(0, 1) = S(1e-7), x(0, 2) = S(-1e-7), x(0, 3) = 40, x(0, 4) = -40;
  x(0, 5) = S(0.5), x(0, 6) = S(-0.5);
  return x;
}

TYPED_TEST(TopologyTest, ReluAndQuickGeluMatchLongDoubleReference) {
  using S = TypeParam;
  const RowMatrix<S> x = activation_inputs<S>();
  for (Activation a : {Activation::Relu, Activation::QuickGelu}) {
    RowMatrix<S> y(x.rows(), x.cols());
    prenorm::activation_forward(a, x, y);
    LMat ref = to_ld(x);
    for (auto& row : ref)
      for (LD& v : row) v = ref_activation(a, v);
    // Relative to |y| (floor 1e-6: QuickGelu(-40) is ~1e-28).
    EXPECT_TRUE(rel_close(y, ref, rel_tol<S>(), 1e-6)) << prenorm::activation_name(a);
    RowMatrix<S> z = x;  // in place
    prenorm::activation_forward(a, z, z);
    EXPECT_EQ(z, y) << prenorm::activation_name(a);
  }
  // The named forwards are the same functions.
  RowMatrix<S> y1(x.rows(), x.cols()), y2(x.rows(), x.cols());
  prenorm::relu_forward(x, y1);
  prenorm::activation_forward(Activation::Relu, x, y2);
  EXPECT_EQ(y1, y2);
  prenorm::quick_gelu_forward(x, y1);
  prenorm::activation_forward(Activation::QuickGelu, x, y2);
  EXPECT_EQ(y1, y2);
}

TYPED_TEST(TopologyTest, ReluAndQuickGeluBackwardMatchAnalyticDerivative) {
  using S = TypeParam;
  const RowMatrix<S> x = activation_inputs<S>();
  std::mt19937_64 rng(12);
  RowMatrix<S> dy(x.rows(), x.cols());
  fill(dy, rng);
  for (Activation a : {Activation::Relu, Activation::QuickGelu}) {
    RowMatrix<S> dx(x.rows(), x.cols());
    prenorm::activation_backward<S>(a, dy, x, dx);
    // Relative to the size of the terms: QuickGelu' = s + k x s (1 - s)
    // crosses 0 (near x = -1.5), where no formula in S is relative to |dx|.
    double worst = 0;
    for (Index r = 0; r < x.rows(); ++r)
      for (Index c = 0; c < x.cols(); ++c) {
        const LD xv = LD(x(r, c)), s = 1 / (1 + std::exp(-1.702L * xv));
        const LD terms = a == Activation::Relu ? 1 : s + std::abs(1.702L * xv * s * (1 - s));
        const LD ref = LD(dy(r, c)) * ref_activation_derivative(a, xv);
        const double err = double(std::abs(LD(dx(r, c)) - ref) / (std::abs(LD(dy(r, c))) * terms + 1e-30L));
        if (!(err <= worst)) worst = err;
      }
    EXPECT_LE(worst, rel_tol<S>()) << prenorm::activation_name(a);
    RowMatrix<S> in_place = dy;  // dx may be dy
    prenorm::activation_backward<S>(a, in_place, x, in_place);
    EXPECT_EQ(in_place, dx) << prenorm::activation_name(a);
  }
}

TEST(Activation, ReluAndQuickGeluBackwardMatchFiniteDifferences) {
  const RowMatrix<double> x = activation_inputs<double>();
  const double h = 1e-6;
  for (Activation a : {Activation::Relu, Activation::QuickGelu}) {
    RowMatrix<double> ones = RowMatrix<double>::Ones(x.rows(), x.cols()), dx(x.rows(), x.cols());
    prenorm::activation_backward<double>(a, ones, x, dx);
    RowMatrix<double> plus = x.array() + h, minus = x.array() - h;
    prenorm::activation_forward(a, plus, plus);
    prenorm::activation_forward(a, minus, minus);
    for (Index r = 0; r < x.rows(); ++r)
      for (Index c = 0; c < x.cols(); ++c) {
        if (std::abs(x(r, c)) < 10 * h) continue;  // Relu's kink
        const double fd = (plus(r, c) - minus(r, c)) / (2 * h);
        EXPECT_NEAR(dx(r, c), fd, 1e-8 * (1 + std::abs(fd)))
            << prenorm::activation_name(a) << " at x = " << x(r, c);
      }
  }
}

TEST(Activation, NamesRoundTripAndUnknownNamesFail) {
  for (Activation a : kActivations) {
    Activation back = Activation::GeluTanh;
    EXPECT_TRUE(prenorm::activation_from_name(prenorm::activation_name(a), back));
    EXPECT_EQ(back, a);
  }
  EXPECT_EQ(prenorm::activation_name(Activation::Relu), "relu");
  EXPECT_EQ(prenorm::activation_name(Activation::QuickGelu), "quick_gelu");
  Activation unused{};
  EXPECT_FALSE(prenorm::activation_from_name("swish", unused));
  GptConfig c{.vocab = 5, .context = 4, .width = 4, .heads = 1, .layers = 1, .mlp_width = 4};
  c.activation = Activation(17);
  expect_error([&] { c.validate(); }, "activation is 17");
}

// ---------------------------------------------------------------------------
// The block, against an explicit-loop long double block
// ---------------------------------------------------------------------------

LVec ref_layer_norm(const LVec& x, const LVec& gamma, const LVec& beta, LD eps) {
  LD mean = 0, var = 0;
  for (LD v : x) mean += v;
  mean /= LD(x.size());
  for (LD v : x) var += (v - mean) * (v - mean);
  var /= LD(x.size());
  LVec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) / std::sqrt(var + eps) * gamma[i] + beta[i];
  return y;
}

template <class S>
LVec ref_linear(const prenorm::Linear<S>& lin, const LVec& x) {
  LVec y(lin.weight.rows());
  for (Index o = 0; o < lin.weight.rows(); ++o) {
    LD acc = lin.bias.size() ? LD(lin.bias[o]) : 0;
    for (Index i = 0; i < lin.weight.cols(); ++i) acc += LD(lin.weight(o, i)) * x[i];
    y[o] = acc;
  }
  return y;
}

// Attention over one sequence x [T][width].
template <class S>
LMat ref_attention(const prenorm::MultiHeadAttention<S>& a, const LMat& x) {
  const Index T = Index(x.size()), H = a.heads, hd = a.head_dim, I = H * hd;
  LMat qkv;
  for (const LVec& row : x) qkv.push_back(ref_linear(a.qkv, row));
  LMat out;
  for (Index t = 0; t < T; ++t) {
    LVec ctx(I, 0);
    for (Index h = 0; h < H; ++h) {
      const Index seen = a.causal ? t + 1 : T;
      LVec p(seen);
      LD sum = 0;
      for (Index u = 0; u < seen; ++u) {
        LD dot = 0;
        for (Index j = 0; j < hd; ++j) dot += qkv[t][h * hd + j] * qkv[u][I + h * hd + j];
        sum += p[u] = std::exp(dot / std::sqrt(LD(hd)));
      }
      for (Index u = 0; u < seen; ++u)
        for (Index j = 0; j < hd; ++j) ctx[h * hd + j] += p[u] / sum * qkv[u][2 * I + h * hd + j];
    }
    out.push_back(ref_linear(a.out, ctx));
  }
  return out;
}

template <class S>
LVec ref_mlp(const prenorm::Mlp<S>& mlp, const LVec& x) {
  LVec hidden = ref_linear(mlp.fc, x);
  for (LD& v : hidden) v = ref_activation(mlp.activation, v);
  return ref_linear(mlp.proj, hidden);
}

// One Pre-LN block over one sequence h [T][d], in place, as layers/topology.hpp defines it.
template <class S>
void ref_block(const prenorm::PreNormBlock<Arch::PreLN, S>& b, LMat& h) {
  const LD eps = LD(b.epsilon);
  const auto norm = [&](const LMat& in, const Vector<S>& gamma, const Vector<S>& beta) {
    LMat out;
    for (const LVec& row : in) out.push_back(ref_layer_norm(row, vec_ld(gamma), vec_ld(beta), eps));
    return out;
  };
  const LMat x1 = norm(h, b.norm1_gamma, b.norm1_beta);
  const LMat a = ref_attention(b.attn, x1);
  LMat x2;  // the MLP's input
  if (b.topology == BlockTopology::ParallelSharedNorm) x2 = x1;
  else if (b.topology == BlockTopology::ParallelTwoNorms) x2 = norm(h, b.norm2_gamma, b.norm2_beta);
  for (std::size_t t = 0; t < h.size(); ++t)
    for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += a[t][i];
  if (b.topology == BlockTopology::Sequential) x2 = norm(h, b.norm2_gamma, b.norm2_beta);
  for (std::size_t t = 0; t < h.size(); ++t) {
    const LVec m = ref_mlp(b.mlp, x2[t]);
    for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += m[i];
  }
}

TYPED_TEST(TopologyTest, BlockMatchesLongDoubleReference) {
  using S = TypeParam;
  using Block = prenorm::PreNormBlock<Arch::PreLN, S>;
  const Index d = 10, heads = 2, head_dim = 5, inner = 14, B = 2, T = 5;
  for (BlockTopology topology : kTopologies)
    for (Activation activation : kActivations)
      for (bool causal : {true, false}) {
        Block b(d, heads, head_dim, inner, causal, activation, S(1e-5));
        b.set_topology(topology);
        std::mt19937_64 rng(21);
        prenorm::detail::init_block_random(b, rng, 0.3, 0.3, 0.3);  // norm affines far from 1, 0
        if (topology == BlockTopology::ParallelSharedNorm) {
          EXPECT_EQ(b.norm2_gamma.size(), 0);
          EXPECT_EQ(b.norm2_beta.size(), 0);
        }
        RowMatrix<S> h(B * T, d);
        fill(h, rng);
        h.array() += S(0.7);  // an offset on the residual stream
        LMat ref = to_ld(h), expected;
        for (Index s = 0; s < B; ++s) {
          LMat seq(ref.begin() + s * T, ref.begin() + (s + 1) * T);
          ref_block(b, seq);
          expected.insert(expected.end(), seq.begin(), seq.end());
        }
        b.forward(h, B);
        EXPECT_TRUE(rel_close(h, expected, rel_tol<S>()))
            << prenorm::topology_name(topology) << ", " << prenorm::activation_name(activation)
            << (causal ? ", causal" : ", bidirectional");
      }
}

TEST(Topology, NamesValidationAndSetTopology) {
  for (BlockTopology t : kTopologies) {
    BlockTopology back = BlockTopology::Sequential;
    EXPECT_TRUE(prenorm::topology_from_name(prenorm::topology_name(t), back));
    EXPECT_EQ(back, t);
  }
  BlockTopology unused{};
  EXPECT_FALSE(prenorm::topology_from_name("parallel", unused));

  GptConfig c{.vocab = 5, .context = 4, .width = 4, .heads = 1, .layers = 1, .mlp_width = 4};
  c.topology = BlockTopology(5);
  expect_error([&] { c.validate(); }, "topology is 5");
  VitConfig v{.image_size = 4, .patch_size = 2, .channels = 1, .classes = 2, .width = 4, .heads = 1,
              .layers = 1, .mlp_width = 4};
  v.topology = BlockTopology(5);
  expect_error([&] { v.validate(); }, "topology is 5");

  // A shared-norm block has no norm2 affine; going back restores gamma 1, beta 0.
  prenorm::PreNormBlock<Arch::PreLN, double> b(4, 1, 4, 4, true, Activation::Relu, 1e-5);
  b.set_topology(BlockTopology::ParallelSharedNorm);
  EXPECT_EQ(b.norm2_gamma.size(), 0);
  b.validate("test", "b", 1, 4, 4);
  b.norm2_gamma.setOnes(4);
  expect_error([&] { b.validate("test", "b", 1, 4, 4); }, "b.norm2_gamma and .norm2_beta have 4 and 0");
  b.set_topology(BlockTopology::ParallelTwoNorms);
  EXPECT_EQ(b.norm2_gamma, Vector<double>::Ones(4));
  EXPECT_EQ(b.norm2_beta, Vector<double>::Zero(4));
  expect_error([&] { b.set_topology(BlockTopology(9)); }, "unknown topology 9");

  // The model checks its blocks against its config.
  c.topology = BlockTopology::ParallelTwoNorms;
  Gpt<Arch::PreLN, double> g(c);
  EXPECT_EQ(g.blocks[0].topology, BlockTopology::ParallelTwoNorms);
  g.blocks[0].set_topology(BlockTopology::Sequential);
  expect_error([&] { g.validate(); }, "blocks[0].topology is sequential, expected parallel_two_norms");
}

// ---------------------------------------------------------------------------
// Models: conversion, KV cache
// ---------------------------------------------------------------------------

GptConfig small_gpt(BlockTopology topology, bool tied) {
  return GptConfig{.vocab = 23, .context = 12, .width = 12, .heads = 3, .layers = 2,
                   .mlp_width = 20, .epsilon = 1e-5, .activation = Activation::QuickGelu,
                   .topology = topology, .tied = tied};
}

VitConfig small_vit(BlockTopology topology) {
  return VitConfig{.image_size = 8, .patch_size = 4, .channels = 2, .classes = 5, .width = 10,
                   .heads = 2, .layers = 2, .mlp_width = 14, .epsilon = 1e-6,
                   .activation = Activation::Relu, .topology = topology};
}

// Random weights with random affines, and an offset on the residual stream
// (the embeddings' mean far from 0), so that every norm matters.
template <class Model>
void randomize(Model& m, std::uint64_t seed) {
  m.init_random(seed, 0.3, /*random_affine=*/true);
  m.position_embedding.table.array() += typename Model::Scalar(0.5);
}
template <Arch A, class S>
void randomize(Gpt<A, S>& g, std::uint64_t seed) {
  g.init_random(seed, 0.3, /*random_affine=*/true);
  g.position_embedding.table.array() += S(0.5);
}

std::vector<std::vector<int>> gpt_tokens() {
  return {{1, 5, 22, 7, 0, 3, 9}, {4, 4, 18, 2, 11, 6, 13}};
}

template <class S>
std::vector<S> vit_pixels(Index batch, const TransformerConfig& c) {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<S> pixels(std::size_t(batch * c.channels * c.image_size * c.image_size));
  for (S& p : pixels) p = S(normal(rng));
  return pixels;
}

template <class S, class Model>
RowMatrix<S> vit_logits(const Model& v, const std::vector<S>& pixels, Index batch) {
  const TransformerConfig& c = v.config;
  return v.forward(prenorm::ImageBatch<S>{pixels, batch, c.channels, c.image_size, c.image_size});
}

TYPED_TEST(TopologyTest, GptConversionsKeepLogitsForEveryTopology) {
  using S = TypeParam;
  for (BlockTopology topology : kTopologies)
    for (bool tied : {false, true}) {
      SCOPED_TRACE(std::string(prenorm::topology_name(topology)) + (tied ? ", tied" : ", untied"));
      Gpt<Arch::PreLN, S> ln(small_gpt(topology, tied));
      randomize(ln, 41);
      const RowMatrix<S> ref = ln.forward(gpt_tokens());
      const LMat expected = to_ld(ref);
      const auto rms = prenorm::convert<Arch::PreRMSNorm>(ln);
      const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
      EXPECT_EQ(rms.config.topology, topology);
      EXPECT_EQ(crms.blocks[1].topology, topology);
      EXPECT_TRUE(rel_close(rms.forward(gpt_tokens()), expected, model_tol<S>())) << "pre_rmsnorm";
      EXPECT_TRUE(rel_close(crms.forward(gpt_tokens()), expected, model_tol<S>())) << "pre_crmsnorm";
      const auto keep = prenorm::convert<Arch::PreCRMSNorm>(ln, {.tied = prenorm::TiedPolicy::Keep});
      EXPECT_TRUE(rel_close(keep.forward(gpt_tokens()), expected, model_tol<S>())) << "keep-tied";
      EXPECT_TRUE(rel_close(prenorm::convert<Arch::PreLN>(crms).forward(gpt_tokens()), expected,
                            model_tol<S>()))
          << "pre_crmsnorm -> pre_ln";
      EXPECT_TRUE(rel_close(prenorm::convert<Arch::PreLN>(rms).forward(gpt_tokens()), expected,
                            model_tol<S>()))
          << "pre_rmsnorm -> pre_ln";
      EXPECT_TRUE(rel_close(prenorm::convert<Arch::PreCRMSNorm>(rms).forward(gpt_tokens()), expected,
                            model_tol<S>()))
          << "pre_rmsnorm -> pre_crmsnorm";
      EXPECT_TRUE(rel_close(prenorm::convert<Arch::PreRMSNorm>(crms).forward(gpt_tokens()), expected,
                            model_tol<S>()))
          << "pre_crmsnorm -> pre_rmsnorm";
    }
}

TYPED_TEST(TopologyTest, VitConversionsKeepLogitsForEveryTopology) {
  using S = TypeParam;
  for (BlockTopology topology : kTopologies) {
    SCOPED_TRACE(std::string(prenorm::topology_name(topology)));
    Vit<Arch::PreLN, S> ln(small_vit(topology));
    randomize(ln, 43);
    const std::vector<S> pixels = vit_pixels<S>(3, ln.config);
    const LMat expected = to_ld(vit_logits(ln, pixels, 3));
    const auto rms = prenorm::convert<Arch::PreRMSNorm>(ln);
    const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
    EXPECT_EQ(crms.config.topology, topology);
    EXPECT_TRUE(rel_close(vit_logits(rms, pixels, 3), expected, model_tol<S>())) << "pre_rmsnorm";
    EXPECT_TRUE(rel_close(vit_logits(crms, pixels, 3), expected, model_tol<S>())) << "pre_crmsnorm";
    EXPECT_TRUE(rel_close(vit_logits(prenorm::convert<Arch::PreLN>(crms), pixels, 3), expected,
                          model_tol<S>()))
        << "pre_crmsnorm -> pre_ln";
    EXPECT_TRUE(rel_close(vit_logits(prenorm::convert<Arch::PreLN>(rms), pixels, 3), expected,
                          model_tol<S>()))
        << "pre_rmsnorm -> pre_ln";
    EXPECT_TRUE(rel_close(vit_logits(prenorm::convert<Arch::PreCRMSNorm>(rms), pixels, 3), expected,
                          model_tol<S>()))
        << "pre_rmsnorm -> pre_crmsnorm";
  }
}

// The topology changes what the model computes (so the tests above see it).
TEST(Topology, TopologiesComputeDifferentLogits) {
  std::vector<RowMatrix<double>> logits;
  for (BlockTopology topology : kTopologies) {
    Gpt<Arch::PreLN, double> g(small_gpt(topology, false));
    randomize(g, 41);
    logits.push_back(g.forward(gpt_tokens()));
  }
  EXPECT_GT((logits[0] - logits[1]).cwiseAbs().maxCoeff(), 1e-3);
  EXPECT_GT((logits[0] - logits[2]).cwiseAbs().maxCoeff(), 1e-3);
  EXPECT_GT((logits[1] - logits[2]).cwiseAbs().maxCoeff(), 1e-3);
}

// Every tensor of a model, flattened in visit order (empty ones add nothing).
template <class Model>
std::vector<double> flatten(const Model& m) {
  std::vector<double> out;
  m.visit_parameters([&](const std::string&, const auto& t) {
    for (Index i = 0; i < t.size(); ++i) out.push_back(double(t.data()[i]));
  });
  return out;
}
template <class Model>
void unflatten(Model& m, const std::vector<double>& values) {
  std::size_t k = 0;
  m.visit_parameters([&](const std::string&, auto& t) {
    for (Index i = 0; i < t.size(); ++i) t.data()[i] = values[k++];
  });
}
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// <J^T g, v> = d/de <convert_into(theta + e v), g>, by central differences:
// exact up to rounding, since convert_into is quadratic in theta (W diag(gamma)).
template <Arch To>
void check_adjoint(BlockTopology topology, bool tied) {
  Gpt<Arch::PreLN, double> theta(small_gpt(topology, tied));
  randomize(theta, 51);
  Gpt<To, double> phi = prenorm::convert<To>(theta);
  std::mt19937_64 rng(52);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> g = flatten(phi), v = flatten(theta);
  for (double& x : g) x = normal(rng);
  for (double& x : v) x = normal(rng);
  Gpt<To, double> grad_phi = phi;
  unflatten(grad_phi, g);
  Gpt<Arch::PreLN, double> grad_theta = theta;
  prenorm::convert_adjoint(theta, grad_phi, grad_theta);

  const std::vector<double> t0 = flatten(theta);
  const double e = 1e-3;
  const auto value_at = [&](double step) {
    std::vector<double> t = t0;
    for (std::size_t i = 0; i < t.size(); ++i) t[i] += step * v[i];
    Gpt<Arch::PreLN, double> moved = theta;
    unflatten(moved, t);
    prenorm::convert_into(moved, phi);
    return dot(flatten(phi), g);
  };
  const double fd = (value_at(e) - value_at(-e)) / (2 * e);
  const double adjoint = dot(flatten(grad_theta), v);
  EXPECT_NEAR(adjoint, fd, 1e-9 * (1 + std::abs(fd)))
      << prenorm::topology_name(topology) << (tied ? ", tied" : ", untied");
}

TEST(Topology, ConvertAdjointMatchesFiniteDifferences) {
  for (BlockTopology topology : kTopologies)
    for (bool tied : {false, true}) {
      check_adjoint<Arch::PreRMSNorm>(topology, tied);
      check_adjoint<Arch::PreCRMSNorm>(topology, tied);
    }
}

TYPED_TEST(TopologyTest, GptSessionPrefillAndStepsEqualForward) {
  using S = TypeParam;
  for (BlockTopology topology : {BlockTopology::ParallelSharedNorm, BlockTopology::ParallelTwoNorms}) {
    SCOPED_TRACE(std::string(prenorm::topology_name(topology)));
    Gpt<Arch::PreLN, S> ln(small_gpt(topology, true));
    randomize(ln, 61);
    const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
    const auto tokens = gpt_tokens();
    const Index B = 2, T = Index(tokens[0].size()), prompt = 3;
    const auto check = [&](const auto& model) {
      const RowMatrix<S> full = model.forward(tokens);
      prenorm::Session session(model);
      std::vector<int> ids;
      for (const auto& seq : tokens) ids.insert(ids.end(), seq.begin(), seq.begin() + prompt);
      const RowMatrix<S> first = session.prefill(prenorm::TokenBatch{ids, B, prompt}, T);
      for (Index b = 0; b < B; ++b)
        EXPECT_TRUE(rel_close(first.middleRows(b * prompt, prompt), to_ld(full.middleRows(b * T, prompt)),
                              model_tol<S>()));
      for (Index t = prompt; t < T; ++t) {
        std::vector<int> next;
        for (const auto& seq : tokens) next.push_back(seq[t]);
        const RowMatrix<S>& step = session.step(next);
        for (Index b = 0; b < B; ++b)
          EXPECT_TRUE(rel_close(step.row(b), to_ld(full.row(b * T + t)), model_tol<S>()))
              << "position " << t << ", sequence " << b;
      }
    };
    check(ln);
    check(crms);
  }
}

// The MLP's output buffer of a parallel block (BlockWorkspace::parallel) is
// sized once: repeated forwards and decoding steps allocate nothing.
TEST(Topology, ParallelForwardAndStepsDoNotAllocate) {
  for (BlockTopology topology : {BlockTopology::ParallelSharedNorm, BlockTopology::ParallelTwoNorms}) {
    Gpt<Arch::PreCRMSNorm, float> g(small_gpt(topology, true));
    g.init_random(95, 0.3, true);
    const auto tokens = gpt_tokens();
    prenorm::Session session(g);
    session.forward(tokens);
    Allocations a = count_allocations([&] { session.forward(tokens); });
    EXPECT_EQ(a.eigen + a.news, 0) << prenorm::topology_name(topology) << ": repeated forward";
    const std::vector<int> prompt = {1, 2, 3, 4}, next = {5, 6};
    session.prefill(prenorm::TokenBatch{prompt, 2, 2}, 8);
    session.step(next);
    a = count_allocations([&] { session.step(next); });
    EXPECT_EQ(a.eigen + a.news, 0) << prenorm::topology_name(topology) << ": decoding step";
  }
}

// ---------------------------------------------------------------------------
// Training: gradients of every topology
// ---------------------------------------------------------------------------

// v restricted to the tensors whose name contains `part` ("" for all).
template <class Model>
std::vector<double> direction(const Model& m, std::uint64_t seed, const std::string& part) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> out;
  m.visit_parameters([&](const std::string& name, const auto& t) {
    const bool on = name.find(part) != std::string::npos;
    for (Index i = 0; i < t.size(); ++i) out.push_back(on ? normal(rng) : 0.0);
  });
  return out;
}

// <grad, v> against the central difference of loss(theta + e v), for v over
// all parameters and over the norms' gammas and betas alone.
template <class Model, class Loss>
void check_gradient(const Model& theta, const Model& grad, Loss&& loss, const std::string& what) {
  const std::vector<double> t0 = flatten(theta), g = flatten(grad);
  for (const char* part : {"", "norm"}) {
    const std::vector<double> v = direction(theta, 81, part);
    const double e = 1e-5;
    const auto at = [&](double step) {
      std::vector<double> t = t0;
      for (std::size_t i = 0; i < t.size(); ++i) t[i] += step * v[i];
      Model moved = theta;
      unflatten(moved, t);
      return loss(moved);
    };
    const double fd = (at(e) - at(-e)) / (2 * e), analytic = dot(g, v);
    EXPECT_NEAR(analytic, fd, 1e-7 * (1 + std::abs(fd))) << what << ", direction over '" << part << "'";
  }
}

const std::vector<int> kIds = {1, 5, 22, 7, 4, 4, 18, 2}, kTargets = {5, 22, 7, 0, 4, 18, 2, 11};

TEST(Topology, GptGradientsMatchFiniteDifferences) {
  const prenorm::GptBatch batch{prenorm::TokenBatch{kIds, 2, 4}, kTargets};
  for (BlockTopology topology : kTopologies) {
    Gpt<Arch::PreLN, double> theta(small_gpt(topology, true));
    randomize(theta, 71);
    Gpt<Arch::PreLN, double> grads = theta;
    prenorm::GptTrainEngine<Arch::PreLN, double> engine;
    engine.forward_backward(theta, batch, grads);
    check_gradient(theta, grads, [&](const auto& m) { return engine.forward_loss(m, batch); },
                   std::string(prenorm::topology_name(topology)));
  }
}

TEST(Topology, VitGradientsMatchFiniteDifferences) {
  for (BlockTopology topology : kTopologies) {
    Vit<Arch::PreLN, double> theta(small_vit(topology));
    randomize(theta, 72);
    const std::vector<double> pixels = vit_pixels<double>(2, theta.config);
    const std::vector<int> labels = {2, 4};
    const prenorm::VitBatch<double> batch{prenorm::ImageBatch<double>{pixels, 2, 2, 8, 8}, labels};
    Vit<Arch::PreLN, double> grads = theta;
    prenorm::VitTrainEngine<Arch::PreLN, double> engine;
    engine.forward_backward(theta, batch, grads);
    check_gradient(theta, grads, [&](const auto& m) { return engine.forward_loss(m, batch); },
                   std::string(prenorm::topology_name(topology)));
  }
}

// Training through the converter gives theta's own gradient (a shared norm's
// dgamma, dbeta summed from its two readers inside the fused backward).
template <Arch To, class Model, class Batch>
void check_reparam(const Model& theta, const Batch& batch, const std::string& what) {
  Model grads = theta, grad_theta = theta;
  const auto phi = prenorm::convert<To>(theta);
  if constexpr (std::is_same_v<Batch, prenorm::GptBatch>) {
    prenorm::GptTrainEngine<Arch::PreLN, double> engine;
    prenorm::GptTrainEngine<To, double> reparam;
    prenorm::ReparamWorkspace<double> ws;
    const double loss = engine.forward_backward(theta, batch, grads);
    EXPECT_NEAR(reparam.forward_backward_reparam(phi, theta, batch, grad_theta, ws), loss, 1e-12) << what;
  } else {
    prenorm::VitTrainEngine<Arch::PreLN, double> engine;
    prenorm::VitTrainEngine<To, double> reparam;
    prenorm::ReparamWorkspace<double> ws;
    const double loss = engine.forward_backward(theta, batch, grads);
    EXPECT_NEAR(reparam.forward_backward_reparam(phi, theta, batch, grad_theta, ws), loss, 1e-12) << what;
  }
  const std::vector<double> a = flatten(grad_theta), b = flatten(grads);
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  EXPECT_LE(worst, 1e-10 * scale) << what;
}

TEST(Topology, TrainingThroughTheConverterGivesThePreLnGradient) {
  const prenorm::GptBatch batch{prenorm::TokenBatch{kIds, 2, 4}, kTargets};
  for (BlockTopology topology : kTopologies) {
    const std::string name(prenorm::topology_name(topology));
    Gpt<Arch::PreLN, double> gpt(small_gpt(topology, false));
    randomize(gpt, 73);
    check_reparam<Arch::PreRMSNorm>(gpt, batch, name + ", gpt, pre_rmsnorm");
    check_reparam<Arch::PreCRMSNorm>(gpt, batch, name + ", gpt, pre_crmsnorm");

    Vit<Arch::PreLN, double> vit(small_vit(topology));
    randomize(vit, 74);
    const std::vector<double> pixels = vit_pixels<double>(2, vit.config);
    const std::vector<int> labels = {2, 4};
    const prenorm::VitBatch<double> vit_batch{prenorm::ImageBatch<double>{pixels, 2, 2, 8, 8}, labels};
    check_reparam<Arch::PreRMSNorm>(vit, vit_batch, name + ", vit, pre_rmsnorm");
    check_reparam<Arch::PreCRMSNorm>(vit, vit_batch, name + ", vit, pre_crmsnorm");
  }
}

// Pre-LN training and training through the converter (every adjoint and
// conversion placement, the conversion fused into the optimizer included)
// follow the same trajectory for parallel blocks.
TEST(Topology, ReparamTrainingFollowsPreLnTraining) {
  using Opt = prenorm::AdamW<double>;
  const prenorm::AdamWOptions adamw{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8,
                                    .weight_decay = 0.1};
  const prenorm::GptBatch batch{prenorm::TokenBatch{kIds, 2, 4}, kTargets};
  for (BlockTopology topology : {BlockTopology::ParallelSharedNorm, BlockTopology::ParallelTwoNorms})
    for (auto adjoint : {prenorm::AdjointMode::InBackward, prenorm::AdjointMode::Explicit})
      for (auto conversion : {prenorm::ConvertMode::InOptimizer, prenorm::ConvertMode::Separate}) {
        const std::string what = std::string(prenorm::topology_name(topology)) +
                                 (adjoint == prenorm::AdjointMode::Explicit ? ", explicit" : ", in backward") +
                                 (conversion == prenorm::ConvertMode::Separate ? ", separate" : ", in optimizer");
        Gpt<Arch::PreLN, double> init(small_gpt(topology, true));
        randomize(init, 91);
        prenorm::Trainer<Gpt<Arch::PreLN, double>, Opt> ln(init, Opt(adamw));
        prenorm::ReparamTrainer<Arch::PreCRMSNorm, Gpt<Arch::PreLN, double>, Opt> re(
            init, Opt(adamw), {.adjoint = adjoint, .convert = conversion});
        for (int step = 0; step < 4; ++step) {
          const double a = ln.step(batch), b = re.step(batch);
          EXPECT_NEAR(a, b, 1e-10 * a) << what << ", step " << step;
        }
        const std::vector<double> x = flatten(ln.model()), y = flatten(re.theta());
        double worst = 0, scale = 0;
        for (std::size_t i = 0; i < x.size(); ++i) {
          worst = std::max(worst, std::abs(x[i] - y[i]));
          scale = std::max(scale, std::abs(x[i]));
        }
        EXPECT_LE(worst, 1e-10 * scale) << what;
        EXPECT_NE(x, flatten(init)) << what << ": the steps moved theta";
      }
}

TEST(Topology, TrainingRefusesMismatchedTopologies) {
  const prenorm::GptBatch batch{prenorm::TokenBatch{kIds, 2, 4}, kTargets};
  Gpt<Arch::PreLN, double> theta(small_gpt(BlockTopology::ParallelSharedNorm, true));
  Gpt<Arch::PreLN, double> grads(small_gpt(BlockTopology::ParallelTwoNorms, true));
  prenorm::GptTrainEngine<Arch::PreLN, double> engine;
  expect_error([&] { engine.forward_backward(theta, batch, grads); }, "another configuration");
  const auto phi = prenorm::convert<Arch::PreCRMSNorm>(
      Gpt<Arch::PreLN, double>(small_gpt(BlockTopology::Sequential, true)));
  prenorm::GptTrainEngine<Arch::PreCRMSNorm, double> reparam;
  prenorm::ReparamWorkspace<double> ws;
  Gpt<Arch::PreLN, double> grad_theta = theta;
  expect_error([&] { reparam.forward_backward_reparam(phi, theta, batch, grad_theta, ws); },
               "phi must be convert<To>(theta)");
}

}  // namespace
