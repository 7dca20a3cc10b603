#pragma once
// The Hugging Face GPT-BigCode / StarCoder layout (GPTBigCodeForCausalLM /
// GPTBigCodeModel safetensors and config.json, model_type "gpt_bigcode") ->
// Gpt<Arch::PreLN, S>. Reading only: a converted model is saved in prenorm's
// layout.
//
// GPT-2's names, but nn.Linear weights (out, in), which is prenorm's order.
// Every name with or without "transformer." (one or the other for the whole
// file); d = n_embd, hd = d / n_head, kv = hd with multi_query (one key/value
// head shared by every query head), d without; I = n_inner (null: 4 d):
//   wte.weight               (vocab_size, d)       token_embedding.table
//   wpe.weight               (n_positions, d)      position_embedding.table
//   h.{i}.ln_1.{weight,bias} (d)                   blocks[i].norm1_{gamma,beta}
//   h.{i}.attn.c_attn.weight (d + 2 kv, d)         blocks[i].attn.qkv.weight
//   h.{i}.attn.c_attn.bias   (d + 2 kv)            blocks[i].attn.qkv.bias
//   h.{i}.attn.c_proj.{weight (d, d), bias (d)}    blocks[i].attn.out
//   h.{i}.ln_2.{weight,bias} (d)                   blocks[i].norm2_{gamma,beta}
//   h.{i}.mlp.c_fc.{weight (I, d), bias (I)}       blocks[i].mlp.fc
//   h.{i}.mlp.c_proj.{weight (d, I), bias (d)}     blocks[i].mlp.proj
//   ln_f.{weight,bias}       (d)                   final_{gamma,beta}
//   lm_head.weight           (vocab_size, d)       head.weight, never prefixed
// c_attn's rows: multi_query [q (d) | k (hd) | v (hd)], already prenorm's
// order with kv_heads = 1; otherwise per head [q_h, k_h, v_h]
// (view(n_head, 3 hd)), reordered once at load into [q heads | k heads | v heads].
// The head is tied to wte unless tie_word_embeddings is false (then
// lm_head.weight is required); a tied model's lm_head.weight, if saved, is
// ignored, as GPTBigCodeForCausalLM does (it ties the two after loading).
//
// config.json: n_embd, n_head, n_layer, vocab_size, n_positions (required),
// layer_norm_epsilon (1e-5), activation_function ("gelu_pytorch_tanh"),
// n_inner (null), multi_query (true), scale_attn_weights (true; false:
// unscaled scores, score_scale 1), tie_word_embeddings (true).
// attention_softmax_in_fp32 and scale_attention_softmax_in_fp32 only change
// float rounding (the latter multiplies and divides by layer_idx + 1) and are
// accepted; add_cross_attention true is refused.

#include <nlohmann/json.hpp>

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
#include "error.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The TransformerConfig of a GPT-BigCode config.json; `source` names it in messages.
inline TransformerConfig gpt_bigcode_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_gpt_bigcode";
  using namespace detail;
  json_require_model_type(op, json, source, "gpt_bigcode");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "n_embd", 2);
  config.heads = json_integer(op, json, source, "n_head", 1);
  config.layers = json_integer(op, json, source, "n_layer", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "n_positions", 1);
  config.mlp_width = json_integer(op, json, source, "n_inner", 1, 4 * config.width);
  config.epsilon = json_positive(op, json, source, "layer_norm_epsilon", 1e-5);
  config.activation =
      json_hf_activation(op, json, source, "activation_function", "gelu_pytorch_tanh");
  config.kv_heads = json_bool(op, json, source, "multi_query", true) ? 1 : 0;
  config.score_scale = json_bool(op, json, source, "scale_attn_weights", true) ? 0.0 : 1.0;
  json_require_bool(op, json, source, "add_cross_attention", false,
                    "prenorm's GPT is decoder-only");
  config.tied = json_bool(op, json, source, "tie_word_embeddings", true);
  config.head_bias = false;
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'n_embd' ", config.width,
                           " is not divisible by 'n_head' ", config.heads);
  validate_config(op, config, source);
  return config;
}

