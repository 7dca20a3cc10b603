// Tests of the Hugging Face loaders of GPT-BigCode (io/hf_gpt_bigcode.hpp),
// GPT-Neo (io/hf_gpt_neo.hpp) and BLOOM (io/hf_bloom.hpp), on the random
// checkpoints of tests/support/hf_fixtures.hpp in each family's real layout,
// against the long double references of tests/support/hf_reference.hpp
// (written from the Hugging Face modeling code, independent of prenorm).
//
// For each family, variant (the fixture options) and dtype (F32, F16, BF16):
//  - load_hf_<family><double> gives the reference's logits within 1e-12 and
//    <float> within 1e-5 (max |diff| / max |ref|), and load_any_model
//    detects the family and gives the same model;
//  - decoding with the KV cache (prefill, then one step per token) gives
//    the forward's logits;
//  - convert to Pre-RMSNorm and Pre-CRMSNorm (both tied policies) and back
//    to Pre-LN: the same logits;
// and the refusals, with messages naming the key, the tensor and the file.

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "support/convert_test_util.hpp"
#include "support/hf_fixtures.hpp"
#include "support/hf_reference.hpp"
#include "support/hf_test_util.hpp"
#include "support/temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
namespace hf = prenorm_test::hf;
using prenorm::Arch;
using prenorm::Gpt;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::TokenBatch;
using io::Dtype;
using prenorm_test::hf::max_relative_error;
using prenorm_test::hf::tolerance;

// One family variant: how to write its fixture and how to load it.
struct Case {
  std::string name;
  io::Layout layout;
  std::function<hf::Fixture(const fs::path&, Dtype, std::uint64_t)> write;
  std::function<Gpt<Arch::PreLN, double>(const fs::path&)> load_double;
  std::function<Gpt<Arch::PreLN, float>(const fs::path&)> load_float;
};

// A family variant from its fixture writer and its loader's path overload.
template <class Options>
Case family_case(std::string name, io::Layout layout, Options options,
                 hf::Fixture (*write)(const fs::path&, const Options&, Dtype, std::uint64_t),
                 Gpt<Arch::PreLN, double> (*load_double)(const fs::path&, const std::optional<fs::path>&),
                 Gpt<Arch::PreLN, float> (*load_float)(const fs::path&, const std::optional<fs::path>&)) {
  return {std::move(name), layout,
          [options, write](const fs::path& dir, Dtype dtype, std::uint64_t seed) {
            return write(dir, options, dtype, seed);
          },
          [load_double](const fs::path& p) { return load_double(p, std::nullopt); },
          [load_float](const fs::path& p) { return load_float(p, std::nullopt); }};
}
Case bigcode_case(const std::string& name, hf::BigcodeOptions options) {
  return family_case("gpt_bigcode_" + name, io::Layout::HfGptBigcode, options,
                     &hf::write_gpt_bigcode_fixture, &io::load_hf_gpt_bigcode<double>,
                     &io::load_hf_gpt_bigcode<float>);
}
Case gpt_neo_case(const std::string& name, hf::GptNeoOptions options) {
  return family_case("gpt_neo_" + name, io::Layout::HfGptNeo, options, &hf::write_gpt_neo_fixture,
                     &io::load_hf_gpt_neo<double>, &io::load_hf_gpt_neo<float>);
}
Case bloom_case(const std::string& name, hf::BloomOptions options) {
  return family_case("bloom_" + name, io::Layout::HfBloom, options, &hf::write_bloom_fixture,
                     &io::load_hf_bloom<double>, &io::load_hf_bloom<float>);
}

