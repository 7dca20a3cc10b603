#pragma once
// The Hugging Face ViT layout (ViTForImageClassification, e.g.
// google/vit-base-patch16-224: safetensors and config.json) <-> Vit<Arch::PreLN, S>.
//
// Tensors, d = hidden_size, I = intermediate_size, C = num_channels,
// p = patch_size, P = (image_size / p)^2 patches, K = classes. Names below
// carry the "vit." prefix; a file without it (the same names from
// "embeddings." on) is read too. PyTorch Linear weights are (out, in), as in prenorm.
//   vit.embeddings.cls_token                          (1, 1, d)       cls_token
//   vit.embeddings.position_embeddings                (1, 1 + P, d)   position_embedding
//   vit.embeddings.patch_embeddings.projection.weight (d, C, p, p)    patch.weight (d, C*p*p)
//   vit.embeddings.patch_embeddings.projection.bias   (d)             patch.bias
//   vit.encoder.layer.{i}.layernorm_before.{weight,bias}          (d)     blocks[i].norm1_{gamma,beta}
//   vit.encoder.layer.{i}.attention.attention.query.weight        (d, d)  rows [0, d) of blocks[i].attn.qkv
//   ... .attention.attention.key.weight, .value.weight            (d, d)  rows [d, 2d), [2d, 3d)
//   ... .attention.attention.{query,key,value}.bias               (d)     the same rows of the qkv bias
//   vit.encoder.layer.{i}.attention.output.dense.{weight,bias}    (d, d)  blocks[i].attn.out
//   vit.encoder.layer.{i}.layernorm_after.{weight,bias}           (d)     blocks[i].norm2_{gamma,beta}
//   vit.encoder.layer.{i}.intermediate.dense.{weight,bias}        (I, d)  blocks[i].mlp.fc
//   vit.encoder.layer.{i}.output.dense.{weight,bias}              (d, I)  blocks[i].mlp.proj
//   vit.layernorm.{weight,bias}                                   (d)     final_{gamma,beta}
//   classifier.{weight,bias}                                      (K, d)  head (never prefixed)
// The conv weight (d, C, p, p) in C order is (d, C*p*p) with each row in
// (channel, ky, kx) order, which is how prenorm flattens a patch; HF numbers
// the patches row by row (flatten(2)), as prenorm does. Query, key and value
// split their rows into heads h at h*head_dim, as prenorm's qkv does.
//
// config.json: hidden_size, num_hidden_layers, num_attention_heads,
// intermediate_size, image_size, patch_size (required), num_channels
// (default 3), hidden_act (default "gelu"), layer_norm_eps (default 1e-12),
// and the class count: num_labels, or the size of id2label.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../models/config.hpp"
#include "../models/vit.hpp"
#include "../ops/activation.hpp"
#include "error.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// --- config.json -----------------------------------------------------------------

