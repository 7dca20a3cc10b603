// Self-checks of the Hugging Face test support: the checkpoints of
// tests/support/hf_fixtures.hpp and the long-double references of
// tests/support/hf_reference.hpp, which the loaders of issue 19 are tested
// against. Each check can fail:
//  - GPT-2 (which prenorm reads already): the reference of a GPT-2 fixture
//    equals prenorm's logits (load_hf_gpt2<double>), F32 / F64 / F16 files;
//  - families chained to GPT-2 by an exact rewriting of their tensors into
//    GPT-2's layout, then compared with prenorm: GPT-BigCode without
//    multi-query, GPT-Neo on a sequence within its window (q scaled by
//    sqrt(head_dim) for GPT-2's 1/sqrt(head_dim)), GPT-NeoX sequential
//    without rotary (wpe = 0, exact GELU, untied head);
//  - families chained to each other: OPT = GPT-2's reference with positions
//    shifted by 2 and ReLU; GPT-J = Phi with each head's rotary rows
//    de-interleaved (rotate_every_two vs rotate_half); GPT-NeoX parallel
//    with ln2 = ln1 = Phi; BigCode multi-query = multi-head with the kv head
//    repeated; Phi grouped kv = repeated kv;
//  - the building blocks: both rotary pairings equal a complex
//    multiplication, rotary scores depend on the relative position only,
//    ALiBi slopes for 6, 8 and 12 heads from the rule by hand, ALiBi and
//    GPT-Neo's window on a closed-form attention;
//  - every family and variant: later tokens do not change earlier logits and
//    earlier tokens do change later ones; adding a constant to every entry of
//    the embeddings and of the residual writers' biases changes each row of
//    logits by one constant only (every norm centers; a shift of one entry
//    does not pass); GPT-Neo's local layers reach exactly layers * (window-1)
//    tokens back; OPT reads positions from row 2; BLOOM with zero blocks is
//    its norms alone (residual before or after the norms); F16 and BF16 fixtures hold
//    values of their dtype, close to the F32 fixture's, with close logits;
//  - the configs and names are the families' (model_type, architectures,
//    a few tensors and shapes), and the reference refuses what it does not
//    implement.

#include <gtest/gtest.h>

#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "support/hf_fixtures.hpp"
#include "support/hf_reference.hpp"
#include "support/temp_dir.hpp"

#include <cmath>
#include <complex>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using namespace prenorm_test::hf;

[[maybe_unused]] const bool kSingleThreaded = (prenorm::set_num_threads(1), true);

using prenorm_test::TempDir;  // each test's checkpoints, removed after it

void report(const std::string& what, double error) {
  std::printf("[ max error ] %-64s %.3g\n", what.c_str(), error);
}

// prenorm's logits of the GPT-2 checkpoint in `dir` (config.json beside it).
prenorm::RowMatrix<double> prenorm_gpt2_logits(const fs::path& dir, const std::vector<int>& tokens) {
  const auto model = io::load_hf_gpt2<double>(dir / "model.safetensors");
  return model.forward(std::vector<std::vector<int>>{tokens});
}

// --- tensor rewriting ------------------------------------------------------------

HfTensor zeros(std::vector<std::int64_t> shape) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) n *= s;
  return HfTensor{std::move(shape), std::vector<double>(std::size_t(n), 0.0)};
}

double& at(HfTensor& t, std::int64_t r, std::int64_t c) {
  return t.values[std::size_t(r * t.shape[1] + c)];
}
double at(const HfTensor& t, std::int64_t r, std::int64_t c) {
  return t.values[std::size_t(r * t.shape[1] + c)];
}

HfTensor transposed(const HfTensor& t) {
  HfTensor r = zeros({t.shape[1], t.shape[0]});
  for (std::int64_t i = 0; i < t.shape[0]; ++i)
    for (std::int64_t j = 0; j < t.shape[1]; ++j) at(r, j, i) = at(t, i, j);
  return r;
}

// Rows rows[0], rows[1], ... of t (a matrix), or entries of a vector.
HfTensor select_rows(const HfTensor& t, const std::vector<std::int64_t>& rows) {
  const std::int64_t width = t.shape.size() == 2 ? t.shape[1] : 1;
  HfTensor r = t;
  r.shape[0] = std::int64_t(rows.size());
  r.values.clear();
  for (std::int64_t row : rows)
    for (std::int64_t c = 0; c < width; ++c) r.values.push_back(t.values[std::size_t(row * width + c)]);
  return r;
}

// The rows of a fused per-head [q, k, v] projection (GPT-NeoX, BLOOM,
// BigCode without multi-query) in GPT-2's order [q | k | v], head by head.
std::vector<std::int64_t> per_head_qkv_to_blocks(int heads, int hd) {
  std::vector<std::int64_t> rows;
  for (int part = 0; part < 3; ++part)
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < hd; ++j) rows.push_back(std::int64_t(h * 3 * hd + part * hd + j));
  return rows;
}

// The parts of a GPT-2 block that other layouts hold under other names:
// the two LayerNorms, and the attention output, MLP in and MLP out
// projections, nn.Linear (out, in) there, Conv1D (in, out) in GPT-2.
struct Gpt2BlockSource {
  std::string ln_1, ln_2, attn_proj, fc, proj;  // names without ".weight" / ".bias"
};

void add_gpt2_block(HfTensors& g, const std::string& h, const HfTensors& from,
                    const Gpt2BlockSource& s) {
  for (const char* x : {".weight", ".bias"}) {
    g[h + "ln_1" + x] = from.at(s.ln_1 + x);
    g[h + "ln_2" + x] = from.at(s.ln_2 + x);
  }
  const std::pair<const char*, const std::string*> linears[] = {
      {"attn.c_proj", &s.attn_proj}, {"mlp.c_fc", &s.fc}, {"mlp.c_proj", &s.proj}};
  for (const auto& [to, source] : linears) {
    g[h + to + ".weight"] = transposed(from.at(*source + ".weight"));
    g[h + to + ".bias"] = from.at(*source + ".bias");
  }
}

// A GPT2Config for rewritten checkpoints.
nlohmann::ordered_json gpt2_config(const nlohmann::json& like, int d, int heads, int layers,
                                   int context, int inner, const std::string& activation,
                                   bool tied) {
  nlohmann::ordered_json c;
  c["activation_function"] = activation;
  c["architectures"] = {"GPT2LMHeadModel"};
  c["layer_norm_epsilon"] = 1e-5;
  c["model_type"] = "gpt2";
  c["n_embd"] = d;
  c["n_head"] = heads;
  c["n_inner"] = inner;
  c["n_layer"] = layers;
  c["n_positions"] = context;
  c["tie_word_embeddings"] = tied;
  c["vocab_size"] = like.at("vocab_size");
  return c;
}

const std::vector<int> kTokens = {3, 17, 42, 8, 8, 61, 0, 79, 25, 33, 12, 70};

// ===========================================================================
// GPT-2: the reference against prenorm
// ===========================================================================