std::vector<Case> cases() {
  std::vector<Case> all;
  all.push_back(bigcode_case("multi_query", hf::BigcodeOptions{.multi_query = true}));
  all.push_back(bigcode_case("multi_head", hf::BigcodeOptions{.multi_query = false}));
  // GPT-Neo: windows shorter than the 24 tokens, so that local layers differ from global ones.
  all.push_back(gpt_neo_case("alternating", {.window_size = 4}));
  all.push_back(gpt_neo_case("all_local", {.layer_types = {"local", "local", "local"}, .window_size = 3}));
  all.push_back(gpt_neo_case("all_global", {.layer_types = {"global", "global", "global"}}));
  all.push_back(gpt_neo_case("every_third", {.sizes = {.layers = 6},
                                             .layer_types = {"global", "global", "local", "global", "global", "local"},
                                             .window_size = 5}));
  // BLOOM: 6 heads (ALiBi slopes beyond a power of two), prefixed and bare names.
  all.push_back(bloom_case("prefixed", {}));
  all.push_back(bloom_case("bare", {.prefix = false}));
  all.push_back(bloom_case("eight_heads", {.sizes = {.vocab = 80, .width = 32, .heads = 8, .layers = 2, .context = 64}}));
  return all;
}

struct Param {
  Case c;
  Dtype dtype;
};

std::vector<Param> params() {
  std::vector<Param> all;
  for (const Case& c : cases())
    for (Dtype dtype : {Dtype::F32, Dtype::F16, Dtype::BF16}) all.push_back({c, dtype});
  return all;
}

class HfDecoder : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    fixture_ = GetParam().c.write(dir_.path(), GetParam().dtype, 1234);
    tokens_ = hf::random_tokens(fixture_, 24, 77);
  }
  std::string what() const { return GetParam().c.name + " " + std::string(io::dtype_name(GetParam().dtype)); }
  TokenBatch batch() const { return TokenBatch{tokens_, 1, Index(tokens_.size())}; }

  prenorm_test::TempDir dir_{"prenorm-hf-decoders"};
  hf::Fixture fixture_;
  std::vector<int> tokens_;
};

TEST_P(HfDecoder, LogitsEqualTheReference) {
  const hf::Mat reference = hf::reference_logits(fixture_, tokens_);
  const auto model = GetParam().c.load_double(fixture_.model_path());
  EXPECT_LE(max_relative_error(model.forward(batch()), reference), tolerance<double>()) << what();
  const auto single = GetParam().c.load_float(fixture_.model_path());
  EXPECT_LE(max_relative_error(single.forward(batch()), reference), tolerance<float>()) << what();
}

TEST_P(HfDecoder, LoadAnyModelDetectsTheFamily) {
  const io::LoadedModel<double> loaded = io::load_any_model<double>(fixture_.model_path());
  EXPECT_EQ(loaded.layout, GetParam().c.layout) << what();
  EXPECT_EQ(loaded.dtype, GetParam().dtype) << what();
  ASSERT_EQ(loaded.config_path, fixture_.config_path()) << what();
  const auto* model = std::get_if<Gpt<Arch::PreLN, double>>(&loaded.model);
  ASSERT_NE(model, nullptr) << what();
  const auto direct = GetParam().c.load_double(fixture_.model_path());
  EXPECT_EQ(model->forward(batch()), direct.forward(batch())) << what();
  // Through an explicit config path too (a directory with another config.json beside).
  EXPECT_EQ(io::detect_layout(io::SafetensorsFile(fixture_.model_path()), fixture_.config_path()),
            GetParam().c.layout);
}

TEST_P(HfDecoder, DecodingWithTheCacheEqualsTheForward) {
  const auto model = GetParam().c.load_double(fixture_.model_path());
  const RowMatrix<double> full = model.forward(batch());
  prenorm::Session<Arch::PreLN, double> session(model);
  const Index prompt = 5;
  const RowMatrix<double> first = session.prefill(TokenBatch{std::span(tokens_).first(prompt), 1, prompt});
  EXPECT_LE(max_relative_error(first, RowMatrix<double>(full.topRows(prompt))), tolerance<double>()) << what();
  for (Index t = prompt; t < Index(tokens_.size()); ++t) {
    const RowMatrix<double> step = session.step(std::span(tokens_).subspan(std::size_t(t), 1));
    EXPECT_LE(max_relative_error(step, RowMatrix<double>(full.row(t))), tolerance<double>()) << what() << " step " << t;
  }
}

