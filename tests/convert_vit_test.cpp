// Tests of the converter (include/prenorm/convert/) on ViT models (GPT models,
// the plan, the transforms and adjoints: convert_test.cpp).
//
// Source models are random Pre-LN ViTs shaped like trained ones: widths odd
// and prime (2, 5, 7, 64, 97, 192), 0-4 layers, gamma N(1, 0.5) with some
// negative entries, beta and biases != 0, a cls token, positions and a patch
// linear (weight and bias) with a large shared mean (+5) and a few outlier
// dimensions (x 20); 8 x 8 images, 4 x 4 patches, 3 channels, 5 classes.
//
// Checked, relative errors |actual - expected| / |expected| in the Frobenius
// norm (double 1e-12, float 1e-5), every failure printing the error found:
//  - logits of Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm equal the Pre-LN logits;
//  - the converted Pre-RMSNorm main branch is zero-mean after every block
//    (|mean| <= 1e-12 rms per row) and the Pre-CRMSNorm one is its first d-1
//    coordinates; zero_mean_report is ~0;
//  - round trips, and random Pre-CRMSNorm ViTs to Pre-LN and Pre-RMSNorm;
//  - non-zero-mean Pre-RMSNorm sources and bad shapes are refused by name;
//  - 20 seeds of random configurations and conversion chains.
// The maximum errors are printed (lines starting with "[ max error ]").

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>

#include "support/convert_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace prenorm_test;  // tests/support/convert_test_util.hpp (one thread, helpers)
using prenorm::TransformerConfig;
using prenorm::ConvertOptions;
using prenorm::ImageBatch;
using prenorm::Vit;
using prenorm::VitConfig;

// ===========================================================================
// Helpers (the ones shared with convert_test.cpp are in
// tests/support/convert_test_util.hpp)
// ===========================================================================

// A few outlier main-branch dimensions x 20, then a shared shift. The main
// branch is the columns of a table, the rows of a writer linear.
Index outlier(Rng& rng, Index d) { return rng.uniform(0, d - 1); }

struct VitCase {
  const char* name;
  Index width, heads, head_dim, layers;
  double epsilon;
};

VitConfig vit_config(const VitCase& c) {
  VitConfig config;
  config.image_size = 8;
  config.patch_size = 4;
  config.channels = 3;
  config.classes = 5;
  config.width = c.width;
  config.heads = c.heads;
  config.head_dim = c.head_dim;
  config.layers = c.layers;
  config.mlp_width = 2 * c.width + 1;
  config.epsilon = c.epsilon;
  return config;
}

Vit<Arch::PreLN, double> make_pre_ln_vit(const TransformerConfig& config, std::uint64_t seed) {
  Vit<Arch::PreLN, double> m(config);
  Rng rng(seed);
  const Index d = config.width;
  // Patch linear: outlier output rows, a shared mean on weight and bias.
  rng.fill(m.patch.weight, 1.0 / std::sqrt(double(config.patch_features())), 0.3);
  rng.fill(m.patch.bias, 1.0, 5.0);
  for (Index k = 0, n = std::max<Index>(1, d / 32); k < n; ++k) {
    const Index o = outlier(rng, d);
    m.patch.weight.row(o) *= 20.0;
    m.patch.bias(o) *= 20.0;
  }
  rng.fill(m.cls_token, 1.0, 5.0);
  m.cls_token(outlier(rng, d)) *= 20.0;
  rng.fill(m.position_embedding.table, 0.5);
  m.position_embedding.table.col(outlier(rng, d)) *= 20.0;
  m.position_embedding.table.array() += 5.0;
  for (auto& b : m.blocks) fill_pre_ln_block(b, rng);
  fill_gamma(m.final_gamma, rng);
  rng.fill(m.final_beta, 0.5);
  rng.fill(m.head.weight, 1.0 / std::sqrt(double(d)));
  rng.fill(m.head.bias, 0.5, 0.3);
  m.validate();
  return m;
}

