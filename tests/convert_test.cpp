// Tests of the converter (include/prenorm/convert/) on GPT models, its
// compile-time plan, its per-tensor transforms and their adjoints
// (ViT models: convert_vit_test.cpp).
//
// Source models are random Pre-LN GPTs shaped like trained ones: widths odd
// and prime (2, 5, 7, 64, 97, 192), 0-4 layers, tied and untied heads, gamma
// N(1, 0.5) with some negative entries, beta, biases and head biases != 0,
// embeddings with a large shared mean (+5, -3) and a few outlier dimensions
// (x 20), writer weights and biases with a nonzero mean over the main branch.
//
// Checked, with tolerances per dtype (relative: |actual - expected| / |expected|
// in the Frobenius norm; double 1e-12, float 1e-5), every failure printing the
// error found:
//  - logits of Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm, with TiedPolicy::Untie and
//    ::Keep, equal the Pre-LN logits;
//  - the main branch of a converted Pre-RMSNorm model is zero-mean after every
//    block (|mean| <= 1e-12 rms per row), and the Pre-CRMSNorm one is its
//    first d-1 coordinates;
//  - round trips through every architecture, and random Pre-CRMSNorm models
//    converted to Pre-LN and Pre-RMSNorm, keep the logits;
//  - KV-cache decoding of converted models equals their full forward;
//  - zero_mean_report of converted models is ~0; a Pre-RMSNorm source that is
//    not zero-mean is refused with the tensor's name, and accepted with recenter;
//  - bad shapes and widths are refused with the tensor's name;
//  - the plan, at compile time (static_assert);
//  - every transform against its definition, and each adjoint against the
//    transform (<T(x + delta) - T(x), g> = <delta, T*(g)>; finite differences
//    for the bilinear fold_affine);
//  - 20 seeds of random configurations and conversion chains;
//  - streaming conversion (convert/streaming.hpp): bitwise the file of the
//    whole-model conversion, for every direction, tied policy and input dtype
//    (F32, F16, BF16), from the GPT-2 and the prenorm layouts, one file and
//    shards; a failure midway leaves no file; probe_logits equals forward.
// The maximum errors are printed (lines starting with "[ max error ]").

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/convert/streaming.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "support/convert_test_util.hpp"
#include "support/temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using namespace prenorm_test;  // tests/support/convert_test_util.hpp (one thread, helpers)
using prenorm::TransformerConfig;
using prenorm::ConvertOptions;
using prenorm::Gpt;
using prenorm::GptConfig;
using prenorm::TiedPolicy;
using prenorm::TokenBatch;
namespace conv = prenorm::conversion;
using Role = conv::Role;

// ===========================================================================
// The plan, at compile time
// ===========================================================================

constexpr Arch kNormArchs[] = {Arch::PreLN, Arch::PreRMSNorm, Arch::PreCRMSNorm};

constexpr bool every_role(Arch from, Arch to, bool (*pred)(Role, conv::Steps)) {
  for (Role role : conv::kAllRoles)
    if (!pred(role, conv::plan_for(from, to, role))) return false;
  return true;
}

// An Arch value outside the enum, as bench/no_norm.hpp's baseline (kNoNorm).
constexpr Arch kOutside = static_cast<Arch>(3);

// Supported directions: the six between Pre-LN, Pre-RMSNorm and Pre-CRMSNorm.
constexpr bool supported_directions_are_exactly_the_six() {
  constexpr Arch all[] = {Arch::PreLN, Arch::PreRMSNorm, Arch::PreCRMSNorm, kOutside};
  int supported = 0;
  for (Arch from : all)
    for (Arch to : all) {
      const bool expect = from != to && from != kOutside && to != kOutside;
      if (conv::is_supported(from, to) != expect) return false;
      supported += conv::is_supported(from, to);
    }
  return supported == 6;
}
static_assert(supported_directions_are_exactly_the_six());
static_assert(!conv::is_supported(kOutside, Arch::PreLN));
static_assert(!conv::is_supported(Arch::PreLN, kOutside));
static_assert(!conv::is_supported(kOutside, Arch::PreCRMSNorm));
static_assert(!conv::is_supported(static_cast<Arch>(-1), Arch::PreLN));
static_assert(!conv::is_supported(Arch::PreLN, Arch::PreLN));
// An unsupported direction has an all-identity plan.
static_assert(every_role(kOutside, Arch::PreRMSNorm,
                         [](Role, conv::Steps s) { return s.identity(); }));
static_assert(every_role(Arch::PreRMSNorm, Arch::PreRMSNorm,
                         [](Role, conv::Steps s) { return s.identity(); }));

// Roles: writers and readers partition every role but the norm affine.
constexpr bool roles_partitioned() {
  for (Role role : conv::kAllRoles) {
    const int kinds = int(conv::is_writer(role)) + int(conv::is_reader(role)) +
                      int(role == Role::NormAffine);
    if (kinds != 1) return false;
    if (conv::is_table(role) && !conv::is_writer(role)) return false;
  }
  return true;
}
static_assert(roles_partitioned());
static_assert(conv::is_writer(Role::PatchLinear) && !conv::is_table(Role::PatchLinear));
static_assert(conv::is_reader(Role::Head) && conv::is_reader(Role::QkvIn) && conv::is_reader(Role::MlpIn));
static_assert(conv::is_writer(Role::AttnOut) && conv::is_writer(Role::MlpOut));
static_assert(conv::role_name(Role::QkvIn) == "qkv projection");

// Pre-LN -> Pre-RMSNorm: readers fold the affine and nothing else; writers are
// recentered and nothing else; the norm affine is dropped.
using LnToRms = conv::Plan<Arch::PreLN, Arch::PreRMSNorm>;
static_assert(LnToRms::steps(Role::QkvIn).fold_affine && LnToRms::steps(Role::MlpIn).fold_affine &&
              LnToRms::steps(Role::Head).fold_affine);
static_assert(every_role(Arch::PreLN, Arch::PreRMSNorm, [](Role r, conv::Steps s) {
  if (conv::is_reader(r)) return s.fold_affine && !s.recenter && !s.compress_input && !s.decompress_input;
  if (conv::is_writer(r))
    return s.recenter && !s.fold_affine && !s.compress_output && !s.decompress_output;
  return s.drop_affine && !s.unit_affine;
}));

// Pre-LN -> Pre-CRMSNorm: readers fold, then compress their input; writers are
// recentered before they are compressed (the fields are in the order applied).
using LnToCrms = conv::Plan<Arch::PreLN, Arch::PreCRMSNorm>;
static_assert(every_role(Arch::PreLN, Arch::PreCRMSNorm, [](Role r, conv::Steps s) {
  if (conv::is_reader(r)) return s.fold_affine && s.compress_input && !s.recenter;
  if (conv::is_writer(r)) return s.recenter && s.compress_output && !s.fold_affine;
  return s.drop_affine && !s.unit_affine;
}));
static_assert(conv::writers_recentered_before_compression(Arch::PreLN, Arch::PreCRMSNorm));
static_assert(conv::readers_fold_dropped_affine(Arch::PreLN, Arch::PreCRMSNorm));
static_assert(conv::readers_fold_dropped_affine(Arch::PreLN, Arch::PreRMSNorm));
// The compressed main branch: 767 for 768, at compile time; Dynamic stays Dynamic.
static_assert(LnToCrms::target_main_width(768) == 767);
static_assert(LnToCrms::target_main_width(2) == 1);
static_assert(LnToCrms::target_main_width(prenorm::Dynamic) == prenorm::Dynamic);
static_assert(LnToRms::target_main_width(768) == 768);
static_assert(conv::Plan<Arch::PreCRMSNorm, Arch::PreLN>::target_main_width(768) == 768);
static_assert(conv::Plan<Arch::PreCRMSNorm, Arch::PreRMSNorm>::target_main_width(97) == 97);
static_assert(conv::Plan<Arch::PreRMSNorm, Arch::PreCRMSNorm>::target_main_width(97) == 96);
static_assert(prenorm::PreNormBlock<Arch::PreCRMSNorm, float, 768>::kMainWidth == 767);
static_assert(prenorm::PreNormBlock<Arch::PreRMSNorm, float, 768>::kMainWidth == 768);