template <class S>
void expect_conversions_equivalent(const Gpt<Arch::PreLN, S>& model, const TokenBatch& tokens,
                                   const std::string& what) {
  const RowMatrix<S> expected = model.forward(tokens);
  for (prenorm::TiedPolicy policy : {prenorm::TiedPolicy::Untie, prenorm::TiedPolicy::Keep}) {
    const prenorm::ConvertOptions options{.tied = policy};
    const std::string how = what + (policy == prenorm::TiedPolicy::Untie ? " untie" : " keep tied");
    const auto rms = prenorm::convert<Arch::PreRMSNorm>(model, options);
    EXPECT_LE(max_relative_error(rms.forward(tokens), expected), tolerance<S>()) << how << " pre-rmsnorm";
    const auto crms = prenorm::convert<Arch::PreCRMSNorm>(model, options);
    EXPECT_LE(max_relative_error(crms.forward(tokens), expected), tolerance<S>()) << how << " pre-crmsnorm";
    const auto back = prenorm::convert<Arch::PreLN>(crms, options);
    EXPECT_LE(max_relative_error(back.forward(tokens), expected), tolerance<S>()) << how << " back to pre-ln";
    const auto via_rms = prenorm::convert<Arch::PreCRMSNorm>(rms, options);
    EXPECT_LE(max_relative_error(via_rms.forward(tokens), expected), tolerance<S>()) << how << " rms -> crms";
  }
}

TEST_P(HfDecoder, ConversionsKeepTheLogits) {
  expect_conversions_equivalent(GetParam().c.load_double(fixture_.model_path()), batch(),
                                what() + " double");
  expect_conversions_equivalent(GetParam().c.load_float(fixture_.model_path()), batch(),
                                what() + " float");
}

INSTANTIATE_TEST_SUITE_P(Families, HfDecoder, ::testing::ValuesIn(params()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return info.param.c.name + "_" + std::string(io::dtype_name(info.param.dtype));
                         });

// --- refusals ------------------------------------------------------------------

// Rewrites the fixture in `dir` with `edit` applied to its config and tensors.
template <class Edit>
hf::Fixture rewrite(const hf::Fixture& f, const fs::path& dir, Edit&& edit) {
  nlohmann::ordered_json config = f.config;
  hf::HfTensors tensors = f.tensors;
  edit(config, tensors);
  return hf::write_fixture(dir, config, tensors, f.dtype);
}

TEST(HfGptBigcodeRefusals, NameTheKeyTheTensorAndTheFile) {
  prenorm_test::TempDir dir("prenorm-hf-bigcode");
  const hf::Fixture f = hf::write_gpt_bigcode_fixture(dir / "ok", {}, Dtype::F32, 5);
  const auto load = [](const hf::Fixture& g) { return io::load_hf_gpt_bigcode<double>(g.model_path()); };
  const hf::Fixture cross = rewrite(f, dir / "cross", [](auto& c, auto&) { c["add_cross_attention"] = true; });
  prenorm_test::expect_error([&] { load(cross); }, {"hf_gpt_bigcode", "'add_cross_attention' is true", "config.json"});
  const hf::Fixture type = rewrite(f, dir / "type", [](auto& c, auto&) { c["model_type"] = "gpt2"; });
  prenorm_test::expect_error([&] { load(type); }, {"'model_type' is \"gpt2\", expected \"gpt_bigcode\""});
  const hf::Fixture missing = rewrite(f, dir / "missing", [](auto&, auto& t) { t.erase("transformer.h.1.ln_2.bias"); });
  prenorm_test::expect_error([&] { load(missing); }, {"missing tensor 'transformer.h.1.ln_2.bias'", "model.safetensors"});
  const hf::Fixture unknown = rewrite(f, dir / "unknown", [](auto&, auto& t) {
    t["transformer.h.0.attn.q_attn.weight"] = t.at("transformer.h.0.attn.c_proj.weight");
  });
  prenorm_test::expect_error([&] { load(unknown); }, {"unknown tensor 'transformer.h.0.attn.q_attn.weight'"});
  // A multi-head file read as multi-query: c_attn has 3 d rows, not d + 2 hd.
  const hf::Fixture shape = rewrite(f, dir / "shape", [](auto& c, auto&) { c["multi_query"] = false; });
  prenorm_test::expect_error([&] { load(shape); }, {"tensor 'transformer.h.0.attn.c_attn.weight' has shape [48, 32], expected [96, 32]"});
  const hf::Fixture untied = rewrite(f, dir / "untied", [](auto& c, auto&) { c["tie_word_embeddings"] = false; });
  prenorm_test::expect_error([&] { load(untied); }, {"missing tensor 'lm_head.weight'"});
}

