#pragma once
// The Hugging Face Phi-1 / 1.5 / 2 layout (PhiForCausalLM safetensors and
// config.json) -> Gpt<Arch::PreLN, S>.
//
// Tensors, d = hidden_size, I = intermediate_size, hd = d / heads, kv =
// num_key_value_heads, with l = model.layers.{i}.:
//   model.embed_tokens.weight          (vocab_size, d)  token_embedding.table
//   l input_layernorm.{weight,bias}    (d)              blocks[i].norm1_{gamma,beta}
//   l self_attn.q_proj.{weight,bias}   (d, d)           blocks[i].attn.qkv rows [0, d)
//   l self_attn.k_proj.{weight,bias}   (kv hd, d)       ... rows [d, d + kv hd)
//   l self_attn.v_proj.{weight,bias}   (kv hd, d)       ... rows [d + kv hd, d + 2 kv hd)
//   l self_attn.dense.{weight,bias}    (d, d)           blocks[i].attn.out
//   l mlp.fc1.{weight,bias}            (I, d)           blocks[i].mlp.fc
//   l mlp.fc2.{weight,bias}            (d, I)           blocks[i].mlp.proj
//   model.final_layernorm.{weight,bias} (d)             final_{gamma,beta}
//   lm_head.weight                     (vocab_size, d)  head.weight
//   lm_head.bias                       (vocab_size)     head_bias
// One LayerNorm feeds both branches: h + attn(ln h) + mlp(ln h), prenorm's
// ParallelSharedNorm. The rotary_emb.inv_freq buffers of older checkpoints
// are ignored.
//
// config.json: hidden_size, num_attention_heads, num_hidden_layers,
// intermediate_size, vocab_size, max_position_embeddings (required);
// num_key_value_heads (null: num_attention_heads), layer_norm_eps (1e-5),
// hidden_act ("gelu_new"), rotary (rotate-half) on
// int(hd * partial_rotary_factor) coordinates with base rope_theta (0.5,
// 10000; or transformers v5's rope_parameters). No position table. Refused:
// qk_layernorm true, rope_scaling (any but null), a rope_type other than
// "default", tie_word_embeddings true (PhiForCausalLM's head is its own
// biased lm_head).

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

// The TransformerConfig of a Phi config.json; `source` names it in messages.
inline TransformerConfig phi_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_phi";
  using namespace detail;
  json_require_model_type(op, json, source, "phi");
  json_require_bool(op, json, source, "qk_layernorm", false,
                    "prenorm's attention has no LayerNorm on q and k");
  json_require_bool(op, json, source, "tie_word_embeddings", false,
                    "PhiForCausalLM's head is its own lm_head, with a bias");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "hidden_size", 2);
  config.heads = json_integer(op, json, source, "num_attention_heads", 1);
  config.kv_heads = json_integer(op, json, source, "num_key_value_heads", 1, config.heads);
  config.layers = json_integer(op, json, source, "num_hidden_layers", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "max_position_embeddings", 1);
  config.mlp_width = json_integer(op, json, source, "intermediate_size", 1);
  config.epsilon = json_positive(op, json, source, "layer_norm_eps", 1e-5);
  config.activation = json_hf_activation(op, json, source, "hidden_act", "gelu_new");
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'num_attention_heads' ", config.heads);
  if (config.heads % config.kv_heads != 0)
    fail_with<FormatError>(op, source, ": 'num_attention_heads' ", config.heads,
                           " is not a multiple of 'num_key_value_heads' ", config.kv_heads);
  config.topology = BlockTopology::ParallelSharedNorm;
  config.rotary = json_rotary(op, json, source, config.width / config.heads,
                              RotaryPairing::RotateHalf, "partial_rotary_factor", 0.5, "rope_theta");
  config.learned_positions = false;
  config.tied = false;
  config.head_bias = true;
  validate_config(op, config, source);
  return config;
}

namespace detail {

inline bool phi_ignored_buffer(std::string_view name) {
  return layer_buffer(name, "model.layers.", {".self_attn.rotary_emb.inv_freq"});
}

inline std::vector<ExpectedTensor> phi_expected(const TransformerConfig& c) {
  const Index d = c.width, I = c.mlp_width, kv = c.kv_width();
  std::vector<ExpectedTensor> e;
  e.push_back({"model.embed_tokens.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    expect_layer_norm(e, l + "input_layernorm.", d, "(hidden_size)");
    expect_linear(e, l + "self_attn.q_proj", d, d, true, "hidden_size", "hidden_size");
    expect_linear(e, l + "self_attn.k_proj", kv, d, true, "num_key_value_heads*head_dim", "hidden_size");
    expect_linear(e, l + "self_attn.v_proj", kv, d, true, "num_key_value_heads*head_dim", "hidden_size");
    expect_linear(e, l + "self_attn.dense", d, d, true, "hidden_size", "hidden_size");
    expect_linear(e, l + "mlp.fc1", I, d, true, "intermediate_size", "hidden_size");
    expect_linear(e, l + "mlp.fc2", d, I, true, "hidden_size", "intermediate_size");
  }
  expect_layer_norm(e, "model.final_layernorm.", d, "(hidden_size)");
  expect_linear(e, "lm_head", c.vocab, d, true, "vocab_size", "hidden_size");
  return e;
}

}  // namespace detail

// The dtype of a Phi file's weights (the buffers aside).
inline Dtype hf_phi_dtype(const SafetensorsFile& file) {
  return detail::weights_dtype(file, detail::phi_ignored_buffer);
}

// Loads a Phi checkpoint as a Pre-LN GPT; `json` is its config.json, named
// `source` in messages. Throws FormatError naming the file and the tensor on
// any mismatch.
template <class S>
Gpt<Arch::PreLN, S> load_hf_phi(const SafetensorsFile& file, const nlohmann::json& json,
                                const std::string& source) {
  constexpr const char* op = "hf_phi";
  const TransformerConfig config = phi_config_from_json(json, source);
  detail::check_tensors(op, file, detail::phi_expected(config), detail::phi_ignored_buffer,
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width));

  Gpt<Arch::PreLN, S> model(config);
  model.token_embedding.table = file.matrix<S>("model.embed_tokens.weight");
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "input_layernorm.weight");
    b.norm1_beta = file.vector<S>(l + "input_layernorm.bias");
    b.attn.qkv = detail::stack_qkv(detail::hf_linear<S>(file, l + "self_attn.q_proj", true),
                                   detail::hf_linear<S>(file, l + "self_attn.k_proj", true),
                                   detail::hf_linear<S>(file, l + "self_attn.v_proj", true));
    b.attn.out = detail::hf_linear<S>(file, l + "self_attn.dense", true);
    b.mlp.fc = detail::hf_linear<S>(file, l + "mlp.fc1", true);
    b.mlp.proj = detail::hf_linear<S>(file, l + "mlp.fc2", true);
  }
  model.final_gamma = file.vector<S>("model.final_layernorm.weight");
  model.final_beta = file.vector<S>("model.final_layernorm.bias");
  model.head.weight = file.matrix<S>("lm_head.weight");
  model.head_bias = file.vector<S>("lm_head.bias");
  model.validate(op);
  return model;
}

// Loads the Phi checkpoint at `path` with `config` (a config.json), or the
// config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_phi(const std::filesystem::path& path,
                                const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config("hf_phi", path, config, [](const auto&... args) {
    return load_hf_phi<S>(args...);
  });
}

}  // namespace prenorm::io