// Pre-RMSNorm -> Pre-CRMSNorm: writers (already zero-mean) only compress,
// readers (affine already folded) only compress; the norm is untouched.
static_assert(every_role(Arch::PreRMSNorm, Arch::PreCRMSNorm, [](Role r, conv::Steps s) {
  if (conv::is_reader(r)) return s.compress_input && !s.fold_affine && !s.decompress_input;
  if (conv::is_writer(r)) return s.compress_output && !s.recenter && !s.decompress_output;
  return s.identity();
}));
static_assert(conv::writers_recentered_before_compression(Arch::PreRMSNorm, Arch::PreCRMSNorm));

// Pre-CRMSNorm -> Pre-RMSNorm: writers rebuild the dropped coordinate, readers
// get it back (a zero column).
static_assert(every_role(Arch::PreCRMSNorm, Arch::PreRMSNorm, [](Role r, conv::Steps s) {
  if (conv::is_reader(r)) return s.decompress_input && !s.compress_input && !s.fold_affine;
  if (conv::is_writer(r)) return s.decompress_output && !s.compress_output && !s.recenter;
  return s.identity();
}));

// To Pre-LN: weights are unchanged (from Pre-RMSNorm) or decompressed (from
// Pre-CRMSNorm); the LayerNorms get gamma 1, beta 0.
static_assert(every_role(Arch::PreRMSNorm, Arch::PreLN, [](Role r, conv::Steps s) {
  if (r == Role::NormAffine) return s.unit_affine && !s.drop_affine;
  return s.identity();
}));
static_assert(every_role(Arch::PreCRMSNorm, Arch::PreLN, [](Role r, conv::Steps s) {
  if (conv::is_reader(r)) return s.decompress_input && !s.fold_affine;
  if (conv::is_writer(r)) return s.decompress_output && !s.recenter;
  return s.unit_affine && !s.drop_affine;
}));

// Every supported direction's plan is sound, and never compresses and
// decompresses the same tensor.
constexpr bool all_supported_plans_sound() {
  for (Arch from : kNormArchs)
    for (Arch to : kNormArchs)
      if (from != to && !conv::plan_is_sound(from, to)) return false;
  return true;
}
static_assert(all_supported_plans_sound());
static_assert(every_role(Arch::PreLN, Arch::PreCRMSNorm, [](Role, conv::Steps s) {
  return !(s.compress_output && s.decompress_output) && !(s.compress_input && s.decompress_input);
}));

// Types: convert<To> keeps the scalar and the model kind. It accepts models only
// (a source outside the three architectures, e.g. the benchmarks' baseline, is
// rejected by a static_assert in the body, which a requires-expression cannot
// see: tests/compile_fail/convert_no_norm.cpp).
template <Arch To, class M>
concept Convertible = requires(const M& m) { prenorm::convert<To>(m); };
static_assert(std::same_as<decltype(prenorm::convert<Arch::PreCRMSNorm>(
                               std::declval<const Gpt<Arch::PreLN, float>&>())),
                           Gpt<Arch::PreCRMSNorm, float>>);
static_assert(std::same_as<decltype(prenorm::convert<Arch::PreLN>(
                               std::declval<const Gpt<Arch::PreRMSNorm, double>&>())),
                           Gpt<Arch::PreLN, double>>);
static_assert(std::same_as<decltype(prenorm::convert<Arch::PreRMSNorm>(
                               std::declval<const prenorm::Vit<Arch::PreLN, double>&>())),
                           prenorm::Vit<Arch::PreRMSNorm, double>>);
static_assert(Convertible<Arch::PreRMSNorm, Gpt<Arch::PreLN, double>>);
static_assert(!Convertible<Arch::PreRMSNorm, int>);
static_assert(!Convertible<Arch::PreRMSNorm, prenorm::PreNormBlock<Arch::PreLN, double>>);
static_assert(!Convertible<Arch::PreRMSNorm, RowMatrix<double>>);

// ===========================================================================
// Helpers (the ones shared with convert_vit_test.cpp are in
// tests/support/convert_test_util.hpp)
// ===========================================================================

// A trained-looking embedding table: N(0, stddev), a few outlier columns x 20,
// then a large shared mean on every entry.
void fill_embedding(MatD& t, Rng& rng, double stddev, double shift) {
  rng.fill(t, stddev);
  const Index outliers = std::max<Index>(1, t.cols() / 32);
  for (Index k = 0; k < outliers; ++k) t.col(rng.uniform(0, t.cols() - 1)) *= 20.0;
  t.array() += shift;
}

struct GptCase {
  const char* name;
  Index width, heads, head_dim, layers;
  bool tied, head_bias;
  double epsilon;
};

GptConfig gpt_config(const GptCase& c) {
  GptConfig config;
  config.vocab = 61;
  config.context = 16;
  config.width = c.width;
  config.heads = c.heads;
  config.head_dim = c.head_dim;
  config.layers = c.layers;
  config.mlp_width = 2 * c.width + 3;
  config.tied = c.tied;
  config.head_bias = c.head_bias;
  config.epsilon = c.epsilon;
  return config;
}

Gpt<Arch::PreLN, double> make_pre_ln_gpt(const TransformerConfig& config, std::uint64_t seed) {
  Gpt<Arch::PreLN, double> m(config);
  Rng rng(seed);
  fill_embedding(m.token_embedding.table, rng, 1.0, 5.0);
  fill_embedding(m.position_embedding.table, rng, 0.5, -3.0);
  for (auto& b : m.blocks) fill_pre_ln_block(b, rng);
  fill_gamma(m.final_gamma, rng);
  rng.fill(m.final_beta, 0.5);
  rng.fill(m.head.weight, 1.0 / std::sqrt(double(config.width)));
  rng.fill(m.head_bias, 0.5, 0.3);
  m.validate();
  return m;
}

struct Tokens {
  std::vector<int> ids;
  Index batch = 0, seq = 0;
  TokenBatch view() const { return TokenBatch{ids, batch, seq}; }
};

Tokens random_tokens(Index vocab, Index batch, Index seq, std::uint64_t seed) {
  Rng rng(seed);
  Tokens t{std::vector<int>(batch * seq), batch, seq};
  for (int& id : t.ids) id = int(rng.uniform(0, vocab - 1));
  return t;
}

// Converts with the policy and checks the result against the reference logits.
template <Arch To, Arch From, class S>
Gpt<To, S> convert_checked(const Gpt<From, S>& src, TiedPolicy policy, const Tokens& tokens,
                           const MatD& expected, double& worst, const std::string& what) {
  Gpt<To, S> dst = prenorm::convert<To>(src, ConvertOptions{.tied = policy});
  EXPECT_TRUE(close_rel(logits(dst, tokens), expected, tol<S>(), &worst))
      << what << " -> " << prenorm::arch_name(To);
  return dst;
}

std::string policy_name(TiedPolicy p) { return p == TiedPolicy::Keep ? "keep" : "untie"; }

// ===========================================================================
// Pre-LN GPT -> Pre-RMSNorm / Pre-CRMSNorm: logits, main branch, cache, report
// ===========================================================================

class ConvertGpt : public ::testing::TestWithParam<GptCase> {};

const GptCase kGptCases[] = {
    {"d5_h1_L1_tied", 5, 1, 0, 1, true, false, 1e-5},
    {"d5_h5_L2_untied_bias", 5, 5, 0, 2, false, true, 1e-5},
    {"d7_h1x4_L3_tied_bias", 7, 1, 4, 3, true, true, 1e-2},  // head_dim decoupled
    {"d64_h4_L4_tied", 64, 4, 0, 4, true, false, 1e-5},
    {"d97_h1_L2_untied", 97, 1, 0, 2, false, false, 1e-5},
    {"d97_h3x8_L1_tied", 97, 3, 8, 1, true, false, 1e-3},
    {"d192_h3_L2_tied_bias", 192, 3, 0, 2, true, true, 1e-5},
    {"d2_h1_L1_tied", 2, 1, 0, 1, true, false, 1e-5},      // CRMSNorm main width 1
    {"d11_h1_L0_untied", 11, 1, 0, 0, false, true, 1e-5},  // no blocks
};

