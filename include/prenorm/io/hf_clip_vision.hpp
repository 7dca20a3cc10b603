#pragma once
// The Hugging Face CLIP vision layout -> Vit<Arch::PreLN, S> with a stem norm.
// model_type "clip_vision_model" (CLIPVisionModel, CLIPVisionModelWithProjection)
// or "clip" (CLIPModel: its vision tower; the text tower's tensors are skipped).
//
// Tensors, prefixed "vision_model." (or bare), d = hidden_size, P = (image_size / p)^2:
//   embeddings.class_embedding                  (d)            cls_token
//   embeddings.patch_embedding.weight           (d, C, p, p)   patch.weight; no bias (patch.bias 0)
//   embeddings.position_embedding.weight        (1 + P, d)     position_embedding
//   embeddings.position_ids                     a buffer, skipped
//   pre_layrnorm.{weight,bias}                  (d)            stem_gamma, stem_beta (TransformerConfig::stem_norm)
//   encoder.layers.{i}.layer_norm1.{weight,bias}                (d)     blocks[i].norm1
//   encoder.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}     (d, d)  blocks[i].attn.qkv rows
//   encoder.layers.{i}.self_attn.out_proj.{weight,bias}         (d, d)  blocks[i].attn.out
//   encoder.layers.{i}.layer_norm2.{weight,bias}                (d)     blocks[i].norm2
//   encoder.layers.{i}.mlp.fc1.{weight,bias}                    (I, d)  blocks[i].mlp.fc
//   encoder.layers.{i}.mlp.fc2.{weight,bias}                    (d, I)  blocks[i].mlp.proj
//   post_layernorm.{weight,bias}                (d)            final norm (on the cls token)
//   visual_projection.weight  (projection_dim, d), never prefixed, no bias: the
//       head, whose output is the image embeddings (CLIPVisionModelWithProjection,
//       CLIPModel.get_image_features); without it the output is the pooled
//       output post_layernorm(h_cls): an identity head (d, d), classes = d.
//
// config.json: for "clip_vision_model" at the top level, for "clip" in
// "vision_config" (projection_dim at the top level): hidden_size,
// num_hidden_layers, num_attention_heads, intermediate_size, image_size,
// patch_size (required), num_channels (3), hidden_act ("quick_gelu"),
// layer_norm_eps (1e-5), projection_dim (512; the projection's rows).

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "../core/arch.hpp"
#include "../models/config.hpp"
#include "../models/vit.hpp"
#include "error.hpp"
#include "hf_vit.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The CLIP vision config; `projection`: whether the file has the visual
// projection (classes = projection_dim) or not (classes = d, the pooled output).
inline TransformerConfig clip_vision_config_from_json(const nlohmann::json& json, const std::string& source,
                                              bool projection) {
  constexpr const char* op = "hf_clip_vision";
  using namespace detail;
  if (!json.is_object())
    fail_with<FormatError>(op, source, ": expected a JSON object, found ", json.type_name());
  const nlohmann::json* type = find_key(json, "model_type");
  const bool whole = type && type->is_string() && type->get<std::string>() == "clip";
  if (type && !whole && !(type->is_string() && type->get<std::string>() == "clip_vision_model"))
    fail_with<FormatError>(op, source, ": 'model_type' is ", type->dump(),
                           ", expected \"clip_vision_model\" or \"clip\"");
  const nlohmann::json* vision = &json;
  std::string where = source;
  if (whole) {
    vision = find_key(json, "vision_config");
    if (!vision || !vision->is_object())
      fail_with<FormatError>(op, source, ": 'vision_config' is ",
                             vision ? vision->dump() : std::string("missing"),
                             ", expected the vision tower's config (an object)");
    where = source + " (vision_config)";
  }
  TransformerConfig config = vit_like_config(op, *vision, where, 1e-5, "quick_gelu");
  config.mlp_width = json_integer(op, *vision, where, "intermediate_size", 1);
  config.stem_norm = true;
  config.classes =
      projection ? json_integer(op, json, source, "projection_dim", 1, 512) : config.width;
  validate_config(op, config, source);
  return config;
}

