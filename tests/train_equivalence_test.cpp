// Tests of training through the converter (include/prenorm/convert/model_adjoint.hpp,
// include/prenorm/train/trainer.hpp):
// - convert_into (preallocated, in the model's scalar) equals convert<To>(theta, {tied}),
//   for both tied policies (Untie, and Keep for a tied theta);
// - the model-level adjoint: <convert(theta + delta) - convert(theta - delta), g> / 2
//   = <delta, adjoint(g)> for random g and delta, over the whole model and tensor by
//   tensor (gamma and beta alone check the product rule of the folding), both policies;
// - in double, from one initialization and one batch sequence, Pre-LN training and
//   reparameterized Pre-RMSNorm / Pre-CRMSNorm training give the same losses step
//   by step and the same theta after 20 steps (relative difference <= 1e-10), with
//   SGD + momentum and with AdamW + weight decay, untied GPT and tied GPT with the
//   head untied or kept tied in phi; ViT too;
// - in float, the losses agree to 1e-4 relative over the 20 steps;
// - the first step's gradient, tensor by tensor, is the Pre-LN gradient (the tied
//   table's and gamma_f, beta_f's included: the head's part and the product rule);
// - updating phi directly with AdamW does NOT stay equivalent;
// - a training step allocates nothing after the first one for a given shape;
// - the step timings put an optimizer's known sleep in its time and no other
//   part's, add up to at most the total, and stay put when timing is off;
// - layouts that do not go together are refused, naming operation, expected and found.

#include "support/alloc_count.hpp"  // first: before any Eigen header

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include "../bench/no_norm.hpp"  // the baseline's training step allocates nothing either

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using prenorm::Arch;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::TiedPolicy;
using prenorm::Vector;

template <class S>
using GptLN = prenorm::Gpt<Arch::PreLN, S>;
template <class S>
using VitLN = prenorm::Vit<Arch::PreLN, S>;

constexpr prenorm::ConvertOptions kUntie{.tied = TiedPolicy::Untie};
constexpr prenorm::ConvertOptions kKeep{.tied = TiedPolicy::Keep};

std::string policy_name(TiedPolicy p) { return p == TiedPolicy::Keep ? "keep" : "untie"; }

prenorm::GptConfig tiny_gpt(bool tied) {
  return prenorm::GptConfig{.vocab = 11, .context = 8, .width = 8, .heads = 2, .layers = 2,
                            .mlp_width = 16, .tied = tied};
}

prenorm::VitConfig tiny_vit() {
  return prenorm::VitConfig{.image_size = 4, .patch_size = 2, .channels = 2, .classes = 3,
                            .width = 6, .heads = 2, .layers = 2, .mlp_width = 8};
}

// Every tensor of a model, flattened, in visit order.
template <class Model>
std::vector<std::vector<double>> tensors(const Model& model) {
  std::vector<std::vector<double>> out;
  model.visit_parameters([&](const std::string&, const auto& t) {
    std::vector<double> v(std::size_t(t.size()));
    for (Index i = 0; i < t.size(); ++i) v[std::size_t(i)] = double(t.data()[i]);
    out.push_back(std::move(v));
  });
  return out;
}

// Normwise relative difference max |a - b| / max |b| over all tensors. (Per
// tensor it can be larger where a gradient is zero in exact arithmetic, e.g.
// the attention key bias, to which softmax is invariant: there AdamW scales
// the rounding noise of either computation up to steps of about lr * noise / eps.)
template <class Model>
double max_relative_difference(const Model& a, const Model& b) {
  const auto ta = tensors(a), tb = tensors(b);
  double diff = 0, norm = 0;
  for (std::size_t k = 0; k < ta.size(); ++k)
    for (std::size_t i = 0; i < ta[k].size(); ++i) {
      diff = std::max(diff, std::abs(ta[k][i] - tb[k][i]));
      norm = std::max(norm, std::abs(tb[k][i]));
    }
  return norm > 0 ? diff / norm : diff;
}

// Sum over tensors of <a, b>.
template <class Model>
double inner(const Model& a, const Model& b) {
  const auto ta = tensors(a), tb = tensors(b);
  double sum = 0;
  for (std::size_t k = 0; k < ta.size(); ++k)
    for (std::size_t i = 0; i < ta[k].size(); ++i) sum += ta[k][i] * tb[k][i];
  return sum;
}

template <class Model>
void randomize(Model& m, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, scale);
  m.visit_parameters([&](const std::string&, auto& t) {
    for (Index i = 0; i < t.size(); ++i) t.data()[i] = typename std::decay_t<decltype(t)>::Scalar(n(rng));
  });
}

// a + s * b, tensor by tensor.
template <class Model>
Model axpy(const Model& a, double s, const Model& b) {
  Model out = a;
  std::vector<const double*> bp;
  const_cast<Model&>(b).visit_parameters([&](const std::string&, auto& t) { bp.push_back(t.data()); });
  std::size_t k = 0;
  out.visit_parameters([&](const std::string&, auto& t) {
    for (Index i = 0; i < t.size(); ++i) t.data()[i] += s * bp[k][i];
    ++k;
  });
  return out;
}

// ---------------------------------------------------------------------------
// convert_into
// ---------------------------------------------------------------------------

template <Arch To, class S>
void check_convert_into_gpt(bool tied, TiedPolicy policy, bool head_bias, double tolerance) {
  prenorm::GptConfig c = tiny_gpt(tied);
  c.head_bias = head_bias;
  GptLN<S> theta(c);
  theta.init_random(1, 0.3, true);
  const auto reference = prenorm::convert<To>(theta, {.tied = policy});
  ASSERT_EQ(reference.tied_affine(), tied && policy == TiedPolicy::Keep);
  auto phi = reference;
  randomize(phi, 2);  // garbage to overwrite
  prenorm::convert_into(theta, phi);
  EXPECT_LE(max_relative_difference(phi, reference), tolerance)
      << prenorm::arch_name(To) << (tied ? " tied " : " untied ") << policy_name(policy)
      << (head_bias ? " head_bias" : "");
}