template <class S>
void check_pre_ln_conversions(const GptCase& c) {
  const GptConfig config = gpt_config(c);
  const auto src_d = make_pre_ln_gpt(config, 1000 + c.width * 10 + c.layers);
  auto src = cast_model<S, Gpt>(src_d);
  const Tokens tokens = random_tokens(config.vocab, 2, 8, 7);
  const MatD ref = logits(src, tokens);
  const std::string name = std::string(c.name) + " " + dtype<S>();
  // Sanity: the source is not degenerate, and LayerNorm matters (a non-zero-mean branch).
  ASSERT_GT(ref.norm(), 1.0);
  {
    const auto hs = branches(src, tokens);
    ASSERT_GT(max_relative_row_mean(hs.front()), 0.1) << "the source branch should not be zero-mean";
  }

  for (TiedPolicy policy : {TiedPolicy::Untie, TiedPolicy::Keep}) {
    const std::string what = name + " " + policy_name(policy);
    double err_rms = 0, err_crms = 0, err_branch = 0, err_mean = 0, err_report = 0;
    auto rms = prenorm::convert<Arch::PreRMSNorm>(src, ConvertOptions{.tied = policy});
    auto crms = prenorm::convert<Arch::PreCRMSNorm>(src, ConvertOptions{.tied = policy});

    // Shapes follow the policy.
    const bool keep = c.tied && policy == TiedPolicy::Keep;
    EXPECT_EQ(rms.config.tied, keep);
    EXPECT_EQ(crms.config.tied, keep);
    EXPECT_EQ(rms.tied_affine(), keep);
    EXPECT_EQ(crms.token_embedding.table.cols(), keep ? c.width : c.width - 1);
    EXPECT_EQ(crms.head.weight.rows(), keep ? 0 : config.vocab);
    EXPECT_EQ(crms.head.weight.cols(), keep ? 0 : c.width - 1);
    EXPECT_EQ(crms.position_embedding.table.cols(), c.width - 1);
    EXPECT_EQ(crms.main(), c.width - 1);
    for (const auto& b : crms.blocks) EXPECT_EQ(b.epsilon, S(c.epsilon));

    // Logits, and the main branch after every block.
    MatD l_rms, l_crms;
    const auto h_rms = branches(rms, tokens, &l_rms);
    const auto h_crms = branches(crms, tokens, &l_crms);
    EXPECT_TRUE(close_rel(l_rms, ref, tol<S>(), &err_rms)) << what << " -> pre_rmsnorm";
    EXPECT_TRUE(close_rel(l_crms, ref, tol<S>(), &err_crms)) << what << " -> pre_crmsnorm";
    ASSERT_EQ(h_rms.size(), std::size_t(c.layers + 1));
    ASSERT_EQ(h_crms.size(), h_rms.size());
    for (std::size_t i = 0; i < h_rms.size(); ++i) {
      const double mean = max_relative_row_mean(h_rms[i]);
      err_mean = std::max(err_mean, mean);
      EXPECT_LE(mean, (std::is_same_v<S, float> ? 1e-5 : 1e-12))
          << what << ": |mean| / rms of the Pre-RMSNorm main branch after block " << int(i) - 1;
      // The compressed branch is the first d-1 coordinates of the zero-mean one.
      EXPECT_TRUE(close_rel(h_crms[i], h_rms[i].leftCols(c.width - 1), tol<S>(), &err_branch))
          << what << ": the Pre-CRMSNorm branch after block " << int(i) - 1;
    }

    // zero_mean_report: ~0 for every converted model.
    if constexpr (std::is_same_v<S, double>) {
      for (const prenorm::ZeroMeanReport& r : {prenorm::zero_mean_report(rms),
                                               prenorm::zero_mean_report(crms)}) {
        err_report = std::max(err_report, r.relative);
        EXPECT_LE(r.relative, 1e-12) << what << ": " << r.tensor << " |mean| " << r.max_abs_mean;
      }
    }

    report(what + " ln->rms logits", err_rms);
    report(what + " ln->crms logits", err_crms);
    report(what + " rms branch |mean|/rms", err_mean);
    report(what + " crms branch vs rms branch", err_branch);
    if constexpr (std::is_same_v<S, double>) report(what + " zero_mean_report relative", err_report);
  }
}

TEST_P(ConvertGpt, PreLnToRmsAndCrmsDouble) { check_pre_ln_conversions<double>(GetParam()); }
TEST_P(ConvertGpt, PreLnToRmsAndCrmsFloat) { check_pre_ln_conversions<float>(GetParam()); }

// KV-cache decoding: prefill 3 tokens, then step one token at a time; every
// step's logits equal the full forward's row (and the Pre-LN source's).
template <class Model>
double cache_error(const Model& m, const Tokens& t, const MatD& expected) {
  const Index prompt = 3;
  prenorm::Session session(m);
  std::vector<int> ids(t.batch * prompt);
  for (Index b = 0; b < t.batch; ++b)
    for (Index p = 0; p < prompt; ++p) ids[b * prompt + p] = t.ids[b * t.seq + p];
  MatD got(t.batch * t.seq, expected.cols());
  const MatD pre = session.prefill(TokenBatch{ids, t.batch, prompt}).template cast<double>();
  for (Index b = 0; b < t.batch; ++b) got.middleRows(b * t.seq, prompt) = pre.middleRows(b * prompt, prompt);
  for (Index p = prompt; p < t.seq; ++p) {
    std::vector<int> next(t.batch);
    for (Index b = 0; b < t.batch; ++b) next[b] = t.ids[b * t.seq + p];
    const MatD step = session.step(next).template cast<double>();
    for (Index b = 0; b < t.batch; ++b) got.row(b * t.seq + p) = step.row(b);
  }
  EXPECT_EQ(session.cache().length, t.seq);
  return rel_err(got, expected);
}

template <class S>
void check_cache(const GptCase& c) {
  const GptConfig config = gpt_config(c);
  auto src = cast_model<S, Gpt>(make_pre_ln_gpt(config, 2000 + c.width));
  const Tokens tokens = random_tokens(config.vocab, 2, 9, 8);
  const MatD ref = logits(src, tokens);
  for (TiedPolicy policy : {TiedPolicy::Untie, TiedPolicy::Keep}) {
    const std::string what = std::string(c.name) + " " + dtype<S>() + " " + policy_name(policy);
    auto rms = prenorm::convert<Arch::PreRMSNorm>(src, ConvertOptions{.tied = policy});
    auto crms = prenorm::convert<Arch::PreCRMSNorm>(src, ConvertOptions{.tied = policy});
    const MatD full_rms = logits(rms, tokens), full_crms = logits(crms, tokens);
    const double e_rms = cache_error(rms, tokens, full_rms);
    const double e_crms = cache_error(crms, tokens, full_crms);
    const double e_ref = std::max(cache_error(rms, tokens, ref), cache_error(crms, tokens, ref));
    EXPECT_LE(e_rms, tol<S>()) << what << ": Pre-RMSNorm cached decoding vs its full forward";
    EXPECT_LE(e_crms, tol<S>()) << what << ": Pre-CRMSNorm cached decoding vs its full forward";
    EXPECT_LE(e_ref, tol<S>()) << what << ": cached decoding vs the Pre-LN source";
    report(what + " kv-cache vs full (rms, crms), vs pre-ln",
           std::max({e_rms, e_crms, e_ref}));
  }
}

TEST_P(ConvertGpt, KvCacheDecodingEqualsFullForwardDouble) { check_cache<double>(GetParam()); }
TEST_P(ConvertGpt, KvCacheDecodingEqualsFullForwardFloat) { check_cache<float>(GetParam()); }