struct Gpt2Case {
  const char* name;
  Gpt2Options options;
  Dtype dtype;
};

class HfReferenceGpt2 : public ::testing::TestWithParam<Gpt2Case> {};

TEST_P(HfReferenceGpt2, EqualsPrenormsLogits) {
  const Gpt2Case& k = GetParam();
  TempDir dir;
  const Fixture f = write_gpt2_fixture(dir / "gpt2", k.options, k.dtype, 5);
  const Mat reference = reference_logits_gpt2(f, kTokens);
  const double error = relative_error_to(prenorm_gpt2_logits(f.dir, kTokens), reference);
  report(std::string("GPT-2 ") + k.name + ": prenorm vs reference", error);
  EXPECT_LT(error, 1e-12);
  // The reference reads the file's values: changing a weight changes it.
  HfTensors changed = f.tensors;
  changed.at(k.options.prefix ? "transformer.h.1.attn.c_attn.weight" : "h.1.attn.c_attn.weight")
      .values[5] += 0.5;
  EXPECT_GT(relative_error(reference_logits_gpt2(f.config, changed, kTokens), reference), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, HfReferenceGpt2,
    ::testing::Values(Gpt2Case{"Prefixed", {}, Dtype::F32},
                      Gpt2Case{"Bare", {.prefix = false}, Dtype::F32},
                      Gpt2Case{"ExactGeluUntied", {.activation = "gelu", .untied_head = true}, Dtype::F64},
                      Gpt2Case{"F16", {}, Dtype::F16}, Gpt2Case{"BF16", {}, Dtype::BF16}),
    [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// Families rewritten into GPT-2's layout and compared with prenorm
// ===========================================================================

// GPT-BigCode without multi-query: c_attn (3d, d) rows per head [q, k, v]
// -> Conv1D (d, 3d) columns [q | k | v]; every nn.Linear transposed.
TEST(HfReferenceChains, BigcodeMultiHeadIsGpt2) {
  TempDir dir;
  const HfSizes s;
  const Fixture f = write_gpt_bigcode_fixture(dir / "bigcode", {.multi_query = false}, Dtype::F32, 7);
  HfTensors g;
  const std::string p = "transformer.";
  g[p + "wte.weight"] = f.tensors.at(p + "wte.weight");
  g[p + "wpe.weight"] = f.tensors.at(p + "wpe.weight");
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    const auto order = per_head_qkv_to_blocks(s.heads, s.head_dim());
    g[h + "attn.c_attn.weight"] = transposed(select_rows(f.tensors.at(h + "attn.c_attn.weight"), order));
    g[h + "attn.c_attn.bias"] = select_rows(f.tensors.at(h + "attn.c_attn.bias"), order);
    add_gpt2_block(g, h, f.tensors, {h + "ln_1", h + "ln_2", h + "attn.c_proj", h + "mlp.c_fc", h + "mlp.c_proj"});
  }
  g[p + "ln_f.weight"] = f.tensors.at(p + "ln_f.weight");
  g[p + "ln_f.bias"] = f.tensors.at(p + "ln_f.bias");
  const Fixture gpt2 = write_fixture(
      dir / "gpt2", gpt2_config(f.config, s.width, s.heads, s.layers, s.context, s.mlp_width(),
                                "gelu_pytorch_tanh", true),
      g, Dtype::F64);
  const Mat reference = reference_logits_gpt_bigcode(f, kTokens);
  const double error = relative_error_to(prenorm_gpt2_logits(gpt2.dir, kTokens), reference);
  report("GPT-BigCode (multi-head) vs prenorm GPT-2", error);
  EXPECT_LT(error, 1e-12);
  EXPECT_LT(relative_error(reference_logits_gpt2(gpt2, kTokens), reference), 1e-15);
}

// GPT-Neo on a sequence no longer than its window, where "local" = "global";
// GPT-Neo does not scale scores, GPT-2 divides them by sqrt(head_dim): q * sqrt(hd).
TEST(HfReferenceChains, GptNeoWithinItsWindowIsGpt2) {
  TempDir dir;
  const HfSizes s;
  const int window = 6;
  const Fixture f = write_gpt_neo_fixture(dir / "neo", {.window_size = window}, Dtype::F32, 8);
  HfTensors g;
  const std::string p = "transformer.";
  g[p + "wte.weight"] = f.tensors.at(p + "wte.weight");
  g[p + "wpe.weight"] = f.tensors.at(p + "wpe.weight");
  const double root = std::sqrt(double(s.head_dim()));
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    const std::string a = h + "attn.attention.";
    HfTensor c_attn = zeros({s.width, 3 * s.width});  // Conv1D (in, out)
    int part = 0;
    for (const char* x : {"q", "k", "v"}) {
      const HfTensor& w = f.tensors.at(a + x + "_proj.weight");  // (out, in)
      for (int o = 0; o < s.width; ++o)
        for (int in = 0; in < s.width; ++in)
          at(c_attn, in, part * s.width + o) = at(w, o, in) * (part == 0 ? root : 1.0);
      ++part;
    }
    g[h + "attn.c_attn.weight"] = c_attn;
    g[h + "attn.c_attn.bias"] = zeros({3 * s.width});
    add_gpt2_block(g, h, f.tensors, {h + "ln_1", h + "ln_2", a + "out_proj", h + "mlp.c_fc", h + "mlp.c_proj"});
  }
  g[p + "ln_f.weight"] = f.tensors.at(p + "ln_f.weight");
  g[p + "ln_f.bias"] = f.tensors.at(p + "ln_f.bias");
  const Fixture gpt2 = write_fixture(
      dir / "gpt2", gpt2_config(f.config, s.width, s.heads, s.layers, s.context, s.mlp_width(),
                                "gelu_new", true),
      g, Dtype::F64);
  const std::vector<int> short_tokens(kTokens.begin(), kTokens.begin() + window);
  const Mat reference = reference_logits_gpt_neo(f, short_tokens);
  const double error = relative_error_to(prenorm_gpt2_logits(gpt2.dir, short_tokens), reference);
  report("GPT-Neo (T <= window) vs prenorm GPT-2", error);
  EXPECT_LT(error, 1e-12);
  // Beyond the window the local layers differ from global ones.
  EXPECT_GT(relative_error_to(prenorm_gpt2_logits(gpt2.dir, kTokens), reference_logits_gpt_neo(f, kTokens)),
            1e-6);
}

// GPT-NeoX sequential without rotary (rotary_pct 0) is GPT-2 without position
// embeddings, with exact GELU and an untied head.
TEST(HfReferenceChains, GptNeoxSequentialWithoutRotaryIsGpt2) {
  TempDir dir;
  const HfSizes s;
  const Fixture f = write_gpt_neox_fixture(
      dir / "neox", {.parallel_residual = false, .rotary_pct = 0.0}, Dtype::F32, 9);
  HfTensors g;
  const std::string p = "gpt_neox.";
  g["wte.weight"] = f.tensors.at(p + "embed_in.weight");
  g["wpe.weight"] = zeros({s.context, s.width});
  const auto order = per_head_qkv_to_blocks(s.heads, s.head_dim());
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    const std::string h = "h." + std::to_string(i) + ".";
    g[h + "attn.c_attn.weight"] =
        transposed(select_rows(f.tensors.at(l + "attention.query_key_value.weight"), order));
    g[h + "attn.c_attn.bias"] = select_rows(f.tensors.at(l + "attention.query_key_value.bias"), order);
    add_gpt2_block(g, h, f.tensors,
                   {l + "input_layernorm", l + "post_attention_layernorm", l + "attention.dense",
                    l + "mlp.dense_h_to_4h", l + "mlp.dense_4h_to_h"});
  }
  g["ln_f.weight"] = f.tensors.at(p + "final_layer_norm.weight");
  g["ln_f.bias"] = f.tensors.at(p + "final_layer_norm.bias");
  g["lm_head.weight"] = f.tensors.at("embed_out.weight");
  const Fixture gpt2 = write_fixture(
      dir / "gpt2", gpt2_config(f.config, s.width, s.heads, s.layers, s.context, s.mlp_width(), "gelu", false),
      g, Dtype::F64);
  const Mat reference = reference_logits_gpt_neox(f, kTokens);
  const double error = relative_error_to(prenorm_gpt2_logits(gpt2.dir, kTokens), reference);
  report("GPT-NeoX (sequential, no rotary) vs prenorm GPT-2", error);
  EXPECT_LT(error, 1e-12);
}

