#pragma once
// The Hugging Face GPT-J layout (GPTJForCausalLM safetensors and config.json)
// -> Gpt<Arch::PreLN, S>.
//
// Tensors, d = n_embd, I = n_inner (null: 4 d), with h = transformer.h.{i}.:
//   transformer.wte.weight          (vocab_size, d)  token_embedding.table
//   h ln_1.{weight,bias}            (d)              blocks[i].norm1_{gamma,beta}
//   h attn.{q,k,v}_proj.weight      (d, d)           blocks[i].attn.qkv, rows [q | k | v]
//   h attn.out_proj.weight          (d, d)           blocks[i].attn.out
//   h mlp.fc_in.{weight,bias}       (I, d)           blocks[i].mlp.fc
//   h mlp.fc_out.{weight,bias}      (d, I)           blocks[i].mlp.proj
//   transformer.ln_f.{weight,bias}  (d)              final_{gamma,beta}
//   lm_head.weight                  (vocab_size, d)  head.weight
//   lm_head.bias                    (vocab_size)     head_bias
// q, k, v and out_proj have no bias in GPT-J: prenorm's qkv and out get zero
// biases (exact; the converter folds the norm's beta into them). One ln_1
// feeds both branches: h + attn(ln_1 h) + mlp(ln_1 h), ParallelSharedNorm.
// The rotary embedding is interleaved (rotate_every_two: pairs (2i, 2i+1)) on
// the first rotary_dim coordinates of each head, base 10000. The buffers
// attn.bias and attn.masked_bias of older checkpoints are ignored.
//
// config.json: n_embd, n_head, n_layer, vocab_size, n_positions, rotary_dim
// (required); n_inner (null: 4 n_embd), layer_norm_epsilon (1e-5),
// activation_function ("gelu_new"). No position table. Refused:
// tie_word_embeddings true (GPTJForCausalLM's head is its own biased
// lm_head), an odd rotary_dim or one above the head's width.

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

// The TransformerConfig of a GPT-J config.json; `source` names it in messages.
inline TransformerConfig gptj_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_gptj";
  using namespace detail;
  json_require_model_type(op, json, source, "gptj");
  json_require_bool(op, json, source, "tie_word_embeddings", false,
                    "GPTJForCausalLM's head is its own lm_head, with a bias");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "n_embd", 2);
  config.heads = json_integer(op, json, source, "n_head", 1);
  config.layers = json_integer(op, json, source, "n_layer", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "n_positions", 1);
  config.mlp_width = json_integer(op, json, source, "n_inner", 1, 4 * config.width);
  config.epsilon = json_positive(op, json, source, "layer_norm_epsilon", 1e-5);
  config.activation = json_hf_activation(op, json, source, "activation_function", "gelu_new");
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'n_embd' ", config.width,
                           " is not divisible by 'n_head' ", config.heads);
  const Index head_dim = config.width / config.heads;
  const Index rotary_dim = json_integer(op, json, source, "rotary_dim", 2);
  if (rotary_dim % 2 != 0 || rotary_dim > head_dim)
    fail_with<FormatError>(op, source, ": 'rotary_dim' is ", rotary_dim,
                           ", expected an even number <= the head width n_embd / n_head = ",
                           head_dim);
  config.topology = BlockTopology::ParallelSharedNorm;
  config.rotary = Rotary{.dims = rotary_dim, .pairing = RotaryPairing::Interleaved, .base = 10000};
  config.learned_positions = false;
  config.tied = false;
  config.head_bias = true;
  validate_config(op, config, source);
  return config;
}

namespace detail {

inline bool gptj_ignored_buffer(std::string_view name) {
  return layer_buffer(name, "transformer.h.", {".attn.bias", ".attn.masked_bias"});
}

inline std::vector<ExpectedTensor> gptj_expected(const TransformerConfig& c) {
  const Index d = c.width, I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({"transformer.wte.weight", {c.vocab, d}, "(vocab_size, n_embd)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    expect_layer_norm(e, h + "ln_1.", d, "(n_embd)");
    for (const char* x : {"q_proj", "k_proj", "v_proj", "out_proj"})
      expect_linear(e, h + "attn." + x, d, d, false, "n_embd", "n_embd");
    expect_linear(e, h + "mlp.fc_in", I, d, true, "n_inner", "n_embd");
    expect_linear(e, h + "mlp.fc_out", d, I, true, "n_embd", "n_inner");
  }
  expect_layer_norm(e, "transformer.ln_f.", d, "(n_embd)");
  expect_linear(e, "lm_head", c.vocab, d, true, "vocab_size", "n_embd");
  return e;
}

}  // namespace detail

// The dtype of a GPT-J file's weights (the buffers aside).
inline Dtype hf_gptj_dtype(const SafetensorsFile& file) {
  return detail::weights_dtype(file, detail::gptj_ignored_buffer);
}

// Loads a GPT-J checkpoint as a Pre-LN GPT; `json` is its config.json, named
// `source` in messages. Throws FormatError naming the file and the tensor on
// any mismatch.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gptj(const SafetensorsFile& file, const nlohmann::json& json,
                                 const std::string& source) {
  constexpr const char* op = "hf_gptj";
  const TransformerConfig config = gptj_config_from_json(json, source);
  detail::check_tensors(op, file, detail::gptj_expected(config), detail::gptj_ignored_buffer,
                        "config: n_layer " + std::to_string(config.layers) + ", n_embd " +
                            std::to_string(config.width));

  Gpt<Arch::PreLN, S> model(config);
  model.token_embedding.table = file.matrix<S>("transformer.wte.weight");
  for (Index i = 0; i < config.layers; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(h + "ln_1.weight");
    b.norm1_beta = file.vector<S>(h + "ln_1.bias");
    b.attn.qkv = detail::stack_qkv(detail::hf_linear<S>(file, h + "attn.q_proj", false),
                                   detail::hf_linear<S>(file, h + "attn.k_proj", false),
                                   detail::hf_linear<S>(file, h + "attn.v_proj", false));
    b.attn.out = detail::hf_linear<S>(file, h + "attn.out_proj", false);
    b.mlp.fc = detail::hf_linear<S>(file, h + "mlp.fc_in", true);
    b.mlp.proj = detail::hf_linear<S>(file, h + "mlp.fc_out", true);
  }
  model.final_gamma = file.vector<S>("transformer.ln_f.weight");
  model.final_beta = file.vector<S>("transformer.ln_f.bias");
  model.head.weight = file.matrix<S>("lm_head.weight");
  model.head_bias = file.vector<S>("lm_head.bias");
  model.validate(op);
  return model;
}

// Loads the GPT-J checkpoint at `path` with `config` (a config.json), or the
// config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gptj(const std::filesystem::path& path,
                                 const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config("hf_gptj", path, config, [](const auto&... args) {
    return load_hf_gptj<S>(args...);
  });
}

}  // namespace prenorm::io