// Round trips: every model along each chain has the source's logits.
template <class S>
void check_round_trips(const GptCase& c) {
  const GptConfig config = gpt_config(c);
  const auto src = cast_model<S, Gpt>(make_pre_ln_gpt(config, 3000 + c.width));
  auto src_m = src;
  const Tokens tokens = random_tokens(config.vocab, 2, 8, 9);
  const MatD ref = logits(src_m, tokens);
  for (TiedPolicy p : {TiedPolicy::Untie, TiedPolicy::Keep}) {
    const std::string what = std::string(c.name) + " " + dtype<S>() + " " + policy_name(p);
    double worst = 0;
    {  // Pre-LN -> Pre-CRMSNorm -> Pre-LN
      auto a = convert_checked<Arch::PreCRMSNorm>(src, p, tokens, ref, worst, what + " ln");
      auto b = convert_checked<Arch::PreLN>(a, p, tokens, ref, worst, what + " ln->crms");
      // The round trip's LayerNorms are the identity affine; the model stays Pre-LN-shaped.
      for (const auto& blk : b.blocks) {
        EXPECT_EQ(blk.norm1_gamma, Vector<S>::Ones(c.width));
        EXPECT_EQ(blk.norm2_beta, Vector<S>::Zero(c.width));
      }
      EXPECT_EQ(b.config.tied, c.tied && p == TiedPolicy::Keep);
    }
    {  // Pre-LN -> Pre-RMSNorm -> Pre-LN
      auto a = convert_checked<Arch::PreRMSNorm>(src, p, tokens, ref, worst, what + " ln");
      convert_checked<Arch::PreLN>(a, p, tokens, ref, worst, what + " ln->rms");
    }
    {  // Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm -> Pre-RMSNorm -> Pre-LN, and on to Pre-CRMSNorm
      auto a = convert_checked<Arch::PreRMSNorm>(src, p, tokens, ref, worst, what + " ln");
      auto b = convert_checked<Arch::PreCRMSNorm>(a, p, tokens, ref, worst, what + " ln->rms");
      auto d = convert_checked<Arch::PreRMSNorm>(b, p, tokens, ref, worst, what + " ln->rms->crms");
      auto e = convert_checked<Arch::PreLN>(d, p, tokens, ref, worst, what + " ln->rms->crms->rms");
      convert_checked<Arch::PreCRMSNorm>(e, p, tokens, ref, worst, what + " ...->ln");
    }
    report(what + " round trips", worst);
  }
}

TEST_P(ConvertGpt, RoundTripsKeepLogitsDouble) { check_round_trips<double>(GetParam()); }
TEST_P(ConvertGpt, RoundTripsKeepLogitsFloat) { check_round_trips<float>(GetParam()); }

// A random Pre-CRMSNorm model (any one is exactly equivalent to a Pre-LN and a
// Pre-RMSNorm model) converted directly to Pre-LN and to Pre-RMSNorm, and the
// results converted on around the cycle.
template <class S>
void check_from_random_crms(const GptCase& c) {
  GptConfig config = gpt_config(c);
  Gpt<Arch::PreCRMSNorm, double> crms_d(config);
  crms_d.init_random(4000 + c.width, 0.5, /*random_affine=*/true);
  if (crms_d.tied_affine()) {  // a far-from-identity tied affine, which init_random keeps near 1
    Rng rng(5);
    fill_gamma(crms_d.tied_gamma, rng);
    rng.fill(crms_d.tied_beta, 0.5);
  }
  auto crms = cast_model<S, Gpt>(crms_d);
  const Tokens tokens = random_tokens(config.vocab, 2, 8, 10);
  const MatD ref = logits(crms, tokens);
  for (TiedPolicy p : {TiedPolicy::Untie, TiedPolicy::Keep}) {
    const std::string what = std::string(c.name) + " " + dtype<S>() + " " + policy_name(p);
    double worst = 0;
    auto ln = convert_checked<Arch::PreLN>(crms, p, tokens, ref, worst, what + " crms");
    auto rms = convert_checked<Arch::PreRMSNorm>(crms, p, tokens, ref, worst, what + " crms");
    auto ln2 = convert_checked<Arch::PreLN>(rms, p, tokens, ref, worst, what + " crms->rms");
    convert_checked<Arch::PreCRMSNorm>(ln, p, tokens, ref, worst, what + " crms->ln");
    convert_checked<Arch::PreCRMSNorm>(rms, p, tokens, ref, worst, what + " crms->rms");
    convert_checked<Arch::PreRMSNorm>(ln2, p, tokens, ref, worst, what + " crms->rms->ln");
    if constexpr (std::is_same_v<S, double>) {
      const auto r = prenorm::zero_mean_report(rms);
      EXPECT_LE(r.relative, 1e-12) << what << ": " << r.tensor;
    }
    report(what + " random crms -> ln / rms and on", worst);
  }
}

TEST_P(ConvertGpt, RandomCrmsToLnAndRmsDouble) { check_from_random_crms<double>(GetParam()); }
TEST_P(ConvertGpt, RandomCrmsToLnAndRmsFloat) { check_from_random_crms<float>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, ConvertGpt, ::testing::ValuesIn(kGptCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// Pre-RMSNorm sources: zero-mean writers are required (or recentered)
// ===========================================================================

// A Pre-RMSNorm model (untied) whose writers are all exactly zero-mean.
Gpt<Arch::PreRMSNorm, double> zero_mean_rms_gpt(bool tied) {
  GptConfig config = gpt_config({"", 7, 1, 0, 2, tied, false, 1e-5});
  Gpt<Arch::PreRMSNorm, double> m(config);
  m.init_random(11, 0.5, true);
  m.token_embedding.table.colwise() -= m.token_embedding.table.rowwise().mean();
  m.position_embedding.table.colwise() -= m.position_embedding.table.rowwise().mean();
  for (auto& b : m.blocks)
    for (auto* lin : {&b.attn.out, &b.mlp.proj}) {
      lin->weight.rowwise() -= lin->weight.colwise().mean();
      lin->bias.array() -= lin->bias.mean();
    }
  EXPECT_LE(prenorm::zero_mean_report(m).relative, 1e-14);
  return m;
}

TEST(ConvertGptErrors, NonZeroMeanRmsSourceIsRefusedByNameAndRecentered) {
  const Tokens tokens = random_tokens(61, 2, 8, 12);
  // A freshly initialised Pre-RMSNorm model with a shifted, untied embedding.
  {
    auto m = zero_mean_rms_gpt(false);
    m.token_embedding.table.array() += 5.0;
    const auto r = prenorm::zero_mean_report(m);
    EXPECT_EQ(r.tensor, "token_embedding.table");
    EXPECT_GT(r.relative, 0.5);
    const std::vector<std::string> needles = {"prenorm::convert", "token_embedding.table",
                                              "not zero-mean", "recenter"};
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m); }, needles);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); }, needles);
    // Pre-CRMSNorm is reachable with recenter; the result is an exact converted
    // model, equal to recentering first (-> Pre-LN) and converting on.
    const ConvertOptions recenter{.recenter = true};
    auto ln = prenorm::convert<Arch::PreLN>(m, recenter);
    auto crms = prenorm::convert<Arch::PreCRMSNorm>(m, recenter);
    auto crms_via_ln = prenorm::convert<Arch::PreCRMSNorm>(ln);
    const MatD l_ln = logits(ln, tokens);
    EXPECT_TRUE(close_rel(logits(crms, tokens), l_ln, 1e-12));
    EXPECT_TRUE(close_rel(logits(crms_via_ln, tokens), l_ln, 1e-12));
    EXPECT_LE(prenorm::zero_mean_report(crms).relative, 1e-12);
    // Recentering changed the function (RMSNorm is not shift-invariant).
    EXPECT_GT(rel_err(logits(m, tokens), l_ln), 1e-3);
  }
  // A non-zero-mean output projection deep inside: the message names it.
  {
    auto m = zero_mean_rms_gpt(true);
    m.blocks[1].mlp.proj.weight.col(3).array() += 0.3;
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m); },
                 {"blocks[1].mlp.proj.weight", "not zero-mean"});
    m.blocks[1].mlp.proj.weight.col(3).array() -= 0.3;
    m.blocks[0].attn.out.bias.array() += 1.0;  // the bias, not the weight, is at fault
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"blocks[0].attn.out.bias", "not zero-mean"});
    m.blocks[0].attn.out.bias.array() -= 1.0;
    m.position_embedding.table.row(2).array() += 1.0;
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m, {.tied = TiedPolicy::Keep}); },
                 {"position_embedding.table", "not zero-mean"});
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreLN>(m, {.recenter = true}));
    // A tied Pre-RMSNorm model's table is the original one, recentered per
    // token: its mean is no error.
    m.position_embedding.table.row(2).array() -= 1.0;
    m.token_embedding.table.array() += 5.0;
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreLN>(m));
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreCRMSNorm>(m));
  }
  // The tolerance: a 1e-7 relative mean passes by default, and fails at 1e-9.
  {
    auto m = zero_mean_rms_gpt(false);
    const double rms = std::sqrt(m.position_embedding.table.squaredNorm() /
                                 double(m.position_embedding.table.size()));
    m.position_embedding.table.array() += 1e-7 * rms;
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreCRMSNorm>(m));
    expect_error(
        [&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m, {.zero_mean_tolerance = 1e-9}); },
        {"position_embedding.table"});
  }
  // A Pre-RMSNorm -> Pre-CRMSNorm -> ... source is never checked (compressed
  // writers are zero-mean by construction), and Pre-RMSNorm -> Pre-RMSNorm is
  // not a conversion. A fresh init_random Pre-RMSNorm model refuses both targets.
  {
    Gpt<Arch::PreRMSNorm, double> fresh(gpt_config({"", 5, 1, 0, 1, false, false, 1e-5}));
    fresh.init_random(3);
    fresh.token_embedding.table.array() += 5.0;
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(fresh); }, {"not zero-mean"});
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreLN>(fresh, {.recenter = true}));
  }
}