// ===========================================================================
// Families against each other (reference against reference)
// ===========================================================================

// OPT = GPT-2 whose wpe is embed_positions from row 2, with ReLU (OPT scales
// q by head_dim^-0.5 where GPT-2 divides the scores by sqrt(head_dim)).
TEST(HfReferenceChains, OptIsGpt2WithPositionsFromRowTwo) {
  const HfSizes s;
  TempDir dir;
  const Fixture f = write_opt_fixture(dir / "opt", {}, Dtype::F32, 10);
  HfTensors g;
  const std::string p = "model.decoder.";
  g["wte.weight"] = f.tensors.at(p + "embed_tokens.weight");
  std::vector<std::int64_t> rows;
  for (int t = 0; t < s.context; ++t) rows.push_back(t + 2);
  g["wpe.weight"] = select_rows(f.tensors.at(p + "embed_positions.weight"), rows);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    const std::string h = "h." + std::to_string(i) + ".";
    HfTensor c_attn = zeros({s.width, 3 * s.width}), c_attn_bias = zeros({3 * s.width});
    int part = 0;
    for (const char* x : {"q", "k", "v"}) {
      const HfTensor& w = f.tensors.at(l + "self_attn." + x + "_proj.weight");
      const HfTensor& b = f.tensors.at(l + "self_attn." + x + "_proj.bias");
      for (int o = 0; o < s.width; ++o) {
        c_attn_bias.values[std::size_t(part * s.width + o)] = b.values[std::size_t(o)];
        for (int in = 0; in < s.width; ++in) at(c_attn, in, part * s.width + o) = at(w, o, in);
      }
      ++part;
    }
    g[h + "attn.c_attn.weight"] = c_attn;
    g[h + "attn.c_attn.bias"] = c_attn_bias;
    add_gpt2_block(g, h, f.tensors,
                   {l + "self_attn_layer_norm", l + "final_layer_norm", l + "self_attn.out_proj",
                    l + "fc1", l + "fc2"});
  }
  g["ln_f.weight"] = f.tensors.at(p + "final_layer_norm.weight");
  g["ln_f.bias"] = f.tensors.at(p + "final_layer_norm.bias");
  const nlohmann::json c =
      gpt2_config(f.config, s.width, s.heads, s.layers, s.context, s.mlp_width(), "relu", true);
  const double error = relative_error(reference_logits_gpt2(c, g, kTokens), reference_logits_opt(f, kTokens));
  report("OPT vs GPT-2 reference (positions from row 2, ReLU)", error);
  EXPECT_LT(error, 1e-15);
}

// GPT-J = Phi without q/k/v/dense biases once each head's interleaved rotary
// rows (2i, 2i+1) are moved to rotate_half's pairs (i, i + rotary_dim / 2).
TEST(HfReferenceChains, GptjIsPhiWithDeinterleavedRotaryRows) {
  for (const int rotary_dim : {4, 8}) {
    const HfSizes s;
    const int hd = s.head_dim();
    TempDir dir;
    const Fixture f = write_gptj_fixture(dir / "gptj", {.rotary_dim = rotary_dim}, Dtype::F32, 11);
    std::vector<std::int64_t> order;  // Phi row r <- GPT-J row order[r]
    for (int h = 0; h < s.heads; ++h)
      for (int r = 0; r < hd; ++r) {
        const int half = rotary_dim / 2;
        const int source = r < half ? 2 * r : r < rotary_dim ? 2 * (r - half) + 1 : r;
        order.push_back(std::int64_t(h * hd + source));
      }
    HfTensors g;
    const std::string p = "transformer.";
    g["model.embed_tokens.weight"] = f.tensors.at(p + "wte.weight");
    for (int i = 0; i < s.layers; ++i) {
      const std::string h = p + "h." + std::to_string(i) + ".";
      const std::string l = "model.layers." + std::to_string(i) + ".";
      g[l + "self_attn.q_proj.weight"] = select_rows(f.tensors.at(h + "attn.q_proj.weight"), order);
      g[l + "self_attn.k_proj.weight"] = select_rows(f.tensors.at(h + "attn.k_proj.weight"), order);
      g[l + "self_attn.v_proj.weight"] = f.tensors.at(h + "attn.v_proj.weight");
      g[l + "self_attn.dense.weight"] = f.tensors.at(h + "attn.out_proj.weight");
      for (const char* x : {"q_proj", "k_proj", "v_proj", "dense"})
        g[l + "self_attn." + x + ".bias"] = zeros({s.width});
      g[l + "mlp.fc1.weight"] = f.tensors.at(h + "mlp.fc_in.weight");
      g[l + "mlp.fc1.bias"] = f.tensors.at(h + "mlp.fc_in.bias");
      g[l + "mlp.fc2.weight"] = f.tensors.at(h + "mlp.fc_out.weight");
      g[l + "mlp.fc2.bias"] = f.tensors.at(h + "mlp.fc_out.bias");
      g[l + "input_layernorm.weight"] = f.tensors.at(h + "ln_1.weight");
      g[l + "input_layernorm.bias"] = f.tensors.at(h + "ln_1.bias");
    }
    g["model.final_layernorm.weight"] = f.tensors.at(p + "ln_f.weight");
    g["model.final_layernorm.bias"] = f.tensors.at(p + "ln_f.bias");
    g["lm_head.weight"] = f.tensors.at("lm_head.weight");
    g["lm_head.bias"] = f.tensors.at("lm_head.bias");
    const nlohmann::json c = {{"model_type", "phi"}, {"hidden_size", s.width},
                              {"num_attention_heads", s.heads}, {"num_hidden_layers", s.layers},
                              {"partial_rotary_factor", double(rotary_dim) / hd},
                              {"rope_theta", 10000.0}, {"vocab_size", s.vocab}};
    const Mat gptj = reference_logits_gptj(f, kTokens);
    const double error = relative_error(reference_logits_phi(c, g, kTokens), gptj);
    report("GPT-J vs Phi reference, rotary_dim " + std::to_string(rotary_dim), error);
    EXPECT_LT(error, 1e-15);
    // Without the permutation the pairings disagree (when something rotates).
    g["model.layers.0.self_attn.q_proj.weight"] = f.tensors.at(p + "h.0.attn.q_proj.weight");
    g["model.layers.0.self_attn.k_proj.weight"] = f.tensors.at(p + "h.0.attn.k_proj.weight");
    EXPECT_GT(relative_error(reference_logits_phi(c, g, kTokens), gptj), 1e-6);
  }
}

