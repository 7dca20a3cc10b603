// The Hugging Face loaders of the decoder families GPT-NeoX / Pythia, OPT,
// Phi and GPT-J (io/hf_gpt_neox.hpp, hf_opt.hpp, hf_phi.hpp, hf_gptj.hpp),
// against the checkpoints of tests/support/hf_fixtures.hpp and the
// long-double references of tests/support/hf_reference.hpp (written from the
// Hugging Face modeling code, independent of prenorm). For each family and
// each variant of its fixture (F32, F16 and BF16 files):
//  - load_hf_<family><double> gives the reference logits within 1e-12 and
//    <float> within 1e-5 (max |diff| / max |ref|);
//  - KV-cache decoding (Session prefill, then step token by token) gives
//    the rows of the full forward;
//  - convert<PreRMSNorm>, convert<PreCRMSNorm>, and each back to PreLN, give
//    the reference logits (1e-12 in double);
//  - load_any_model detects the layout from config.json's model_type, and
//    from architectures without it;
//  - the refusals (settings prenorm does not implement; missing, unknown and
//    misshapen tensors) name the key or the tensor.

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "support/hf_fixtures.hpp"
#include "support/hf_reference.hpp"
#include "support/hf_test_util.hpp"
#include "support/temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
namespace hf = prenorm_test::hf;
using prenorm::Arch;
using prenorm::Gpt;
using prenorm::Session;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::TokenBatch;
using io::Dtype;
using prenorm_test::hf::error_of;
using prenorm_test::hf::expect_error;
using prenorm_test::hf::max_relative_error;
using prenorm_test::hf::tolerance;

// Tiny models: OpenMP fork-joins cost more than the work (see convert_test_util.hpp).
[[maybe_unused]] const bool kSingleThreaded = (prenorm::set_num_threads(1), true);

template <class S>
RowMatrix<S> logits_of(const Gpt<Arch::PreLN, S>& model, const std::vector<int>& tokens) {
  return model.forward(TokenBatch{tokens, 1, Index(tokens.size())});
}

template <Arch A, class S>
RowMatrix<S> any_logits(const Gpt<A, S>& model, const std::vector<int>& tokens) {
  return model.forward(TokenBatch{tokens, 1, Index(tokens.size())});
}

// Prefill of the first `prompt` tokens, then one step per token: the rows of
// the full forward.
template <Arch A, class S>
void expect_decoding_matches_forward(const Gpt<A, S>& model, const std::vector<int>& tokens,
                                     Index prompt) {
  const RowMatrix<S> full = any_logits(model, tokens);
  Session<A, S> session(model);
  const std::vector<int> head(tokens.begin(), tokens.begin() + prompt);
  const RowMatrix<S> first = session.prefill(TokenBatch{head, 1, prompt}, Index(tokens.size()));
  EXPECT_LE(max_relative_error(first, full.topRows(prompt)), tolerance<S>()) << "prefill";
  for (Index t = prompt; t < Index(tokens.size()); ++t) {
    const int next = tokens[std::size_t(t)];
    const RowMatrix<S> row = session.step(std::span<const int>(&next, 1));
    EXPECT_LE(max_relative_error(row, full.row(t)), tolerance<S>()) << "step " << t;
  }
}