// ===========================================================================
// Bad shapes and widths
// ===========================================================================

TEST(ConvertGptErrors, WrongTensorShapesAreNamed) {
  const GptConfig config = gpt_config({"", 7, 1, 0, 2, false, true, 1e-5});
  const auto good = make_pre_ln_gpt(config, 13);
  {
    auto m = good;
    m.blocks[1].attn.qkv.weight.resize(3 * 7, 6);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); },
                 {"prenorm::convert", "blocks[1].attn.qkv.weight", "(21 x 6)", "(21 x 7)"});
  }
  {
    auto m = good;
    m.blocks[0].mlp.proj.bias.resize(5);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"blocks[0].mlp.proj.bias"});
  }
  {
    auto m = good;
    m.final_gamma.resize(6);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); }, {"final_gamma"});
  }
  {
    auto m = good;
    m.blocks[1].norm2_beta.resize(8);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"blocks[1].norm2_beta"});
  }
  {
    auto m = good;
    m.head.weight.resize(61, 6);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"head.weight"});
  }
  {
    auto m = good;
    m.token_embedding.table.resize(60, 7);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"token_embedding"});
  }
  {
    auto m = good;
    m.blocks.pop_back();
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"blocks has 1 blocks"});
  }
  {  // A Pre-CRMSNorm model with a width-d (uncompressed) position table.
    auto m = prenorm::convert<Arch::PreCRMSNorm>(good);
    m.position_embedding.table.resize(config.context, 7);
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m); },
                 {"position_embedding", "expected (16 x 6)"});
  }
  {  // A Pre-RMSNorm model whose blocks kept a Pre-LN affine.
    auto m = prenorm::convert<Arch::PreRMSNorm>(good);
    m.blocks[0].norm1_gamma.setOnes(7);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"blocks[0].norm1_gamma", "no norm affine"});
  }
}

// CRMSNorm needs d >= 2. Width 1 is refused by GptConfig when a model is built,
// and by the converter's validate() when the config is changed afterwards.
TEST(ConvertGptErrors, WidthBelowTwoIsRefused) {
  GptConfig config = gpt_config({"", 1, 1, 0, 1, true, false, 1e-5});
  expect_error([&] { Gpt<Arch::PreLN, double> m(config); }, {"prenorm::Gpt", "width is 1", ">= 2"});
  Gpt<Arch::PreLN, double> m(gpt_config({"", 2, 1, 0, 1, true, false, 1e-5}));
  m.config.width = 1;
  expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
               {"prenorm::convert", "width is 1", ">= 2"});
  expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"width is 1"});
  Gpt<Arch::PreCRMSNorm, double> c(gpt_config({"", 2, 1, 0, 1, false, false, 1e-5}));
  c.config.width = 1;
  expect_error([&] { (void)prenorm::convert<Arch::PreLN>(c); }, {"width is 1"});
}

// ===========================================================================
// Property test: 20 seeds of random configurations and conversion chains
// ===========================================================================

class ConvertGptProperty : public ::testing::TestWithParam<int> {};

// Three random conversions out of Pre-LN; each model must keep the logits.
template <class S>
double random_chain(Gpt<Arch::PreLN, S>& src, const Tokens& tokens, TiedPolicy p, Rng& rng,
                    std::string& path) {
  return random_conversion_chain<S>(
      src, 3, rng,
      [p]<Arch To>(const auto& model) { return prenorm::convert<To>(model, ConvertOptions{.tied = p}); },
      [&tokens](auto& model) { return logits(model, tokens); }, path);
}

TEST_P(ConvertGptProperty, RandomConfigsAndChainsKeepLogits) {
  const int seed = GetParam();
  Rng rng(std::uint64_t(seed) * 7919 + 1);
  constexpr Index widths[] = {2, 3, 5, 7, 11, 13, 16, 31, 64, 97};
  GptCase c{"", widths[rng.uniform(0, 9)], 1, 0, rng.uniform(0, 4), rng.coin(), rng.coin(),
            rng.coin() ? 1e-5 : 1e-2};
  // Heads: 1, all, or decoupled head_dim.
  switch (rng.uniform(0, 2)) {
    case 0: c.heads = 1; break;
    case 1: c.heads = c.width; break;
    default: c.heads = rng.uniform(1, 3), c.head_dim = rng.uniform(1, 6); break;
  }
  const TiedPolicy policy = rng.coin() ? TiedPolicy::Keep : TiedPolicy::Untie;
  const GptConfig config = gpt_config(c);
  auto src_d = make_pre_ln_gpt(config, 50000 + seed);
  auto src_f = cast_model<float, Gpt>(src_d);
  const Tokens tokens = random_tokens(config.vocab, 2, rng.uniform(1, 10), 60000 + seed);
  std::string path_d = "pre_ln", path_f = "pre_ln";
  Rng rng_d(seed), rng_f(seed);
  const double err_d = random_chain(src_d, tokens, policy, rng_d, path_d);
  const double err_f = random_chain(src_f, tokens, policy, rng_f, path_f);
  char desc[200];
  std::snprintf(desc, sizeof desc, "seed %2d: d %3ld heads %ld hd %ld L %ld %s%s eps %g %s seq %ld",
                seed, long(c.width), long(c.heads), long(prenorm::TransformerConfig(config).head_size()), long(c.layers),
                c.tied ? "tied" : "untied", c.head_bias ? "+bias" : "", c.epsilon,
                policy_name(policy).c_str(), long(tokens.seq));
  report(std::string(desc) + " double", err_d);
  report(std::string(desc) + " float", err_f);
  std::printf("              path: %s\n", path_d.c_str());
  RecordProperty("max_error_double", std::to_string(err_d));
  RecordProperty("max_error_float", std::to_string(err_f));
}

INSTANTIATE_TEST_SUITE_P(Seeds, ConvertGptProperty, ::testing::Range(0, 20));