TEST(ConvertInto, EqualsConvert) {
  for (bool tied : {true, false})
    for (TiedPolicy policy : {TiedPolicy::Untie, TiedPolicy::Keep})
      for (bool head_bias : {false, true}) {
        check_convert_into_gpt<Arch::PreRMSNorm, double>(tied, policy, head_bias, 1e-14);
        check_convert_into_gpt<Arch::PreCRMSNorm, double>(tied, policy, head_bias, 1e-14);
        check_convert_into_gpt<Arch::PreRMSNorm, float>(tied, policy, head_bias, 1e-6);
        check_convert_into_gpt<Arch::PreCRMSNorm, float>(tied, policy, head_bias, 1e-6);
      }
  VitLN<double> vit(tiny_vit());
  vit.init_random(3, 0.3, true);
  const auto ref = prenorm::convert<Arch::PreCRMSNorm>(vit);
  auto phi = ref;
  randomize(phi, 4);
  prenorm::convert_into(vit, phi);
  EXPECT_LE(max_relative_difference(phi, ref), 1e-14);
}

// f() throws prenorm::Error (a std::invalid_argument) whose message has every part.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one with \"" << parts.front() << "\"";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(dynamic_cast<const prenorm::Error*>(&e), nullptr);
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
  }
}

TEST(ConvertInto, RefusesAnotherLayout) {
  GptLN<double> tied(tiny_gpt(true)), untied(tiny_gpt(false));
  // A keep-tied phi (a tied Pre-RMSNorm config) for an untied theta.
  prenorm::Gpt<Arch::PreRMSNorm, double> keep(tiny_gpt(true));
  ASSERT_TRUE(keep.tied_affine());
  expect_error([&] { prenorm::convert_into(untied, keep); },
               {"convert_into(Gpt)", "phi is keep-tied", "expected untied", "theta is untied"});
  prenorm::Gpt<Arch::PreRMSNorm, double> keep_grad(tiny_gpt(true));
  GptLN<double> grad(untied.config);
  expect_error([&] { prenorm::convert_adjoint(untied, keep_grad, grad); },
               {"convert_adjoint(Gpt)", "phi is keep-tied", "expected untied", "theta is untied"});
  // An untied phi without a head bias: neither policy's layout.
  prenorm::Gpt<Arch::PreRMSNorm, double> other(tiny_gpt(false));
  expect_error([&] { prenorm::convert_into(tied, other); },
               {"convert_into(Gpt)", "untied without a head bias", "expected", "TiedPolicy::Keep"});
  expect_error([&] { prenorm::convert_into(untied, other); },
               {"convert_into(Gpt)", "untied without a head bias", "expected", "TiedPolicy::Untie"});
  // A keep-tied phi with a head bias that theta does not have.
  prenorm::GptConfig c = tiny_gpt(true);
  c.head_bias = true;
  prenorm::Gpt<Arch::PreCRMSNorm, double> biased(c);
  expect_error([&] { prenorm::convert_into(tied, biased); },
               {"convert_into(Gpt)", "keep-tied with a head bias", "expected without"});
}

// ---------------------------------------------------------------------------
// The model-level adjoint
// ---------------------------------------------------------------------------

// <convert(theta + delta) - convert(theta - delta), g> / 2 and <delta, adjoint(g)>.
// The conversion is convert<To>(., {policy}), policy read from g's layout.
template <class Model, class Target>
std::pair<double, double> adjoint_sides(const Model& theta, const Model& delta, const Target& g) {
  constexpr Arch To = Target::arch;
  prenorm::ConvertOptions options = kUntie;
  if constexpr (requires { g.tied_affine(); })
    if (g.tied_affine()) options = kKeep;
  const Target plus = prenorm::convert<To>(axpy(theta, 1.0, delta), options);
  const Target minus = prenorm::convert<To>(axpy(theta, -1.0, delta), options);
  const double lhs = (inner(plus, g) - inner(minus, g)) / 2;
  Model grad(theta.config);
  prenorm::convert_adjoint(theta, g, grad);
  return {lhs, inner(delta, grad)};
}

template <Arch To, class Model>
void check_adjoint(const Model& theta, const std::string& what,
                   const prenorm::ConvertOptions& options = kUntie) {
  auto g = prenorm::convert<To>(theta, options);
  randomize(g, 11);
  // Whole model.
  Model delta = theta;
  randomize(delta, 12, 1e-3);
  const auto [lhs, rhs] = adjoint_sides(theta, delta, g);
  EXPECT_NEAR(lhs, rhs, 1e-10 * std::abs(rhs)) << what << ": whole model";
  // Tensor by tensor: delta on one tensor only (gamma and beta alone test the
  // product rule of the folding: the reader weights stay fixed).
  std::vector<std::string> names;
  theta.visit_parameters([&](const std::string& name, const auto&) { names.push_back(name); });
  for (std::size_t k = 0; k < names.size(); ++k) {
    Model d = theta;
    std::size_t j = 0;
    std::mt19937_64 rng(100 + k);
    std::normal_distribution<double> n(0.0, 1e-3);
    d.visit_parameters([&](const std::string&, auto& t) {
      for (Index i = 0; i < t.size(); ++i) t.data()[i] = j == k ? n(rng) : 0.0;
      ++j;
    });
    const auto [l, r] = adjoint_sides(theta, d, g);
    EXPECT_NEAR(l, r, 1e-10 * std::max(std::abs(r), 1e-12)) << what << ": " << names[k];
  }
}

TEST(ConvertAdjoint, MatchesCentralDifferences) {
  for (bool tied : {true, false}) {
    prenorm::GptConfig c = tiny_gpt(tied);
    for (bool head_bias : {false, true}) {
      c.head_bias = head_bias;
      GptLN<double> theta(c);
      theta.init_random(5, 0.3, true);
      const std::string what = std::string(tied ? "tied" : "untied") + (head_bias ? " head_bias" : "");
      check_adjoint<Arch::PreRMSNorm>(theta, "pre_rmsnorm " + what);
      check_adjoint<Arch::PreCRMSNorm>(theta, "pre_crmsnorm " + what);
      if (tied) {  // the keep-tied layout
        check_adjoint<Arch::PreRMSNorm>(theta, "pre_rmsnorm keep " + what, kKeep);
        check_adjoint<Arch::PreCRMSNorm>(theta, "pre_crmsnorm keep " + what, kKeep);
      }
    }
  }
  VitLN<double> vit(tiny_vit());
  vit.init_random(6, 0.3, true);
  check_adjoint<Arch::PreRMSNorm>(vit, "vit pre_rmsnorm");
  check_adjoint<Arch::PreCRMSNorm>(vit, "vit pre_crmsnorm");
}

