#pragma once
// The Hugging Face GPT-2 layout (GPT2LMHeadModel / GPT2Model safetensors and
// config.json) <-> Gpt<Arch::PreLN, S>.
//
// Tensors, every name with or without the "transformer." prefix (one or the
// other for the whole file), d = n_embd, I = n_inner (null: 4 d):
//   wte.weight               (vocab_size, d)       token_embedding.table
//   wpe.weight               (n_positions, d)      position_embedding.table
//   h.{i}.ln_1.{weight,bias} (d)                   blocks[i].norm1_{gamma,beta}
//   h.{i}.attn.c_attn.weight (d, 3 d)   Conv1D     blocks[i].attn.qkv.weight^T
//   h.{i}.attn.c_attn.bias   (3 d)                 blocks[i].attn.qkv.bias
//   h.{i}.attn.c_proj.weight (d, d)     Conv1D     blocks[i].attn.out.weight^T
//   h.{i}.attn.c_proj.bias   (d)
//   h.{i}.ln_2.{weight,bias} (d)                   blocks[i].norm2_{gamma,beta}
//   h.{i}.mlp.c_fc.weight    (d, I)     Conv1D     blocks[i].mlp.fc.weight^T
//   h.{i}.mlp.c_fc.bias      (I)
//   h.{i}.mlp.c_proj.weight  (I, d)     Conv1D     blocks[i].mlp.proj.weight^T
//   h.{i}.mlp.c_proj.bias    (d)
//   ln_f.{weight,bias}       (d)                   final_{gamma,beta}
//   lm_head.weight           (vocab_size, d)       optional, never prefixed
// Conv1D computes x W + b with W stored (in, out): prenorm's (out, in) is its
// transpose. c_attn's output columns are [q | k | v], each head h at
// columns h*head_dim, which is prenorm's qkv row order.
// The buffers h.{i}.attn.bias (the causal mask) and h.{i}.attn.masked_bias of
// older checkpoints are ignored. Without lm_head.weight the head is tied to
// wte; with it the head is separate (config.tied = false) unless it is
// bitwise equal to wte (same dtype and bytes), which is a tied head saved twice.
//
// config.json: n_embd, n_head, n_layer, vocab_size, n_positions (required),
// layer_norm_epsilon (default 1e-5), activation_function (default "gelu_new"),
// n_inner (default null = 4 n_embd). Settings GPT-2 has but prenorm does not
// (scale_attn_by_inverse_layer_idx, add_cross_attention, scale_attn_weights =
// false) are refused when set.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
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

// --- config.json ---------------------------------------------------------------

// The TransformerConfig of a GPT-2 config.json; `source` names it in messages.
// config.tied comes from tie_word_embeddings (default true), but
// load_hf_gpt2 decides it from the file.
inline TransformerConfig gpt2_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_gpt2";
  using namespace detail;
  if (!json.is_object())
    fail_with<FormatError>(op, source, ": expected a JSON object, found ", json.type_name());
  if (const nlohmann::json* type = find_key(json, "model_type"))
    if (!type->is_string() || type->get<std::string>() != "gpt2")
      fail_with<FormatError>(op, source, ": 'model_type' is ", type->dump(),
                             ", expected \"gpt2\"");
  TransformerConfig config = GptConfig{};
  config.width = json_integer(op, json, source, "n_embd", 2);
  config.heads = json_integer(op, json, source, "n_head", 1);
  config.layers = json_integer(op, json, source, "n_layer", 0);
  config.vocab = json_integer(op, json, source, "vocab_size", 1);
  config.context = json_integer(op, json, source, "n_positions", 1);
  config.mlp_width = json_integer(op, json, source, "n_inner", 1, 4 * config.width);
  config.epsilon = json_positive(op, json, source, "layer_norm_epsilon", 1e-5);
  config.activation = json_hf_activation(op, json, source, "activation_function", "gelu_new");
  json_require_bool(op, json, source, "scale_attn_weights", true,
                    "prenorm always scales attention scores by 1/sqrt(head_dim)");
  json_require_bool(op, json, source, "scale_attn_by_inverse_layer_idx", false,
                    "prenorm does not scale attention by the layer index");
  json_require_bool(op, json, source, "add_cross_attention", false,
                    "prenorm's GPT is decoder-only");
  if (const nlohmann::json* tie = find_key(json, "tie_word_embeddings"); tie && tie->is_boolean())
    config.tied = tie->get<bool>();
  config.head_bias = false;
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'n_embd' ", config.width,
                           " is not divisible by 'n_head' ", config.heads);
  validate_config(op, config, source);
  return config;
}