// Everything a loaded family must do, for the fixture `f` and its loader.
template <class Load>
void check_family(const hf::Fixture& f, const Load& load, io::Layout layout) {
  const std::vector<int> tokens = hf::random_tokens(f, 13, 1234);
  const hf::Mat reference = hf::reference_logits(f, tokens);

  const Gpt<Arch::PreLN, double> model = load.template operator()<double>(f);
  EXPECT_LE(max_relative_error(logits_of(model, tokens), reference), 1e-12) << "double";
  const Gpt<Arch::PreLN, float> model_f = load.template operator()<float>(f);
  EXPECT_LE(max_relative_error(logits_of(model_f, tokens), reference), 1e-5) << "float";

  expect_decoding_matches_forward(model, tokens, 5);
  expect_decoding_matches_forward(model_f, tokens, 1);

  const auto rms = prenorm::convert<Arch::PreRMSNorm>(model);
  const auto crms = prenorm::convert<Arch::PreCRMSNorm>(model);
  EXPECT_LE(max_relative_error(any_logits(rms, tokens), reference), 1e-12) << "pre_rmsnorm";
  EXPECT_LE(max_relative_error(any_logits(crms, tokens), reference), 1e-12) << "pre_crmsnorm";
  EXPECT_LE(max_relative_error(any_logits(prenorm::convert<Arch::PreLN>(rms), tokens), reference),
            1e-12) << "pre_rmsnorm -> pre_ln";
  EXPECT_LE(max_relative_error(any_logits(prenorm::convert<Arch::PreLN>(crms), tokens), reference),
            1e-12) << "pre_crmsnorm -> pre_ln";
  expect_decoding_matches_forward(crms, tokens, 4);
  if (model.config.tied) {  // keeping the head tied to the original table
    const prenorm::ConvertOptions keep{.tied = prenorm::TiedPolicy::Keep};
    const auto rms_keep = prenorm::convert<Arch::PreRMSNorm>(model, keep);
    const auto crms_keep = prenorm::convert<Arch::PreCRMSNorm>(model, keep);
    EXPECT_LE(max_relative_error(any_logits(rms_keep, tokens), reference), 1e-12) << "rms keep";
    EXPECT_LE(max_relative_error(any_logits(crms_keep, tokens), reference), 1e-12) << "crms keep";
    EXPECT_LE(max_relative_error(any_logits(prenorm::convert<Arch::PreLN>(crms_keep, keep), tokens),
                                 reference), 1e-12) << "crms keep -> pre_ln";
    expect_decoding_matches_forward(crms_keep, tokens, 3);
  }

  const io::LoadedModel<double> loaded = io::load_any_model<double>(f.model_path());
  EXPECT_EQ(loaded.layout, layout);
  EXPECT_EQ(loaded.dtype, f.dtype);
  EXPECT_EQ(loaded.config_path, f.config_path());
  ASSERT_EQ(loaded.model.index(), 0u);
  EXPECT_TRUE(logits_of(std::get<0>(loaded.model), tokens) == logits_of(model, tokens));
}

const Dtype kDtypes[] = {Dtype::F32, Dtype::F16, Dtype::BF16};

std::string dtype_text(Dtype dtype) { return std::string(io::dtype_name(dtype)); }

// The fixture `f` rewritten: its config changed by `edit_config`, its tensors by `edit_tensors`.
hf::Fixture rewrite(const hf::Fixture& f, const fs::path& dir,
                    const std::function<void(nlohmann::ordered_json&)>& edit_config,
                    const std::function<void(hf::HfTensors&)>& edit_tensors = {}) {
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(f.config.dump());
  hf::HfTensors tensors = f.tensors;
  if (edit_config) edit_config(config);
  if (edit_tensors) edit_tensors(tensors);
  return hf::write_fixture(dir, config, tensors, f.dtype);
}

// The refusals every family shares: a config key set to a value prenorm does
// not implement, and missing / unknown / misshapen tensors, each named.
template <class Load>
void check_tensor_refusals(const hf::Fixture& f, const Load& load, const std::string& tensor) {
  prenorm_test::TempDir dir("prenorm-hf-refusal");
  const auto load_double = [&](const hf::Fixture& g) { (void)load.template operator()<double>(g); };
  {
    const hf::Fixture g = rewrite(f, dir / "missing", {}, [&](hf::HfTensors& t) { t.erase(tensor); });
    expect_error([&] { load_double(g); }, {g.model_path().string(), "missing tensor '" + tensor + "'"});
  }
  {
    const hf::Fixture g = rewrite(f, dir / "unknown", {}, [&](hf::HfTensors& t) {
      t["extra.weight"] = hf::HfTensor{{2}, {1.0, 2.0}};
    });
    expect_error([&] { load_double(g); }, {"unknown tensor 'extra.weight'"});
  }
  {
    const hf::Fixture g = rewrite(f, dir / "shape", {}, [&](hf::HfTensors& t) {
      hf::HfTensor& x = t.at(tensor);
      x.shape.back() -= 1;
      x.values.resize(x.values.size() / std::size_t(x.shape.back() + 1) * std::size_t(x.shape.back()));
    });
    expect_error([&] { load_double(g); }, {"tensor '" + tensor + "' has shape"});
  }
}