namespace detail {

inline std::vector<ExpectedTensor> clip_vision_expected(const TransformerConfig& c, const std::string& p,
                                                        bool projection) {
  const std::int64_t d = c.width, I = c.mlp_width;
  std::vector<ExpectedTensor> e;
  const auto norm = [&](const std::string& name) {
    e.push_back({name + ".weight", {d}, "(hidden_size)"});
    e.push_back({name + ".bias", {d}, "(hidden_size)"});
  };
  e.push_back({p + "embeddings.class_embedding", {d}, "(hidden_size)"});
  e.push_back({p + "embeddings.patch_embedding.weight", {d, c.channels, c.patch_size, c.patch_size},
               "(hidden_size, num_channels, patch_size, patch_size)"});
  e.push_back({p + "embeddings.position_embedding.weight", {c.tokens(), d},
               "(1 + (image_size/patch_size)^2, hidden_size)"});
  norm(p + "pre_layrnorm");
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
    norm(l + "layer_norm1");
    for (const char* which : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      e.push_back({l + "self_attn." + which + ".weight", {d, d}, "(hidden_size, hidden_size)"});
      e.push_back({l + "self_attn." + which + ".bias", {d}, "(hidden_size)"});
    }
    norm(l + "layer_norm2");
    e.push_back({l + "mlp.fc1.weight", {I, d}, "(intermediate_size, hidden_size)"});
    e.push_back({l + "mlp.fc1.bias", {I}, "(intermediate_size)"});
    e.push_back({l + "mlp.fc2.weight", {d, I}, "(hidden_size, intermediate_size)"});
    e.push_back({l + "mlp.fc2.bias", {d}, "(hidden_size)"});
  }
  norm(p + "post_layernorm");
  if (projection)
    e.push_back({"visual_projection.weight", {c.classes, d}, "(projection_dim, hidden_size)"});
  return e;
}

// What a CLIP vision file may hold besides the vision tower: the position_ids
// buffer, and CLIPModel's text tower.
inline bool clip_vision_ignored(std::string_view name, std::string_view prefix) {
  const auto starts = [&](std::string_view head) { return name.substr(0, head.size()) == head; };
  return name == std::string(prefix) + "embeddings.position_ids" || starts("text_model.") ||
         name == "text_projection.weight" || name == "logit_scale";
}

}  // namespace detail

// Loads a CLIP vision checkpoint as a Pre-LN ViT with a stem norm. Throws
// FormatError naming the file and the tensor on any mismatch.
template <class S>
Vit<Arch::PreLN, S> load_hf_clip_vision(const SafetensorsFile& file, const nlohmann::json& json,
                                        const std::string& source) {
  constexpr const char* op = "hf_clip_vision";
  const bool projection = file.contains("visual_projection.weight");
  const TransformerConfig config = clip_vision_config_from_json(json, source, projection);
  const std::string p = detail::hf_tensor_prefix(op, file, "embeddings.patch_embedding.weight",
                                                 "vision_model.");
  detail::check_tensors(op, file, detail::clip_vision_expected(config, p, projection),
                        [&](std::string_view name) { return detail::clip_vision_ignored(name, p); },
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width) + ", tensor prefix '" +
                            p + "'");
  const Index d = config.width;
  Vit<Arch::PreLN, S> model(config);
  model.cls_token = file.vector<S>(p + "embeddings.class_embedding");
  model.position_embedding.table = file.matrix<S>(p + "embeddings.position_embedding.weight");
  model.patch.weight = detail::read_as_matrix<S>(file, p + "embeddings.patch_embedding.weight", d,
                                                 config.patch_features());
  model.patch.bias.setZero();  // CLIP's patch convolution has no bias
  model.stem_gamma = file.vector<S>(p + "pre_layrnorm.weight");
  model.stem_beta = file.vector<S>(p + "pre_layrnorm.bias");
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "layer_norm1.weight");
    b.norm1_beta = file.vector<S>(l + "layer_norm1.bias");
    Index row = 0;
    for (const char* which : {"q_proj", "k_proj", "v_proj"}) {
      b.attn.qkv.weight.middleRows(row, d) = file.matrix<S>(l + "self_attn." + which + ".weight");
      b.attn.qkv.bias.segment(row, d) = file.vector<S>(l + "self_attn." + which + ".bias");
      row += d;
    }
    b.attn.out.weight = file.matrix<S>(l + "self_attn.out_proj.weight");
    b.attn.out.bias = file.vector<S>(l + "self_attn.out_proj.bias");
    b.norm2_gamma = file.vector<S>(l + "layer_norm2.weight");
    b.norm2_beta = file.vector<S>(l + "layer_norm2.bias");
    b.mlp.fc.weight = file.matrix<S>(l + "mlp.fc1.weight");
    b.mlp.fc.bias = file.vector<S>(l + "mlp.fc1.bias");
    b.mlp.proj.weight = file.matrix<S>(l + "mlp.fc2.weight");
    b.mlp.proj.bias = file.vector<S>(l + "mlp.fc2.bias");
  }
  model.final_gamma = file.vector<S>(p + "post_layernorm.weight");
  model.final_beta = file.vector<S>(p + "post_layernorm.bias");
  if (projection) {
    model.head.weight = file.matrix<S>("visual_projection.weight");
    model.head.bias.setZero();  // the projection has no bias
  } else {  // the pooled output: the normalized cls token itself
    model.head.weight = RowMatrix<S>::Identity(d, d);
    model.head.bias.setZero();
  }
  model.validate(op);
  return model;
}

template <class S>
Vit<Arch::PreLN, S> load_hf_clip_vision(const std::filesystem::path& path,
                                        const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_clip_vision", path, config,
      [](const SafetensorsFile& file, const nlohmann::json& json, const std::string& source) {
        return load_hf_clip_vision<S>(file, json, source);
      });
}

}  // namespace prenorm::io