template <class S>
struct Images {
  std::vector<S> pixels;
  Index batch = 0;
  ImageBatch<S> view() const { return ImageBatch<S>{pixels, batch, 3, 8, 8}; }
};

template <class S>
Images<S> random_images(Index batch, std::uint64_t seed) {
  Rng rng(seed);
  Images<S> im{std::vector<S>(batch * 3 * 8 * 8), batch};
  for (S& p : im.pixels) p = S(rng.normal());
  return im;
}

template <Arch To, Arch From, class S>
Vit<To, S> convert_checked(const Vit<From, S>& src, const Images<S>& im, const MatD& expected,
                           double& worst, const std::string& what) {
  Vit<To, S> dst = prenorm::convert<To>(src);
  EXPECT_TRUE(close_rel(logits(dst, im), expected, tol<S>(), &worst))
      << what << " -> " << prenorm::arch_name(To);
  return dst;
}

// ===========================================================================

class ConvertVit : public ::testing::TestWithParam<VitCase> {};

const VitCase kVitCases[] = {
    {"d5_h5_L1", 5, 5, 0, 1, 1e-12},
    {"d5_h1_L2", 5, 1, 0, 2, 1e-5},
    {"d7_h1x4_L3", 7, 1, 4, 3, 1e-2},  // head_dim decoupled
    {"d64_h4_L4", 64, 4, 0, 4, 1e-12},
    {"d97_h1_L2", 97, 1, 0, 2, 1e-6},
    {"d192_h3_L1", 192, 3, 0, 1, 1e-12},
    {"d2_h1_L1", 2, 1, 0, 1, 1e-5},  // CRMSNorm main width 1
    {"d11_h1_L0", 11, 1, 0, 0, 1e-5},  // no blocks
};

template <class S>
void check_pre_ln_conversions(const VitCase& c) {
  const VitConfig config = vit_config(c);
  auto src = cast_model<S>(make_pre_ln_vit(config, 100 + c.width * 10 + c.layers));
  const auto images = random_images<S>(3, 1);
  MatD ref;
  const auto h_src = branches(src, images, &ref);
  const std::string what = std::string(c.name) + " " + dtype<S>();
  ASSERT_GT(ref.norm(), 0.5);
  ASSERT_GT(max_relative_row_mean(h_src.front()), 0.1) << "the source branch should not be zero-mean";

  auto rms = prenorm::convert<Arch::PreRMSNorm>(src);
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(src);
  EXPECT_EQ(crms.patch.weight.rows(), c.width - 1);
  EXPECT_EQ(crms.cls_token.size(), c.width - 1);
  EXPECT_EQ(crms.position_embedding.table.cols(), c.width - 1);
  EXPECT_EQ(crms.head.weight.cols(), c.width - 1);
  EXPECT_EQ(rms.final_gamma.size(), 0);

  double err_rms = 0, err_crms = 0, err_mean = 0, err_branch = 0, err_report = 0;
  MatD l_rms, l_crms;
  const auto h_rms = branches(rms, images, &l_rms);
  const auto h_crms = branches(crms, images, &l_crms);
  EXPECT_TRUE(close_rel(l_rms, ref, tol<S>(), &err_rms)) << what << " -> pre_rmsnorm";
  EXPECT_TRUE(close_rel(l_crms, ref, tol<S>(), &err_crms)) << what << " -> pre_crmsnorm";
  ASSERT_EQ(h_rms.size(), std::size_t(c.layers + 1));
  ASSERT_EQ(h_crms.size(), h_rms.size());
  for (std::size_t i = 0; i < h_rms.size(); ++i) {
    const double mean = max_relative_row_mean(h_rms[i]);
    err_mean = std::max(err_mean, mean);
    EXPECT_LE(mean, (std::is_same_v<S, float> ? 1e-5 : 1e-12))
        << what << ": |mean| / rms of the Pre-RMSNorm main branch after block " << int(i) - 1;
    EXPECT_TRUE(close_rel(h_crms[i], h_rms[i].leftCols(c.width - 1), tol<S>(), &err_branch))
        << what << ": the Pre-CRMSNorm branch after block " << int(i) - 1;
  }
  if constexpr (std::is_same_v<S, double>) {
    for (const prenorm::ZeroMeanReport& r :
         {prenorm::zero_mean_report(rms), prenorm::zero_mean_report(crms)}) {
      err_report = std::max(err_report, r.relative);
      EXPECT_LE(r.relative, 1e-12) << what << ": " << r.tensor << " |mean| " << r.max_abs_mean;
    }
  }
  // forward_patches gives the same logits as forward(images).
  RowMatrix<S> patches;
  crms.patchify(images.view(), patches);
  EXPECT_TRUE(close_rel(crms.forward_patches(patches), ref, tol<S>()));

  report(what + " ln->rms logits", err_rms);
  report(what + " ln->crms logits", err_crms);
  report(what + " rms branch |mean|/rms", err_mean);
  report(what + " crms branch vs rms branch", err_branch);
  if constexpr (std::is_same_v<S, double>) report(what + " zero_mean_report relative", err_report);
}