namespace detail {

// The class count of an image classifier's config.json: num_labels, else the
// size of id2label (both must agree); nullopt when it has neither.
inline std::optional<Index> hf_class_count(const char* op, const nlohmann::json& json,
                                           const std::string& source) {
  std::optional<Index> from_map;
  if (const nlohmann::json* labels = find_key(json, "id2label"); labels && !labels->is_null()) {
    if (!labels->is_object())
      fail_with<FormatError>(op, source, ": 'id2label' must be an object, found ",
                             labels->type_name());
    from_map = Index(labels->size());
  }
  const nlohmann::json* num_labels = find_key(json, "num_labels");
  if (num_labels && !num_labels->is_null()) {
    const Index classes = json_integer(op, json, source, "num_labels", 1);
    if (from_map && *from_map != classes)
      fail_with<FormatError>(op, source, ": 'num_labels' is ", classes, " but 'id2label' has ",
                             *from_map, " entries");
    return classes;
  }
  if (from_map && *from_map < 1)
    fail_with<FormatError>(op, source, ": 'id2label' is empty, expected at least one class");
  return from_map;
}

// The keys every ViT-like encoder config has (ViT, DeiT, DINOv2, CLIP's vision
// config): hidden_size, num_hidden_layers, num_attention_heads, image_size,
// patch_size (required), num_channels (default 3), layer_norm_eps, hidden_act
// (the family's defaults). Not the MLP width nor the classes.
inline TransformerConfig vit_like_config(const char* op, const nlohmann::json& json,
                                 const std::string& source, double epsilon, const char* activation) {
  TransformerConfig config = VitConfig{};
  config.width = json_integer(op, json, source, "hidden_size", 2);
  config.layers = json_integer(op, json, source, "num_hidden_layers", 0);
  config.heads = json_integer(op, json, source, "num_attention_heads", 1);
  config.image_size = json_integer(op, json, source, "image_size", 1);
  config.patch_size = json_integer(op, json, source, "patch_size", 1);
  config.channels = json_integer(op, json, source, "num_channels", 1, 3);
  config.epsilon = json_positive(op, json, source, "layer_norm_eps", epsilon);
  config.activation = json_hf_activation(op, json, source, "hidden_act", activation);
  if (config.width % config.heads != 0)
    fail_with<FormatError>(op, source, ": 'hidden_size' ", config.width,
                           " is not divisible by 'num_attention_heads' ", config.heads);
  return config;
}

// The config of a ViT image classifier (`model_type` "vit", or DeiT's "deit"):
// vit_like_config's keys, intermediate_size, qkv_bias (true only) and the
// classes. Not validated yet (the caller may add options).
inline TransformerConfig vit_classifier_config(const char* op, const nlohmann::json& json,
                                       const std::string& source, const char* model_type) {
  json_require_model_type(op, json, source, model_type);
  TransformerConfig config = vit_like_config(op, json, source, 1e-12, "gelu");
  config.mlp_width = json_integer(op, json, source, "intermediate_size", 1);
  json_require_bool(op, json, source, "qkv_bias", true,
                    "prenorm reads query, key and value biases");
  const std::optional<Index> classes = hf_class_count(op, json, source);
  if (!classes)
    fail_with<FormatError>(op, source,
                           ": missing 'num_labels' and 'id2label' (the number of classes)");
  config.classes = *classes;
  return config;
}

}  // namespace detail

inline TransformerConfig vit_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_vit";
  const TransformerConfig config = detail::vit_classifier_config(op, json, source, "vit");
  detail::validate_config(op, config, source);
  return config;
}

// A config.json for `config` (what Hugging Face reads as a ViTConfig for
// ViTForImageClassification; labels "LABEL_k").
inline nlohmann::json vit_config_to_json(const TransformerConfig& config) {
  constexpr const char* op = "hf_vit";
  config.validate(op);
  if (config.head_size() * config.heads != config.width)
    prenorm::detail::fail(op, "heads ", config.heads, " of ", config.head_size(),
                          " do not make the width ", config.width,
                          ": ViT has head_dim = hidden_size / num_attention_heads");
  detail::require_sequential_hf(op, config, "ViT");
  if (!config.plain_patches())
    prenorm::detail::fail(op, "the model has a stem norm, a distillation token or a pooled head, "
                          "which Hugging Face ViT has not");
  nlohmann::ordered_json json;
  json["model_type"] = "vit";
  json["architectures"] = {"ViTForImageClassification"};
  json["hidden_size"] = config.width;
  json["num_hidden_layers"] = config.layers;
  json["num_attention_heads"] = config.heads;
  json["intermediate_size"] = config.mlp_width;
  json["hidden_act"] = detail::hf_activation_name(config.activation);
  json["layer_norm_eps"] = config.epsilon;
  json["image_size"] = config.image_size;
  json["patch_size"] = config.patch_size;
  json["num_channels"] = config.channels;
  json["qkv_bias"] = true;
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object(),
                         label2id = nlohmann::ordered_json::object();
  for (Index k = 0; k < config.classes; ++k) {
    id2label[std::to_string(k)] = "LABEL_" + std::to_string(k);
    label2id["LABEL_" + std::to_string(k)] = k;
  }
  json["id2label"] = id2label;
  json["label2id"] = label2id;
  return nlohmann::json(json);
}

// --- tensors ---------------------------------------------------------------------