// ===========================================================================
// Transforms against their definitions, and the adjoints against the transforms
// ===========================================================================

MatD random_mat(Rng& rng, Index rows, Index cols, double mean = 0.0) {
  MatD m(rows, cols);
  rng.fill(m, 1.0, mean);
  return m;
}
VecD random_vec(Rng& rng, Index n, double mean = 0.0) {
  VecD v(n);
  rng.fill(v, 1.0, mean);
  return v;
}
double dot(const MatD& a, const MatD& b) { return (a.array() * b.array()).sum(); }
double dot(const VecD& a, const VecD& b) { return a.dot(b); }

class Transforms : public ::testing::TestWithParam<int> {};  // the width d

TEST_P(Transforms, MatchTheirDefinitions) {
  const Index d = GetParam(), out = 4, n = 3;
  Rng rng(100 + d);
  // fold_affine: W diag(gamma), b + W beta, with and without a bias.
  {
    const MatD W = random_mat(rng, out, d);
    const VecD b = random_vec(rng, out), g = random_vec(rng, d, 1.0), be = random_vec(rng, d);
    MatD w1 = W;
    VecD b1 = b;
    conv::fold_affine(w1, b1, g, be);
    double err = 0;
    for (Index i = 0; i < out; ++i) {
      double acc = b(i);
      for (Index j = 0; j < d; ++j) {
        err = std::max(err, std::abs(w1(i, j) - W(i, j) * g(j)));
        acc += W(i, j) * be(j);
      }
      err = std::max(err, std::abs(b1(i) - acc));
    }
    EXPECT_LE(err, 1e-13);
    MatD w2 = W;
    VecD none;
    conv::fold_affine(w2, none, g, be);  // a bias is created
    EXPECT_TRUE(close_rel(none, VecD(W * be), 1e-15));
    MatD w3 = W;
    VecD b3 = b;
    conv::fold_affine(w3, b3, g, VecD());  // gamma only: the bias is untouched
    EXPECT_EQ(b3, b);
    EXPECT_TRUE(close_rel(w3, w1, 0.0));
  }
  // Recentering: zero-mean rows (tables) or columns and bias (writers); the
  // difference is a multiple of 1 per row / column.
  {
    const MatD T = random_mat(rng, n, d, 5.0);
    MatD t = T;
    conv::recenter_rows(t);
    EXPECT_LE(conv::max_abs_row_mean(t), 1e-14);
    EXPECT_LE(conv::max_abs_row_mean(T - t), 5.0 + 3.0);  // sanity
    for (Index r = 0; r < n; ++r)
      EXPECT_LE(((T - t).row(r).array() - (T - t)(r, 0)).abs().maxCoeff(), 1e-13);
    const MatD W = random_mat(rng, d, n, 2.0);
    const VecD b = random_vec(rng, d, -3.0);
    MatD w = W;
    VecD bb = b;
    conv::recenter_output(w, bb);
    EXPECT_LE(conv::max_abs_output_mean(w, bb), 1e-14);
    EXPECT_GT(conv::max_abs_output_mean(W, b), 1.0);
    for (Index c = 0; c < n; ++c)
      EXPECT_LE(((W - w).col(c).array() - (W - w)(0, c)).abs().maxCoeff(), 1e-13);
    // A writer's output for any input is zero-mean.
    const VecD x = random_vec(rng, n);
    EXPECT_LE(std::abs((w * x + bb).mean()), 1e-14);
  }
  if (d < 2) return;
  // Compression of zero-mean vectors, and decompression, are inverses; a
  // compressed reader reads x~ exactly as the full one reads x.
  {
    MatD T = random_mat(rng, n, d, 1.0);
    conv::recenter_rows(T);
    MatD t = T;
    conv::compress_table(t);
    ASSERT_EQ(t.cols(), d - 1);
    EXPECT_EQ(t, T.leftCols(d - 1));
    conv::decompress_table(t);
    EXPECT_TRUE(close_rel(t, T, 1e-12));

    MatD W = random_mat(rng, d, n, 2.0);
    VecD b = random_vec(rng, d, 1.0);
    conv::recenter_output(W, b);
    MatD w = W;
    VecD bb = b;
    conv::compress_output(w, bb);
    ASSERT_EQ(w.rows(), d - 1);
    ASSERT_EQ(bb.size(), d - 1);
    conv::decompress_output(w, bb);
    // The rebuilt row is -(sum of d-1 others): rounding grows with d.
    EXPECT_TRUE(close_rel(w, W, 1e-12));
    EXPECT_TRUE(close_rel(bb, b, 1e-12));

    const MatD R = random_mat(rng, out, d);
    MatD r = R;
    conv::compress_input(r);
    ASSERT_EQ(r.cols(), d - 1);
    // R x = R'' x~ for every zero-mean x (the rows of T).
    EXPECT_TRUE(close_rel(MatD(T.leftCols(d - 1) * r.transpose()), MatD(T * R.transpose()), 1e-13));
    conv::decompress_input(r);
    ASSERT_EQ(r.cols(), d);
    EXPECT_EQ(r.col(d - 1), VecD::Zero(out));
    EXPECT_TRUE(close_rel(MatD(T * r.transpose()), MatD(T * R.transpose()), 1e-13));
  }
}

// <T(x + delta) - T(x), g> = <delta, T*(g)> for every linear transform with an adjoint.
TEST_P(Transforms, LinearAdjointsAreTransposes) {
  const Index d = GetParam(), n = 5;
  Rng rng(200 + d);
  double worst = 0;
  const auto expect_equal = [&](double lhs, double rhs, double scale, const char* what) {
    const double err = std::abs(lhs - rhs) / scale;
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-13) << what << ": <T(x+delta) - T(x), g> " << lhs << " vs <delta, T*g> "
                          << rhs;
  };
  {  // recenter_rows: table (n, d)
    const MatD x = random_mat(rng, n, d, 3.0), delta = random_mat(rng, n, d),
               g = random_mat(rng, n, d, -1.0);
    MatD a = x + delta, b = x, gt = g;
    conv::recenter_rows(a);
    conv::recenter_rows(b);
    conv::recenter_rows_adjoint(gt);
    expect_equal(dot(MatD(a - b), g), dot(delta, gt), delta.norm() * g.norm(), "recenter_rows");
  }
  {  // recenter_output: W (d, n), b (d)
    const MatD x = random_mat(rng, d, n, 3.0), delta = random_mat(rng, d, n),
               g = random_mat(rng, d, n, 1.0);
    const VecD xb = random_vec(rng, d, 2.0), db = random_vec(rng, d), gb = random_vec(rng, d, 1.0);
    MatD a = x + delta, b = x, gt = g;
    VecD ab = xb + db, bb = xb, gbt = gb;
    conv::recenter_output(a, ab);
    conv::recenter_output(b, bb);
    conv::recenter_output_adjoint(gt, gbt);
    expect_equal(dot(MatD(a - b), g) + dot(VecD(ab - bb), gb), dot(delta, gt) + dot(db, gbt),
                 std::sqrt(delta.squaredNorm() + db.squaredNorm()) *
                     std::sqrt(g.squaredNorm() + gb.squaredNorm()),
                 "recenter_output");
  }
  if (d < 2) return;
  {  // compress_table: (n, d) -> (n, d-1)
    const MatD x = random_mat(rng, n, d), delta = random_mat(rng, n, d),
               g = random_mat(rng, n, d - 1);
    MatD a = x + delta, b = x, gt = g;
    conv::compress_table(a);
    conv::compress_table(b);
    conv::compress_table_adjoint(gt);
    ASSERT_EQ(gt.cols(), d);
    expect_equal(dot(MatD(a - b), g), dot(delta, gt), delta.norm() * g.norm(), "compress_table");
  }
  {  // compress_output: W (d, n) -> (d-1, n), b (d) -> (d-1)
    const MatD x = random_mat(rng, d, n), delta = random_mat(rng, d, n),
               g = random_mat(rng, d - 1, n);
    const VecD xb = random_vec(rng, d), db = random_vec(rng, d), gb = random_vec(rng, d - 1);
    MatD a = x + delta, b = x, gt = g;
    VecD ab = xb + db, bb = xb, gbt = gb;
    conv::compress_output(a, ab);
    conv::compress_output(b, bb);
    conv::compress_output_adjoint(gt, gbt);
    ASSERT_EQ(gt.rows(), d);
    ASSERT_EQ(gbt.size(), d);
    expect_equal(dot(MatD(a - b), g) + dot(VecD(ab - bb), gb), dot(delta, gt) + dot(db, gbt),
                 std::sqrt(delta.squaredNorm() + db.squaredNorm()) *
                     std::sqrt(g.squaredNorm() + gb.squaredNorm()),
                 "compress_output");
  }
  {  // compress_input: W (n, d) -> (n, d-1)
    const MatD x = random_mat(rng, n, d), delta = random_mat(rng, n, d),
               g = random_mat(rng, n, d - 1);
    MatD a = x + delta, b = x, gt = g;
    conv::compress_input(a);
    conv::compress_input(b);
    conv::compress_input_adjoint(gt);
    ASSERT_EQ(gt.cols(), d);
    expect_equal(dot(MatD(a - b), g), dot(delta, gt), delta.norm() * g.norm() * std::sqrt(d),
                 "compress_input");
  }
  report("adjoints of the linear transforms, d " + std::to_string(d), worst);
}