// A config.json for `config` (what Hugging Face reads as a GPT2Config).
inline nlohmann::json gpt2_config_to_json(const TransformerConfig& config) {
  constexpr const char* op = "hf_gpt2";
  config.validate(op);
  if (config.head_size() * config.heads != config.width)
    prenorm::detail::fail(op, "heads ", config.heads, " of ", config.head_size(),
                          " do not make the width ", config.width,
                          ": GPT-2 has head_dim = n_embd / n_head");
  if (config.head_bias)
    prenorm::detail::fail(op, "the model has a head bias, which GPT-2 does not");
  if (!config.plain_attention())
    prenorm::detail::fail(op, "the model's attention has options GPT-2's does not (kv_heads ",
                          config.kv_head_count(), " of ", config.heads, ", rotary.dims ",
                          config.rotary.dims, ", alibi ", config.alibi ? "true" : "false",
                          ", score_scale ", config.score_scale, ", window ", config.window, ")");
  if (!config.learned_positions || config.position_offset != 0)
    prenorm::detail::fail(op, "the model's positions are not GPT-2's (learned_positions ",
                          config.learned_positions ? "true" : "false", ", position_offset ",
                          config.position_offset, "): GPT-2 adds row p of wpe at position p");
  detail::require_sequential_hf(op, config, "GPT-2");
  nlohmann::ordered_json json;
  json["model_type"] = "gpt2";
  json["architectures"] = {"GPT2LMHeadModel"};
  json["vocab_size"] = config.vocab;
  json["n_positions"] = config.context;
  json["n_ctx"] = config.context;
  json["n_embd"] = config.width;
  json["n_head"] = config.heads;
  json["n_layer"] = config.layers;
  if (config.mlp_width == 4 * config.width) json["n_inner"] = nullptr;
  else json["n_inner"] = config.mlp_width;
  json["layer_norm_epsilon"] = config.epsilon;
  json["activation_function"] = detail::hf_activation_name(config.activation);
  json["tie_word_embeddings"] = config.tied;
  return nlohmann::json(json);
}

// --- tensors ----------------------------------------------------------------

namespace detail {

// "" or "transformer.", from the names in the file. Throws if both appear.
inline std::string gpt2_prefix(const SafetensorsFile& file) {
  const bool bare = file.contains("wte.weight");
  const bool prefixed = file.contains("transformer.wte.weight");
  if (bare && prefixed)
    fail_with<FormatError>("hf_gpt2", file.path().string(),
                           ": has both 'wte.weight' and 'transformer.wte.weight'; use one "
                           "naming for the whole file");
  return prefixed ? "transformer." : "";
}

// Whether `name` (after the prefix) is h.<digits>.attn.bias or .attn.masked_bias.
inline bool gpt2_ignored_buffer(std::string_view name, std::string_view prefix) {
  return is_layer_tensor(name, prefix, {".attn.bias", ".attn.masked_bias"});
}

// The tensors of the layout (without lm_head.weight).
inline std::vector<ExpectedTensor> gpt2_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, a = c.attention_width(), I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  e.push_back({p + "wte.weight", {c.vocab, d}, "(vocab_size, n_embd)"});
  e.push_back({p + "wpe.weight", {c.context, d}, "(n_positions, n_embd)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    e.push_back({h + "ln_1.weight", {d}, "(n_embd)"});
    e.push_back({h + "ln_1.bias", {d}, "(n_embd)"});
    e.push_back({h + "attn.c_attn.weight", {d, 3 * a}, "(Conv1D (in, out) = (n_embd, 3*n_embd))"});
    e.push_back({h + "attn.c_attn.bias", {3 * a}, "(3*n_embd)"});
    e.push_back({h + "attn.c_proj.weight", {a, d}, "(Conv1D (in, out) = (n_embd, n_embd))"});
    e.push_back({h + "attn.c_proj.bias", {d}, "(n_embd)"});
    e.push_back({h + "ln_2.weight", {d}, "(n_embd)"});
    e.push_back({h + "ln_2.bias", {d}, "(n_embd)"});
    e.push_back({h + "mlp.c_fc.weight", {d, I}, "(Conv1D (in, out) = (n_embd, n_inner))"});
    e.push_back({h + "mlp.c_fc.bias", {I}, "(n_inner)"});
    e.push_back({h + "mlp.c_proj.weight", {I, d}, "(Conv1D (in, out) = (n_inner, n_embd))"});
    e.push_back({h + "mlp.c_proj.bias", {d}, "(n_embd)"});
  }
  e.push_back({p + "ln_f.weight", {d}, "(n_embd)"});
  e.push_back({p + "ln_f.bias", {d}, "(n_embd)"});
  return e;
}

}  // namespace detail

