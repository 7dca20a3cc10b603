// Gradient checks of the backward passes (include/prenorm/train/): each
// layer's backward, the Pre-Norm block with its fused add + norm kernels (all
// four architectures), and whole small GPT and ViT models, against central
// finite differences in double. Relative error <= 1e-6 per tensor:
// max |analytic - numeric| / max |numeric|.
//
// The finite differences of the blocks and models go through the inference
// forward (PreNormBlock::forward, Gpt::forward, Vit::forward), so they also
// check that the training forward computes the same function.

#include <gtest/gtest.h>

#include <prenorm/layers.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include "../bench/no_norm.hpp"  // the baseline, trained by the library through its ArchTraits

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using prenorm::Activation;
using prenorm::Arch;
using prenorm::GradWrite;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;
using prenorm_bench::kNoNorm;
using M = RowMatrix<double>;
using V = Vector<double>;

constexpr double kTolerance = 1e-6;
constexpr double kStep = 1e-5;

template <class T>
void fill_random(T& t, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> n(0.0, scale);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = n(rng);
}

M random_matrix(Index r, Index c, std::mt19937_64& rng, double scale = 1.0) {
  M m(r, c);
  fill_random(m, rng, scale);
  return m;
}

struct Check {
  double relative = 0;  // max |a - n| / max |n|
  double max_diff = 0;
  double max_numeric = 0;
};

// Central differences of loss() in each of the n values at data, against analytic.
Check finite_difference(double* data, Index n, const double* analytic,
                        const std::function<double()>& loss) {
  Check c;
  for (Index i = 0; i < n; ++i) {
    const double v = data[i];
    data[i] = v + kStep;
    const double plus = loss();
    data[i] = v - kStep;
    const double minus = loss();
    data[i] = v;
    const double numeric = (plus - minus) / (2 * kStep);
    c.max_diff = std::max(c.max_diff, std::abs(numeric - analytic[i]));
    c.max_numeric = std::max(c.max_numeric, std::abs(numeric));
  }
  // A gradient that is zero (up to the differences' rounding) is held absolutely.
  c.relative = c.max_numeric > 1e-7 ? c.max_diff / c.max_numeric : c.max_diff * 1e3;
  return c;
}

#define EXPECT_GRADIENT(check, what)                                                      \
  do {                                                                                    \
    const Check c_ = (check);                                                             \
    EXPECT_LE(c_.relative, kTolerance) << (what) << ": max difference " << c_.max_diff    \
                                       << ", max |numeric| " << c_.max_numeric;           \
  } while (false)

Check check_tensor(M& t, const M& g, const std::function<double()>& loss) {
  return finite_difference(t.data(), t.size(), g.data(), loss);
}
Check check_tensor(V& t, const V& g, const std::function<double()>& loss) {
  return finite_difference(t.data(), t.size(), g.data(), loss);
}

// <R, y>
double project(const M& r, const M& y) { return (r.array() * y.array()).sum(); }

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

