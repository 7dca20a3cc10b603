#pragma once
// The Hugging Face GPT-NeoX / Pythia layout (GPTNeoXForCausalLM safetensors
// and config.json) -> Gpt<Arch::PreLN, S>.
//
// Tensors, d = hidden_size, I = intermediate_size, hd = d / heads, with
// l = gpt_neox.layers.{i}.:
//   gpt_neox.embed_in.weight             (vocab_size, d)  token_embedding.table
//   l input_layernorm.{weight,bias}          (d)          blocks[i].norm1_{gamma,beta}
//   l post_attention_layernorm.{weight,bias} (d)          blocks[i].norm2_{gamma,beta}
//   l attention.query_key_value.{weight,bias} (3 d, d)    blocks[i].attn.qkv, rows permuted
//   l attention.dense.{weight,bias}          (d, d)       blocks[i].attn.out
//   l mlp.dense_h_to_4h.{weight,bias}        (I, d)       blocks[i].mlp.fc
//   l mlp.dense_4h_to_h.{weight,bias}        (d, I)       blocks[i].mlp.proj
//   gpt_neox.final_layer_norm.{weight,bias}  (d)          final_{gamma,beta}
//   embed_out.weight                     (vocab_size, d)  head.weight (untied)
// query_key_value's output rows are laid out per head, [q, k, v] each of hd
// (HF views them as (heads, 3 hd)): row h*3hd + j*hd + c (j = 0, 1, 2 for q, k,
// v) becomes prenorm's row j*d + h*hd + c, once, at load. Without
// attention_bias the attention's Linears get zero biases (exact).
// The buffers of older checkpoints (attention.bias, attention.masked_bias,
// attention.rotary_emb.inv_freq) are ignored.
//
// config.json: hidden_size, num_attention_heads, num_hidden_layers,
// intermediate_size, vocab_size, max_position_embeddings (required);
// layer_norm_eps (1e-5), hidden_act ("gelu", exact), use_parallel_residual
// (true: ParallelTwoNorms, h + attn(ln1 h) + mlp(ln2 h); false: Sequential),
// rotary (rotate-half) on int(hd * rotary_pct) coordinates with base
// rotary_emb_base (0.25, 10000; or transformers v5's rope_parameters),
// attention_bias (true), tie_word_embeddings (false: embed_out; true: the
// head is embed_in, embed_out absent or a copy). No position table. Refused:
// rope_scaling (any but null), a rope_type other than "default".

#include <nlohmann/json.hpp>

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
#include "hf_decoder_common.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The TransformerConfig of a GPT-NeoX config.json; `source` names it in messages.
inline TransformerConfig gpt_neox_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_gpt_neox";
  using namespace detail;
  json_require_model_type(op, json, source, "gpt_neox");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "hidden_size", 2);
  config.heads = json_integer(op, json, source, "num_attention_heads", 1);
  config.layers = json_integer(op, json, source, "num_hidden_layers", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "max_position_embeddings", 1);
  config.mlp_width = json_integer(op, json, source, "intermediate_size", 1);
  config.epsilon = json_positive(op, json, source, "layer_norm_eps", 1e-5);
  config.activation = json_hf_activation(op, json, source, "hidden_act", "gelu");
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'num_attention_heads' ", config.heads);
  config.topology = json_bool(op, json, source, "use_parallel_residual", true)
                        ? BlockTopology::ParallelTwoNorms
                        : BlockTopology::Sequential;
  config.rotary = json_rotary(op, json, source, config.width / config.heads,
                              RotaryPairing::RotateHalf, "rotary_pct", 0.25, "rotary_emb_base");
  config.learned_positions = false;
  config.tied = json_bool(op, json, source, "tie_word_embeddings", false);
  config.head_bias = false;
  validate_config(op, config, source);
  return config;
}