// Which float dtype a GPT-2 file's weights use (the buffers aside): theirs
// when they share one, else the widest.
inline Dtype hf_gpt2_dtype(const SafetensorsFile& file, const TransformerConfig& config) {
  const std::string prefix = detail::gpt2_prefix(file);
  std::vector<ExpectedTensor> expected = detail::gpt2_expected(config, prefix);
  if (file.contains("lm_head.weight")) expected.push_back({"lm_head.weight", {}, ""});
  return detail::common_dtype(file, detail::names_of(expected));
}

namespace detail {

// Checks a GPT-2 file against `config` (every tensor, each shape) and
// returns the config with the head decided from the file: tied unless
// lm_head.weight is there and differs from wte (see the top of this file).
inline TransformerConfig gpt2_checked_config(const SafetensorsFile& file, TransformerConfig config) {
  constexpr const char* op = "hf_gpt2";
  validate_config(op, config, file.path().string());
  const std::string p = gpt2_prefix(file);
  std::vector<ExpectedTensor> expected = gpt2_expected(config, p);
  const bool has_head = file.contains("lm_head.weight");
  if (has_head) expected.push_back({"lm_head.weight", {config.vocab, config.width}, "(vocab_size, n_embd)"});
  check_tensors(op, file, expected,
                [&p](std::string_view name) { return gpt2_ignored_buffer(name, p); },
                "config: n_layer " + std::to_string(config.layers) + ", n_embd " +
                    std::to_string(config.width) + ", tensor prefix '" + p + "'");

  // A head equal to wte byte for byte is a tied head saved twice.
  bool tied = true;
  if (has_head) {
    const TensorInfo& wte = file.info(p + "wte.weight");
    const TensorInfo& head = file.info("lm_head.weight");
    const auto a = file.raw_bytes(p + "wte.weight"), b = file.raw_bytes("lm_head.weight");
    tied = wte.dtype_name == head.dtype_name && a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
  }
  config.tied = tied;
  config.head_bias = false;
  return config;
}

// The GPT-2 tensor behind parameter `visit_name` of a Gpt<PreLN, S> (as
// visit_parameters names it) and whether it is stored transposed (Conv1D);
// empty for a parameter GPT-2 does not have. `p` is the prefix (gpt2_prefix).
struct Gpt2Tensor {
  std::string name;
  bool transposed = false;
};
inline std::optional<Gpt2Tensor> gpt2_tensor_of(std::string_view visit_name, const std::string& p) {
  static constexpr std::pair<std::string_view, std::string_view> kTop[] = {
      {"token_embedding.table", "wte.weight"}, {"position_embedding.table", "wpe.weight"},
      {"final_gamma", "ln_f.weight"},          {"final_beta", "ln_f.bias"}};
  static constexpr std::pair<std::string_view, std::string_view> kBlock[] = {
      {"norm1_gamma", "ln_1.weight"},         {"norm1_beta", "ln_1.bias"},
      {"attn.qkv.weight", "attn.c_attn.weight"}, {"attn.qkv.bias", "attn.c_attn.bias"},
      {"attn.out.weight", "attn.c_proj.weight"}, {"attn.out.bias", "attn.c_proj.bias"},
      {"norm2_gamma", "ln_2.weight"},         {"norm2_beta", "ln_2.bias"},
      {"mlp.fc.weight", "mlp.c_fc.weight"},   {"mlp.fc.bias", "mlp.c_fc.bias"},
      {"mlp.proj.weight", "mlp.c_proj.weight"}, {"mlp.proj.bias", "mlp.c_proj.bias"}};
  if (visit_name == "head.weight") return Gpt2Tensor{"lm_head.weight", false};
  for (const auto& [ours, theirs] : kTop)
    if (visit_name == ours) return Gpt2Tensor{p + std::string(theirs), false};
  constexpr std::string_view kBlocks = "blocks[";
  if (visit_name.substr(0, kBlocks.size()) == kBlocks) {
    const std::size_t close = visit_name.find("].");
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view layer = visit_name.substr(kBlocks.size(), close - kBlocks.size());
    const std::string_view rest = visit_name.substr(close + 2);
    for (const auto& [ours, theirs] : kBlock)
      if (rest == ours)
        return Gpt2Tensor{p + "h." + std::string(layer) + "." + std::string(theirs),
                          ours.size() > 7 && ours.substr(ours.size() - 7) == ".weight"};
  }
  return std::nullopt;
}

// dst = src^T in 32 x 32 tiles, so that neither side is read with a large stride
// (a plain transposed copy of a 1024 x 4096 matrix misses the cache on every value).
template <class S>
void transpose_into(const RowMatrix<S>& src, RowMatrix<S>& dst) {
  constexpr Index kTile = 32;
  dst.resize(src.cols(), src.rows());
  for (Index i = 0; i < src.rows(); i += kTile)
    for (Index j = 0; j < src.cols(); j += kTile) {
      const Index rows = std::min(kTile, src.rows() - i), cols = std::min(kTile, src.cols() - j);
      dst.block(j, i, cols, rows) = src.block(i, j, rows, cols).transpose();
    }
}

// Reads parameter `visit_name` (gpt2_tensor_of) from the file into `tensor`
// (of its shape: check_tensors checked the file), converted to its scalar.
template <class T>
void read_gpt2_parameter(const SafetensorsFile& file, const std::string& visit_name,
                         const std::string& p, T& tensor) {
  using S = typename T::Scalar;
  const std::optional<Gpt2Tensor> stored = gpt2_tensor_of(visit_name, p);
  if (!stored)
    fail_with<FormatError>("hf_gpt2", file.path().string(), ": GPT-2 has no tensor for '",
                           visit_name, "'");
  if constexpr (T::ColsAtCompileTime == 1) tensor = file.vector<S>(stored->name);
  else if (stored->transposed) transpose_into(file.matrix<S>(stored->name), tensor);
  else tensor = file.matrix<S>(stored->name);
}

}  // namespace detail