namespace detail {

// "vit." or "", from the names in the file. Throws if both appear.
inline std::string vit_prefix(const SafetensorsFile& file) {
  const char* kPatch = "embeddings.patch_embeddings.projection.weight";
  const bool bare = file.contains(kPatch);
  const bool prefixed = file.contains(std::string("vit.") + kPatch);
  if (bare && prefixed)
    fail_with<FormatError>("hf_vit", file.path().string(), ": has both '", kPatch, "' and 'vit.",
                           kPatch, "'; use one naming for the whole file");
  return bare ? "" : "vit.";
}

// The self-attention of a ViT-style layer `l` (ViT, DeiT, DINOv2):
// l + "attention.attention.{query,key,value}", l + "attention.output.dense".
inline void vit_attention_expected(std::vector<ExpectedTensor>& e, const TransformerConfig& c,
                                   const std::string& l) {
  const std::int64_t d = c.width, a = c.attention_width();
  for (const char* which : {"query", "key", "value"}) {
    e.push_back({l + "attention.attention." + which + ".weight", {a, d}, "(hidden_size, hidden_size)"});
    e.push_back({l + "attention.attention." + which + ".bias", {a}, "(hidden_size)"});
  }
  e.push_back({l + "attention.output.dense.weight", {d, a}, "(hidden_size, hidden_size)"});
  e.push_back({l + "attention.output.dense.bias", {d}, "(hidden_size)"});
}

template <class S>
void read_vit_attention(const SafetensorsFile& file, const std::string& l,
                        PreNormBlock<Arch::PreLN, S>& b) {
  const Index a = b.attn.qkv.weight.rows() / 3;
  Index row = 0;
  for (const char* which : {"query", "key", "value"}) {
    const std::string name = l + "attention.attention." + which;
    b.attn.qkv.weight.middleRows(row, a) = file.matrix<S>(name + ".weight");
    b.attn.qkv.bias.segment(row, a) = file.vector<S>(name + ".bias");
    row += a;
  }
  b.attn.out.weight = file.matrix<S>(l + "attention.output.dense.weight");
  b.attn.out.bias = file.vector<S>(l + "attention.output.dense.bias");
}

// The embeddings of ViT and DeiT (`emb` = prefix + "embeddings."): the
// distillation token and the mask token (DeiT) when asked for.
inline void vit_embeddings_expected(std::vector<ExpectedTensor>& e, const TransformerConfig& c,
                                    const std::string& emb) {
  const std::int64_t d = c.width;
  e.push_back({emb + "cls_token", {1, 1, d}, "(1, 1, hidden_size)"});
  if (c.distillation_token)
    e.push_back({emb + "distillation_token", {1, 1, d}, "(1, 1, hidden_size)"});
  e.push_back({emb + "position_embeddings", {1, c.tokens(), d},
               c.distillation_token ? "(1, 2 + (image_size/patch_size)^2, hidden_size)"
                                    : "(1, 1 + (image_size/patch_size)^2, hidden_size)"});
  e.push_back({emb + "patch_embeddings.projection.weight", {d, c.channels, c.patch_size, c.patch_size},
               "(hidden_size, num_channels, patch_size, patch_size)"});
  e.push_back({emb + "patch_embeddings.projection.bias", {d}, "(hidden_size)"});
}

// The ViT encoder layers `p` + "encoder.layer.{i}." (ViT, DeiT).
inline void vit_layers_expected(std::vector<ExpectedTensor>& e, const TransformerConfig& c,
                                const std::string& p) {
  const std::int64_t d = c.width, I = c.mlp_width;
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    e.push_back({l + "layernorm_before.weight", {d}, "(hidden_size)"});
    e.push_back({l + "layernorm_before.bias", {d}, "(hidden_size)"});
    vit_attention_expected(e, c, l);
    e.push_back({l + "layernorm_after.weight", {d}, "(hidden_size)"});
    e.push_back({l + "layernorm_after.bias", {d}, "(hidden_size)"});
    e.push_back({l + "intermediate.dense.weight", {I, d}, "(intermediate_size, hidden_size)"});
    e.push_back({l + "intermediate.dense.bias", {I}, "(intermediate_size)"});
    e.push_back({l + "output.dense.weight", {d, I}, "(hidden_size, intermediate_size)"});
    e.push_back({l + "output.dense.bias", {d}, "(hidden_size)"});
  }
  e.push_back({p + "layernorm.weight", {d}, "(hidden_size)"});
  e.push_back({p + "layernorm.bias", {d}, "(hidden_size)"});
}

