#pragma once
// The Hugging Face OPT layout (OPTForCausalLM / OPTModel safetensors and
// config.json) -> Gpt<Arch::PreLN, S>.
//
// Tensors, every name but lm_head.weight under "model.decoder." (OPTForCausalLM)
// or "decoder." (OPTModel), one or the other for the whole file; d =
// hidden_size, F = ffn_dim, with l = layers.{i}.:
//   embed_tokens.weight              (vocab_size, d)    token_embedding.table
//   embed_positions.weight           (max_position_embeddings + 2, d)
//                                                       position_embedding.table (offset 2)
//   l self_attn_layer_norm.{weight,bias} (d)            blocks[i].norm1_{gamma,beta}
//   l self_attn.{q,k,v}_proj.{weight,bias} (d, d)       blocks[i].attn.qkv, rows [q | k | v]
//   l self_attn.out_proj.{weight,bias} (d, d)           blocks[i].attn.out
//   l final_layer_norm.{weight,bias} (d)                blocks[i].norm2_{gamma,beta}
//   l fc1.{weight,bias}              (F, d)             blocks[i].mlp.fc
//   l fc2.{weight,bias}              (d, F)             blocks[i].mlp.proj
//   final_layer_norm.{weight,bias}   (d)                final_{gamma,beta}
//   lm_head.weight                   (vocab_size, d)    head.weight when untied
// OPT reads position p at row p + 2 of embed_positions (OPTLearnedPositional-
// Embedding's offset): position_offset = 2, the table keeps its rows 0 and 1.
// HF scales q by head_dim^-0.5 after its bias, which is prenorm's score scale.
// With enable_bias false, every Linear gets a zero bias (exact).
//
// config.json: hidden_size, num_attention_heads, num_hidden_layers, ffn_dim,
// vocab_size, max_position_embeddings (required); activation_function
// ("relu"), enable_bias (true), tie_word_embeddings (true: the head is
// embed_tokens, lm_head.weight absent or a copy; false: lm_head.weight). The
// LayerNorms' epsilon is nn.LayerNorm's 1e-5 (OPT's config has none).
// Refused: do_layer_norm_before false (OPT-350m: post-LN), a
// word_embed_proj_dim other than hidden_size (project_in / project_out),
// _remove_final_layer_norm true, layer_norm_elementwise_affine false.

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../models/config.hpp"
#include "../models/gpt.hpp"
#include "error.hpp"
#include "hf_decoder_common.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The TransformerConfig of an OPT config.json; `source` names it in messages.
inline TransformerConfig opt_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_opt";
  using namespace detail;
  json_require_model_type(op, json, source, "opt");
  json_require_bool(op, json, source, "do_layer_norm_before", true,
                    "post-LN OPT (OPT-350m) normalizes the residual stream itself, which a "
                    "Pre-LN model cannot hold");
  json_require_bool(op, json, source, "_remove_final_layer_norm", false,
                    "prenorm's GPT ends with a final LayerNorm");
  json_require_bool(op, json, source, "layer_norm_elementwise_affine", true,
                    "the loader reads the LayerNorms' weight and bias");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "hidden_size", 2);
  config.heads = json_integer(op, json, source, "num_attention_heads", 1);
  config.layers = json_integer(op, json, source, "num_hidden_layers", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "max_position_embeddings", 1);
  config.mlp_width = json_integer(op, json, source, "ffn_dim", 1);
  const Index projection = json_integer(op, json, source, "word_embed_proj_dim", 1, config.width);
  if (projection != config.width)
    fail_with<FormatError>(op, source, ": 'word_embed_proj_dim' is ", projection,
                           ", only 'hidden_size' ", config.width,
                           " is supported (prenorm has no project_in / project_out)");
  config.epsilon = 1e-5;  // nn.LayerNorm's default
  config.activation = json_hf_activation(op, json, source, "activation_function", "relu");
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'num_attention_heads' ", config.heads);
  config.position_offset = 2;
  config.tied = json_bool(op, json, source, "tie_word_embeddings", true);
  config.head_bias = false;
  validate_config(op, config, source);
  return config;
}