namespace detail {

// Every tensor of the layout, lm_head.weight when untied.
inline std::vector<ExpectedTensor> gpt_bigcode_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, qkv = d + 2 * c.kv_width(), I = c.mlp_width;
  const std::string qkv_what = c.kv_heads == 1 ? "(n_embd + 2*head_dim, n_embd) (multi_query)"
                                               : "(3*n_embd, n_embd)";
  std::vector<ExpectedTensor> e;
  e.push_back({p + "wte.weight", {c.vocab, d}, "(vocab_size, n_embd)"});
  e.push_back({p + "wpe.weight", {c.context, d}, "(n_positions, n_embd)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    e.push_back({h + "ln_1.weight", {d}, "(n_embd)"});
    e.push_back({h + "ln_1.bias", {d}, "(n_embd)"});
    e.push_back({h + "attn.c_attn.weight", {qkv, d}, qkv_what});
    e.push_back({h + "attn.c_attn.bias", {qkv}, "(rows of c_attn.weight)"});
    e.push_back({h + "attn.c_proj.weight", {d, d}, "(n_embd, n_embd)"});
    e.push_back({h + "attn.c_proj.bias", {d}, "(n_embd)"});
    e.push_back({h + "ln_2.weight", {d}, "(n_embd)"});
    e.push_back({h + "ln_2.bias", {d}, "(n_embd)"});
    e.push_back({h + "mlp.c_fc.weight", {I, d}, "(n_inner, n_embd)"});
    e.push_back({h + "mlp.c_fc.bias", {I}, "(n_inner)"});
    e.push_back({h + "mlp.c_proj.weight", {d, I}, "(n_embd, n_inner)"});
    e.push_back({h + "mlp.c_proj.bias", {d}, "(n_embd)"});
  }
  e.push_back({p + "ln_f.weight", {d}, "(n_embd)"});
  e.push_back({p + "ln_f.bias", {d}, "(n_embd)"});
  if (!c.tied) e.push_back({"lm_head.weight", {c.vocab, d}, "(vocab_size, n_embd)"});
  return e;
}

}  // namespace detail

// Loads a GPT-BigCode checkpoint as a Pre-LN GPT, `json` its config.json
// (named `source` in messages). Throws FormatError naming the file and the
// tensor on any missing, unknown or misshapen tensor.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_bigcode(const SafetensorsFile& file, const nlohmann::json& json,
                                        const std::string& source) {
  constexpr const char* op = "hf_gpt_bigcode";
  const TransformerConfig config = gpt_bigcode_config_from_json(json, source);
  const std::string p = detail::hf_tensor_prefix(op, file, "wte.weight", "transformer.");
  detail::check_tensors(
      op, file, detail::gpt_bigcode_expected(config, p),
      [&](std::string_view name) { return config.tied && name == "lm_head.weight"; },
      "config: n_layer " + std::to_string(config.layers) + ", n_embd " +
          std::to_string(config.width) + ", multi_query " + (config.kv_heads == 1 ? "true" : "false") +
          ", tensor prefix '" + p + "'");

  Gpt<Arch::PreLN, S> model(config);
  model.token_embedding.table = file.matrix<S>(p + "wte.weight");
  model.position_embedding.table = file.matrix<S>(p + "wpe.weight");
  const Index heads = config.heads, hd = config.head_size();
  for (Index i = 0; i < config.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(h + "ln_1.weight");
    b.norm1_beta = file.vector<S>(h + "ln_1.bias");
    b.attn.qkv.weight = file.matrix<S>(h + "attn.c_attn.weight");
    b.attn.qkv.bias = file.vector<S>(h + "attn.c_attn.bias");
    if (config.kv_heads != 1) {  // per head [q, k, v] -> [q heads | k heads | v heads]
      b.attn.qkv.weight = detail::qkv_rows_from_per_head(b.attn.qkv.weight, heads, hd);
      b.attn.qkv.bias = detail::qkv_rows_from_per_head(b.attn.qkv.bias, heads, hd);
    }
    b.attn.out.weight = file.matrix<S>(h + "attn.c_proj.weight");
    b.attn.out.bias = file.vector<S>(h + "attn.c_proj.bias");
    b.norm2_gamma = file.vector<S>(h + "ln_2.weight");
    b.norm2_beta = file.vector<S>(h + "ln_2.bias");
    b.mlp.fc.weight = file.matrix<S>(h + "mlp.c_fc.weight");
    b.mlp.fc.bias = file.vector<S>(h + "mlp.c_fc.bias");
    b.mlp.proj.weight = file.matrix<S>(h + "mlp.c_proj.weight");
    b.mlp.proj.bias = file.vector<S>(h + "mlp.c_proj.bias");
  }
  model.final_gamma = file.vector<S>(p + "ln_f.weight");
  model.final_beta = file.vector<S>(p + "ln_f.bias");
  if (!config.tied) model.head.weight = file.matrix<S>("lm_head.weight");
  model.validate(op);
  return model;
}

// Loads the GPT-BigCode checkpoint at `path` with its config.json: `config`
// when given, else config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_bigcode(const std::filesystem::path& path,
                                        const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_gpt_bigcode", path, config, [](const SafetensorsFile& file, const nlohmann::json& json,
                                 const std::string& source) { return load_hf_gpt_bigcode<S>(file, json, source); });
}

}  // namespace prenorm::io