// GPT-NeoX parallel with post_attention_layernorm = input_layernorm and
// gelu_new is Phi (one shared norm) with a zero lm_head bias.
TEST(HfReferenceChains, GptNeoxParallelWithOneNormIsPhi) {
  for (const double pct : {0.25, 1.0}) {
    const HfSizes s;
    const int hd = s.head_dim();
    TempDir dir;
    Fixture f = write_gpt_neox_fixture(dir / "neox", {.rotary_pct = pct, .hidden_act = "gelu_new"},
                                       Dtype::F32, 12);
    HfTensors g;
    const std::string p = "gpt_neox.";
    g["model.embed_tokens.weight"] = f.tensors.at(p + "embed_in.weight");
    for (int i = 0; i < s.layers; ++i) {
      const std::string n = p + "layers." + std::to_string(i) + ".";
      const std::string l = "model.layers." + std::to_string(i) + ".";
      for (const char* x : {"weight", "bias"}) {
        f.tensors[n + "post_attention_layernorm." + x] = f.tensors.at(n + "input_layernorm." + x);
        g[l + "input_layernorm." + x] = f.tensors.at(n + "input_layernorm." + x);
      }
      int part = 0;
      for (const char* x : {"q_proj", "k_proj", "v_proj"}) {
        std::vector<std::int64_t> rows;
        for (int h = 0; h < s.heads; ++h)
          for (int j = 0; j < hd; ++j) rows.push_back(std::int64_t(h * 3 * hd + part * hd + j));
        g[l + "self_attn." + x + ".weight"] = select_rows(f.tensors.at(n + "attention.query_key_value.weight"), rows);
        g[l + "self_attn." + x + ".bias"] = select_rows(f.tensors.at(n + "attention.query_key_value.bias"), rows);
        ++part;
      }
      g[l + "self_attn.dense.weight"] = f.tensors.at(n + "attention.dense.weight");
      g[l + "self_attn.dense.bias"] = f.tensors.at(n + "attention.dense.bias");
      g[l + "mlp.fc1.weight"] = f.tensors.at(n + "mlp.dense_h_to_4h.weight");
      g[l + "mlp.fc1.bias"] = f.tensors.at(n + "mlp.dense_h_to_4h.bias");
      g[l + "mlp.fc2.weight"] = f.tensors.at(n + "mlp.dense_4h_to_h.weight");
      g[l + "mlp.fc2.bias"] = f.tensors.at(n + "mlp.dense_4h_to_h.bias");
    }
    g["model.final_layernorm.weight"] = f.tensors.at(p + "final_layer_norm.weight");
    g["model.final_layernorm.bias"] = f.tensors.at(p + "final_layer_norm.bias");
    g["lm_head.weight"] = f.tensors.at("embed_out.weight");
    g["lm_head.bias"] = zeros({s.vocab});
    const nlohmann::json c = {{"model_type", "phi"}, {"hidden_size", s.width},
                              {"num_attention_heads", s.heads}, {"num_hidden_layers", s.layers},
                              {"partial_rotary_factor", pct}, {"rope_theta", 10000.0},
                              {"vocab_size", s.vocab}};
    const double error = relative_error(reference_logits_phi(c, g, kTokens), reference_logits_gpt_neox(f, kTokens));
    report("GPT-NeoX (parallel, ln2 = ln1) vs Phi reference, rotary_pct " + std::to_string(pct), error);
    EXPECT_LT(error, 1e-15);
  }
}

// Multi-query BigCode = multi-head BigCode whose heads all read the one kv head.
TEST(HfReferenceChains, BigcodeMultiQueryIsMultiHeadWithRepeatedKv) {
  const HfSizes s;
  const int d = s.width, hd = s.head_dim();
  TempDir dir;
  const Fixture f = write_gpt_bigcode_fixture(dir / "mqa", {}, Dtype::F32, 13);
  EXPECT_EQ(f.tensors.at("transformer.h.0.attn.c_attn.weight").shape,
            (std::vector<std::int64_t>{d + 2 * hd, d}));
  HfTensors g = f.tensors;
  std::vector<std::int64_t> rows;  // per head [q_h, k, v] from [q (d) | k | v]
  for (int h = 0; h < s.heads; ++h) {
    for (int j = 0; j < hd; ++j) rows.push_back(h * hd + j);
    for (int j = 0; j < 2 * hd; ++j) rows.push_back(d + j);
  }
  for (int i = 0; i < s.layers; ++i) {
    const std::string a = "transformer.h." + std::to_string(i) + ".attn.c_attn.";
    g[a + "weight"] = select_rows(f.tensors.at(a + "weight"), rows);
    g[a + "bias"] = select_rows(f.tensors.at(a + "bias"), rows);
  }
  nlohmann::json c = f.config;
  c["multi_query"] = false;
  const double error = relative_error(reference_logits_gpt_bigcode(c, g, kTokens),
                                      reference_logits_gpt_bigcode(f, kTokens));
  report("GPT-BigCode multi-query vs multi-head with repeated kv", error);
  EXPECT_LT(error, 1e-16);
}

// Phi with 2 kv heads = Phi with 4 whose kv head h is the old h / 2 (repeat_kv).
TEST(HfReferenceChains, PhiGroupedKvIsRepeatedKv) {
  const HfSizes s;
  const int hd = s.head_dim();
  TempDir dir;
  const Fixture f = write_phi_fixture(dir / "phi", {.kv_heads = 2}, Dtype::F32, 14);
  EXPECT_EQ(f.tensors.at("model.layers.0.self_attn.k_proj.weight").shape,
            (std::vector<std::int64_t>{2 * hd, s.width}));
  HfTensors g = f.tensors;
  std::vector<std::int64_t> rows;
  for (int h = 0; h < s.heads; ++h)
    for (int j = 0; j < hd; ++j) rows.push_back((h / 2) * hd + j);
  for (int i = 0; i < s.layers; ++i)
    for (const char* x : {"k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"}) {
      const std::string name = "model.layers." + std::to_string(i) + ".self_attn." + x;
      g[name] = select_rows(f.tensors.at(name), rows);
    }
  nlohmann::json c = f.config;
  c["num_key_value_heads"] = s.heads;
  const double error = relative_error(reference_logits_phi(c, g, kTokens), reference_logits_phi(f, kTokens));
  report("Phi grouped kv vs repeated kv", error);
  EXPECT_LT(error, 1e-16);
}