// A config key set to `value` is refused with a message naming `key`.
template <class Load>
void expect_config_refused(const hf::Fixture& f, const Load& load, const std::string& key,
                           const nlohmann::ordered_json& value, const std::string& mention) {
  SCOPED_TRACE(key);
  prenorm_test::TempDir dir("prenorm-hf-refusal");
  const hf::Fixture g = rewrite(f, dir.path(), [&](nlohmann::ordered_json& c) {
    // "a.b": key b of the object a
    if (const auto dot = key.find('.'); dot != std::string::npos)
      c[key.substr(0, dot)][key.substr(dot + 1)] = value;
    else
      c[key] = value;
  });
  expect_error([&] { (void)load.template operator()<double>(g); },
               {g.config_path().string(), "'" + key + "'", mention});
}

// ===========================================================================
// GPT-NeoX / Pythia
// ===========================================================================

struct LoadNeox {
  template <class S>
  Gpt<Arch::PreLN, S> operator()(const hf::Fixture& f) const {
    return io::load_hf_gpt_neox<S>(f.model_path());
  }
};

struct NeoxCase {
  const char* name;
  hf::NeoxOptions options;
};

const NeoxCase kNeoxCases[] = {
    {"parallel", {}},
    {"sequential", {.parallel_residual = false}},
    {"full_rotary_base_500", {.rotary_pct = 1.0, .rotary_emb_base = 500.0}},
    {"rope_parameters", {.rotary_pct = 0.5, .rotary_emb_base = 20000.0, .rope_parameters = true}},
    {"gelu_new_mlp_96", {.sizes = {.mlp = 96}, .hidden_act = "gelu_new"}},
};

TEST(HfGptNeox, LogitsDecodingAndConversionsMatchTheReference) {
  for (const NeoxCase& c : kNeoxCases)
    for (Dtype dtype : kDtypes) {
      SCOPED_TRACE(std::string(c.name) + " " + dtype_text(dtype));
      prenorm_test::TempDir dir("prenorm-hf-neox");
      const hf::Fixture f = hf::write_gpt_neox_fixture(dir.path(), c.options, dtype, 11);
      check_family(f, LoadNeox{}, io::Layout::HfGptNeox);
    }
}

TEST(HfGptNeox, MapsTheConfig) {
  prenorm_test::TempDir dir("prenorm-hf-neox");
  const hf::Fixture f = hf::write_gpt_neox_fixture(dir.path(), {.parallel_residual = false}, Dtype::F32, 3);
  const prenorm::TransformerConfig c = io::gpt_neox_config_from_json(f.config, "config.json");
  EXPECT_EQ(c.width, 32);
  EXPECT_EQ(c.heads, 4);
  EXPECT_EQ(c.layers, 3);
  EXPECT_EQ(c.vocab, 80);
  EXPECT_EQ(c.context, 64);
  EXPECT_EQ(c.mlp_width, 128);
  EXPECT_EQ(c.topology, prenorm::BlockTopology::Sequential);
  EXPECT_EQ(c.activation, prenorm::Activation::GeluErf);
  EXPECT_EQ(c.rotary, (prenorm::Rotary{.dims = 2, .pairing = prenorm::RotaryPairing::RotateHalf, .base = 10000}));
  EXPECT_FALSE(c.learned_positions);
  EXPECT_FALSE(c.tied);
  EXPECT_FALSE(c.head_bias);
}