// What vit_embeddings_expected lists, into `model`.
template <class S>
void read_vit_embeddings(const SafetensorsFile& file, const std::string& emb,
                         Vit<Arch::PreLN, S>& model) {
  const TransformerConfig& config = model.config;
  model.cls_token = read_as_vector<S>(file, emb + "cls_token");
  if (config.distillation_token)
    model.distillation_token = read_as_vector<S>(file, emb + "distillation_token");
  model.position_embedding.table =
      read_as_matrix<S>(file, emb + "position_embeddings", config.tokens(), config.width);
  model.patch.weight = read_as_matrix<S>(file, emb + "patch_embeddings.projection.weight",
                                         config.width, config.patch_features());
  model.patch.bias = file.vector<S>(emb + "patch_embeddings.projection.bias");
}

// What vit_embeddings_expected and vit_layers_expected list, into `model`
// (all but the head).
template <class S>
void read_vit_body(const SafetensorsFile& file, const std::string& p, Vit<Arch::PreLN, S>& model) {
  const TransformerConfig& config = model.config;
  read_vit_embeddings(file, p + "embeddings.", model);
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "layernorm_before.weight");
    b.norm1_beta = file.vector<S>(l + "layernorm_before.bias");
    read_vit_attention(file, l, b);
    b.norm2_gamma = file.vector<S>(l + "layernorm_after.weight");
    b.norm2_beta = file.vector<S>(l + "layernorm_after.bias");
    b.mlp.fc.weight = file.matrix<S>(l + "intermediate.dense.weight");
    b.mlp.fc.bias = file.vector<S>(l + "intermediate.dense.bias");
    b.mlp.proj.weight = file.matrix<S>(l + "output.dense.weight");
    b.mlp.proj.bias = file.vector<S>(l + "output.dense.bias");
  }
  model.final_gamma = file.vector<S>(p + "layernorm.weight");
  model.final_beta = file.vector<S>(p + "layernorm.bias");
}

inline std::vector<ExpectedTensor> vit_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, K = c.classes;
  std::vector<ExpectedTensor> e;
  vit_embeddings_expected(e, c, p + "embeddings.");
  vit_layers_expected(e, c, p);
  e.push_back({"classifier.weight", {K, d}, "(num_labels, hidden_size)"});
  e.push_back({"classifier.bias", {K}, "(num_labels)"});
  return e;
}

}  // namespace detail

// Which float dtype a ViT file uses: its tensors' when they share one, else the widest.
inline Dtype hf_vit_dtype(const SafetensorsFile& file, const TransformerConfig& config) {
  return detail::common_dtype(file,
                              detail::names_of(detail::vit_expected(config, detail::vit_prefix(file))));
}

// Loads a ViT checkpoint as a Pre-LN ViT. Throws FormatError naming the file
// and the tensor on any mismatch.
template <class S>
Vit<Arch::PreLN, S> load_hf_vit(const SafetensorsFile& file, const TransformerConfig& config) {
  constexpr const char* op = "hf_vit";
  const std::string path = file.path().string();
  detail::validate_config(op, config, path);
  if (!config.plain_patches())
    detail::fail_with<FormatError>(op, path, ": the config has a stem norm, a distillation token "
                                   "or a pooled head, which Hugging Face ViT has not");
  const std::string p = detail::vit_prefix(file);
  detail::check_tensors(op, file, detail::vit_expected(config, p), {},
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width) + ", tensor prefix '" +
                            p + "'");
  Vit<Arch::PreLN, S> model(config);
  detail::read_vit_body(file, p, model);
  model.head.weight = file.matrix<S>("classifier.weight");
  model.head.bias = file.vector<S>("classifier.bias");
  model.validate(op);
  return model;
}

// Loads the ViT checkpoint at `path` with its config.json: `config` when
// given, else config.json beside the file (FileError naming the path looked
// for when there is none).
template <class S>
Vit<Arch::PreLN, S> load_hf_vit(const std::filesystem::path& path,
                                const std::optional<std::filesystem::path>& config = {}) {
  const SafetensorsFile file(path);
  const std::filesystem::path config_path =
      hf_config_path("hf_vit", path, config, "hf_vit", "the config argument");
  return load_hf_vit<S>(file, vit_config_from_json(read_json_file(config_path),
                                                   config_path.string()));
}