// Loads a GPT-2 checkpoint as a Pre-LN GPT. `config` comes from
// gpt2_config_from_json; its tied and head_bias fields are ignored (the file
// decides whether the head is tied; GPT-2 has no head bias). Throws
// FormatError naming the file and the tensor on any mismatch.
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt2(const SafetensorsFile& file, TransformerConfig config) {
  constexpr const char* op = "hf_gpt2";
  config = detail::gpt2_checked_config(file, config);
  const std::string p = detail::gpt2_prefix(file);
  Gpt<Arch::PreLN, S> model(config);
  model.visit_parameters([&](const std::string& name, auto& tensor) {
    if (tensor.size() != 0) detail::read_gpt2_parameter(file, name, p, tensor);
  });
  model.validate(op);
  return model;
}

// Loads the GPT-2 checkpoint at `path` with its config.json: `config` when
// given, else config.json beside the file (FileError naming the path looked
// for when there is none).
template <class S>
Gpt<Arch::PreLN, S> load_hf_gpt2(const std::filesystem::path& path,
                                 const std::optional<std::filesystem::path>& config = {}) {
  const SafetensorsFile file(path);
  const std::filesystem::path config_path =
      hf_config_path("hf_gpt2", path, config, "hf_gpt2", "the config argument");
  return load_hf_gpt2<S>(file, gpt2_config_from_json(read_json_file(config_path),
                                                     config_path.string()));
}