TEST(HfGptNeox, WithoutAttentionBiasAndWithATiedHead) {
  prenorm_test::TempDir dir("prenorm-hf-neox");
  const hf::Fixture f = hf::write_gpt_neox_fixture(dir / "base", {}, Dtype::F32, 5);
  const std::vector<int> tokens = hf::random_tokens(f, 9, 77);
  // attention_bias false: HF builds query_key_value and dense without bias.
  const hf::Fixture nobias = rewrite(f, dir / "nobias", [](auto& c) { c["attention_bias"] = false; },
                                     [](hf::HfTensors& t) {
                                       for (auto it = t.begin(); it != t.end();)
                                         it = it->first.find("attention.") != std::string::npos &&
                                                      it->first.ends_with(".bias")
                                                  ? t.erase(it)
                                                  : std::next(it);
                                     });
  EXPECT_LE(max_relative_error(logits_of(LoadNeox{}.operator()<double>(nobias), tokens),
                               hf::reference_logits(nobias, tokens)), 1e-12);
  // tie_word_embeddings true: the head is embed_in, embed_out absent or a copy.
  for (bool copy : {false, true}) {
    const hf::Fixture tied = rewrite(f, dir / (copy ? "copy" : "tied"),
                                     [](auto& c) { c["tie_word_embeddings"] = true; },
                                     [copy](hf::HfTensors& t) {
                                       t.erase("embed_out.weight");
                                       if (copy) t["embed_out.weight"] = t.at("gpt_neox.embed_in.weight");
                                     });
    const auto model = LoadNeox{}.operator()<double>(tied);
    EXPECT_TRUE(model.config.tied);
    EXPECT_LE(max_relative_error(logits_of(model, tokens), hf::reference_logits(tied, tokens)), 1e-12);
  }
  const hf::Fixture differs = rewrite(f, dir / "differs", [](auto& c) { c["tie_word_embeddings"] = true; });
  expect_error([&] { (void)LoadNeox{}.operator()<double>(differs); },
               {"'embed_out.weight' differs from 'gpt_neox.embed_in.weight'", "tie_word_embeddings"});
}

TEST(HfGptNeox, Refusals) {
  prenorm_test::TempDir dir("prenorm-hf-neox");
  const hf::Fixture f = hf::write_gpt_neox_fixture(dir.path(), {}, Dtype::F32, 7);
  expect_config_refused(f, LoadNeox{}, "rope_scaling", {{"type", "linear"}, {"factor", 2.0}},
                        "without scaling");
  expect_config_refused(f, LoadNeox{}, "rope_parameters.rope_type", "linear", "\"default\"");
  expect_config_refused(f, LoadNeox{}, "rotary_pct", 0.375, "even");  // 3 of 8
  expect_config_refused(f, LoadNeox{}, "model_type", "gpt2", "\"gpt_neox\"");
  expect_config_refused(f, LoadNeox{}, "hidden_act", "gelu_fast", "does not implement");
  expect_config_refused(f, LoadNeox{}, "use_parallel_residual", "yes", "boolean");
  check_tensor_refusals(f, LoadNeox{}, "gpt_neox.layers.1.attention.query_key_value.weight");
  check_tensor_refusals(f, LoadNeox{}, "embed_out.weight");
}

// ===========================================================================
// OPT
// ===========================================================================

struct LoadOpt {
  template <class S>
  Gpt<Arch::PreLN, S> operator()(const hf::Fixture& f) const {
    return io::load_hf_opt<S>(f.model_path());
  }
};

TEST(HfOpt, LogitsDecodingAndConversionsMatchTheReference) {
  for (hf::OptHead head : {hf::OptHead::Omitted, hf::OptHead::TiedCopy, hf::OptHead::Untied})
    for (bool prefix : {true, false})
      for (Dtype dtype : kDtypes) {
        SCOPED_TRACE("head " + std::to_string(int(head)) + (prefix ? " model.decoder. " : " decoder. ") +
                     dtype_text(dtype));
        prenorm_test::TempDir dir("prenorm-hf-opt");
        const hf::Fixture f = hf::write_opt_fixture(dir.path(), {.head = head, .prefix = prefix}, dtype, 21);
        check_family(f, LoadOpt{}, io::Layout::HfOpt);
        const auto model = LoadOpt{}.operator()<double>(f);
        EXPECT_EQ(model.config.tied, head != hf::OptHead::Untied);
        EXPECT_EQ(model.config.position_offset, 2);
        EXPECT_EQ(model.position_embedding.table.rows(), 64 + 2);
      }
}