// ===========================================================================
// Building blocks
// ===========================================================================

Mat random_rows(int rows, int cols, std::uint64_t seed) {
  Mat m(rows, cols);
  std::mt19937_64 gen(seed);
  for (LD& x : m.v) x = LD(double(gen() >> 11) * 0x1.0p-53 - 0.5);
  return m;
}

// Position t rotates the pair (x_a, x_b) as the complex number x_a + i x_b
// times e^(i t theta_j), theta_j = base^(-2j / ndims).
Mat complex_rotary(Mat x, int ndims, LD base, bool interleaved) {
  for (int t = 0; t < x.rows; ++t)
    for (int j = 0; j < ndims / 2; ++j) {
      const int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + ndims / 2;
      const std::complex<LD> z(x(t, a), x(t, b));
      const std::complex<LD> r = z * std::polar(1.0L, LD(t) * std::pow(base, -LD(2 * j) / ndims));
      x(t, a) = r.real();
      x(t, b) = r.imag();
    }
  return x;
}

TEST(HfReferenceBlocks, RotaryPairingsAreComplexMultiplications) {
  const Mat x = random_rows(20, 8, 1);
  const std::vector<int> pos = positions(20);
  for (const int ndims : {2, 4, 8}) {
    Mat half = x, two = x;
    rope_rotate_half(half, ndims, 10000.0L, pos);
    rope_every_two(two, ndims, pos);
    EXPECT_LT(relative_error(half, complex_rotary(x, ndims, 10000.0L, false)), 1e-17) << ndims;
    EXPECT_LT(relative_error(two, complex_rotary(x, ndims, 10000.0L, true)), 1e-17) << ndims;
    if (ndims < 8) {
      EXPECT_EQ(half(7, 7), x(7, 7)) << "features past ndims pass";
    }
  }
  Mat other_base = x;
  rope_rotate_half(other_base, 8, 500.0L, pos);
  EXPECT_LT(relative_error(other_base, complex_rotary(x, 8, 500.0L, false)), 1e-17);
}

TEST(HfReferenceBlocks, RotaryScoresDependOnTheRelativePositionOnly) {
  const Mat q0 = random_rows(1, 8, 2), k0 = random_rows(1, 8, 3);
  auto score = [&](int m, int n, bool half) {
    Mat q = q0, k = k0;
    const int pm[] = {m}, pn[] = {n};
    if (half) {
      rope_rotate_half(q, 8, 10000.0L, pm);
      rope_rotate_half(k, 8, 10000.0L, pn);
    } else {
      rope_every_two(q, 8, pm);
      rope_every_two(k, 8, pn);
    }
    LD s = 0;
    for (int c = 0; c < 8; ++c) s += q(0, c) * k(0, c);
    return s;
  };
  for (const bool half : {true, false}) {
    EXPECT_NEAR(double(score(9, 4, half)), double(score(25, 20, half)), 1e-15);
    EXPECT_GT(std::abs(double(score(9, 4, half) - score(9, 5, half))), 1e-6);
  }
}