TEST(TrainLayers, LinearBackward) {
  std::mt19937_64 rng(1);
  prenorm::Linear<double> layer(5, 3), grad(5, 3);
  fill_random(layer.weight, rng);
  fill_random(layer.bias, rng);
  M x = random_matrix(4, 5, rng), r = random_matrix(4, 3, rng), dx(4, 5);
  M y(4, 3);
  const auto loss = [&] {
    layer.forward(x, y);
    return project(r, y);
  };
  prenorm::linear_backward<double>(r, x, layer, grad, dx);
  EXPECT_GRADIENT(check_tensor(layer.weight, grad.weight, loss), "weight");
  EXPECT_GRADIENT(check_tensor(layer.bias, grad.bias, loss), "bias");
  EXPECT_GRADIENT(check_tensor(x, dx, loss), "x");

  // Accumulate adds to what is there.
  const M w0 = grad.weight, dx0 = dx;
  const V b0 = grad.bias;
  prenorm::linear_backward<double>(r, x, layer, grad, dx, GradWrite::Accumulate, GradWrite::Accumulate);
  EXPECT_LT((grad.weight - 2 * w0).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((grad.bias - 2 * b0).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((dx - 2 * dx0).cwiseAbs().maxCoeff(), 1e-12);

  // Without a bias, and with bad shapes.
  prenorm::Linear<double> nobias(5, 3, false), gnobias(5, 3, false);
  nobias.weight = layer.weight;
  prenorm::linear_backward<double>(r, x, nobias, gnobias);
  EXPECT_EQ(gnobias.bias.size(), 0);
  EXPECT_LT((gnobias.weight - w0).cwiseAbs().maxCoeff(), 1e-12);
  M bad(4, 4);
  EXPECT_THROW(prenorm::linear_backward<double>(bad, x, layer, grad), prenorm::Error);
}

TEST(TrainLayers, EmbeddingBackward) {
  std::mt19937_64 rng(2);
  prenorm::Embedding<double> emb(7, 4);
  fill_random(emb.table, rng);
  const std::vector<int> ids{3, 1, 3, 6, 0};
  M r = random_matrix(5, 4, rng), y(5, 4), dtable = M::Zero(7, 4);
  const auto loss = [&] {
    emb.forward(ids, y);
    return project(r, y);
  };
  prenorm::embedding_backward<double>(r, ids, dtable);
  EXPECT_GRADIENT(check_tensor(emb.table, dtable, loss), "table");
  const std::vector<int> bad{7, 0, 0, 0, 0};
  EXPECT_THROW(prenorm::embedding_backward<double>(r, bad, dtable), prenorm::Error);
}

TEST(TrainLayers, GeluBackward) {
  std::mt19937_64 rng(3);
  for (Activation act : {Activation::GeluTanh, Activation::GeluErf}) {
    M x = random_matrix(3, 9, rng, 2.0), r = random_matrix(3, 9, rng), y(3, 9), dx(3, 9);
    const auto loss = [&] {
      prenorm::activation_forward(act, x, y);
      return project(r, y);
    };
    prenorm::activation_backward<double>(act, r, x, dx);
    EXPECT_GRADIENT(check_tensor(x, dx, loss), std::string(prenorm::activation_name(act)));
    // In place: dx may be dy.
    M inplace = r;
    prenorm::activation_backward<double>(act, inplace, x, inplace);
    EXPECT_LT((inplace - dx).cwiseAbs().maxCoeff(), 1e-15);
  }
}

// The float backward of both GELUs on [-10, 10] in steps of 1/256 against
// GELU'(x) in double (vectorized erf and exp): within a few float ulp. (The
// tanh form written with 1 + t and 1 - t^2 lost 3.5e-6 near x = -5.)
TEST(TrainLayers, FloatGeluBackwardIsAccurateOverItsRange) {
  const Index n = 20 * 256 + 1;
  RowMatrix<float> x(1, n), dy = RowMatrix<float>::Ones(1, n), dx(1, n);
  for (Index i = 0; i < n; ++i) x(0, i) = -10.0f + float(i) / 256.0f;
  const double k0 = std::sqrt(2.0 / M_PI), k1 = 0.044715;
  const auto derivative = [&](Activation act, double v) {
    if (act == Activation::GeluErf)
      return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
    const double t = std::tanh(k0 * (v + k1 * v * v * v));
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k0 * (1 + 3 * k1 * v * v);
  };
  for (Activation act : {Activation::GeluTanh, Activation::GeluErf}) {
    prenorm::activation_backward<float>(act, dy, x, dx);
    double worst = 0, at = 0;
    for (Index i = 0; i < n; ++i) {
      const double err = std::abs(double(dx(0, i)) - derivative(act, x(0, i)));
      if (err > worst) worst = err, at = x(0, i);
    }
    EXPECT_LE(worst, 5e-7) << prenorm::activation_name(act) << " at x = " << at;
  }
}

TEST(TrainLayers, SoftmaxCrossEntropy) {
  std::mt19937_64 rng(4);
  M logits = random_matrix(5, 6, rng, 2.0);
  V bias(6);
  fill_random(bias, rng);
  const std::vector<int> targets{2, -1, 5, 0, 2};  // row 1 is not counted
  const auto loss = [&] { return prenorm::softmax_cross_entropy_forward<double>(logits, targets, bias); };
  M grad = logits;
  V dbias(6);
  prenorm::CrossEntropyWorkspace<double> ws;
  const double l = prenorm::softmax_cross_entropy_forward_backward<double>(grad, targets, ws, bias, &dbias);
  EXPECT_NEAR(l, loss(), 1e-14);
  // The loss by hand.
  double total = 0;
  for (int r : {0, 2, 3, 4}) {
    const V z = logits.row(r).transpose() + bias;
    total += std::log(z.array().exp().sum()) - z[targets[std::size_t(r)]];
  }
  EXPECT_NEAR(l, total / 4, 1e-14);
  EXPECT_GRADIENT(check_tensor(logits, grad, loss), "logits");
  EXPECT_GRADIENT(check_tensor(bias, dbias, loss), "bias");
  EXPECT_EQ(grad.row(1).cwiseAbs().maxCoeff(), 0.0);

  const std::vector<int> bad{6, 0, 0, 0, 0};
  EXPECT_THROW(prenorm::softmax_cross_entropy_forward<double>(logits, bad), prenorm::Error);
}

// Attention with a causal mask over T > 64 (two query chunks) and bidirectional.
TEST(TrainLayers, AttentionBackward) {
  std::mt19937_64 rng(5);
  for (bool causal : {true, false}) {
    const Index width = 5, heads = 2, hd = 3, batch = 2, T = causal ? 67 : 9;
    prenorm::MultiHeadAttention<double> attn(width, heads, hd, causal), grad(width, heads, hd, causal);
    fill_random(attn.qkv.weight, rng, 0.5);
    fill_random(attn.qkv.bias, rng, 0.5);
    fill_random(attn.out.weight, rng, 0.5);
    fill_random(attn.out.bias, rng, 0.5);
    M x = random_matrix(batch * T, width, rng), r = random_matrix(batch * T, width, rng);
    M y(batch * T, width), dx(batch * T, width);
    const auto loss = [&] {
      attn.forward(x, batch, y);  // the inference forward
      return project(r, y);
    };
    prenorm::AttentionActivations<double> acts;
    prenorm::AttentionBackwardWorkspace<double> ws;
    M y_train(batch * T, width);
    prenorm::attention_forward_train<double>(attn, x, batch, y_train, acts);
    EXPECT_NEAR(project(r, y_train), loss(), 1e-10);
    prenorm::attention_backward<double>(attn, r, x, batch, acts, grad, dx, ws);
    const std::string what = causal ? "causal " : "bidirectional ";
    EXPECT_GRADIENT(check_tensor(attn.qkv.weight, grad.qkv.weight, loss), what + "qkv.weight");
    EXPECT_GRADIENT(check_tensor(attn.qkv.bias, grad.qkv.bias, loss), what + "qkv.bias");
    EXPECT_GRADIENT(check_tensor(attn.out.weight, grad.out.weight, loss), what + "out.weight");
    EXPECT_GRADIENT(check_tensor(attn.out.bias, grad.out.bias, loss), what + "out.bias");
    // x: check a slice of rows (the first and last positions of each sequence).
    for (Index b = 0; b < batch; ++b)
      for (Index t : {Index(0), Index(1), T - 1}) {
        const Index row = b * T + t;
        const Check c = finite_difference(x.row(row).data(), width, dx.row(row).data(), loss);
        EXPECT_LE(c.relative, kTolerance) << what << "x row " << row << ": " << c.max_diff;
      }
  }
}

// The backward on threads is bit for bit the serial one, whichever thread
// runs a head (each head is one task on one thread, with a scratch slot of
// its thread's; the non-causal slot, 130 x 130, is not a whole number of
// packets).
TEST(TrainLayers, AttentionBackwardOnThreadsIsBitwiseSerial) {
  std::mt19937_64 rng(6);
  const Index width = 24, heads = 4, hd = 16, batch = 2, T = 130;
  prenorm::MultiHeadAttention<double> attn(width, heads, hd, /*causal=*/false);
  fill_random(attn.qkv.weight, rng, 0.5);
  fill_random(attn.qkv.bias, rng, 0.5);
  fill_random(attn.out.weight, rng, 0.5);
  fill_random(attn.out.bias, rng, 0.5);
  const M x = random_matrix(batch * T, width, rng), dy = random_matrix(batch * T, width, rng);
  const auto run = [&](int threads) {
    prenorm::set_num_threads(threads);
    prenorm::AttentionActivations<double> acts;
    prenorm::AttentionBackwardWorkspace<double> ws;
    prenorm::MultiHeadAttention<double> grad(width, heads, hd, false);
    M y(batch * T, width), dx(batch * T, width);
    prenorm::attention_forward_train<double>(attn, x, batch, y, acts);
    prenorm::attention_backward<double>(attn, dy, x, batch, acts, grad, dx, ws);
    return std::make_pair(dx, M(grad.qkv.weight));
  };
  const int threads = prenorm::num_threads();
  const auto serial = run(1);
  for (int repeat = 0; repeat < 6; ++repeat) {
    const auto parallel = run(repeat % 2 == 0 ? 3 : 2);
    ASSERT_EQ(parallel.first, serial.first) << "dx, repeat " << repeat;
    ASSERT_EQ(parallel.second, serial.second) << "qkv.weight gradient, repeat " << repeat;
  }
  prenorm::set_num_threads(threads);
}

TEST(TrainLayers, MlpBackward) {
  std::mt19937_64 rng(6);
  for (Activation act : {Activation::GeluTanh, Activation::GeluErf}) {
    prenorm::Mlp<double> mlp(4, 7, act), grad(4, 7, act);
    fill_random(mlp.fc.weight, rng);
    fill_random(mlp.fc.bias, rng);
    fill_random(mlp.proj.weight, rng);
    fill_random(mlp.proj.bias, rng);
    M x = random_matrix(5, 4, rng), r = random_matrix(5, 4, rng), y(5, 4), dx(5, 4), dh;
    const auto loss = [&] {
      mlp.forward(x, y);
      return project(r, y);
    };
    prenorm::MlpActivations<double> acts;
    prenorm::mlp_forward_train<double>(mlp, x, y, acts);
    prenorm::mlp_backward<double>(mlp, r, x, acts, grad, dx, dh);
    const std::string what(prenorm::activation_name(act));
    EXPECT_GRADIENT(check_tensor(mlp.fc.weight, grad.fc.weight, loss), what + " fc.weight");
    EXPECT_GRADIENT(check_tensor(mlp.fc.bias, grad.fc.bias, loss), what + " fc.bias");
    EXPECT_GRADIENT(check_tensor(mlp.proj.weight, grad.proj.weight, loss), what + " proj.weight");
    EXPECT_GRADIENT(check_tensor(mlp.proj.bias, grad.proj.bias, loss), what + " proj.bias");
    EXPECT_GRADIENT(check_tensor(x, dx, loss), what + " x");
  }
}

// ---------------------------------------------------------------------------
// Blocks and models, typed over the architectures
// ---------------------------------------------------------------------------

template <Arch A>
struct ArchType {
  static constexpr Arch value = A;
};
using Archs = ::testing::Types<ArchType<Arch::PreLN>, ArchType<Arch::PreRMSNorm>,
                               ArchType<Arch::PreCRMSNorm>, ArchType<kNoNorm>>;

template <class T>
class TrainArchTest : public ::testing::Test {};
TYPED_TEST_SUITE(TrainArchTest, Archs);

// Calls check(name, param, grad) for every non-empty tensor of two models.
template <class Model, class F>
void zip_parameters(Model& model, Model& grads, F&& check) {
  std::vector<std::pair<std::string, double*>> p;
  std::vector<std::pair<Index, const double*>> g;
  model.visit_parameters([&](const std::string& name, auto& t) { p.emplace_back(name, t.data()); });
  grads.visit_parameters([&](const std::string&, auto& t) { g.emplace_back(t.size(), t.data()); });
  ASSERT_EQ(p.size(), g.size());
  for (std::size_t i = 0; i < p.size(); ++i)
    if (g[i].first > 0) check(p[i].first, p[i].second, g[i].first, g[i].second);
}

// One block, with the fused add + norm kernels, against the inference forward.
TYPED_TEST(TrainArchTest, BlockBackward) {
  constexpr Arch A = TypeParam::value;
  std::mt19937_64 rng(7);
  const Index d = 7, batch = 2, T = 4;
  using Block = prenorm::PreNormBlock<A, double>;
  Block block(d, 2, 3, 9, /*causal=*/true, Activation::GeluTanh, 1e-5);
  Block grad = block;
  prenorm::detail::init_block_random(block, rng, 0.5, 0.5, 0.2);
  const Index m = block.main();
  M h = random_matrix(batch * T, m, rng), r = random_matrix(batch * T, m, rng);
  const auto loss = [&] {
    M y = h;
    block.forward(y, batch);  // the inference forward
    return project(r, y);
  };
  prenorm::BlockActivations<A, double> acts;
  prenorm::BlockBackwardWorkspace<double> ws;
  prenorm::NormClock clock;
  M out;
  acts.resize(batch * T, m);
  prenorm::block_norm1_forward_train<A, double>(block, h, acts, clock);
  prenorm::block_forward_train<A, double>(block, h, batch, acts, out, clock);
  out += acts.h_mid;
  EXPECT_NEAR(project(r, out), loss(), 1e-12);
  M dh = r;
  prenorm::block_backward<A, double>(block, h, batch, acts, grad, dh, ws, clock);
  EXPECT_GRADIENT(check_tensor(h, dh, loss), "h");
  std::vector<std::string> names;
  std::vector<double*> params, gp;
  std::vector<Index> sizes;
  auto collect = [&](const std::string& name, auto& t) {
    names.push_back(name);
    params.push_back(t.data());
    sizes.push_back(t.size());
  };
  auto collect_grad = [&](const std::string&, auto& t) { gp.push_back(t.data()); };
  prenorm::visit_block_parameters("", block, collect);
  prenorm::visit_block_parameters("", grad, collect_grad);
  for (std::size_t i = 0; i < names.size(); ++i)
    if (sizes[i] > 0) EXPECT_GRADIENT(finite_difference(params[i], sizes[i], gp[i], loss), names[i]);
}

// positions: the table as GPT-2's (offset 0), none, or read at offset 2 (OPT's).
enum class Positions { Learned, None, Offset2 };

prenorm::GptConfig tiny_gpt(bool tied, bool head_bias, Positions positions = Positions::Learned) {
  // Width 7 with two heads of 3: the attention width differs from d.
  prenorm::GptConfig c{.vocab = 11, .context = 6, .width = 7, .heads = 2, .layers = 2,
                       .mlp_width = 10, .tied = tied, .head_bias = head_bias, .head_dim = 3};
  c.learned_positions = positions != Positions::None;
  c.position_offset = positions == Positions::Offset2 ? 2 : 0;
  return c;
}

template <Arch A>
void check_gpt(bool tied, bool head_bias, Positions positions = Positions::Learned) {
  using Gpt = prenorm::Gpt<A, double>;
  Gpt model(tiny_gpt(tied, head_bias, positions));
  model.init_random(8, 0.5, true);
  Gpt grads(model.config);
  const std::vector<int> ids{1, 4, 9, 2, 0, 10, 4, 4};
  const std::vector<int> targets{4, 9, 2, -1, 10, 4, 4, 7};
  const prenorm::GptBatch batch{prenorm::TokenBatch(ids, 2, 4), targets};
  // The loss through the inference forward (its logits include the head bias).
  const auto loss = [&] {
    const M& logits = model.forward(batch.inputs);
    return prenorm::softmax_cross_entropy_forward<double>(logits, targets);
  };
  prenorm::GptTrainEngine<A, double> engine;
  const double l = engine.forward_loss(model, batch);
  EXPECT_NEAR(l, loss(), 1e-12);
  EXPECT_NEAR(engine.forward_backward(model, batch, grads), l, 1e-12);
  const std::string what = std::string(prenorm::ArchTraits<A>::name) + (tied ? " tied " : " untied ") +
                           (head_bias ? "head_bias " : "") +
                           (positions == Positions::None      ? "no positions "
                            : positions == Positions::Offset2 ? "positions at offset 2 "
                                                              : "");
  zip_parameters(model, grads, [&](const std::string& name, double* p, Index n, const double* g) {
    EXPECT_GRADIENT(finite_difference(p, n, g, loss), what + name);
  });
  // A second step with other ids: the untied token rows of the last step are cleared.
  const std::vector<int> ids2{3, 3, 5, 6, 7, 8, 1, 2};
  const prenorm::GptBatch batch2{prenorm::TokenBatch(ids2, 2, 4), targets};
  engine.forward_backward(model, batch2, grads);
  Gpt fresh(model.config);
  prenorm::GptTrainEngine<A, double> engine2;
  engine2.forward_backward(model, batch2, fresh);
  EXPECT_EQ(grads.token_embedding.table, fresh.token_embedding.table) << what;
}

TYPED_TEST(TrainArchTest, GptBackward) {
  constexpr Arch A = TypeParam::value;
  if constexpr (A == Arch::PreLN || A == kNoNorm) {
    check_gpt<A>(true, false);
    check_gpt<A>(true, true);
  }
  check_gpt<A>(false, false);
  check_gpt<A>(false, true);
  check_gpt<A>(false, true, Positions::None);
  check_gpt<A>(false, false, Positions::Offset2);
  if constexpr (A == Arch::PreLN) check_gpt<A>(true, false, Positions::Offset2);
}

TYPED_TEST(TrainArchTest, VitBackward) {
  constexpr Arch A = TypeParam::value;
  using Vit = prenorm::Vit<A, double>;
  const prenorm::VitConfig config{.image_size = 4, .patch_size = 2, .channels = 2, .classes = 3,
                                  .width = 6, .heads = 2, .layers = 2, .mlp_width = 8};
  Vit model(config);
  model.init_random(9, 0.5, true);
  Vit grads(config);
  std::mt19937_64 rng(10);
  std::vector<double> pixels(2 * 2 * 4 * 4);
  std::normal_distribution<double> n(0, 1);
  for (double& p : pixels) p = n(rng);
  const std::vector<int> labels{2, 0};
  const prenorm::VitBatch<double> batch{prenorm::ImageBatch<double>{pixels, 2, 2, 4, 4}, labels};
  const auto loss = [&] {
    const M& logits = model.forward(batch.images);
    return prenorm::softmax_cross_entropy_forward<double>(logits, labels);
  };
  prenorm::VitTrainEngine<A, double> engine;
  const double l = engine.forward_loss(model, batch);
  EXPECT_NEAR(l, loss(), 1e-12);
  EXPECT_NEAR(engine.forward_backward(model, batch, grads), l, 1e-12);
  zip_parameters(model, grads, [&](const std::string& name, double* p, Index size, const double* g) {
    EXPECT_GRADIENT(finite_difference(p, size, g, loss), std::string(prenorm::ArchTraits<A>::name) + " " + name);
  });
}

// The training forward's logits equal the inference forward's, in float too.
TYPED_TEST(TrainArchTest, TrainingForwardMatchesInference) {
  constexpr Arch A = TypeParam::value;
  prenorm::Gpt<A, float> model(tiny_gpt(false, true));
  model.init_random(11, 0.3, true);
  const std::vector<int> ids{1, 4, 9, 2, 0, 10}, targets{4, 9, 2, 0, 10, 4};
  const prenorm::GptBatch batch{prenorm::TokenBatch(ids, 1, 6), targets};
  prenorm::GptTrainEngine<A, float> engine;
  engine.forward_loss(model, batch);
  RowMatrix<float> train = engine.logits();
  for (Index r = 0; r < train.rows(); ++r) train.row(r) += model.head_bias.transpose();
  const RowMatrix<float>& infer = model.forward(batch.inputs);
  EXPECT_LT((train - infer).cwiseAbs().maxCoeff(), 1e-5f);
}

TEST(TrainLayers, BadBatchesThrow) {
  prenorm::Gpt<Arch::PreLN, double> model(tiny_gpt(true, false)), grads(tiny_gpt(true, false));
  prenorm::GptTrainEngine<Arch::PreLN, double> engine;
  const std::vector<int> ids{1, 2, 3}, targets{1, 2};
  EXPECT_THROW(engine.forward_backward(model, {prenorm::TokenBatch(ids, 1, 3), targets}, grads),
               prenorm::Error);
  const std::vector<int> big{1, 2, 11}, t3{1, 2, 3};
  EXPECT_THROW(engine.forward_backward(model, {prenorm::TokenBatch(big, 1, 3), t3}, grads),
               prenorm::Error);
  prenorm::Gpt<Arch::PreLN, double> other(tiny_gpt(false, false));
  EXPECT_THROW(engine.forward_backward(model, {prenorm::TokenBatch(t3, 1, 3), t3}, other),
               prenorm::Error);
  const std::vector<int> long_ids(7, 1);
  EXPECT_THROW(engine.forward_backward(model, {prenorm::TokenBatch(long_ids, 1, 7), long_ids}, grads),
               prenorm::Error);
}

}  // namespace