TEST_P(ConvertVit, PreLnToRmsAndCrmsDouble) { check_pre_ln_conversions<double>(GetParam()); }
TEST_P(ConvertVit, PreLnToRmsAndCrmsFloat) { check_pre_ln_conversions<float>(GetParam()); }

template <class S>
void check_round_trips(const VitCase& c) {
  const VitConfig config = vit_config(c);
  const auto src = cast_model<S>(make_pre_ln_vit(config, 300 + c.width));
  auto src_m = src;
  const auto images = random_images<S>(2, 2);
  const MatD ref = logits(src_m, images);
  const std::string what = std::string(c.name) + " " + dtype<S>();
  double worst = 0;
  {
    auto a = convert_checked<Arch::PreCRMSNorm>(src, images, ref, worst, what + " ln");
    auto b = convert_checked<Arch::PreLN>(a, images, ref, worst, what + " ln->crms");
    EXPECT_EQ(b.final_gamma, Vector<S>::Ones(c.width));
    EXPECT_EQ(b.final_beta, Vector<S>::Zero(c.width));
  }
  {
    auto a = convert_checked<Arch::PreRMSNorm>(src, images, ref, worst, what + " ln");
    convert_checked<Arch::PreLN>(a, images, ref, worst, what + " ln->rms");
  }
  {
    auto a = convert_checked<Arch::PreRMSNorm>(src, images, ref, worst, what + " ln");
    auto b = convert_checked<Arch::PreCRMSNorm>(a, images, ref, worst, what + " ln->rms");
    auto d = convert_checked<Arch::PreRMSNorm>(b, images, ref, worst, what + " ln->rms->crms");
    auto e = convert_checked<Arch::PreLN>(d, images, ref, worst, what + " ln->rms->crms->rms");
    convert_checked<Arch::PreCRMSNorm>(e, images, ref, worst, what + " ...->ln");
  }
  report(what + " round trips", worst);
}

TEST_P(ConvertVit, RoundTripsKeepLogitsDouble) { check_round_trips<double>(GetParam()); }
TEST_P(ConvertVit, RoundTripsKeepLogitsFloat) { check_round_trips<float>(GetParam()); }

template <class S>
void check_from_random_crms(const VitCase& c) {
  Vit<Arch::PreCRMSNorm, double> crms_d(vit_config(c));
  crms_d.init_random(400 + c.width, 0.5, /*random_affine=*/true);
  auto crms = cast_model<S>(crms_d);
  const auto images = random_images<S>(2, 3);
  const MatD ref = logits(crms, images);
  const std::string what = std::string(c.name) + " " + dtype<S>();
  double worst = 0;
  auto ln = convert_checked<Arch::PreLN>(crms, images, ref, worst, what + " crms");
  auto rms = convert_checked<Arch::PreRMSNorm>(crms, images, ref, worst, what + " crms");
  convert_checked<Arch::PreLN>(rms, images, ref, worst, what + " crms->rms");
  convert_checked<Arch::PreCRMSNorm>(ln, images, ref, worst, what + " crms->ln");
  convert_checked<Arch::PreCRMSNorm>(rms, images, ref, worst, what + " crms->rms");
  if constexpr (std::is_same_v<S, double>) {
    const auto r = prenorm::zero_mean_report(rms);
    EXPECT_LE(r.relative, 1e-12) << what << ": " << r.tensor;
  }
  report(what + " random crms -> ln / rms and on", worst);
}