TEST(HfReferenceBlocks, AlibiSlopesFollowTheRule) {
  // 8 heads: base 2^-(2^-(3-3)) = 1/2, slopes 2^-1 .. 2^-8.
  const Vec eight = alibi_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(eight[std::size_t(i)], std::ldexp(1.0L, -(i + 1)));
  // 6 heads: p = 4, base 2^-(2^-(2-3)) = 1/4: 4^-1 .. 4^-4; then
  // extra_base 2^-(2^-(3-3)) = 1/2 to the powers 1, 3.
  const Vec six = alibi_slopes(6);
  const Vec six_by_hand = {0.25L, 0.0625L, 0.015625L, 0.00390625L, 0.5L, 0.125L};
  EXPECT_EQ(six, six_by_hand);
  // 12 heads: 2^-1 .. 2^-8, then extra_base 2^-(2^-(4-3)) = 2^-0.5 to 1, 3, 5, 7.
  const Vec twelve = alibi_slopes(12);
  ASSERT_EQ(twelve.size(), 12u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(twelve[std::size_t(i)], std::ldexp(1.0L, -(i + 1)));
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(double(twelve[std::size_t(8 + i)]), std::pow(2.0, -0.5 * (2 * i + 1)), 1e-16);
}

// With q = 0 every score is the ALiBi term slope * j, so query i's weight on
// key j <= i is exp(slope j) / sum_{j' <= i} exp(slope j'); v = identity
// makes the output those weights. GPT-Neo's window drops the keys j <= i - w.
TEST(HfReferenceBlocks, AlibiAndWindowOnAClosedFormAttention) {
  const int T = 5;
  Mat q(T, T), v(T, T);
  for (int j = 0; j < T; ++j) v(j, j) = 1;
  const LD slope = 0.5L;
  for (const int window : {0, 2}) {
    const Mat out = causal_attention({q}, {q}, {v}, {.window = window, .alibi = {slope}});
    for (int i = 0; i < T; ++i) {
      const int first = window > 0 ? std::max(0, i - window + 1) : 0;
      LD sum = 0;
      for (int j = first; j <= i; ++j) sum += std::exp(slope * j);
      for (int j = 0; j < T; ++j) {
        const LD expected = j >= first && j <= i ? std::exp(slope * j) / sum : 0.0L;
        EXPECT_NEAR(double(out(i, j)), double(expected), 1e-17) << i << " " << j << " window " << window;
      }
    }
  }
}

// ===========================================================================
// Every family and variant
// ===========================================================================

using Writer = std::function<Fixture(const fs::path&, Dtype, std::uint64_t)>;

struct FamilyCase {
  const char* name;
  Writer write;
  std::string model_type;
  std::string architecture;
};

std::vector<FamilyCase> family_cases() {
  return {
      {"Gpt2", [](auto dir, auto dt, auto seed) { return write_gpt2_fixture(dir, {}, dt, seed); },
       "gpt2", "GPT2LMHeadModel"},
      {"NeoxParallelQuarterRotary",
       [](auto dir, auto dt, auto seed) { return write_gpt_neox_fixture(dir, {}, dt, seed); },
       "gpt_neox", "GPTNeoXForCausalLM"},
      {"NeoxSequentialFullRotary",
       [](auto dir, auto dt, auto seed) {
         return write_gpt_neox_fixture(dir, {.parallel_residual = false, .rotary_pct = 1.0}, dt, seed);
       },
       "gpt_neox", "GPTNeoXForCausalLM"},
      {"NeoxRopeParameters",
       [](auto dir, auto dt, auto seed) {
         return write_gpt_neox_fixture(dir, {.rotary_emb_base = 100.0, .rope_parameters = true}, dt, seed);
       },
       "gpt_neox", "GPTNeoXForCausalLM"},
      {"OptHeadOmitted", [](auto dir, auto dt, auto seed) { return write_opt_fixture(dir, {}, dt, seed); },
       "opt", "OPTForCausalLM"},
      {"OptHeadUntiedBare",
       [](auto dir, auto dt, auto seed) {
         return write_opt_fixture(dir, {.head = OptHead::Untied, .prefix = false}, dt, seed);
       },
       "opt", "OPTForCausalLM"},
      {"OptPostLn",
       [](auto dir, auto dt, auto seed) {
         return write_opt_fixture(dir, {.do_layer_norm_before = false}, dt, seed);
       },
       "opt", "OPTForCausalLM"},
      {"Phi", [](auto dir, auto dt, auto seed) { return write_phi_fixture(dir, {}, dt, seed); }, "phi",
       "PhiForCausalLM"},
      {"PhiGroupedKvRopeParameters",
       [](auto dir, auto dt, auto seed) {
         return write_phi_fixture(dir, {.kv_heads = 2, .rope_parameters = true}, dt, seed);
       },
       "phi", "PhiForCausalLM"},
      {"Gptj", [](auto dir, auto dt, auto seed) { return write_gptj_fixture(dir, {}, dt, seed); }, "gptj",
       "GPTJForCausalLM"},
      {"GptNeo", [](auto dir, auto dt, auto seed) { return write_gpt_neo_fixture(dir, {}, dt, seed); },
       "gpt_neo", "GPTNeoForCausalLM"},
      {"GptNeoAllLocal",
       [](auto dir, auto dt, auto seed) {
         return write_gpt_neo_fixture(dir, {.layer_types = {"local", "local", "local"}, .window_size = 3},
                                      dt, seed);
       },
       "gpt_neo", "GPTNeoForCausalLM"},
      {"BigcodeMultiQuery",
       [](auto dir, auto dt, auto seed) { return write_gpt_bigcode_fixture(dir, {}, dt, seed); },
       "gpt_bigcode", "GPTBigCodeForCausalLM"},
      {"BigcodeMultiHead",
       [](auto dir, auto dt, auto seed) {
         return write_gpt_bigcode_fixture(dir, {.multi_query = false}, dt, seed);
       },
       "gpt_bigcode", "GPTBigCodeForCausalLM"},
      {"BloomSixHeads", [](auto dir, auto dt, auto seed) { return write_bloom_fixture(dir, {}, dt, seed); },
       "bloom", "BloomForCausalLM"},
      {"BloomBareResidualPostLn",
       [](auto dir, auto dt, auto seed) {
         return write_bloom_fixture(
             dir, {.prefix = false, .apply_residual_connection_post_layernorm = true}, dt, seed);
       },
       "bloom", "BloomForCausalLM"},
  };
}

void PrintTo(const FamilyCase& c, std::ostream* out) { *out << c.name; }
void PrintTo(const Gpt2Case& c, std::ostream* out) { *out << c.name; }

class HfReferenceFamily : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(HfReferenceFamily, ConfigNamesTheFamily) {
  TempDir dir;
  const Fixture f = GetParam().write(dir / "m", Dtype::F32, 21);
  EXPECT_EQ(f.model_type(), GetParam().model_type);
  EXPECT_EQ(f.config.at("architectures").at(0).get<std::string>(), GetParam().architecture);
  const Fixture again = read_fixture(f.dir);
  EXPECT_EQ(again.config, f.config);
  EXPECT_EQ(again.tensors.size(), f.tensors.size());
}

TEST_P(HfReferenceFamily, LaterTokensDoNotChangeEarlierLogits) {
  TempDir dir;
  const Fixture f = GetParam().write(dir / "m", Dtype::F32, 22);
  const Mat full = reference_logits(f, kTokens);
  ASSERT_EQ(full.rows, int(kTokens.size()));
  ASSERT_EQ(full.cols, f.vocab());
  for (LD x : full.v) ASSERT_TRUE(std::isfinite(double(x)));
  for (const int t : {1, 6}) {
    const std::vector<int> prefix(kTokens.begin(), kTokens.begin() + t);
    const Mat part = reference_logits(f, prefix);
    for (int r = 0; r < t; ++r)
      for (int c = 0; c < full.cols; ++c) ASSERT_EQ(part(r, c), full(r, c)) << "row " << r;
  }
  // Changing the last token changes its row only; changing the first changes row 1.
  std::vector<int> last = kTokens, first = kTokens;
  last.back() = (last.back() + 1) % f.vocab();
  first.front() = (first.front() + 1) % f.vocab();
  const Mat with_last = reference_logits(f, last), with_first = reference_logits(f, first);
  const int T = full.rows;
  for (int c = 0; c < full.cols; ++c) EXPECT_EQ(with_last(T - 2, c), full(T - 2, c));
  LD change_last = 0, change_first = 0;
  for (int c = 0; c < full.cols; ++c) {
    change_last = std::max(change_last, std::abs(with_last(T - 1, c) - full(T - 1, c)));
    change_first = std::max(change_first, std::abs(with_first(1, c) - full(1, c)));
  }
  EXPECT_GT(double(change_last), 1e-6);
  EXPECT_GT(double(change_first), 1e-6) << "row 1 attends to token 0";
}

// Names of the tensors whose entries all move the residual stream by the
// same amount: the embeddings and the biases of the writers into the
// residual stream. Post-LN OPT (do_layer_norm_before false) attends to the
// raw embeddings, which no norm precedes: there only the biases qualify.
std::vector<std::string> residual_shift_tensors(const Fixture& f) {
  static const std::vector<std::string> suffixes = {
      "wte.weight", "wpe.weight", "embed_in.weight", "embed_tokens.weight",
      "embed_positions.weight", "word_embeddings.weight", "attn.c_proj.bias", "mlp.c_proj.bias",
      "attention.dense.bias", "mlp.dense_4h_to_h.bias", "self_attn.out_proj.bias", "fc2.bias",
      "self_attn.dense.bias", "mlp.fc_out.bias", "attn.attention.out_proj.bias",
      "self_attention.dense.bias"};
  std::vector<std::string> names;
  const bool post_ln = !f.config.value("do_layer_norm_before", true);
  for (const auto& [name, t] : f.tensors)
    for (const std::string& s : suffixes)
      if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          name != "lm_head.weight" && !(post_ln && t.shape.size() == 2)) {
        names.push_back(name);
        break;
      }
  return names;
}