// fold_affine is bilinear in (W, gamma) and (W, beta): central differences in
// every parameter at once against the adjoint (product rule).
TEST_P(Transforms, FoldAffineAdjointMatchesFiniteDifferences) {
  const Index d = GetParam(), out = 6;
  Rng rng(300 + d);
  double worst = 0;
  for (bool with_bias : {true, false}) {
    const MatD W = random_mat(rng, out, d), dW = random_mat(rng, out, d);
    const VecD b = with_bias ? random_vec(rng, out) : VecD(), db = with_bias ? random_vec(rng, out) : VecD();
    const VecD gamma = random_vec(rng, d, 1.0), dgamma = random_vec(rng, d);
    const VecD beta = random_vec(rng, d), dbeta = random_vec(rng, d);
    const MatD G = random_mat(rng, out, d);  // dL/dW'
    const VecD gb = random_vec(rng, out);    // dL/db' (b' always exists: beta is given)
    // L(theta) = <W', G> + <b', gb>.
    const auto loss = [&](double h) {
      MatD w = W + h * dW;
      VecD bb = with_bias ? VecD(b + h * db) : VecD();
      conv::fold_affine(w, bb, VecD(gamma + h * dgamma), VecD(beta + h * dbeta));
      return dot(w, G) + dot(bb, gb);
    };
    const double h = 1e-3;
    const double fd = (loss(h) - loss(-h)) / (2 * h);
    MatD gW = G;
    VecD g_gamma = VecD::Zero(d), g_beta = VecD::Zero(d);
    conv::fold_affine_adjoint(gW, gb, W, gamma, beta, g_gamma, g_beta);
    const double analytic =
        dot(dW, gW) + (with_bias ? dot(db, gb) : 0.0) + dot(dgamma, g_gamma) + dot(dbeta, g_beta);
    const double err = std::abs(fd - analytic) / std::max(std::abs(analytic), 1e-300);
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-8) << "fold_affine (bias " << with_bias << "): finite difference " << fd
                         << " vs adjoint " << analytic;
    // The gradients also accumulate (added to grad_gamma, grad_beta).
    VecD g2 = VecD::Ones(d), b2 = VecD::Ones(d);
    MatD gW2 = G;
    conv::fold_affine_adjoint(gW2, gb, W, gamma, beta, g2, b2);
    EXPECT_TRUE(close_rel(VecD(g2 - VecD::Ones(d)), g_gamma, 1e-14));
    EXPECT_TRUE(close_rel(VecD(b2 - VecD::Ones(d)), g_beta, 1e-14));
  }
  report("fold_affine adjoint vs central differences, d " + std::to_string(d), worst);
}

// The adjoints chained as the converter chains the steps: the gradient of
// <convert(theta), G> for a Pre-LN -> Pre-CRMSNorm reader (fold, compress_input)
// and writer (recenter, compress_output) against central differences.
TEST_P(Transforms, ChainedAdjointsMatchFiniteDifferences) {
  const Index d = GetParam(), out = 4, in = 3;
  if (d < 2) GTEST_SKIP();
  Rng rng(400 + d);
  // Reader.
  {
    const MatD W = random_mat(rng, out, d), dW = random_mat(rng, out, d);
    const VecD b = random_vec(rng, out), db = random_vec(rng, out);
    const VecD gamma = random_vec(rng, d, 1.0), dgamma = random_vec(rng, d);
    const VecD beta = random_vec(rng, d), dbeta = random_vec(rng, d);
    const MatD G = random_mat(rng, out, d - 1);
    const VecD gb = random_vec(rng, out);
    const auto loss = [&](double h) {
      MatD w = W + h * dW;
      VecD bb = b + h * db;
      conv::fold_affine(w, bb, VecD(gamma + h * dgamma), VecD(beta + h * dbeta));
      conv::compress_input(w);
      return dot(w, G) + dot(bb, gb);
    };
    const double h = 1e-3, fd = (loss(h) - loss(-h)) / (2 * h);
    MatD gW = G;
    conv::compress_input_adjoint(gW);
    VecD g_gamma = VecD::Zero(d), g_beta = VecD::Zero(d);
    conv::fold_affine_adjoint(gW, gb, W, gamma, beta, g_gamma, g_beta);
    const double analytic = dot(dW, gW) + dot(db, gb) + dot(dgamma, g_gamma) + dot(dbeta, g_beta);
    EXPECT_LE(std::abs(fd - analytic) / std::abs(analytic), 1e-8) << fd << " vs " << analytic;
  }
  // Writer.
  {
    const MatD W = random_mat(rng, d, in, 1.0), dW = random_mat(rng, d, in);
    const VecD b = random_vec(rng, d, 2.0), db = random_vec(rng, d);
    const MatD G = random_mat(rng, d - 1, in);
    const VecD gb = random_vec(rng, d - 1);
    const auto loss = [&](double h) {
      MatD w = W + h * dW;
      VecD bb = b + h * db;
      conv::recenter_output(w, bb);
      conv::compress_output(w, bb);
      return dot(w, G) + dot(bb, gb);
    };
    const double h = 1e-3, fd = (loss(h) - loss(-h)) / (2 * h);
    MatD gW = G;
    VecD gbb = gb;
    conv::compress_output_adjoint(gW, gbb);
    conv::recenter_output_adjoint(gW, gbb);
    const double analytic = dot(dW, gW) + dot(db, gbb);
    EXPECT_LE(std::abs(fd - analytic) / std::abs(analytic), 1e-8) << fd << " vs " << analytic;
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, Transforms, ::testing::Values(1, 2, 5, 7, 64, 97, 192));


// ===========================================================================
// Streaming conversion (convert/streaming.hpp)
// ===========================================================================

namespace fs = std::filesystem;
namespace io = prenorm::io;

// The names of the files in `dir`, sorted.
std::vector<std::string> listing(const TempDir& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path())) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The checkpoint in `file` converted to `to` by convert_gpt_streaming, one
// file at `out` or shards of `shard` bytes beside the index `out`.
std::vector<fs::path> stream_convert(const io::SafetensorsFile& file, Arch to, io::Dtype dtype,
                                     TiedPolicy policy, const fs::path& out, std::uint64_t shard,
                                     Index rows, const io::PrenormSaveOptions& save) {
  const std::optional<io::OpenedGpt> opened = io::open_gpt_checkpoint(file);
  if (!opened) throw std::runtime_error(file.path().string() + ": not opened for streaming");
  return std::visit(
      [&](const auto& source) {
        return io::convert_gpt_streaming(
            source, to, dtype,
            [&](std::uint64_t, std::size_t) { return io::StreamOutput{out, shard > 0, shard, {}}; },
            ConvertOptions{.tied = policy}, save, rows);
      },
      opened->checkpoint);
}