TEST(HfGptBigcode, UntiedHeadAndUnscaledScoresAndBareNames) {
  prenorm_test::TempDir dir("prenorm-hf-bigcode");
  const hf::Fixture f = hf::write_gpt_bigcode_fixture(dir / "ok", {}, Dtype::F32, 6);
  const hf::Fixture g = rewrite(f, dir / "untied", [](auto& c, auto& t) {
    c["tie_word_embeddings"] = false;
    c["scale_attn_weights"] = false;
    hf::HfTensors bare;
    for (auto& [name, tensor] : t) bare[name.substr(std::string("transformer.").size())] = tensor;
    t = bare;
    t["lm_head.weight"] = t.at("wte.weight");
    for (double& x : t["lm_head.weight"].values) x = -0.5 * x;
  });
  // The reference reads the prefixed names: give it the prefixed copy.
  hf::HfTensors prefixed;
  for (auto& [name, tensor] : g.tensors)
    prefixed[name == "lm_head.weight" ? name : "transformer." + name] = tensor;
  const std::vector<int> tokens = hf::random_tokens(g, 20, 3);
  const hf::Mat reference = hf::reference_logits(g.config, prefixed, tokens);
  const auto model = io::load_hf_gpt_bigcode<double>(g.model_path());
  EXPECT_FALSE(model.config.tied);
  EXPECT_EQ(model.config.score_scale, 1.0);
  EXPECT_LE(max_relative_error(model.forward(TokenBatch{tokens, 1, Index(tokens.size())}), reference), 1e-12);
}

}  // namespace

namespace {

TEST(HfGptNeoRefusals, NameTheKeyTheTensorAndTheFile) {
  prenorm_test::TempDir dir("prenorm-hf-gpt-neo");
  const hf::Fixture f = hf::write_gpt_neo_fixture(dir / "ok", {}, Dtype::F32, 5);
  const auto load = [](const hf::Fixture& g) { return io::load_hf_gpt_neo<double>(g.model_path()); };
  // local, global, global: local at layer 0 only, no period fits.
  const hf::Fixture pattern = hf::write_gpt_neo_fixture(
      dir / "pattern", {.layer_types = {"local", "global", "global"}}, Dtype::F32, 5);
  prenorm_test::expect_error([&] { load(pattern); }, {"hf_gpt_neo", "'attention_types' puts local attention", "config.json"});
  const hf::Fixture type = rewrite(f, dir / "type", [](auto& c, auto&) {
    c["attention_types"] = nlohmann::json::parse(R"([[["global", "sparse"], 1], [["global"], 1]])");
    c.erase("attention_layers");
  });
  prenorm_test::expect_error([&] { load(type); }, {"'attention_types' has \"sparse\""});
  const hf::Fixture layers = rewrite(f, dir / "layers", [](auto& c, auto&) {
    c["attention_layers"] = {"global", "global", "global"};
  });
  prenorm_test::expect_error([&] { load(layers); }, {"'attention_layers' is [\"global\",\"global\",\"global\"]"});
  const hf::Fixture count = rewrite(f, dir / "count", [](auto& c, auto&) { c["num_layers"] = 2; });
  prenorm_test::expect_error([&] { load(count); }, {"'attention_types' gives 3 layer types", "'num_layers' 2"});
  const hf::Fixture bias = rewrite(f, dir / "bias", [](auto&, auto& t) {
    t["transformer.h.2.attn.attention.q_proj.bias"] = t.at("transformer.h.2.attn.attention.out_proj.bias");
  });
  prenorm_test::expect_error([&] { load(bias); }, {"unknown tensor 'transformer.h.2.attn.attention.q_proj.bias'"});
  const hf::Fixture shape = rewrite(f, dir / "shape", [](auto&, auto& t) {
    t["transformer.h.1.attn.attention.k_proj.weight"] = t.at("transformer.h.1.mlp.c_fc.weight");
  });
  prenorm_test::expect_error([&] { load(shape); }, {"tensor 'transformer.h.1.attn.attention.k_proj.weight' has shape [128, 32], expected [32, 32]"});
}

TEST(HfGptNeo, IgnoresTheMaskBuffersOfOlderCheckpoints) {
  prenorm_test::TempDir dir("prenorm-hf-gpt-neo");
  const hf::Fixture f = hf::write_gpt_neo_fixture(dir / "ok", {}, Dtype::F32, 8);
  const hf::Fixture g = rewrite(f, dir / "buffers", [](auto&, auto& t) {
    for (int i = 0; i < 3; ++i) {
      const std::string a = "transformer.h." + std::to_string(i) + ".attn.attention.";
      t[a + "bias"] = hf::HfTensor{{1, 1, 2, 2}, {1, 0, 1, 1}};
      t[a + "masked_bias"] = hf::HfTensor{{}, {-1e9}};
    }
  });
  const std::vector<int> tokens = hf::random_tokens(f, 20, 3);
  const auto model = io::load_hf_gpt_neo<double>(g.model_path());
  EXPECT_LE(max_relative_error(model.forward(TokenBatch{tokens, 1, Index(tokens.size())}),
                           hf::reference_logits(f, tokens)), 1e-12);
}

}  // namespace