// How far each row of b - a is from a constant, relative to a's size.
double non_uniform_change(const Mat& a, const Mat& b) {
  LD worst = 0, scale = 0;
  for (int r = 0; r < a.rows; ++r) {
    LD mean = 0;
    for (int c = 0; c < a.cols; ++c) mean += b(r, c) - a(r, c);
    mean /= a.cols;
    for (int c = 0; c < a.cols; ++c) {
      worst = std::max(worst, std::abs(b(r, c) - a(r, c) - mean));
      scale = std::max(scale, std::abs(a(r, c)));
    }
  }
  return double(worst / scale);
}

// Every norm centers: a constant added to the residual stream everywhere
// cancels in each LayerNorm; a tied head adds c * sum(h) to a whole row,
// which softmax ignores. A shift of one entry per tensor must show.
TEST_P(HfReferenceFamily, UniformShiftOfTheResidualStreamCancels) {
  TempDir dir;
  const Fixture f = GetParam().write(dir / "m", Dtype::F32, 23);
  const std::vector<std::string> names = residual_shift_tensors(f);
  ASSERT_GE(names.size(), 4u) << "an embedding or a bias per layer at least";
  const Mat base = reference_logits(f, kTokens);
  HfTensors uniform = f.tensors, one_entry = f.tensors;
  for (const std::string& name : names) {
    for (double& x : uniform.at(name).values) x += 0.7;
    one_entry.at(name).values[1] += 0.7;
  }
  const double uniform_error = non_uniform_change(base, reference_logits(f.config, uniform, kTokens));
  report(std::string(GetParam().name) + ": uniform residual shift", uniform_error);
  EXPECT_LT(uniform_error, 1e-15);
  EXPECT_GT(non_uniform_change(base, reference_logits(f.config, one_entry, kTokens)), 1e-4);
}