TEST(HfOpt, WithoutBiases) {
  prenorm_test::TempDir dir("prenorm-hf-opt");
  const hf::Fixture f = hf::write_opt_fixture(dir / "base", {}, Dtype::F32, 23);
  const hf::Fixture g = rewrite(f, dir / "nobias", [](auto& c) { c["enable_bias"] = false; },
                                [](hf::HfTensors& t) {
                                  for (auto it = t.begin(); it != t.end();)
                                    it = (it->first.find("_proj.bias") != std::string::npos ||
                                          it->first.find(".fc") != std::string::npos) &&
                                                 it->first.ends_with(".bias")
                                             ? t.erase(it)
                                             : std::next(it);
                                });
  ASSERT_EQ(g.tensors.count("model.decoder.layers.0.fc1.bias"), 0u);
  check_family(g, LoadOpt{}, io::Layout::HfOpt);
}

TEST(HfOpt, Refusals) {
  prenorm_test::TempDir dir("prenorm-hf-opt");
  // OPT-350m's post-LN layout.
  const hf::Fixture post = hf::write_opt_fixture(dir / "post", {.do_layer_norm_before = false}, Dtype::F32, 25);
  expect_error([&] { (void)LoadOpt{}.operator()<double>(post); },
               {post.config_path().string(), "'do_layer_norm_before' is false", "post-LN"});
  expect_error([&] { (void)io::load_any_model<double>(post.model_path()); }, {"'do_layer_norm_before'"});
  const hf::Fixture f = hf::write_opt_fixture(dir / "base", {}, Dtype::F32, 27);
  expect_config_refused(f, LoadOpt{}, "word_embed_proj_dim", 16, "project_in");
  expect_config_refused(f, LoadOpt{}, "_remove_final_layer_norm", true, "final LayerNorm");
  expect_config_refused(f, LoadOpt{}, "layer_norm_elementwise_affine", false, "only true");
  expect_config_refused(f, LoadOpt{}, "activation_function", "silu", "does not implement");
  expect_config_refused(f, LoadOpt{}, "model_type", "gpt_neox", "\"opt\"");
  check_tensor_refusals(f, LoadOpt{}, "model.decoder.embed_positions.weight");
  check_tensor_refusals(f, LoadOpt{}, "model.decoder.layers.2.self_attn.k_proj.bias");
  // An untied config needs lm_head.weight; a tied one refuses a different one.
  const hf::Fixture untied = rewrite(f, dir / "untied", [](auto& c) { c["tie_word_embeddings"] = false; });
  expect_error([&] { (void)LoadOpt{}.operator()<double>(untied); }, {"missing tensor 'lm_head.weight'"});
  const hf::Fixture other = hf::write_opt_fixture(dir / "other", {.head = hf::OptHead::Untied}, Dtype::F32, 29);
  const hf::Fixture differs = rewrite(other, dir / "differs", [](auto& c) { c["tie_word_embeddings"] = true; });
  expect_error([&] { (void)LoadOpt{}.operator()<double>(differs); },
               {"'lm_head.weight' differs from 'model.decoder.embed_tokens.weight'"});
}

// ===========================================================================
// Phi
// ===========================================================================

struct LoadPhi {
  template <class S>
  Gpt<Arch::PreLN, S> operator()(const hf::Fixture& f) const {
    return io::load_hf_phi<S>(f.model_path());
  }
};

struct PhiCase {
  const char* name;
  hf::PhiOptions options;
};

const PhiCase kPhiCases[] = {
    {"half_rotary", {}},
    {"full_rotary_theta_500", {.partial_rotary_factor = 1.0, .rope_theta = 500.0}},
    {"quarter_rotary_kv2", {.partial_rotary_factor = 0.25, .kv_heads = 2}},
    {"multi_query_rope_parameters", {.rope_theta = 30000.0, .kv_heads = 1, .rope_parameters = true}},
};