// How save_hf_gpt2 names and completes the file.
struct HfGpt2SaveOptions {
  bool prefix = false;  // names with "transformer." (as GPT2LMHeadModel's state dict)
  // Write lm_head.weight for a tied model too (a copy of wte, as
  // GPT2LMHeadModel.save_pretrained did before tied weights were deduplicated).
  // An untied model always gets it.
  bool tied_head = false;
  // Write the h.{i}.attn.bias (1, 1, n_positions, n_positions) causal masks
  // and the h.{i}.attn.masked_bias scalars of older checkpoints.
  bool buffers = false;
  std::vector<std::filesystem::path> inputs = {};  // files the write must not replace
};

// The GPT-2 file for `model`, not yet written: a writer holding its tensors
// (every one in `dtype`), for bytes() or write(path).
template <class S>
[[nodiscard]] SafetensorsWriter save_hf_gpt2(const Gpt<Arch::PreLN, S>& model, Dtype dtype,
                                             const HfGpt2SaveOptions& options = {}) {
  constexpr const char* op = "save_hf_gpt2";
  model.validate(op);
  (void)gpt2_config_to_json(model.config);  // refuses what GPT-2 cannot hold
  const std::string p = options.prefix ? "transformer." : "";
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.add_matrix(p + "wte.weight", dtype, model.token_embedding.table);
  writer.add_matrix(p + "wpe.weight", dtype, model.position_embedding.table);
  const Index n = model.config.context;
  for (std::size_t i = 0; i < model.blocks.size(); ++i) {
    const std::string h = p + "h." + std::to_string(i) + ".";
    const auto& b = model.blocks[i];
    writer.add_vector(h + "ln_1.weight", dtype, b.norm1_gamma);
    writer.add_vector(h + "ln_1.bias", dtype, b.norm1_beta);
    writer.add_matrix(h + "attn.c_attn.weight", dtype, b.attn.qkv.weight.transpose());
    writer.add_vector(h + "attn.c_attn.bias", dtype, b.attn.qkv.bias);
    writer.add_matrix(h + "attn.c_proj.weight", dtype, b.attn.out.weight.transpose());
    writer.add_vector(h + "attn.c_proj.bias", dtype, b.attn.out.bias);
    writer.add_vector(h + "ln_2.weight", dtype, b.norm2_gamma);
    writer.add_vector(h + "ln_2.bias", dtype, b.norm2_beta);
    writer.add_matrix(h + "mlp.c_fc.weight", dtype, b.mlp.fc.weight.transpose());
    writer.add_vector(h + "mlp.c_fc.bias", dtype, b.mlp.fc.bias);
    writer.add_matrix(h + "mlp.c_proj.weight", dtype, b.mlp.proj.weight.transpose());
    writer.add_vector(h + "mlp.c_proj.bias", dtype, b.mlp.proj.bias);
    if (options.buffers) {
      std::vector<float> mask(std::size_t(n * n), 0.0f);
      for (Index r = 0; r < n; ++r)
        for (Index c = 0; c <= r; ++c) mask[std::size_t(r * n + c)] = 1.0f;
      writer.add(h + "attn.bias", Dtype::F32, {1, 1, n, n}, std::span<const float>(mask));
      const float masked = -1e4f;
      writer.add(h + "attn.masked_bias", Dtype::F32, {}, std::span<const float>(&masked, 1));
    }
  }
  writer.add_vector(p + "ln_f.weight", dtype, model.final_gamma);
  writer.add_vector(p + "ln_f.bias", dtype, model.final_beta);
  if (!model.config.tied) writer.add_matrix("lm_head.weight", dtype, model.head.weight);
  else if (options.tied_head) writer.add_matrix("lm_head.weight", dtype, model.token_embedding.table);
  return writer;
}

// Writes `model` as a GPT-2 safetensors file (atomically); the config.json
// that goes with it is gpt2_config_to_json(model.config).
template <class S>
void save_hf_gpt2(const Gpt<Arch::PreLN, S>& model, const std::filesystem::path& path,
                  Dtype dtype, const HfGpt2SaveOptions& options = {}) {
  save_hf_gpt2(model, dtype, options).write(path, options.inputs);
}

}  // namespace prenorm::io