TEST_P(ConvertVit, RandomCrmsToLnAndRmsDouble) { check_from_random_crms<double>(GetParam()); }
TEST_P(ConvertVit, RandomCrmsToLnAndRmsFloat) { check_from_random_crms<float>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, ConvertVit, ::testing::ValuesIn(kVitCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// The encoder families' options (VitConfig): a stem norm (CLIP), a
// distillation token with the two-part head (DeiT), the patch-mean head
// (DINOv2). Double only: the float paths are those above.
// ===========================================================================

struct FamilyCase {
  const char* name;
  bool stem_norm, distillation_token;
  prenorm::Pooling pooling;
};

const FamilyCase kFamilyCases[] = {
    {"stem_norm", true, false, prenorm::Pooling::Cls},
    {"distillation", false, true, prenorm::Pooling::ClsDistillation},
    {"patch_mean", false, false, prenorm::Pooling::ClsPatchMean},
    {"all", true, true, prenorm::Pooling::ClsPatchMean},
};

class ConvertVitFamily : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(ConvertVitFamily, EveryDirectionKeepsLogitsDouble) {
  const FamilyCase& f = GetParam();
  VitConfig config = vit_config({"", 9, 3, 0, 2, 1e-6});
  config.stem_norm = f.stem_norm;
  config.distillation_token = f.distillation_token;
  config.pooling = f.pooling;
  Vit<Arch::PreLN, double> src(config);
  src.init_random(500, 0.5, /*random_affine=*/true);
  // Offsets on everything that starts the stream: uncentered, it changes the logits.
  src.patch.bias.array() += 3.0;
  src.cls_token.array() += 3.0;
  src.distillation_token.array() += 3.0;
  src.position_embedding.table.array() += 2.0;
  src.stem_beta.array() += 2.0;
  const auto images = random_images<double>(3, 5);
  MatD ref;
  const auto h_src = branches(src, images, &ref);
  ASSERT_GT(max_relative_row_mean(h_src.front()), 0.1) << f.name << ": the stream starts uncentered";
  EXPECT_EQ(src.head.weight.cols(), prenorm::TransformerConfig(config).pooled_parts() * config.width);

  double worst = 0;
  auto rms = convert_checked<Arch::PreRMSNorm>(src, images, ref, worst, f.name);
  auto crms = convert_checked<Arch::PreCRMSNorm>(src, images, ref, worst, f.name);
  // The Pre-RMSNorm stream is zero-mean from its start (the stem's centering, or the writers').
  for (const MatD& h : branches(rms, images)) EXPECT_LE(max_relative_row_mean(h), 1e-12) << f.name;
  EXPECT_EQ(crms.head.weight.cols(), prenorm::TransformerConfig(config).pooled_parts() * (config.width - 1));
  EXPECT_EQ(crms.position_embedding.table.cols(), f.stem_norm ? config.width : config.width - 1);
  EXPECT_LE(prenorm::zero_mean_report(rms).relative, 1e-12);
  EXPECT_LE(prenorm::zero_mean_report(crms).relative, 1e-12);
  convert_checked<Arch::PreCRMSNorm>(rms, images, ref, worst, std::string(f.name) + " rms");
  convert_checked<Arch::PreRMSNorm>(crms, images, ref, worst, std::string(f.name) + " crms");
  auto back = convert_checked<Arch::PreLN>(crms, images, ref, worst, std::string(f.name) + " crms");
  convert_checked<Arch::PreLN>(rms, images, ref, worst, std::string(f.name) + " rms");
  convert_checked<Arch::PreRMSNorm>(back, images, ref, worst, std::string(f.name) + " crms->ln");
  report(std::string(f.name) + " every direction", worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, ConvertVitFamily, ::testing::ValuesIn(kFamilyCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// Errors
// ===========================================================================

// A Pre-RMSNorm ViT whose writers are all exactly zero-mean.
Vit<Arch::PreRMSNorm, double> zero_mean_rms_vit() {
  Vit<Arch::PreRMSNorm, double> m(vit_config({"", 7, 1, 0, 2, 1e-6}));
  m.init_random(21, 0.5, true);
  m.patch.weight.rowwise() -= m.patch.weight.colwise().mean();
  m.patch.bias.array() -= m.patch.bias.mean();
  m.cls_token.array() -= m.cls_token.mean();
  m.position_embedding.table.colwise() -= m.position_embedding.table.rowwise().mean();
  for (auto& b : m.blocks)
    for (auto* lin : {&b.attn.out, &b.mlp.proj}) {
      lin->weight.rowwise() -= lin->weight.colwise().mean();
      lin->bias.array() -= lin->bias.mean();
    }
  EXPECT_LE(prenorm::zero_mean_report(m).relative, 1e-14);
  return m;
}

TEST(ConvertVitErrors, NonZeroMeanRmsSourceIsRefusedByNameAndRecentered) {
  const auto images = random_images<double>(2, 4);
  {
    auto m = zero_mean_rms_vit();
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreLN>(m));
    m.patch.bias.array() += 5.0;
    const auto r = prenorm::zero_mean_report(m);
    EXPECT_EQ(r.tensor, "patch");
    const std::vector<std::string> needles = {"prenorm::convert", "patch.bias",
                                              "not zero-mean", "recenter"};
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m); }, needles);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); }, needles);
    auto ln = prenorm::convert<Arch::PreLN>(m, {.recenter = true});
    auto crms = prenorm::convert<Arch::PreCRMSNorm>(m, {.recenter = true});
    EXPECT_TRUE(close_rel(logits(crms, images), logits(ln, images), 1e-12));
    EXPECT_LE(prenorm::zero_mean_report(crms).relative, 1e-12);
  }
  {
    auto m = zero_mean_rms_vit();
    m.cls_token.array() += 5.0;
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(m); }, {"cls_token", "not zero-mean"});
  }
  {
    auto m = zero_mean_rms_vit();
    m.position_embedding.table.row(3).array() += 1.0;
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"position_embedding", "not zero-mean"});
  }
  {
    auto m = zero_mean_rms_vit();
    m.blocks[1].attn.out.weight.col(0).array() += 1.0;
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"blocks[1].attn.out.weight", "not zero-mean"});
  }
  {  // A fresh init_random Pre-RMSNorm ViT is not a converted one.
    Vit<Arch::PreRMSNorm, double> fresh(vit_config({"", 5, 1, 0, 1, 1e-6}));
    fresh.init_random(9);
    expect_error([&] { (void)prenorm::convert<Arch::PreLN>(fresh); }, {"not zero-mean"});
    EXPECT_NO_THROW((void)prenorm::convert<Arch::PreCRMSNorm>(fresh, {.recenter = true}));
  }
}