TEST(HfPhi, LogitsDecodingAndConversionsMatchTheReference) {
  for (const PhiCase& c : kPhiCases)
    for (Dtype dtype : kDtypes) {
      SCOPED_TRACE(std::string(c.name) + " " + dtype_text(dtype));
      prenorm_test::TempDir dir("prenorm-hf-phi");
      const hf::Fixture f = hf::write_phi_fixture(dir.path(), c.options, dtype, 31);
      check_family(f, LoadPhi{}, io::Layout::HfPhi);
    }
}

TEST(HfPhi, MapsTheConfig) {
  prenorm_test::TempDir dir("prenorm-hf-phi");
  const hf::Fixture f = hf::write_phi_fixture(dir.path(), {.rope_theta = 30000.0, .kv_heads = 2}, Dtype::F32, 33);
  const prenorm::TransformerConfig c = io::phi_config_from_json(f.config, "config.json");
  EXPECT_EQ(c.topology, prenorm::BlockTopology::ParallelSharedNorm);
  EXPECT_EQ(c.kv_head_count(), 2);
  EXPECT_EQ(c.rotary, (prenorm::Rotary{.dims = 4, .pairing = prenorm::RotaryPairing::RotateHalf, .base = 30000}));
  EXPECT_EQ(c.activation, prenorm::Activation::GeluTanh);
  EXPECT_FALSE(c.learned_positions);
  EXPECT_FALSE(c.tied);
  EXPECT_TRUE(c.head_bias);
}

