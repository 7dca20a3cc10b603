#pragma once
// The Hugging Face GPT-Neo layout (GPTNeoForCausalLM / GPTNeoModel
// safetensors and config.json, model_type "gpt_neo") -> Gpt<Arch::PreLN, S>.
// Reading only: a converted model is saved in prenorm's layout.
//
// Tensors, every name with or without "transformer." (one or the other for
// the whole file); d = hidden_size, I = intermediate_size (null: 4 d), all
// weights nn.Linear (out, in):
//   wte.weight                                (vocab_size, d)   token_embedding.table
//   wpe.weight                                (max_position_embeddings, d)  position_embedding.table
//   h.{i}.ln_1.{weight,bias}                  (d)      blocks[i].norm1_{gamma,beta}
//   h.{i}.attn.attention.q_proj.weight        (d, d)   blocks[i].attn.qkv.weight rows [0, d)
//   h.{i}.attn.attention.k_proj.weight        (d, d)   ... rows [d, 2d)
//   h.{i}.attn.attention.v_proj.weight        (d, d)   ... rows [2d, 3d)
//   h.{i}.attn.attention.out_proj.{weight (d, d), bias (d)}   blocks[i].attn.out
//   h.{i}.ln_2.{weight,bias}                  (d)      blocks[i].norm2_{gamma,beta}
//   h.{i}.mlp.c_fc.{weight (I, d), bias (I)}  blocks[i].mlp.fc
//   h.{i}.mlp.c_proj.{weight (d, I), bias (d)}  blocks[i].mlp.proj
//   ln_f.{weight,bias}                        (d)      final_{gamma,beta}
//   lm_head.weight                            (vocab_size, d), never prefixed: only
//                                             with tie_word_embeddings false
// q, k and v have no bias: prenorm's fused qkv gets a zero one (exact, and
// what the converter needs anyway once it folds ln_1's beta into q, k, v).
// The buffers h.{i}.attn.attention.bias (the causal / local mask) and
// .masked_bias of older checkpoints are ignored, and so is a tied model's
// lm_head.weight (GPTNeoForCausalLM ties it to wte after loading).
//
// Attention: scores q.k without the 1/sqrt(head_dim) scaling (score_scale 1).
// attention_types ([[["global", "local"], 12]]: a pattern and its repeat
// count, expanded to one type per layer) gives each layer global attention or
// local attention to the last window_size keys (i - j < window_size). prenorm
// holds one window, used in the layers i with i % window_period ==
// window_period - 1: every layer, none, or every P-th ending a period
// (GPT-Neo's global, local, global, ...: P = 2). Other patterns are refused.
//
// config.json: hidden_size, num_heads, num_layers, vocab_size,
// max_position_embeddings, attention_types (required); attention_layers
// (the expanded list, checked when present), window_size (256),
// intermediate_size (null), layer_norm_epsilon (1e-5), activation_function
// ("gelu_new"), tie_word_embeddings (true).

#include <nlohmann/json.hpp>

#include <algorithm>
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

namespace detail {

// attention_types expanded to one "global" / "local" per layer (true: local),
// checked against attention_layers when the config has it.
inline std::vector<bool> gpt_neo_local_layers(const char* op, const nlohmann::json& json,
                                              const std::string& source) {
  const nlohmann::json* types = find_key(json, "attention_types");
  if (types == nullptr || types->is_null()) fail_with<FormatError>(op, source, ": missing 'attention_types'");
  const auto bad = [&](const nlohmann::json& what) {
    fail_with<FormatError>(op, source, ": 'attention_types' has ", what.dump(),
                           ", expected [[pattern, repeats], ...] with a pattern of \"global\" / "
                           "\"local\" and an integer repeats >= 0");
  };
  std::vector<std::string> names;
  if (!types->is_array()) bad(*types);
  for (const nlohmann::json& item : *types) {
    if (!item.is_array() || item.size() != 2 || !item[0].is_array() || !item[1].is_number_integer() ||
        item[1].get<std::int64_t>() < 0)
      bad(item);
    for (std::int64_t n = 0; n < item[1].get<std::int64_t>(); ++n)
      for (const nlohmann::json& type : item[0]) {
        if (!type.is_string() || (type != "global" && type != "local")) bad(type);
        names.push_back(type.get<std::string>());
      }
  }
  if (const nlohmann::json* layers = find_key(json, "attention_layers"); layers && !layers->is_null())
    if (*layers != nlohmann::json(names))
      fail_with<FormatError>(op, source, ": 'attention_layers' is ", layers->dump(),
                             ", but 'attention_types' expands to ", nlohmann::json(names).dump());
  std::vector<bool> local;
  for (const std::string& name : names) local.push_back(name == "local");
  return local;
}

}  // namespace detail