TEST(ConvertVitErrors, WrongTensorShapesAreNamed) {
  const auto good = make_pre_ln_vit(vit_config({"", 7, 1, 0, 2, 1e-6}), 5);
  {
    auto m = good;
    m.blocks[0].attn.qkv.weight.resize(21, 8);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); },
                 {"prenorm::convert", "blocks[0].attn.qkv.weight", "(21 x 8)", "(21 x 7)"});
  }
  {
    auto m = good;
    m.patch.weight.resize(7, 47);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); }, {"patch.weight"});
  }
  {
    auto m = good;
    m.cls_token.resize(6);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); }, {"cls_token"});
  }
  {
    auto m = good;
    m.position_embedding.table.resize(4, 7);
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"position_embedding", "expected (5 x 7)"});
  }
  {
    auto m = good;
    m.blocks[1].mlp.fc.weight.resize(15, 6);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"blocks[1].mlp.fc.weight"});
  }
  {
    auto m = good;
    m.head.bias.resize(4);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"head.bias"});
  }
  {  // A Pre-CRMSNorm ViT whose head still reads the full width.
    auto m = prenorm::convert<Arch::PreCRMSNorm>(good);
    m.head.weight.resize(5, 7);
    expect_error([&] { (void)prenorm::convert<Arch::PreRMSNorm>(m); }, {"head.weight", "(5 x 6)"});
  }
  {  // Width 1: refused when built, and by the converter when the config is changed.
    VitConfig c = vit_config({"", 1, 1, 0, 1, 1e-6});
    expect_error([&] { Vit<Arch::PreLN, double> m(c); }, {"prenorm::Vit", "width is 1", ">= 2"});
    auto m = good;
    m.config.width = 1;
    expect_error([&] { (void)prenorm::convert<Arch::PreCRMSNorm>(m); },
                 {"prenorm::convert", "width is 1"});
  }
}

