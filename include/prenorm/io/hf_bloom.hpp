#pragma once
// The Hugging Face BLOOM layout (BloomForCausalLM / BloomModel safetensors
// and config.json, model_type "bloom") -> Gpt<Arch::PreLN, S>. Reading only:
// a converted model is saved in prenorm's layout.
//
// Tensors, every name with or without "transformer." (one or the other for
// the whole file; bloom-560m's file is bare); d = hidden_size, H = n_head,
// hd = d / H, nn.Linear weights (out, in):
//   word_embeddings.weight                 (vocab_size, d)  E
//   word_embeddings_layernorm.{weight,bias} (d)             LN_emb
//   h.{i}.input_layernorm.{weight,bias}    (d)        blocks[i].norm1_{gamma,beta}
//   h.{i}.self_attention.query_key_value.{weight (3d, d), bias (3d)}  blocks[i].attn.qkv
//   h.{i}.self_attention.dense.{weight (d, d), bias (d)}              blocks[i].attn.out
//   h.{i}.post_attention_layernorm.{weight,bias} (d)  blocks[i].norm2_{gamma,beta}
//   h.{i}.mlp.dense_h_to_4h.{weight (4d, d), bias (4d)}  blocks[i].mlp.fc
//   h.{i}.mlp.dense_4h_to_h.{weight (d, 4d), bias (d)}   blocks[i].mlp.proj
//   ln_f.{weight,bias}                     (d)        final_{gamma,beta}
//   lm_head.weight                         (vocab_size, d), never prefixed: only
//                                          with tie_word_embeddings false
// Transforms, once at load:
//  - h_0 = LN_emb(E[token]) depends on the token id alone: the token table
//    becomes LN_emb(E), computed in double. The head, tied to the raw E,
//    becomes an untied head holding E (config.tied false).
//  - query_key_value's rows are [heads, 3, hd] (q_h, k_h, v_h per head):
//    reordered into [q heads | k heads | v heads].
// BLOOM has no position table (learned_positions false): ALiBi (alibi true)
// adds slope_h * (key position) to the scores, which prenorm's
// slope_h * (j - i) equals up to a per-query constant that softmax ignores.
// The MLP's GELU is bloom_gelu_forward, tanh with 0.79788456 for sqrt(2/pi):
// Activation::GeluTanhBloom.
//
// config.json: hidden_size (or n_embed), n_head (or num_attention_heads),
// n_layer (or num_hidden_layers), vocab_size (required); layer_norm_epsilon
// (1e-5), tie_word_embeddings (true), seq_length (the context prenorm
// allows; ALiBi has no limit of its own, default 2048, BLOOM's training
// length). apply_residual_connection_post_layernorm true is refused (the
// residual is then the norm's output, which conversion changes); the
// settings that only change float rounding or speed (pretraining_tp,
// slow_but_exact, attention_softmax_in_fp32, ...) are accepted.

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../models/config.hpp"
#include "../models/gpt.hpp"
#include "../ops/activation.hpp"
#include "error.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

namespace detail {

// json[key], or json[alias] when only that is present (BLOOM's older names).
inline const char* bloom_key(const nlohmann::json& json, const char* key, const char* alias) {
  return find_key(json, key) == nullptr && find_key(json, alias) != nullptr ? alias : key;
}

}  // namespace detail

// The TransformerConfig of a BLOOM config.json; `source` names it in messages.
inline TransformerConfig bloom_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_bloom";
  using namespace detail;
  json_require_model_type(op, json, source, "bloom");
  json_require_bool(op, json, source, "apply_residual_connection_post_layernorm", false,
                    "the residual would be the norm's output, which conversion changes");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, bloom_key(json, "hidden_size", "n_embed"), 2);
  config.heads = json_integer(op, json, source, bloom_key(json, "n_head", "num_attention_heads"), 1);
  config.layers = json_integer(op, json, source, bloom_key(json, "n_layer", "num_hidden_layers"), 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "seq_length", 1, 2048);
  config.mlp_width = 4 * config.width;  // BloomMLP: always 4 * hidden_size
  config.epsilon = json_positive(op, json, source, "layer_norm_epsilon", 1e-5);
  config.activation = Activation::GeluTanhBloom;
  config.learned_positions = false;
  config.alibi = true;
  // The file's head is tied to the raw E unless tie_word_embeddings is false;
  // either way prenorm's head is untied (its token table is LN_emb(E)).
  config.tied = false;
  config.head_bias = false;
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'n_head' ", config.heads);
  validate_config(op, config, source);
  return config;
}