TEST_P(HfReferenceFamily, HalfPrecisionFixturesHoldTheirDtype) {
  TempDir dir;
  const Fixture f32 = GetParam().write(dir / "f32", Dtype::F32, 24);
  const Mat logits32 = reference_logits(f32, kTokens);
  for (const Dtype dtype : {Dtype::F16, Dtype::BF16}) {
    const Fixture f = GetParam().write(dir / std::string(io::dtype_name(dtype)), dtype, 24);
    const io::SafetensorsFile file(f.model_path());
    ASSERT_EQ(file.size(), f32.tensors.size());
    for (const std::string& name : file.names()) {
      ASSERT_EQ(file.info(name).dtype, dtype) << name;
      const HfTensor& t = f.tensors.at(name);
      const HfTensor& t32 = f32.tensors.at(name);
      ASSERT_EQ(t.shape, t32.shape) << name;
      for (std::size_t i = 0; i < t.values.size(); ++i) {
        const double v = t.values[i];
        const double round_trip = dtype == Dtype::F16
                                      ? io::half_bits_to_float(io::double_to_half_bits(v))
                                      : io::bfloat16_bits_to_float(io::double_to_bfloat16_bits(v));
        ASSERT_EQ(round_trip, v) << name << "[" << i << "] is not a " << io::dtype_name(dtype) << " value";
        // Half an ulp of the dtype (relative, or F16's subnormal spacing 2^-24), and F32's rounding.
        const double bound = dtype == Dtype::F16
                                 ? std::max(std::abs(t32.values[i]) * 0x1p-11, 0x1p-25)
                                 : std::abs(t32.values[i]) * 0x1p-8;
        ASSERT_LE(std::abs(v - t32.values[i]), bound * 1.01) << name << "[" << i << "]";
      }
    }
    const double error = relative_error(reference_logits(f, kTokens), logits32);
    report(std::string(GetParam().name) + ": " + std::string(io::dtype_name(dtype)) + " vs F32 logits", error);
    EXPECT_LT(error, dtype == Dtype::F16 ? 1e-2 : 5e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, HfReferenceFamily, ::testing::ValuesIn(family_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// Family specifics
// ===========================================================================

// All-local GPT-Neo: each layer looks window - 1 tokens back, so logits at t
// depend on tokens t - layers * (window - 1) .. t, and on no earlier one.
TEST(HfReferenceFamilies, GptNeoLocalLayersReachLayersTimesWindowBack) {
  TempDir dir;
  const int window = 3, layers = 3, reach = layers * (window - 1);
  const Fixture f = write_gpt_neo_fixture(
      dir / "neo", {.layer_types = {"local", "local", "local"}, .window_size = window}, Dtype::F32, 30);
  const int t = int(kTokens.size()) - 1;
  const Mat base = reference_logits_gpt_neo(f, kTokens);
  auto change_at = [&](int position) {
    std::vector<int> tokens = kTokens;
    tokens[std::size_t(position)] = (tokens[std::size_t(position)] + 1) % f.vocab();
    const Mat changed = reference_logits_gpt_neo(f, tokens);
    LD diff = 0;
    for (int c = 0; c < base.cols; ++c) diff = std::max(diff, std::abs(changed(t, c) - base(t, c)));
    return double(diff);
  };
  EXPECT_EQ(change_at(t - reach - 1), 0.0) << "out of reach";
  EXPECT_GT(change_at(t - reach), 1e-9) << "the farthest token in reach";
}

// OPT reads position t from row t + 2 of embed_positions: rows 0 and 1 are unused.
TEST(HfReferenceFamilies, OptReadsPositionsFromRowTwo) {
  TempDir dir;
  const Fixture f = write_opt_fixture(dir / "opt", {}, Dtype::F32, 31);
  const Mat base = reference_logits_opt(f, kTokens);
  HfTensors unused = f.tensors, used = f.tensors;
  HfTensor& rows = unused.at("model.decoder.embed_positions.weight");
  const auto d = rows.shape[1];
  for (std::int64_t c = 0; c < 2 * d; ++c) rows.values[std::size_t(c)] += 3.0;
  EXPECT_EQ(relative_error(reference_logits_opt(f.config, unused, kTokens), base), 0.0);
  used.at("model.decoder.embed_positions.weight").values[std::size_t(2 * d)] += 3.0;  // row 2
  EXPECT_GT(relative_error(reference_logits_opt(f.config, used, kTokens), base), 1e-6);
}

// OPT's head: a copy of embed_tokens as lm_head.weight changes nothing; an
// untied head (tie_word_embeddings false) is read from lm_head.weight.
TEST(HfReferenceFamilies, OptHeadVariants) {
  TempDir dir;
  const Fixture omitted = write_opt_fixture(dir / "a", {}, Dtype::F32, 32);
  const Fixture copy = write_opt_fixture(dir / "b", {.head = OptHead::TiedCopy}, Dtype::F32, 32);
  const Fixture untied = write_opt_fixture(dir / "c", {.head = OptHead::Untied}, Dtype::F32, 32);
  EXPECT_EQ(omitted.tensors.count("lm_head.weight"), 0u);
  EXPECT_EQ(copy.tensors.at("lm_head.weight").values,
            copy.tensors.at("model.decoder.embed_tokens.weight").values);
  EXPECT_FALSE(untied.config.at("tie_word_embeddings").get<bool>());
  const Mat tied = reference_logits_opt(omitted, kTokens);
  EXPECT_EQ(relative_error(reference_logits_opt(copy, kTokens), tied), 0.0);
  EXPECT_GT(relative_error(reference_logits_opt(untied, kTokens), tied), 1e-3);
  HfTensors as_tied = untied.tensors;
  as_tied["lm_head.weight"] = as_tied.at("model.decoder.embed_tokens.weight");
  EXPECT_EQ(relative_error(reference_logits_opt(untied.config, as_tied, kTokens), tied), 0.0);
}

// BLOOM with every block weight and bias zero: the blocks add nothing, so
// the logits are ln_f(word_embeddings_layernorm(E[x])) E^T; with
// apply_residual_connection_post_layernorm the residual is each norm's
// output, so every layer applies input_layernorm, then post_attention_layernorm.
TEST(HfReferenceFamilies, BloomWithZeroBlocksIsItsNormsAlone) {
  for (const bool post : {false, true}) {
    TempDir dir;
    const Fixture f = write_bloom_fixture(dir / "bloom", {.apply_residual_connection_post_layernorm = post},
                                          Dtype::F32, 33);
    HfTensors zeroed = f.tensors;
    for (auto& [name, t] : zeroed)
      if (name.rfind("transformer.h.", 0) == 0 && name.find("layernorm") == std::string::npos)
        for (double& x : t.values) x = 0.0;
    const detail::Weights w(zeroed);
    const LD eps = 1e-5L;
    auto norm = [&](const Mat& x, const std::string& name) {
      return layer_norm(x, w.vector(name + ".weight"), w.vector(name + ".bias"), eps);
    };
    const std::string p = "transformer.";
    Mat h = norm(embedding(w.matrix(p + "word_embeddings.weight"), kTokens), p + "word_embeddings_layernorm");
    for (int i = 0; post && i < 3; ++i) {
      const std::string l = p + "h." + std::to_string(i) + ".";
      h = norm(norm(h, l + "input_layernorm"), l + "post_attention_layernorm");
    }
    const Mat expected = linear(norm(h, p + "ln_f"), w.matrix(p + "word_embeddings.weight"), nullptr);
    const double error = relative_error(reference_logits_bloom(f.config, zeroed, kTokens), expected);
    EXPECT_LT(error, 1e-18) << (post ? "residual after the norms" : "residual before the norms");
  }
}

TEST(HfReferenceFamilies, LayoutsHaveTheRealNamesAndShapes) {
  TempDir dir;
  const HfSizes s;
  const std::int64_t d = s.width, hd = s.head_dim();
  auto shape = [](const Fixture& f, const std::string& name) { return f.tensors.at(name).shape; };
  using Shape = std::vector<std::int64_t>;
  const Fixture neox = write_gpt_neox_fixture(dir / "neox", {}, Dtype::F32, 1);
  EXPECT_EQ(shape(neox, "gpt_neox.layers.0.attention.query_key_value.weight"), (Shape{3 * d, d}));
  EXPECT_EQ(shape(neox, "embed_out.weight"), (Shape{s.vocab, d}));
  EXPECT_EQ(neox.config.at("rotary_pct").get<double>(), 0.25);
  const Fixture opt = write_opt_fixture(dir / "opt", {}, Dtype::F32, 1);
  EXPECT_EQ(shape(opt, "model.decoder.layers.0.self_attn.q_proj.weight"), (Shape{d, d}));
  EXPECT_EQ(shape(opt, "model.decoder.embed_positions.weight"), (Shape{s.context + 2, d}));
  const Fixture opt350 = write_opt_fixture(dir / "opt350", {.do_layer_norm_before = false}, Dtype::F32, 1);
  EXPECT_FALSE(opt350.config.at("do_layer_norm_before").get<bool>());
  EXPECT_EQ(shape(opt350, "model.decoder.project_in.weight"), (Shape{d, d / 2}));
  EXPECT_EQ(opt350.tensors.count("model.decoder.final_layer_norm.weight"), 0u);
  const Fixture phi = write_phi_fixture(dir / "phi", {}, Dtype::F32, 1);
  EXPECT_EQ(shape(phi, "lm_head.bias"), (Shape{s.vocab}));
  EXPECT_EQ(phi.config.at("partial_rotary_factor").get<double>(), 0.5);
  const Fixture gptj = write_gptj_fixture(dir / "gptj", {}, Dtype::F32, 1);
  EXPECT_LT(gptj.config.at("rotary_dim").get<int>(), hd);
  EXPECT_EQ(gptj.tensors.count("transformer.h.0.attn.q_proj.bias"), 0u);
  const Fixture neo = write_gpt_neo_fixture(dir / "neo", {}, Dtype::F32, 1);
  EXPECT_EQ(shape(neo, "transformer.h.0.mlp.c_fc.weight"), (Shape{4 * d, d})) << "nn.Linear (out, in)";
  EXPECT_EQ(neo.config.at("attention_layers"), nlohmann::json({"global", "local", "global"}));
  const Fixture neo4 = write_gpt_neo_fixture(dir / "neo4", {.sizes = {.layers = 4}}, Dtype::F32, 1);
  EXPECT_EQ(neo4.config.at("attention_types"), nlohmann::json::parse(R"([[["global", "local"], 2]])"));
  EXPECT_EQ(gpt_neo_layer_types(neo4.config), (std::vector<std::string>{"global", "local", "global", "local"}));
  const Fixture gpt2 = write_gpt2_fixture(dir / "gpt2", {}, Dtype::F32, 1);
  EXPECT_EQ(shape(gpt2, "transformer.h.0.mlp.c_fc.weight"), (Shape{d, 4 * d})) << "Conv1D (in, out)";
  const Fixture bloom = write_bloom_fixture(dir / "bloom", {}, Dtype::F32, 1);
  EXPECT_EQ(bloom.config.at("n_head").get<int>(), 6);
  EXPECT_EQ(shape(bloom, "transformer.word_embeddings_layernorm.weight"), (Shape{48}));
  EXPECT_EQ(shape(bloom, "transformer.h.0.self_attention.query_key_value.weight"), (Shape{3 * 48, 48}));
}

TEST(HfReferenceFamilies, RefusesWhatItDoesNotImplement) {
  TempDir dir;
  const Fixture neox = write_gpt_neox_fixture(dir / "neox", {}, Dtype::F32, 1);
  nlohmann::json scaled = neox.config;
  scaled["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_THROW(reference_logits(scaled, neox.tensors, kTokens), std::invalid_argument);
  const Fixture phi = write_phi_fixture(dir / "phi", {}, Dtype::F32, 1);
  nlohmann::json qk = phi.config;
  qk["qk_layernorm"] = true;
  EXPECT_THROW(reference_logits(qk, phi.tensors, kTokens), std::invalid_argument);
  nlohmann::json unknown = phi.config;
  unknown["model_type"] = "llama";
  EXPECT_THROW(reference_logits(unknown, phi.tensors, kTokens), std::invalid_argument);
}

}  // namespace