// ===========================================================================
// Property test: 20 seeds of random configurations and conversion chains
// ===========================================================================

class ConvertVitProperty : public ::testing::TestWithParam<int> {};

// Three random conversions out of Pre-LN; each model must keep the logits.
template <class S>
double random_chain(Vit<Arch::PreLN, S>& src, const Images<S>& images, Rng& rng, std::string& path) {
  return random_conversion_chain<S>(
      src, 3, rng, []<Arch To>(const auto& model) { return prenorm::convert<To>(model); },
      [&images](auto& model) { return logits(model, images); }, path);
}

TEST_P(ConvertVitProperty, RandomConfigsAndChainsKeepLogits) {
  const int seed = GetParam();
  Rng rng(std::uint64_t(seed) * 104729 + 3);
  constexpr Index widths[] = {2, 3, 5, 7, 11, 13, 16, 31, 64, 97};
  VitCase c{"", widths[rng.uniform(0, 9)], 1, 0, rng.uniform(0, 4), rng.coin() ? 1e-12 : 1e-2};
  switch (rng.uniform(0, 2)) {
    case 0: c.heads = 1; break;
    case 1: c.heads = c.width; break;
    default: c.heads = rng.uniform(1, 3), c.head_dim = rng.uniform(1, 6); break;
  }
  const VitConfig config = vit_config(c);
  auto src_d = make_pre_ln_vit(config, 70000 + seed);
  auto src_f = cast_model<float>(src_d);
  const Index batch = rng.uniform(1, 3);
  const auto im_d = random_images<double>(batch, 80000 + seed);
  const auto im_f = random_images<float>(batch, 80000 + seed);
  std::string path_d = "pre_ln", path_f = "pre_ln";
  Rng rng_d(seed), rng_f(seed);
  const double err_d = random_chain(src_d, im_d, rng_d, path_d);
  const double err_f = random_chain(src_f, im_f, rng_f, path_f);
  char desc[200];
  std::snprintf(desc, sizeof desc, "vit seed %2d: d %3ld heads %ld hd %ld L %ld eps %g batch %ld",
                seed, long(c.width), long(c.heads), long(prenorm::TransformerConfig(config).head_size()), long(c.layers),
                c.epsilon, long(batch));
  report(std::string(desc) + " double", err_d);
  report(std::string(desc) + " float", err_f);
  std::printf("              path: %s\n", path_d.c_str());
  RecordProperty("max_error_double", std::to_string(err_d));
  RecordProperty("max_error_float", std::to_string(err_f));
}

INSTANTIATE_TEST_SUITE_P(Seeds, ConvertVitProperty, ::testing::Range(0, 20));

}  // namespace