// How save_hf_vit names the file.
struct HfVitSaveOptions {
  bool prefix = true;  // names with "vit." (ViTForImageClassification's state dict)
  std::vector<std::filesystem::path> inputs = {};  // files the write must not replace
};

// The ViT file for `model`, not yet written: a writer holding its tensors
// (every one in `dtype`), for bytes() or write(path).
template <class S>
[[nodiscard]] SafetensorsWriter save_hf_vit(const Vit<Arch::PreLN, S>& model, Dtype dtype,
                                            const HfVitSaveOptions& options = {}) {
  constexpr const char* op = "save_hf_vit";
  model.validate(op);
  (void)vit_config_to_json(model.config);  // refuses what HF ViT cannot hold
  const TransformerConfig& c = model.config;
  const Index d = c.width, a = c.attention_width();
  const std::string p = options.prefix ? "vit." : "";
  const std::string emb = p + "embeddings.";
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  const auto add = [&](const std::string& name, std::vector<std::int64_t> shape, const auto& m) {
    std::vector<S> values;
    values.reserve(std::size_t(m.size()));
    for (Index r = 0; r < m.rows(); ++r)
      for (Index col = 0; col < m.cols(); ++col) values.push_back(m(r, col));
    writer.add(name, dtype, std::move(shape), std::span<const S>(values));
  };
  add(emb + "cls_token", {1, 1, d}, model.cls_token.transpose());
  add(emb + "position_embeddings", {1, c.tokens(), d}, model.position_embedding.table);
  add(emb + "patch_embeddings.projection.weight", {d, c.channels, c.patch_size, c.patch_size},
      model.patch.weight);
  writer.add_vector(emb + "patch_embeddings.projection.bias", dtype, model.patch.bias);
  for (std::size_t i = 0; i < model.blocks.size(); ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    const auto& b = model.blocks[i];
    writer.add_vector(l + "layernorm_before.weight", dtype, b.norm1_gamma);
    writer.add_vector(l + "layernorm_before.bias", dtype, b.norm1_beta);
    Index row = 0;
    for (const char* which : {"query", "key", "value"}) {
      const std::string name = l + "attention.attention." + which;
      writer.add_matrix(name + ".weight", dtype, b.attn.qkv.weight.middleRows(row, a));
      writer.add_vector(name + ".bias", dtype, b.attn.qkv.bias.segment(row, a));
      row += a;
    }
    writer.add_matrix(l + "attention.output.dense.weight", dtype, b.attn.out.weight);
    writer.add_vector(l + "attention.output.dense.bias", dtype, b.attn.out.bias);
    writer.add_vector(l + "layernorm_after.weight", dtype, b.norm2_gamma);
    writer.add_vector(l + "layernorm_after.bias", dtype, b.norm2_beta);
    writer.add_matrix(l + "intermediate.dense.weight", dtype, b.mlp.fc.weight);
    writer.add_vector(l + "intermediate.dense.bias", dtype, b.mlp.fc.bias);
    writer.add_matrix(l + "output.dense.weight", dtype, b.mlp.proj.weight);
    writer.add_vector(l + "output.dense.bias", dtype, b.mlp.proj.bias);
  }
  writer.add_vector(p + "layernorm.weight", dtype, model.final_gamma);
  writer.add_vector(p + "layernorm.bias", dtype, model.final_beta);
  writer.add_matrix("classifier.weight", dtype, model.head.weight);
  writer.add_vector("classifier.bias", dtype, model.head.bias);
  return writer;
}

// Writes `model` as a ViT safetensors file (atomically); the config.json that
// goes with it is vit_config_to_json(model.config).
template <class S>
void save_hf_vit(const Vit<Arch::PreLN, S>& model, const std::filesystem::path& path, Dtype dtype,
                 const HfVitSaveOptions& options = {}) {
  save_hf_vit(model, dtype, options).write(path, options.inputs);
}

}  // namespace prenorm::io