namespace detail {

// "model.decoder." or "decoder.", from the names in the file.
inline std::string opt_prefix(const SafetensorsFile& file) {
  const bool full = file.contains("model.decoder.embed_tokens.weight");
  const bool bare = file.contains("decoder.embed_tokens.weight");
  if (full && bare)
    fail_with<FormatError>("hf_opt", file.path().string(),
                           ": has both 'model.decoder.embed_tokens.weight' and "
                           "'decoder.embed_tokens.weight'; use one naming for the whole file");
  return bare ? "decoder." : "model.decoder.";
}

// The tensors of the layout (lm_head.weight when the head is untied).
inline std::vector<ExpectedTensor> opt_expected(const TransformerConfig& c, const std::string& p,
                                                bool bias) {
  const Index d = c.width, F = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({p + "embed_tokens.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  e.push_back({p + "embed_positions.weight", {c.position_rows(), d},
               "(max_position_embeddings + 2, hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    expect_layer_norm(e, l + "self_attn_layer_norm.", d, "(hidden_size)");
    for (const char* x : {"q_proj", "k_proj", "v_proj", "out_proj"})
      expect_linear(e, l + "self_attn." + x, d, d, bias, "hidden_size", "hidden_size");
    expect_layer_norm(e, l + "final_layer_norm.", d, "(hidden_size)");
    expect_linear(e, l + "fc1", F, d, bias, "ffn_dim", "hidden_size");
    expect_linear(e, l + "fc2", d, F, bias, "hidden_size", "ffn_dim");
  }
  expect_layer_norm(e, p + "final_layer_norm.", d, "(hidden_size)");
  return e;
}

}  // namespace detail

// The dtype of an OPT file's weights.
inline Dtype hf_opt_dtype(const SafetensorsFile& file) {
  return detail::weights_dtype(file, [](std::string_view) { return false; });
}

// Loads an OPT checkpoint as a Pre-LN GPT; `json` is its config.json, named
// `source` in messages. Throws FormatError naming the file and the tensor on
// any mismatch.
template <class S>
Gpt<Arch::PreLN, S> load_hf_opt(const SafetensorsFile& file, const nlohmann::json& json,
                                const std::string& source) {
  constexpr const char* op = "hf_opt";
  const TransformerConfig config = opt_config_from_json(json, source);
  const bool bias = detail::json_bool(op, json, source, "enable_bias", true);
  const std::string p = detail::opt_prefix(file);
  std::vector<ExpectedTensor> expected = detail::opt_expected(config, p, bias);
  const std::string head = "lm_head.weight", embed = p + "embed_tokens.weight";
  if (!config.tied || file.contains(head))
    expected.push_back({head, {config.vocab, config.width}, "(vocab_size, hidden_size)"});
  detail::check_tensors(op, file, expected, {},
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width) +
                            ", tensor prefix '" + p + "'");
  detail::check_tied_head(op, file, config.tied, head, embed);

  Gpt<Arch::PreLN, S> model(config);
  model.token_embedding.table = file.matrix<S>(embed);
  model.position_embedding.table = file.matrix<S>(p + "embed_positions.weight");
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "self_attn_layer_norm.weight");
    b.norm1_beta = file.vector<S>(l + "self_attn_layer_norm.bias");
    b.attn.qkv = detail::stack_qkv(detail::hf_linear<S>(file, l + "self_attn.q_proj", bias),
                                   detail::hf_linear<S>(file, l + "self_attn.k_proj", bias),
                                   detail::hf_linear<S>(file, l + "self_attn.v_proj", bias));
    b.attn.out = detail::hf_linear<S>(file, l + "self_attn.out_proj", bias);
    b.norm2_gamma = file.vector<S>(l + "final_layer_norm.weight");
    b.norm2_beta = file.vector<S>(l + "final_layer_norm.bias");
    b.mlp.fc = detail::hf_linear<S>(file, l + "fc1", bias);
    b.mlp.proj = detail::hf_linear<S>(file, l + "fc2", bias);
  }
  model.final_gamma = file.vector<S>(p + "final_layer_norm.weight");
  model.final_beta = file.vector<S>(p + "final_layer_norm.bias");
  if (!config.tied) model.head.weight = file.matrix<S>(head);
  model.validate(op);
  return model;
}

// Loads the OPT checkpoint at `path` with `config` (a config.json), or the
// config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_opt(const std::filesystem::path& path,
                                const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config("hf_opt", path, config, [](const auto&... args) {
    return load_hf_opt<S>(args...);
  });
}

}  // namespace prenorm::io