namespace {

TEST(HfBloomRefusals, NameTheKeyTheTensorAndTheFile) {
  prenorm_test::TempDir dir("prenorm-hf-bloom");
  const auto load = [](const hf::Fixture& g) { return io::load_hf_bloom<double>(g.model_path()); };
  const hf::Fixture post = hf::write_bloom_fixture(
      dir / "post", {.apply_residual_connection_post_layernorm = true}, Dtype::F32, 5);
  prenorm_test::expect_error([&] { load(post); }, {"hf_bloom", "config.json",
                                            "'apply_residual_connection_post_layernorm' is true"});
  const hf::Fixture f = hf::write_bloom_fixture(dir / "ok", {}, Dtype::F32, 5);
  const hf::Fixture missing = rewrite(f, dir / "missing", [](auto&, auto& t) {
    t.erase("transformer.word_embeddings_layernorm.bias");
  });
  prenorm_test::expect_error([&] { load(missing); }, {"missing tensor 'transformer.word_embeddings_layernorm.bias'", "model.safetensors"});
  const hf::Fixture shape = rewrite(f, dir / "shape", [](auto&, auto& t) {
    t["transformer.h.2.self_attention.query_key_value.bias"] = t.at("transformer.h.2.self_attention.dense.bias");
  });
  prenorm_test::expect_error([&] { load(shape); }, {"tensor 'transformer.h.2.self_attention.query_key_value.bias' has shape [48], expected [144]"});
  const hf::Fixture mixed = rewrite(f, dir / "mixed", [](auto&, auto& t) {
    t["word_embeddings.weight"] = t.at("transformer.word_embeddings.weight");
  });
  prenorm_test::expect_error([&] { load(mixed); }, {"has both 'word_embeddings.weight' and 'transformer.word_embeddings.weight'"});
}

TEST(HfBloom, UntiedHeadAndTheEmbeddingNormBecomeTables) {
  prenorm_test::TempDir dir("prenorm-hf-bloom");
  const hf::Fixture f = hf::write_bloom_fixture(dir / "ok", {}, Dtype::F32, 9);
  const hf::Fixture g = rewrite(f, dir / "untied", [](auto& c, auto& t) {
    c["tie_word_embeddings"] = false;
    c["seq_length"] = 40;
    t["lm_head.weight"] = t.at("transformer.word_embeddings.weight");
    for (double& x : t["lm_head.weight"].values) x = 0.25 - x;
  });
  const std::vector<int> tokens = hf::random_tokens(g, 20, 4);
  const auto model = io::load_hf_bloom<double>(g.model_path());
  EXPECT_EQ(model.config.context, 40);
  EXPECT_EQ(model.config.activation, prenorm::Activation::GeluTanhBloom);
  EXPECT_FALSE(model.config.learned_positions);
  EXPECT_LE(max_relative_error(model.forward(TokenBatch{tokens, 1, Index(tokens.size())}),
                           hf::reference_logits(g, tokens)), 1e-12);
  // The tied file: prenorm's head holds the raw E (its token table, LN_emb(E), is checked by the logits).
  const auto tied = io::load_hf_bloom<double>(f.model_path());
  const hf::HfTensor& e = f.tensors.at("transformer.word_embeddings.weight");
  EXPECT_EQ(tied.head.weight(3, 5), e.values[3 * 48 + 5]);
  EXPECT_FALSE(tied.config.tied);
}

// BLOOM's GELU: forward against the long double formula of bloom_gelu_forward,
// backward against central differences.
TEST(HfBloom, GeluTanhBloomIsBloomsGelu) {
  RowMatrix<double> x(3, 40);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = -6.0 + 12.0 * double(i) / double(x.size() - 1);
  RowMatrix<double> y(x.rows(), x.cols()), plain(x.rows(), x.cols());
  prenorm::activation_forward(prenorm::Activation::GeluTanhBloom, x, y);
  prenorm::activation_forward(prenorm::Activation::GeluTanh, x, plain);
  double worst = 0, apart = 0;
  for (Index i = 0; i < x.size(); ++i) {
    const long double v = x.data()[i];
    const long double ref = v * 0.5L * (1.0L + std::tanh(0.79788456L * v * (1.0L + 0.044715L * v * v)));
    worst = std::max(worst, double(std::abs(y.data()[i] - ref)));
    apart = std::max(apart, std::abs(y.data()[i] - plain.data()[i]));
  }
  EXPECT_LE(worst, 1e-15);
  EXPECT_GT(apart, 1e-11);  // not GeluTanh
  RowMatrix<double> dy = RowMatrix<double>::Ones(x.rows(), x.cols()), dx(x.rows(), x.cols());
  prenorm::activation_backward<double>(prenorm::Activation::GeluTanhBloom, dy, x, dx);
  const double h = 1e-5;
  for (Index i = 0; i < x.size(); ++i) {
    const long double v = x.data()[i];
    const auto f = [](long double u) {
      return u * 0.5L * (1.0L + std::tanh(0.79788456L * u * (1.0L + 0.044715L * u * u)));
    };
    const double numeric = double((f(v + h) - f(v - h)) / (2 * h));
    EXPECT_NEAR(dx.data()[i], numeric, 1e-9) << "x = " << x.data()[i];
  }
  prenorm::Activation back{};
  EXPECT_TRUE(prenorm::activation_from_name("gelu_tanh_bloom", back));
  EXPECT_EQ(back, prenorm::Activation::GeluTanhBloom);
}

}  // namespace

namespace {

// Without model_type, the architectures name the family; a family the loaders
// do not know stays "not a model file prenorm knows".
TEST(HfDecoderDetection, ByArchitecturesAndUnknownFamilies) {
  prenorm_test::TempDir dir("prenorm-hf-detect");
  const hf::Fixture f = hf::write_bloom_fixture(dir / "bloom", {.prefix = false}, Dtype::F32, 3);
  const hf::Fixture g = rewrite(f, dir / "architectures", [](auto& c, auto&) { c.erase("model_type"); });
  EXPECT_EQ(io::detect_layout(io::SafetensorsFile(g.model_path())), io::Layout::HfBloom);
  const hf::Fixture other = rewrite(f, dir / "other", [](auto& c, auto&) {
    c["model_type"] = "falcon";
    c["architectures"] = {"FalconForCausalLM"};
  });
  prenorm_test::expect_error([&] { (void)io::load_any_model<double>(other.model_path()); },
                             {"not a model file prenorm knows"});
}

}  // namespace