TEST(HfPhi, Refusals) {
  prenorm_test::TempDir dir("prenorm-hf-phi");
  const hf::Fixture f = hf::write_phi_fixture(dir.path(), {}, Dtype::F32, 35);
  expect_config_refused(f, LoadPhi{}, "qk_layernorm", true, "no LayerNorm on q and k");
  expect_config_refused(f, LoadPhi{}, "tie_word_embeddings", true, "lm_head");
  expect_config_refused(f, LoadPhi{}, "rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}, "without scaling");
  expect_config_refused(f, LoadPhi{}, "partial_rotary_factor", 0.375, "even");
  expect_config_refused(f, LoadPhi{}, "num_key_value_heads", 3, "multiple");
  expect_config_refused(f, LoadPhi{}, "model_type", "phi3", "\"phi\"");
  check_tensor_refusals(f, LoadPhi{}, "model.layers.0.self_attn.k_proj.weight");
  check_tensor_refusals(f, LoadPhi{}, "lm_head.bias");
}

// ===========================================================================
// GPT-J
// ===========================================================================

struct LoadGptj {
  template <class S>
  Gpt<Arch::PreLN, S> operator()(const hf::Fixture& f) const {
    return io::load_hf_gptj<S>(f.model_path());
  }
};

struct GptjCase {
  const char* name;
  hf::GptjOptions options;
};

const GptjCase kGptjCases[] = {
    {"rotary_4_of_8", {}},
    {"rotary_8_of_8", {.rotary_dim = 8}},
    {"rotary_2_mlp_96", {.sizes = {.mlp = 96}, .rotary_dim = 2}},
};

TEST(HfGptj, LogitsDecodingAndConversionsMatchTheReference) {
  for (const GptjCase& c : kGptjCases)
    for (Dtype dtype : kDtypes) {
      SCOPED_TRACE(std::string(c.name) + " " + dtype_text(dtype));
      prenorm_test::TempDir dir("prenorm-hf-gptj");
      const hf::Fixture f = hf::write_gptj_fixture(dir.path(), c.options, dtype, 41);
      check_family(f, LoadGptj{}, io::Layout::HfGptj);
    }
}

TEST(HfGptj, MapsTheConfigAndZeroBiases) {
  prenorm_test::TempDir dir("prenorm-hf-gptj");
  const hf::Fixture f = hf::write_gptj_fixture(dir.path(), {}, Dtype::F32, 43);
  const auto model = LoadGptj{}.operator()<double>(f);
  const prenorm::TransformerConfig& c = model.config;
  EXPECT_EQ(c.topology, prenorm::BlockTopology::ParallelSharedNorm);
  EXPECT_EQ(c.rotary, (prenorm::Rotary{.dims = 4, .pairing = prenorm::RotaryPairing::Interleaved, .base = 10000}));
  EXPECT_EQ(c.mlp_width, 128);
  EXPECT_TRUE(c.head_bias);
  // q, k, v and out_proj have no bias: zero ones, of the full size.
  EXPECT_EQ(model.blocks[0].attn.qkv.bias.size(), 96);
  EXPECT_EQ(model.blocks[0].attn.qkv.bias.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ(model.blocks[2].attn.out.bias.cwiseAbs().maxCoeff(), 0.0);
  // The file has GPT-2's transformer.wte.weight: the tensor names alone say
  // GPT-2, config.json's model_type (beside the file) says GPT-J and decides.
  const io::SafetensorsFile file(f.model_path());
  EXPECT_EQ(io::detect_layout(file), io::Layout::HfGptj);
  EXPECT_EQ(io::detect_layout(file, f.config_path()), io::Layout::HfGptj);
  // Without a config.json the names decide.
  std::filesystem::create_directories(f.dir / "alone");
  std::filesystem::copy_file(f.model_path(), f.dir / "alone" / "model.safetensors");
  EXPECT_EQ(io::detect_layout(io::SafetensorsFile(f.dir / "alone" / "model.safetensors")),
            io::Layout::HfGpt2);
}

TEST(HfGptj, Refusals) {
  prenorm_test::TempDir dir("prenorm-hf-gptj");
  const hf::Fixture f = hf::write_gptj_fixture(dir.path(), {}, Dtype::F32, 45);
  expect_config_refused(f, LoadGptj{}, "tie_word_embeddings", true, "lm_head");
  expect_config_refused(f, LoadGptj{}, "rotary_dim", 3, "even");
  expect_config_refused(f, LoadGptj{}, "rotary_dim", 10, "<= the head width");
  expect_config_refused(f, LoadGptj{}, "rotary_dim", nullptr, "missing");
  expect_config_refused(f, LoadGptj{}, "activation_function", "gelu_fast", "does not implement");
  expect_config_refused(f, LoadGptj{}, "model_type", "gpt2", "\"gptj\"");
  check_tensor_refusals(f, LoadGptj{}, "transformer.h.1.attn.v_proj.weight");
  check_tensor_refusals(f, LoadGptj{}, "transformer.h.0.mlp.fc_out.weight");
  // A bias GPT-J does not have is an unknown tensor.
  const hf::Fixture g = rewrite(f, dir / "qbias", {}, [](hf::HfTensors& t) {
    t["transformer.h.0.attn.q_proj.bias"] = hf::HfTensor{{32}, std::vector<double>(32, 0.5)};
  });
  expect_error([&] { (void)LoadGptj{}.operator()<double>(g); },
               {"unknown tensor 'transformer.h.0.attn.q_proj.bias'"});
}

// Detection needs config.json; without model_type, architectures decides.
TEST(HfDecoders, DetectedByModelTypeOrArchitectures) {
  prenorm_test::TempDir dir("prenorm-hf-detect");
  const hf::Fixture f = hf::write_gpt_neox_fixture(dir / "neox", {}, Dtype::BF16, 9);
  const io::SafetensorsFile file(f.model_path());
  EXPECT_EQ(io::detect_layout(file, std::nullopt), io::Layout::HfGptNeox);
  const hf::Fixture g = rewrite(f, dir / "arch", [](auto& c) { c.erase("model_type"); });
  EXPECT_EQ(io::detect_layout(io::SafetensorsFile(g.model_path()), std::nullopt),
            io::Layout::HfGptNeox);
  // Without config.json the names alone do not tell: not a model file prenorm knows.
  fs::remove(g.config_path());
  expect_error([&] { (void)io::load_any_model<double>(g.model_path()); },
               {"not a model file prenorm knows"});
  expect_error([&] { (void)io::load_hf_gpt_neox<double>(g.model_path()); },
               {"hf_gpt_neox", g.config_path().string(), "needs its config.json"});
  // A config.json given explicitly.
  const auto loaded = io::load_any_model<float>(g.model_path(), f.config_path());
  EXPECT_EQ(loaded.layout, io::Layout::HfGptNeox);
  EXPECT_EQ(loaded.dtype, Dtype::BF16);
}

}  // namespace