// The adjoint agrees with the per-tensor adjoints of adjoint.hpp, composed by hand.
TEST(ConvertAdjoint, ComposesThePerTensorAdjoints) {
  GptLN<double> theta(tiny_gpt(false));
  theta.init_random(7, 0.3, true);
  auto g = prenorm::convert<Arch::PreCRMSNorm>(theta, kUntie);
  randomize(g, 8);
  GptLN<double> grad(theta.config);
  prenorm::convert_adjoint(theta, g, grad);
  namespace cv = prenorm::conversion;
  const auto& b = theta.blocks[1];
  // qkv: compress_input^T, then fold_affine^T.
  cv::Matrix gw = g.blocks[1].attn.qkv.weight;
  cv::compress_input_adjoint(gw);
  cv::Vec gg = cv::Vec::Zero(8), gb = cv::Vec::Zero(8);
  cv::fold_affine_adjoint(gw, g.blocks[1].attn.qkv.bias, b.attn.qkv.weight, b.norm1_gamma,
                          b.norm1_beta, gg, gb);
  EXPECT_LT((gw - grad.blocks[1].attn.qkv.weight).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LT((gg - grad.blocks[1].norm1_gamma).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LT((gb - grad.blocks[1].norm1_beta).cwiseAbs().maxCoeff(), 1e-14);
  // mlp.proj: compress_output^T, then recenter_output^T.
  cv::Matrix pw = g.blocks[1].mlp.proj.weight;
  cv::Vec pb = g.blocks[1].mlp.proj.bias;
  cv::compress_output_adjoint(pw, pb);
  cv::recenter_output_adjoint(pw, pb);
  EXPECT_LT((pw - grad.blocks[1].mlp.proj.weight).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LT((pb - grad.blocks[1].mlp.proj.bias).cwiseAbs().maxCoeff(), 1e-14);
  // Position table: compress_table^T, then recenter_rows^T.
  cv::Matrix pt = g.position_embedding.table;
  cv::compress_table_adjoint(pt);
  cv::recenter_rows_adjoint(pt);
  EXPECT_LT((pt - grad.position_embedding.table).cwiseAbs().maxCoeff(), 1e-14);
}

// With the token-table gradient zero outside some rows, the sparse adjoint
// gives the dense result.
TEST(ConvertAdjoint, SparseTokenRows) {
  for (bool tied : {true, false}) {
    GptLN<double> theta(tiny_gpt(tied));
    theta.init_random(9, 0.3, true);
    auto g = prenorm::convert<Arch::PreCRMSNorm>(theta, kUntie);
    randomize(g, 10);
    const std::vector<int> rows{3, 7, 0};
    for (Index r = 0; r < g.token_embedding.table.rows(); ++r)
      if (std::find(rows.begin(), rows.end(), int(r)) == rows.end()) g.token_embedding.table.row(r).setZero();
    GptLN<double> dense(theta.config), sparse(theta.config);
    prenorm::convert_adjoint(theta, g, dense);
    prenorm::convert_adjoint(theta, g, sparse, {.sparse_token_rows = true, .token_rows = rows});
    EXPECT_EQ(max_relative_difference(sparse, dense), 0.0) << (tied ? "tied" : "untied");
  }
}

// ---------------------------------------------------------------------------
// Exactly equivalent training
// ---------------------------------------------------------------------------

// A fixed sequence of batches: random streams that mostly follow the rule
// next = (3 * token + 1) mod vocab (so that there is something to learn);
// the targets are the next tokens.
struct Batches {
  std::vector<std::vector<int>> ids, targets;
  Index batch = 2, seq = 6;

  Batches(int steps, Index vocab, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> tok(0, int(vocab) - 1);
    for (int s = 0; s < steps; ++s) {
      std::vector<int> in, tg;
      for (Index b = 0; b < batch; ++b) {
        int t = tok(rng);
        for (Index p = 0; p < seq; ++p) {
          const int next = rng() % 4 == 0 ? tok(rng) : (3 * t + 1) % int(vocab);
          in.push_back(t);
          tg.push_back(next);
          t = next;
        }
      }
      ids.push_back(in);
      targets.push_back(tg);
    }
  }
  prenorm::GptBatch operator[](std::size_t s) const {
    return {prenorm::TokenBatch(ids[s], batch, seq), targets[s]};
  }
};

constexpr int kSteps = 20;

prenorm::SgdOptions sgd_options() { return {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01}; }
prenorm::AdamWOptions adamw_options() {
  return {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
}

template <class Optimizer>
Optimizer make_optimizer() {
  if constexpr (std::is_same_v<Optimizer, prenorm::Sgd<typename Optimizer::Scalar>>)
    return Optimizer(sgd_options());
  else return Optimizer(adamw_options());
}

// The ways of training through the converter: the adjoint inside the
// backward or explicit, the conversion inside the optimizer or separate.
// (Explicit with the conversion in the optimizer writes a keep-tied phi's E
// there: phi's own backward reads it.)
const prenorm::ReparamOptions kModes[] = {
    {prenorm::AdjointMode::InBackward, prenorm::ConvertMode::InOptimizer},
    {prenorm::AdjointMode::Explicit, prenorm::ConvertMode::Separate},
    {prenorm::AdjointMode::InBackward, prenorm::ConvertMode::Separate},
    {prenorm::AdjointMode::Explicit, prenorm::ConvertMode::InOptimizer}};

// GPT layouts: untied, and tied with phi's head untied or kept tied; and the
// position table absent (rotary / ALiBi families) or read at an offset (OPT).
struct Layout {
  bool tied;
  TiedPolicy policy;  // ignored when untied
  bool learned_positions = true;
  Index position_offset = 0;
};
constexpr Layout kLayouts[] = {{false, TiedPolicy::Keep},
                               {true, TiedPolicy::Untie},
                               {true, TiedPolicy::Keep},
                               {false, TiedPolicy::Keep, false, 0},
                               {true, TiedPolicy::Keep, true, 2}};

std::string mode_name(const prenorm::ReparamOptions& o) {
  return std::string(o.adjoint == prenorm::AdjointMode::InBackward ? "adj-in-bwd" : "adj-explicit") +
         (o.convert == prenorm::ConvertMode::InOptimizer ? "+conv-in-opt" : "+conv-separate");
}
std::string layout_name(const Layout& l) {
  return (l.tied ? "tied " + policy_name(l.policy) : std::string("untied")) +
         (!l.learned_positions ? " no-pos" : l.position_offset != 0 ? " pos+2" : "");
}

template <Arch To, class S, class Optimizer>
void check_equivalent_training(const Layout& layout, double loss_tolerance, double theta_tolerance,
                               prenorm::ReparamOptions mode) {
  const bool tied = layout.tied;
  mode.tied = layout.policy;
  prenorm::GptConfig config = tiny_gpt(tied);
  config.learned_positions = layout.learned_positions;
  config.position_offset = layout.position_offset;
  GptLN<S> init(config);
  init.init_random(21, 0.3, true);
  const Batches batches(kSteps, init.config.vocab, 22);
  prenorm::Trainer<GptLN<S>, Optimizer> ln(init, make_optimizer<Optimizer>());
  prenorm::ReparamTrainer<To, GptLN<S>, Optimizer> re(init, make_optimizer<Optimizer>(), mode);
  const std::string what = std::string(prenorm::arch_name(To)) + " " + layout_name(layout) + " " +
                           (std::is_same_v<S, float> ? "float " : "double ") +
                           (std::is_same_v<Optimizer, prenorm::Sgd<S>> ? "sgd " : "adamw ") +
                           mode_name(mode);
  if constexpr (std::is_same_v<S, double>) {  // the layout the trainer was asked for
    EXPECT_EQ(re.phi().tied_affine(), tied && layout.policy == TiedPolicy::Keep) << what;
  }
  double worst = 0;
  for (int s = 0; s < kSteps; ++s) {
    const double a = ln.step(batches[std::size_t(s)]);
    const double b = re.step(batches[std::size_t(s)]);
    worst = std::max(worst, std::abs(a - b) / std::abs(a));
    EXPECT_LE(std::abs(a - b), loss_tolerance * std::abs(a)) << what << ": step " << s;
  }
  // The loss went down: the optimizer did something.
  prenorm::GptTrainEngine<Arch::PreLN, S> engine;
  const double initial = engine.forward_loss(init, batches[0]);
  const double trained = ln.evaluate(batches[0]);
  EXPECT_LT(trained, initial) << what;
  EXPECT_LE(std::abs(re.evaluate(batches[0]) - trained), loss_tolerance * trained) << what << ": evaluate";
  if (theta_tolerance > 0) {
    const double d = max_relative_difference(re.theta(), ln.model());
    EXPECT_LE(d, theta_tolerance) << what << ": theta after " << kSteps << " steps";
    std::printf("  %-58s max loss rel. diff %.2e, theta rel. diff %.2e\n", what.c_str(), worst, d);
  } else {
    std::printf("  %-58s max loss rel. diff %.2e\n", what.c_str(), worst);
  }
}


TEST(EquivalentTraining, DoubleSgdMomentum) {
  for (auto mode : kModes)
    for (const Layout& layout : kLayouts) {
      check_equivalent_training<Arch::PreRMSNorm, double, prenorm::Sgd<double>>(layout, 1e-10, 1e-10, mode);
      check_equivalent_training<Arch::PreCRMSNorm, double, prenorm::Sgd<double>>(layout, 1e-10, 1e-10, mode);
    }
}

TEST(EquivalentTraining, DoubleAdamWWithWeightDecay) {
  for (auto mode : kModes)
    for (const Layout& layout : kLayouts) {
      check_equivalent_training<Arch::PreRMSNorm, double, prenorm::AdamW<double>>(layout, 1e-10, 1e-10, mode);
      check_equivalent_training<Arch::PreCRMSNorm, double, prenorm::AdamW<double>>(layout, 1e-10, 1e-10, mode);
    }
}

TEST(EquivalentTraining, FloatLossesAgree) {
  for (auto mode : kModes)
    for (const Layout& layout : kLayouts) {
      check_equivalent_training<Arch::PreRMSNorm, float, prenorm::Sgd<float>>(layout, 1e-4, 0, mode);
      check_equivalent_training<Arch::PreCRMSNorm, float, prenorm::Sgd<float>>(layout, 1e-4, 0, mode);
      check_equivalent_training<Arch::PreRMSNorm, float, prenorm::AdamW<float>>(layout, 1e-4, 0, mode);
      check_equivalent_training<Arch::PreCRMSNorm, float, prenorm::AdamW<float>>(layout, 1e-4, 0, mode);
    }
}

// The fused adjoint (inside the backward) and the explicit one (convert_adjoint
// of a materialized dL/dphi) give the same dL/dtheta.
template <Arch To, class Model, class Batch>
void check_fused_equals_explicit(const Model& init, const Batch& batch, const std::string& what,
                                 TiedPolicy policy = TiedPolicy::Keep) {
  using Opt = prenorm::Sgd<double>;
  prenorm::ReparamTrainer<To, Model, Opt> fused(init, Opt(), {.tied = policy});
  prenorm::ReparamTrainer<To, Model, Opt> expl(init, Opt(),
                                               {.adjoint = prenorm::AdjointMode::Explicit, .tied = policy});
  EXPECT_NEAR(fused.compute_gradients(batch), expl.compute_gradients(batch), 1e-14);
  EXPECT_LE(max_relative_difference(fused.grad_theta(), expl.grad_theta()), 1e-13) << what;
  EXPECT_THROW(fused.grad_phi(), prenorm::Error);
}

// With the conversion inside the optimizer step (and GPT's token rows
// converted lazily, or a keep-tied E not written at all), phi() is
// convert(theta, {policy}) of the trained theta.
TEST(EquivalentTraining, PhiIsTheConversionOfTheta) {
  for (const Layout& layout : kLayouts)
    for (auto adjoint : {prenorm::AdjointMode::InBackward, prenorm::AdjointMode::Explicit}) {
      GptLN<double> init(tiny_gpt(layout.tied));
      init.init_random(31, 0.3, true);
      const Batches batches(5, init.config.vocab, 32);
      prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN<double>, prenorm::AdamW<double>> re(
          init, prenorm::AdamW<double>(adamw_options()), {.adjoint = adjoint, .tied = layout.policy});
      for (int s = 0; s < 5; ++s) re.step(batches[std::size_t(s)]);
      const auto reference = prenorm::convert<Arch::PreCRMSNorm>(re.theta(), {.tied = layout.policy});
      EXPECT_EQ(re.phi().tied_affine(), reference.tied_affine());
      EXPECT_LE(max_relative_difference(re.phi(), reference), 1e-14)
          << layout_name(layout) << (adjoint == prenorm::AdjointMode::Explicit ? " explicit" : "");
    }
  VitLN<double> vit(tiny_vit());
  vit.init_random(33, 0.3, true);
  std::vector<double> pixels(2 * 2 * 4 * 4, 0.25);
  const std::vector<int> labels{0, 1};
  const prenorm::VitBatch<double> batch{prenorm::ImageBatch<double>{pixels, 2, 2, 4, 4}, labels};
  prenorm::ReparamTrainer<Arch::PreRMSNorm, VitLN<double>, prenorm::Sgd<double>> vr(vit, prenorm::Sgd<double>());
  vr.step(batch);
  vr.step(batch);
  EXPECT_LE(max_relative_difference(vr.phi(), prenorm::convert<Arch::PreRMSNorm>(vr.theta())), 1e-14);
}

TEST(EquivalentTraining, FusedAdjointEqualsExplicitAdjoint) {
  for (bool tied : {true, false})
    for (bool head_bias : {true, false}) {
      prenorm::GptConfig c = tiny_gpt(tied);
      c.head_bias = head_bias;
      GptLN<double> init(c);
      init.init_random(27, 0.3, true);
      const Batches batches(1, c.vocab, 28);
      for (TiedPolicy policy : {TiedPolicy::Keep, TiedPolicy::Untie}) {
        const std::string what = std::string(tied ? "tied " + policy_name(policy) : "untied") +
                                 (head_bias ? " head_bias" : "");
        check_fused_equals_explicit<Arch::PreRMSNorm>(init, batches[0], "pre_rmsnorm " + what, policy);
        check_fused_equals_explicit<Arch::PreCRMSNorm>(init, batches[0], "pre_crmsnorm " + what, policy);
      }
    }
  VitLN<double> vit(tiny_vit());
  vit.init_random(29, 0.3, true);
  std::vector<double> pixels(2 * 2 * 4 * 4);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::sin(0.7 * double(i));
  const std::vector<int> labels{1, 2};
  const prenorm::VitBatch<double> batch{prenorm::ImageBatch<double>{pixels, 2, 2, 4, 4}, labels};
  check_fused_equals_explicit<Arch::PreRMSNorm>(vit, batch, "vit pre_rmsnorm");
  check_fused_equals_explicit<Arch::PreCRMSNorm>(vit, batch, "vit pre_crmsnorm");
}

// max |a - b| / max |b| over the tensor `name` of two models.
template <class Model>
double tensor_relative_difference(const Model& a, const Model& b, const std::string& name) {
  std::vector<double> ta, tb;
  const auto pick = [&](const Model& m, std::vector<double>& out) {
    m.visit_parameters([&](const std::string& n, const auto& t) {
      if (n == name) out.assign(t.data(), t.data() + t.size());
    });
  };
  pick(a, ta);
  pick(b, tb);
  EXPECT_EQ(ta.size(), tb.size()) << name;
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < std::min(ta.size(), tb.size()); ++i) {
    diff = std::max(diff, std::abs(ta[i] - tb[i]));
    norm = std::max(norm, std::abs(tb[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

// The first step's gradient: the adjoint of the target's gradient is the
// Pre-LN gradient, as a whole and, sharper, for the tensors the head reads
// (the tied table: the head's part and the lookup's; gamma_f and beta_f: the
// product rule through the head).
template <Arch To>
void check_first_gradient(const Layout& layout, bool head_bias, prenorm::AdjointMode adjoint) {
  prenorm::GptConfig c = tiny_gpt(layout.tied);
  c.head_bias = head_bias;
  GptLN<double> init(c);
  init.init_random(23, 0.3, true);
  const Batches batches(1, init.config.vocab, 24);
  prenorm::Trainer<GptLN<double>, prenorm::Sgd<double>> ln(init, prenorm::Sgd<double>());
  prenorm::ReparamTrainer<To, GptLN<double>, prenorm::Sgd<double>> re(
      init, prenorm::Sgd<double>(), {.adjoint = adjoint, .tied = layout.policy});
  const std::string what = std::string(prenorm::arch_name(To)) + " " + layout_name(layout) +
                           (head_bias ? " head_bias " : " ") +
                           (adjoint == prenorm::AdjointMode::Explicit ? "explicit" : "in-backward");
  EXPECT_NEAR(re.compute_gradients(batches[0]), ln.compute_gradients(batches[0]), 1e-13) << what;
  EXPECT_LE(max_relative_difference(re.grad_theta(), ln.grads()), 1e-12) << what;
  std::vector<std::string> names{"token_embedding.table", "final_gamma", "final_beta"};
  if (head_bias) names.push_back("head_bias");
  if (!layout.tied) names.push_back("head.weight");
  for (const std::string& name : names)
    EXPECT_LE(tensor_relative_difference(re.grad_theta(), ln.grads(), name), 1e-12) << what << ": " << name;
}

TEST(EquivalentTraining, GradientsAreThePreLnGradients) {
  for (const Layout& layout : kLayouts)
    for (bool head_bias : {false, true})
      for (auto adjoint : {prenorm::AdjointMode::InBackward, prenorm::AdjointMode::Explicit}) {
        check_first_gradient<Arch::PreRMSNorm>(layout, head_bias, adjoint);
        check_first_gradient<Arch::PreCRMSNorm>(layout, head_bias, adjoint);
      }
}

TEST(EquivalentTraining, Vit) {
  VitLN<double> init(tiny_vit());
  init.init_random(25, 0.3, true);
  std::mt19937_64 rng(26);
  std::normal_distribution<double> n(0, 1);
  std::vector<std::vector<double>> pixels(kSteps, std::vector<double>(3 * 2 * 4 * 4));
  std::vector<std::vector<int>> labels(kSteps, std::vector<int>(3));
  for (int s = 0; s < kSteps; ++s) {
    for (double& p : pixels[std::size_t(s)]) p = n(rng);
    for (int& l : labels[std::size_t(s)]) l = int(rng() % 3);
  }
  using Opt = prenorm::AdamW<double>;
  prenorm::Trainer<VitLN<double>, Opt> ln(init, Opt(adamw_options()));
  prenorm::ReparamTrainer<Arch::PreRMSNorm, VitLN<double>, Opt> rms(init, Opt(adamw_options()));
  prenorm::ReparamTrainer<Arch::PreCRMSNorm, VitLN<double>, Opt> crms(init, Opt(adamw_options()));
  for (int s = 0; s < kSteps; ++s) {
    const prenorm::VitBatch<double> batch{
        prenorm::ImageBatch<double>{pixels[std::size_t(s)], 3, 2, 4, 4}, labels[std::size_t(s)]};
    const double a = ln.step(batch), b = rms.step(batch), c = crms.step(batch);
    EXPECT_NEAR(b, a, 1e-10 * a) << "step " << s;
    EXPECT_NEAR(c, a, 1e-10 * a) << "step " << s;
  }
  EXPECT_LE(max_relative_difference(rms.theta(), ln.model()), 1e-10);
  EXPECT_LE(max_relative_difference(crms.theta(), ln.model()), 1e-10);
}

// Why theta is kept: AdamW on phi directly (the converted model trained as a
// Pre-RMSNorm model) leaves the Pre-LN trajectory. RMSNorm is not shift-
// invariant, so phi's gradients leave the zero-mean subspace, and Adam's
// per-coordinate scaling is not invariant under the conversion either.
template <Arch To>
void check_direct_training_diverges(bool tied) {
  using Opt = prenorm::AdamW<double>;
  GptLN<double> init(tiny_gpt(tied));
  init.init_random(21, 0.3, true);
  const Batches batches(kSteps, init.config.vocab, 22);
  prenorm::Trainer<GptLN<double>, Opt> ln(init, Opt(adamw_options()));
  prenorm::ReparamTrainer<To, GptLN<double>, Opt> re(init, Opt(adamw_options()));
  prenorm::Trainer<prenorm::Gpt<To, double>, Opt> direct(prenorm::convert<To>(init, kUntie),
                                                         Opt(adamw_options()));
  double reparam_gap = 0, direct_gap = 0;
  for (int s = 0; s < kSteps; ++s) {
    const double a = ln.step(batches[std::size_t(s)]);
    const double b = re.step(batches[std::size_t(s)]);
    const double c = direct.step(batches[std::size_t(s)]);
    reparam_gap = std::max(reparam_gap, std::abs(b - a) / a);
    direct_gap = std::max(direct_gap, std::abs(c - a) / a);
  }
  // The trained functions: convert(theta_LN) against phi trained directly.
  const auto phi_ln = prenorm::convert<To>(ln.model(), kUntie);
  const double param_gap = max_relative_difference(direct.model(), phi_ln);
  // The writers' zero-mean property is lost: the main branch is no longer centered.
  const double mean_out = direct.model().blocks[0].attn.out.weight.colwise().mean().cwiseAbs().maxCoeff();
  std::printf("  %-20s %s: loss gap reparam %.1e, direct %.1e; phi gap %.1e; |col mean| of attn.out %.1e\n",
              std::string(prenorm::arch_name(To)).c_str(), tied ? "tied" : "untied", reparam_gap,
              direct_gap, param_gap, mean_out);
  EXPECT_LE(reparam_gap, 1e-10);
  EXPECT_GE(direct_gap, 1e-4) << "direct AdamW on phi was expected to diverge measurably";
  EXPECT_GE(param_gap, 1e-3);
  if constexpr (To == Arch::PreRMSNorm) {
    EXPECT_GE(mean_out, 1e-6);
  }
}

TEST(EquivalentTraining, AdamWOnPhiDirectlyIsNotEquivalent) {
  check_direct_training_diverges<Arch::PreRMSNorm>(true);
  check_direct_training_diverges<Arch::PreRMSNorm>(false);
  check_direct_training_diverges<Arch::PreCRMSNorm>(true);
}

// ---------------------------------------------------------------------------
// No allocation after the first step
// ---------------------------------------------------------------------------

using alloc_count::Allocations;
using alloc_count::count_allocations;

TEST(TrainStep, DoesNotAllocateAfterTheFirstStep) {
  for (const Layout& layout : kLayouts) {
    const bool tied = layout.tied;
    const std::string what = layout_name(layout);
    GptLN<float> init(tiny_gpt(tied));
    init.init_random(31, 0.3, true);
    const Batches batches(3, init.config.vocab, 32);
    prenorm::Trainer<GptLN<float>, prenorm::AdamW<float>> ln(init, prenorm::AdamW<float>());
    prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN<float>, prenorm::AdamW<float>> re(
        init, prenorm::AdamW<float>(), {.tied = layout.policy});
    prenorm::ReparamTrainer<Arch::PreRMSNorm, GptLN<float>, prenorm::AdamW<float>> ex(
        init, prenorm::AdamW<float>(),
        {.adjoint = prenorm::AdjointMode::Explicit, .convert = prenorm::ConvertMode::Separate,
         .tied = layout.policy});
    prenorm::ReparamTrainer<Arch::PreRMSNorm, GptLN<float>, prenorm::AdamW<float>> eo(
        init, prenorm::AdamW<float>(), {.adjoint = prenorm::AdjointMode::Explicit, .tied = layout.policy});
    re.timing = true;
    ln.step(batches[0]);
    re.step(batches[0]);
    ex.step(batches[0]);
    eo.step(batches[0]);
    Allocations a = count_allocations([&] { ln.step(batches[1]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "Pre-LN step, " << what;
    a = count_allocations([&] { re.step(batches[1]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "reparameterized step, " << what;
    a = count_allocations([&] { re.evaluate(batches[2]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "reparameterized evaluate, " << what;
    a = count_allocations([&] { ex.step(batches[1]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "reparameterized step (explicit adjoint), " << what;
    a = count_allocations([&] { eo.step(batches[1]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "reparameterized step (explicit adjoint, conversion in the optimizer), "
                                   << what;
    using NoNormGpt = prenorm::Gpt<prenorm_bench::kNoNorm, float>;
    prenorm::Trainer<NoNormGpt, prenorm::Sgd<float>> nn(NoNormGpt(tiny_gpt(tied)), prenorm::Sgd<float>());
    nn.step(batches[0]);
    a = count_allocations([&] { nn.step(batches[2]); });
    EXPECT_EQ(a.eigen + a.news, 0) << "no_norm step";
  }
  VitLN<float> vit(tiny_vit());
  vit.init_random(33, 0.3, true);
  std::vector<float> pixels(2 * 2 * 4 * 4, 0.5f);
  const std::vector<int> labels{0, 2};
  const prenorm::VitBatch<float> batch{prenorm::ImageBatch<float>{pixels, 2, 2, 4, 4}, labels};
  prenorm::ReparamTrainer<Arch::PreRMSNorm, VitLN<float>, prenorm::AdamW<float>> vr(
      vit, prenorm::AdamW<float>());
  vr.step(batch);
  const Allocations a = count_allocations([&] { vr.step(batch); });
  EXPECT_EQ(a.eigen + a.news, 0) << "ViT reparameterized step";
}

// prenorm's own loops give the same bits for any thread count: every
// reduction has a fixed order. (Eigen's matrix products do not: their
// blocking depends on the thread count, so they are held to one thread here.)
// The model is large enough for the parallel paths to run.
TEST(TrainStep, ThreadCountDoesNotChangeResults) {
  if (prenorm::num_threads() < 2) GTEST_SKIP() << "needs OpenMP with 2 threads";
  const int threads = prenorm::num_threads();
  Eigen::setNbThreads(1);
  const prenorm::GptConfig c{.vocab = 1000, .context = 64, .width = 128, .heads = 4, .layers = 2,
                             .mlp_width = 512, .tied = true};
  GptLN<float> init(c);
  init.init_random(51, 0.05, true);
  std::mt19937_64 rng(52);
  std::vector<int> ids(8 * 64), targets(8 * 64);
  for (int& t : ids) t = int(rng() % 1000);
  for (int& t : targets) t = int(rng() % 1000);
  const prenorm::GptBatch batch{prenorm::TokenBatch(ids, 8, 64), targets};
  using Opt = prenorm::AdamW<float>;
  for (TiedPolicy policy : {TiedPolicy::Keep, TiedPolicy::Untie}) {
    std::vector<std::vector<std::vector<double>>> thetas;
    std::vector<double> losses;
    for (int n : {1, threads}) {
      prenorm::set_num_threads(n);
      prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN<float>, Opt> re(init, Opt(adamw_options()),
                                                                       {.tied = policy});
      double loss = 0;
      for (int s = 0; s < 3; ++s) loss = re.step(batch);
      losses.push_back(loss);
      thetas.push_back(tensors(re.theta()));
    }
    EXPECT_EQ(losses[0], losses[1]) << policy_name(policy);
    EXPECT_TRUE(thetas[0] == thetas[1])
        << policy_name(policy) << ": theta differs between 1 and " << threads << " threads";
  }
  prenorm::set_num_threads(threads);
  Eigen::setNbThreads(0);  // back to OpenMP's default
}

// An AdamW that sleeps `nap` at the start of every step: in step() (Trainer,
// and ReparamTrainer with ConvertMode::Separate) and in begin_step() (the
// update ReparamTrainer drives with ConvertMode::InOptimizer). The nap is the
// optimizer's time, and no other part's.
template <class S>
struct NappingAdamW : prenorm::AdamW<S> {
  std::chrono::duration<double> nap;
  explicit NappingAdamW(double seconds) : nap(seconds) {}
  template <class Model>
  void step(Model& params, Model& grads) {
    std::this_thread::sleep_for(nap);
    prenorm::AdamW<S>::step(params, grads);
  }
  template <class Model>
  void begin_step(Model& params, Model& grads) {
    std::this_thread::sleep_for(nap);
    prenorm::AdamW<S>::begin_step(params, grads);
  }
};

// Two timed steps of a trainer whose optimizer naps `nap` seconds a step,
// then an untimed one. The optimizer's time holds both naps, no other part
// holds one, and the parts add up to at most the total (clocked apart, from
// the start of each step to its end); an untimed step changes nothing.
template <class Trainer>
void expect_timings(Trainer& trainer, const Batches& batches, double nap, bool reparam) {
  trainer.timing = true;
  trainer.step(batches[0]);
  trainer.step(batches[1]);
  const prenorm::StepTimings t = trainer.timings;
  EXPECT_EQ(t.steps, 2);
  EXPECT_GE(t.optimizer, 2 * nap) << "the optimizer's naps are not in its time";
  const std::pair<const char*, double> others[] = {
      {"forward_backward", t.forward_backward}, {"convert", t.convert}, {"adjoint", t.adjoint}};
  for (const auto& [name, seconds] : others) {
    EXPECT_GE(seconds, 0) << name;
    EXPECT_LT(seconds, nap) << name << " holds an optimizer's nap";
  }
  if (reparam) {
    EXPECT_GT(t.convert, 0);
    EXPECT_GT(t.adjoint, 0);
  } else {
    EXPECT_EQ(t.convert, 0);
    EXPECT_EQ(t.adjoint, 0);
  }
  EXPECT_GT(t.norm, 0);
  EXPECT_LE(t.norm, t.forward_backward);
  // 1 ns: rounding of the sums (the clock ticks in ns).
  EXPECT_LE(t.convert + t.forward_backward + t.adjoint + t.optimizer, t.total + 1e-9);
  EXPECT_GE(t.total, 2 * nap);

  trainer.timing = false;
  trainer.step(batches[2]);
  const prenorm::StepTimings& u = trainer.timings;
  EXPECT_EQ(u.steps, t.steps);
  EXPECT_EQ(u.total, t.total);
  EXPECT_EQ(u.forward_backward, t.forward_backward);
  EXPECT_EQ(u.norm, t.norm);
  EXPECT_EQ(u.convert, t.convert);
  EXPECT_EQ(u.adjoint, t.adjoint);
  EXPECT_EQ(u.optimizer, t.optimizer);
}

TEST(TrainStep, TimingsPutEachPartWhereItRuns) {
  GptLN<double> init(tiny_gpt(true));
  init.init_random(41, 0.3, true);
  const Batches batches(3, init.config.vocab, 42);
  const double nap = 0.05;
  using Opt = NappingAdamW<double>;
  {
    SCOPED_TRACE("Trainer");
    prenorm::Trainer<GptLN<double>, Opt> plain(init, Opt(nap));
    expect_timings(plain, batches, nap, false);
  }
  {
    SCOPED_TRACE("ReparamTrainer, adjoint in the backward, conversion in the optimizer");
    prenorm::ReparamTrainer<Arch::PreRMSNorm, GptLN<double>, Opt> re(init, Opt(nap));
    expect_timings(re, batches, nap, true);
  }
  {
    SCOPED_TRACE("ReparamTrainer, explicit adjoint, separate conversion");
    prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN<double>, Opt> re(
        init, Opt(nap),
        {.adjoint = prenorm::AdjointMode::Explicit, .convert = prenorm::ConvertMode::Separate});
    expect_timings(re, batches, nap, true);
  }
}

// A tied GPT trained through a keep-tied phi: phi has no head of its own, and
// the step leaves phi's copy of E unwritten (it reads theta's); phi() brings
// it up to date.
TEST(KeepTied, WritesNoHead) {
  GptLN<double> init(tiny_gpt(true));
  init.init_random(61, 0.3, true);
  const Batches batches(2, init.config.vocab, 62);
  using Opt = prenorm::AdamW<double>;
  prenorm::ReparamTrainer<Arch::PreRMSNorm, GptLN<double>, Opt> keep(init, Opt(adamw_options()));
  EXPECT_EQ(keep.options().tied, TiedPolicy::Keep);  // the default
  keep.step(batches[0]);
  keep.step(batches[1]);
  const auto& phi = keep.phi();
  EXPECT_TRUE(phi.tied_affine());
  EXPECT_EQ(phi.head.weight.size(), 0);
  EXPECT_TRUE(phi.token_embedding.table == keep.theta().token_embedding.table);
  EXPECT_TRUE(phi.tied_gamma == keep.theta().final_gamma);
  EXPECT_TRUE(phi.tied_beta == keep.theta().final_beta);
  // The converted model computes what theta does.
  prenorm::Gpt<Arch::PreRMSNorm, double> model = phi;
  GptLN<double> reference = keep.theta();
  const prenorm::TokenBatch tokens(batches.ids[0], batches.batch, batches.seq);
  const RowMatrix<double> expected = reference.forward(tokens);
  EXPECT_LE((model.forward(tokens) - expected).cwiseAbs().maxCoeff(), 1e-12 * expected.cwiseAbs().maxCoeff());
}

// A keep-tied phi goes with a tied theta only; the engine and the fused
// update refuse anything else, naming the operation, expected and found.
TEST(KeepTied, RefusesAnUntiedTheta) {
  GptLN<double> untied(tiny_gpt(false)), grad(tiny_gpt(false));
  untied.init_random(63, 0.3, true);
  prenorm::Gpt<Arch::PreCRMSNorm, double> keep(tiny_gpt(true));  // keep-tied layout
  ASSERT_TRUE(keep.tied_affine());
  const Batches batches(1, untied.config.vocab, 64);
  prenorm::GptTrainEngine<Arch::PreCRMSNorm, double> engine;
  prenorm::ReparamWorkspace<double> ws;
  expect_error([&] { engine.forward_backward_reparam(keep, untied, batches[0], grad, ws); },
               {"GptTrainEngine::forward_backward_reparam", "phi is keep-tied", "expected untied",
                "theta is untied"});
  expect_error([&] { engine.forward_loss_reparam(keep, untied, batches[0]); },
               {"GptTrainEngine::forward_loss_reparam", "phi is keep-tied", "expected untied",
                "theta is untied"});
  prenorm::ConvertingUpdate<Arch::PreCRMSNorm, double> update;
  prenorm::Sgd<double> sgd;
  expect_error([&] { update.step(sgd, untied, grad, keep); },
               {"ConvertingUpdate", "phi is keep-tied", "expected untied", "theta is untied"});
  // TiedPolicy::Keep on an untied theta is ignored, as by convert: phi is untied.
  prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN<double>, prenorm::Sgd<double>> re(
      untied, prenorm::Sgd<double>(), {.tied = TiedPolicy::Keep});
  EXPECT_FALSE(re.phi().tied_affine());
}

// A keep-tied Pre-(C)RMSNorm model trains directly too (not equivalently:
// see AdamWOnPhiDirectlyIsNotEquivalent): its gradient is that of its own
// forward, checked here against central differences of the loss.
TEST(KeepTied, DirectGradientMatchesCentralDifferences) {
  GptLN<double> init(tiny_gpt(true));
  init.init_random(65, 0.3, true);
  auto model = prenorm::convert<Arch::PreCRMSNorm>(init, kKeep);
  ASSERT_TRUE(model.tied_affine());
  const Batches batches(1, init.config.vocab, 66);
  prenorm::GptTrainEngine<Arch::PreCRMSNorm, double> engine;
  prenorm::Gpt<Arch::PreCRMSNorm, double> grads(model.config);
  engine.forward_backward(model, batches[0], grads);
  for (const std::string name : {"token_embedding.table", "tied_gamma", "tied_beta"}) {
    std::vector<double*> params;
    std::vector<double> analytic;
    model.visit_parameters([&](const std::string& n, auto& t) {
      if (n == name) for (Index i = 0; i < t.size(); ++i) params.push_back(t.data() + i);
    });
    grads.visit_parameters([&](const std::string& n, auto& t) {
      if (n == name) analytic.assign(t.data(), t.data() + t.size());
    });
    ASSERT_EQ(params.size(), analytic.size()) << name;
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < params.size(); i += 3) {
      const double h = 1e-6, saved = *params[i];
      *params[i] = saved + h;
      const double plus = engine.forward_loss(model, batches[0]);
      *params[i] = saved - h;
      const double minus = engine.forward_loss(model, batches[0]);
      *params[i] = saved;
      worst = std::max(worst, std::abs((plus - minus) / (2 * h) - analytic[i]));
      scale = std::max(scale, std::abs(analytic[i]));
    }
    EXPECT_LE(worst, 1e-7 * std::max(scale, 1.0)) << name;
  }
}

}  // namespace