// The TransformerConfig of a GPT-Neo config.json; `source` names it in messages.
inline TransformerConfig gpt_neo_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_gpt_neo";
  using namespace detail;
  json_require_model_type(op, json, source, "gpt_neo");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "hidden_size", 2);
  config.heads = json_integer(op, json, source, "num_heads", 1);
  config.layers = json_integer(op, json, source, "num_layers", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "max_position_embeddings", 1);
  config.mlp_width = json_integer(op, json, source, "intermediate_size", 1, 4 * config.width);
  config.epsilon = json_positive(op, json, source, "layer_norm_epsilon", 1e-5);
  config.activation = json_hf_activation(op, json, source, "activation_function", "gelu_new");
  config.tied = json_bool(op, json, source, "tie_word_embeddings", true);
  config.head_bias = false;
  config.score_scale = 1;  // GPTNeoSelfAttention does not scale the scores
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'num_heads' ", config.heads);

  const std::vector<bool> local = gpt_neo_local_layers(op, json, source);
  if (Index(local.size()) != config.layers)
    fail_with<FormatError>(op, source, ": 'attention_types' gives ", local.size(),
                           " layer types, expected one per layer ('num_layers' ", config.layers, ")");
  // The smallest period P with local exactly at the layers i % P == P - 1.
  const auto fits = [&](Index period) {
    for (Index i = 0; i < config.layers; ++i)
      if (local[std::size_t(i)] != (i % period == period - 1)) return false;
    return true;
  };
  if (std::find(local.begin(), local.end(), true) != local.end()) {
    Index period = 1;
    while (period <= config.layers && !fits(period)) ++period;
    if (period > config.layers)
      fail_with<FormatError>(op, source, ": 'attention_types' puts local attention at layers "
                             "prenorm cannot hold: it holds local attention in every layer, or in "
                             "the layers i with i % P == P - 1 (e.g. global, local, global, local)");
    config.window = json_integer(op, json, source, "window_size", 1, 256);
    config.window_period = period;
  }
  validate_config(op, config, source);
  return config;
}

namespace detail {

// Every tensor of the layout, lm_head.weight when untied.
inline std::vector<ExpectedTensor> gpt_neo_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({p + "wte.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  e.push_back({p + "wpe.weight", {c.context, d}, "(max_position_embeddings, hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    const std::string a = h + "attn.attention.";
    e.push_back({h + "ln_1.weight", {d}, "(hidden_size)"});
    e.push_back({h + "ln_1.bias", {d}, "(hidden_size)"});
    for (const char* x : {"q_proj", "k_proj", "v_proj", "out_proj"})
      e.push_back({a + x + ".weight", {d, d}, "(hidden_size, hidden_size)"});
    e.push_back({a + "out_proj.bias", {d}, "(hidden_size)"});
    e.push_back({h + "ln_2.weight", {d}, "(hidden_size)"});
    e.push_back({h + "ln_2.bias", {d}, "(hidden_size)"});
    e.push_back({h + "mlp.c_fc.weight", {I, d}, "(intermediate_size, hidden_size)"});
    e.push_back({h + "mlp.c_fc.bias", {I}, "(intermediate_size)"});
    e.push_back({h + "mlp.c_proj.weight", {d, I}, "(hidden_size, intermediate_size)"});
    e.push_back({h + "mlp.c_proj.bias", {d}, "(hidden_size)"});
  }
  e.push_back({p + "ln_f.weight", {d}, "(hidden_size)"});
  e.push_back({p + "ln_f.bias", {d}, "(hidden_size)"});
  if (!c.tied) e.push_back({"lm_head.weight", {c.vocab, d}, "(vocab_size, hidden_size)"});
  return e;
}

}  // namespace detail

// Loads a GPT-Neo checkpoint as a Pre-LN GPT, `json` its config.json (named
// `source` in messages). Throws FormatError naming the file and the tensor on
// any missing, unknown or misshapen tensor.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_neo(const SafetensorsFile& file, const nlohmann::json& json,
                                    const std::string& source) {
  constexpr const char* op = "hf_gpt_neo";
  const TransformerConfig config = gpt_neo_config_from_json(json, source);
  const std::string p = detail::hf_tensor_prefix(op, file, "wte.weight", "transformer.");
  detail::check_tensors(
      op, file, detail::gpt_neo_expected(config, p),
      [&](std::string_view name) {
        return (config.tied && name == "lm_head.weight") || detail::is_layer_tensor(name, p, {".attn.attention.bias", ".attn.attention.masked_bias"});
      },
      "config: num_layers " + std::to_string(config.layers) + ", hidden_size " +
          std::to_string(config.width) + ", tensor prefix '" + p + "'");

  Gpt<Arch::PreLN, S> model(config);  // qkv.bias: zero, GPT-Neo's q, k, v have none
  model.token_embedding.table = file.matrix<S>(p + "wte.weight");
  model.position_embedding.table = file.matrix<S>(p + "wpe.weight");
  const Index d = config.width;
  for (Index i = 0; i < config.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    const std::string a = h + "attn.attention.";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(h + "ln_1.weight");
    b.norm1_beta = file.vector<S>(h + "ln_1.bias");
    b.attn.qkv.weight.middleRows(0, d) = file.matrix<S>(a + "q_proj.weight");
    b.attn.qkv.weight.middleRows(d, d) = file.matrix<S>(a + "k_proj.weight");
    b.attn.qkv.weight.middleRows(2 * d, d) = file.matrix<S>(a + "v_proj.weight");
    b.attn.out.weight = file.matrix<S>(a + "out_proj.weight");
    b.attn.out.bias = file.vector<S>(a + "out_proj.bias");
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

// Loads the GPT-Neo checkpoint at `path` with its config.json: `config` when
// given, else config.json beside the file.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt_neo(const std::filesystem::path& path,
                                    const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_gpt_neo", path, config, [](const SafetensorsFile& file, const nlohmann::json& json,
                                 const std::string& source) { return load_hf_gpt_neo<S>(file, json, source); });
}

}  // namespace prenorm::io