// What prenorm-convert wrote before streaming: the whole model loaded,
// converted and saved (shards as write_sharded splits them).
std::vector<fs::path> whole_convert(const io::SafetensorsFile& file, Arch to, io::Dtype dtype,
                                    TiedPolicy policy, const fs::path& out, std::uint64_t shard,
                                    const io::PrenormSaveOptions& save) {
  const io::LoadedModel<double> loaded = io::load_any_model<double>(file);
  io::SafetensorsWriter writer = std::visit(
      [&](const auto& model) {
        const auto save_as = [&]<Arch T>() {
          if constexpr (std::decay_t<decltype(model)>::arch == T) return io::save_prenorm(model, dtype, save);
          else return io::save_prenorm(prenorm::convert<T>(model, ConvertOptions{.tied = policy}), dtype, save);
        };
        if (to == Arch::PreLN) return save_as.template operator()<Arch::PreLN>();
        if (to == Arch::PreRMSNorm) return save_as.template operator()<Arch::PreRMSNorm>();
        return save_as.template operator()<Arch::PreCRMSNorm>();
      },
      loaded.model);
  if (shard == 0) {
    writer.write(out);
    return {out};
  }
  return io::write_sharded(std::move(writer).split(shard), out);
}

// Tiny checkpoints of each kind the streaming path reads, in `dtype`.
struct StreamSources {
  fs::path gpt2, pre_ln, rms, crms;
};
StreamSources write_stream_sources(const TempDir& dir, io::Dtype dtype) {
  GptConfig tied = gpt_config({"", 7, 1, 0, 2, true, false, 1e-5});
  const auto ln_tied = make_pre_ln_gpt(tied, 71);
  StreamSources s;
  fs::create_directories(dir / "gpt2");
  s.gpt2 = dir / "gpt2/model.safetensors";
  io::save_hf_gpt2(ln_tied, dtype).write(s.gpt2);
  std::ofstream(dir / "gpt2/config.json") << io::gpt2_config_to_json(ln_tied.config).dump();
  // Untied with a head bias; converted (zero-mean) Pre-RMSNorm and Pre-CRMSNorm ones.
  const auto ln = make_pre_ln_gpt(gpt_config({"", 7, 1, 0, 2, false, true, 1e-5}), 72);
  s.pre_ln = dir / "pre_ln.safetensors";
  io::save_prenorm(ln, s.pre_ln, dtype);
  // F32 weights keep the Pre-RMSNorm writers zero-mean to 1e-7, within the
  // converter's check; a 16-bit source stores Pre-RMSNorm weights in F32.
  const io::Dtype wide = dtype == io::Dtype::F64 ? dtype : io::Dtype::F32;
  s.rms = dir / "rms.safetensors";
  io::save_prenorm(prenorm::convert<Arch::PreRMSNorm>(ln), s.rms, wide,
                   {.converted_from = Arch::PreLN});
  s.crms = dir / "crms.safetensors";
  io::save_prenorm(prenorm::convert<Arch::PreCRMSNorm>(ln_tied, {.tied = TiedPolicy::Keep}), s.crms,
                   dtype, {.converted_from = Arch::PreLN});
  return s;
}

TEST(StreamingConversion, IsBitwiseTheWholeModelConversion) {
  // Every source, input dtype and target; the tied policy where a tied head
  // changes architecture (the GPT-2 source); shards once per source and target.
  int compared = 0;
  for (io::Dtype dtype : {io::Dtype::F32, io::Dtype::F16, io::Dtype::BF16}) {
    const TempDir sources;
    const StreamSources s = write_stream_sources(sources, dtype);
    for (const fs::path& input : {s.gpt2, s.pre_ln, s.rms, s.crms}) {
      const io::SafetensorsFile file(input);
      for (Arch to : kNormArchs)
        for (TiedPolicy policy : {TiedPolicy::Untie, TiedPolicy::Keep})
          for (std::uint64_t shard : {std::uint64_t(0), std::uint64_t(1000)}) {
            if (policy == TiedPolicy::Keep && input != s.gpt2) continue;
            if (shard != 0 && (dtype != io::Dtype::F16 || policy == TiedPolicy::Keep)) continue;
            const std::string what = input.filename().string() + " " +
                                     std::string(io::dtype_name(dtype)) + " -> " +
                                     std::string(prenorm::arch_name(to)) + " " +
                                     policy_name(policy) + (shard ? " sharded" : "");
            const io::PrenormSaveOptions save{.converted_from = Arch::PreLN};
            const TempDir a, b;
            const std::string name = shard ? "model.safetensors.index.json" : "model.safetensors";
            // Chunks of 7 rows: the vocabulary of 61 in 9 chunks, the last one short.
            const std::vector<fs::path> streamed =
                stream_convert(file, to, dtype, policy, a / name, shard, 7, save);
            const std::vector<fs::path> whole = whole_convert(file, to, dtype, policy, b / name, shard, save);
            ASSERT_EQ(listing(a), listing(b)) << what;
            ASSERT_EQ(streamed.size(), whole.size()) << what;
            if (shard) {
              EXPECT_GT(streamed.size(), 2u) << what << ": expected several shards";
            }
            for (const std::string& f : listing(a))
              EXPECT_TRUE(file_bytes(a / f) == file_bytes(b / f)) << what << ": " << f << " differs";
            ++compared;
          }
    }
  }
  EXPECT_EQ(compared, 3 * 4 * 3 + 3 * 3 + 4 * 3);
}

TEST(StreamingConversion, AFailureMidwayLeavesNothing) {
  // A Pre-RMSNorm source whose second block's writer is not zero-mean: the
  // conversion to Pre-CRMSNorm refuses it after writing the first block.
  TempDir dir;
  auto rms = prenorm::convert<Arch::PreRMSNorm>(
      make_pre_ln_gpt(gpt_config({"", 7, 1, 0, 2, false, false, 1e-5}), 81));
  rms.blocks[1].mlp.proj.bias.array() += 1.0;
  io::save_prenorm(rms, dir / "rms.safetensors", io::Dtype::F32, {.converted_from = Arch::PreLN});
  const io::SafetensorsFile file(dir / "rms.safetensors");
  for (std::uint64_t shard : {std::uint64_t(0), std::uint64_t(500)}) {
    const TempDir out;
    const fs::path target = out / (shard ? "m.safetensors.index.json" : "m.safetensors");
    expect_error([&] { stream_convert(file, Arch::PreCRMSNorm, io::Dtype::F32, TiedPolicy::Untie,
                                      target, shard, 7, {}); },
                 {"blocks[1].mlp.proj.bias", "not zero-mean"});
    EXPECT_TRUE(listing(out).empty()) << "left behind: " << (listing(out).empty() ? "" : listing(out)[0]);
  }
}

TEST(StreamingConversion, ProbeLogitsEqualTheForward) {
  // probe_logits runs one block at a time and the head in chunks of rows.
  TempDir dir;
  const StreamSources s = write_stream_sources(dir, io::Dtype::F32);
  const std::vector<int> ids = {3, 60, 17, 3, 42};
  for (const fs::path& input : {s.gpt2, s.pre_ln, s.rms, s.crms}) {
    const io::SafetensorsFile file(input);
    const MatD expected = std::visit(
        [&](const auto& m) -> MatD {
          if constexpr (requires { m.config.vocab; }) return m.forward(TokenBatch{ids, 1, 5});
          else throw std::logic_error("a GPT was written");
        },
        io::load_any_model<double>(file).model);
    const MatD actual = std::visit([&](const auto& m) { return io::probe_logits(m, ids, 7); },
                                   io::open_gpt_checkpoint(file)->checkpoint);
    double worst = 0;
    EXPECT_TRUE(close_rel(actual, expected, 1e-12, &worst)) << input.filename();
    report("probe_logits vs forward, " + input.filename().string(), worst);
  }
}

}  // namespace