namespace detail {

// Every tensor of the layout, lm_head.weight when `untied`.
inline std::vector<ExpectedTensor> bloom_expected(const TransformerConfig& c, const std::string& p,
                                                  bool untied) {
  const std::int64_t d = c.width, I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({p + "word_embeddings.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  e.push_back({p + "word_embeddings_layernorm.weight", {d}, "(hidden_size)"});
  e.push_back({p + "word_embeddings_layernorm.bias", {d}, "(hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    for (const char* norm : {"input_layernorm.", "post_attention_layernorm."}) {
      e.push_back({h + norm + "weight", {d}, "(hidden_size)"});
      e.push_back({h + norm + "bias", {d}, "(hidden_size)"});
    }
    e.push_back({h + "self_attention.query_key_value.weight", {3 * d, d}, "(3*hidden_size, hidden_size)"});
    e.push_back({h + "self_attention.query_key_value.bias", {3 * d}, "(3*hidden_size)"});
    e.push_back({h + "self_attention.dense.weight", {d, d}, "(hidden_size, hidden_size)"});
    e.push_back({h + "self_attention.dense.bias", {d}, "(hidden_size)"});
    e.push_back({h + "mlp.dense_h_to_4h.weight", {I, d}, "(4*hidden_size, hidden_size)"});
    e.push_back({h + "mlp.dense_h_to_4h.bias", {I}, "(4*hidden_size)"});
    e.push_back({h + "mlp.dense_4h_to_h.weight", {d, I}, "(hidden_size, 4*hidden_size)"});
    e.push_back({h + "mlp.dense_4h_to_h.bias", {d}, "(hidden_size)"});
  }
  e.push_back({p + "ln_f.weight", {d}, "(hidden_size)"});
  e.push_back({p + "ln_f.bias", {d}, "(hidden_size)"});
  if (untied) e.push_back({"lm_head.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  return e;
}

// LN(E) row by row in double: (e - mean) / sqrt(var + eps) * gamma + beta,
// the biased variance (nn.LayerNorm). E [vocab x d], gamma, beta [d].
inline RowMatrix<double> layer_norm_rows(const RowMatrix<double>& table, const Vector<double>& gamma,
                                         const Vector<double>& beta, double epsilon) {
  RowMatrix<double> result(table.rows(), table.cols());
  const double d = double(table.cols());
  for (Index r = 0; r < table.rows(); ++r) {
    double mean = 0, var = 0;
    for (Index c = 0; c < table.cols(); ++c) mean += table(r, c);
    mean /= d;
    for (Index c = 0; c < table.cols(); ++c) var += (table(r, c) - mean) * (table(r, c) - mean);
    const double inv = 1.0 / std::sqrt(var / d + epsilon);
    for (Index c = 0; c < table.cols(); ++c)
      result(r, c) = (table(r, c) - mean) * inv * gamma[c] + beta[c];
  }
  return result;
}

}  // namespace detail

// Loads a BLOOM checkpoint as a Pre-LN GPT, `json` its config.json (named
// `source` in messages). Throws FormatError naming the file and the tensor on
// any missing, unknown or misshapen tensor.
template <class S>
Gpt<Arch::PreLN, S> load_hf_bloom(const SafetensorsFile& file, const nlohmann::json& json,
                                  const std::string& source) {
  constexpr const char* op = "hf_bloom";
  const TransformerConfig config = bloom_config_from_json(json, source);
  const bool file_tied = detail::json_bool(op, json, source, "tie_word_embeddings", true);
  const std::string p = detail::hf_tensor_prefix(op, file, "word_embeddings.weight", "transformer.");
  detail::check_tensors(
      op, file, detail::bloom_expected(config, p, !file_tied),
      [&](std::string_view name) { return file_tied && name == "lm_head.weight"; },
      "config: n_layer " + std::to_string(config.layers) + ", hidden_size " +
          std::to_string(config.width) + ", tensor prefix '" + p + "'");

  Gpt<Arch::PreLN, S> model(config);
  const RowMatrix<double> table = file.matrix<double>(p + "word_embeddings.weight");
  model.token_embedding.table =
      detail::layer_norm_rows(table, file.vector<double>(p + "word_embeddings_layernorm.weight"),
                              file.vector<double>(p + "word_embeddings_layernorm.bias"),
                              config.epsilon)
          .cast<S>();
  model.head.weight = file_tied ? RowMatrix<S>(table.cast<S>()) : file.matrix<S>("lm_head.weight");
  const Index heads = config.heads, hd = config.head_size();
  for (Index i = 0; i < config.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(h + "input_layernorm.weight");
    b.norm1_beta = file.vector<S>(h + "input_layernorm.bias");
    // [heads, 3, hd] -> [q heads | k heads | v heads]
    b.attn.qkv.weight = detail::qkv_rows_from_per_head(
        file.matrix<S>(h + "self_attention.query_key_value.weight"), heads, hd);
    b.attn.qkv.bias = detail::qkv_rows_from_per_head(
        file.vector<S>(h + "self_attention.query_key_value.bias"), heads, hd);
    b.attn.out.weight = file.matrix<S>(h + "self_attention.dense.weight");
    b.attn.out.bias = file.vector<S>(h + "self_attention.dense.bias");
    b.norm2_gamma = file.vector<S>(h + "post_attention_layernorm.weight");
    b.norm2_beta = file.vector<S>(h + "post_attention_layernorm.bias");
    b.mlp.fc.weight = file.matrix<S>(h + "mlp.dense_h_to_4h.weight");
    b.mlp.fc.bias = file.vector<S>(h + "mlp.dense_h_to_4h.bias");
    b.mlp.proj.weight = file.matrix<S>(h + "mlp.dense_4h_to_h.weight");
    b.mlp.proj.bias = file.vector<S>(h + "mlp.dense_4h_to_h.bias");
  }
  model.final_gamma = file.vector<S>(p + "ln_f.weight");
  model.final_beta = file.vector<S>(p + "ln_f.bias");
  model.validate(op);
  return model;
}

// Loads the BLOOM checkpoint at `path` with its config.json: `config` when
// given, else config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_bloom(const std::filesystem::path& path,
                                  const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_bloom", path, config, [](const SafetensorsFile& file, const nlohmann::json& json,
                                 const std::string& source) { return load_hf_bloom<S>(file, json, source); });
}

}  // namespace prenorm::io