namespace detail {

inline bool gpt_neox_ignored_buffer(std::string_view name) {
  return layer_buffer(name, "gpt_neox.layers.",
                      {".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"});
}

// The tensors of the layout (embed_out.weight when the head is untied).
inline std::vector<ExpectedTensor> gpt_neox_expected(const TransformerConfig& c, bool attention_bias) {
  const Index d = c.width, I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({"gpt_neox.embed_in.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = "gpt_neox.layers." + std::to_string(i) + ".";
    expect_layer_norm(e, l + "input_layernorm.", d, "(hidden_size)");
    expect_layer_norm(e, l + "post_attention_layernorm.", d, "(hidden_size)");
    expect_linear(e, l + "attention.query_key_value", 3 * d, d, attention_bias, "3*hidden_size",
                  "hidden_size");
    expect_linear(e, l + "attention.dense", d, d, attention_bias, "hidden_size", "hidden_size");
    expect_linear(e, l + "mlp.dense_h_to_4h", I, d, true, "intermediate_size", "hidden_size");
    expect_linear(e, l + "mlp.dense_4h_to_h", d, I, true, "hidden_size", "intermediate_size");
  }
  expect_layer_norm(e, "gpt_neox.final_layer_norm.", d, "(hidden_size)");
  return e;
}

// query_key_value's rows per head [q, k, v] -> prenorm's [q heads | k heads | v heads].
template <class S>
void neox_qkv_to_prenorm(Linear<S>& qkv, Index heads, Index head_dim) {
  const Index d = heads * head_dim;
  Linear<S> out;
  out.weight.resize(3 * d, qkv.weight.cols());
  out.bias.resize(3 * d);
  for (Index h = 0; h < heads; ++h)
    for (Index j = 0; j < 3; ++j) {
      const Index from = h * 3 * head_dim + j * head_dim, to = j * d + h * head_dim;
      out.weight.middleRows(to, head_dim) = qkv.weight.middleRows(from, head_dim);
      out.bias.segment(to, head_dim) = qkv.bias.segment(from, head_dim);
    }
  qkv = std::move(out);
}

}  // namespace detail

// The dtype of a GPT-NeoX file's weights (the buffers aside).
inline Dtype hf_gpt_neox_dtype(const SafetensorsFile& file) {
  return detail::weights_dtype(file, detail::gpt_neox_ignored_buffer);
}

// Loads a GPT-NeoX checkpoint as a Pre-LN GPT; `json` is its config.json,
// named `source` in messages. Throws FormatError naming the file and the
// tensor on any mismatch.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_neox(const SafetensorsFile& file, const nlohmann::json& json,
                                     const std::string& source) {
  constexpr const char* op = "hf_gpt_neox";
  const TransformerConfig config = gpt_neox_config_from_json(json, source);
  const bool bias = detail::json_bool(op, json, source, "attention_bias", true);
  std::vector<ExpectedTensor> expected = detail::gpt_neox_expected(config, bias);
  const std::string head = "embed_out.weight", embed = "gpt_neox.embed_in.weight";
  if (!config.tied || file.contains(head))
    expected.push_back({head, {config.vocab, config.width}, "(vocab_size, hidden_size)"});
  detail::check_tensors(op, file, expected, detail::gpt_neox_ignored_buffer,
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width));
  detail::check_tied_head(op, file, config.tied, head, embed);

  Gpt<Arch::PreLN, S> model(config);
  model.token_embedding.table = file.matrix<S>(embed);
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = "gpt_neox.layers." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "input_layernorm.weight");
    b.norm1_beta = file.vector<S>(l + "input_layernorm.bias");
    b.norm2_gamma = file.vector<S>(l + "post_attention_layernorm.weight");
    b.norm2_beta = file.vector<S>(l + "post_attention_layernorm.bias");
    b.attn.qkv = detail::hf_linear<S>(file, l + "attention.query_key_value", bias);
    detail::neox_qkv_to_prenorm(b.attn.qkv, config.heads, config.head_size());
    b.attn.out = detail::hf_linear<S>(file, l + "attention.dense", bias);
    b.mlp.fc = detail::hf_linear<S>(file, l + "mlp.dense_h_to_4h", true);
    b.mlp.proj = detail::hf_linear<S>(file, l + "mlp.dense_4h_to_h", true);
  }
  model.final_gamma = file.vector<S>("gpt_neox.final_layer_norm.weight");
  model.final_beta = file.vector<S>("gpt_neox.final_layer_norm.bias");
  if (!config.tied) model.head.weight = file.matrix<S>(head);
  model.validate(op);
  return model;
}

// Loads the GPT-NeoX checkpoint at `path` with `config` (a config.json), or
// the config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_neox(const std::filesystem::path& path,
                                     const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config("hf_gpt_neox", path, config, [](const auto&... args) {
    return load_hf_gpt_neox<S>(args...);
  });
}

}  // namespace prenorm::io
