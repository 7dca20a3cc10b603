#pragma once
// The Hugging Face DINOv2 layout (model_type "dinov2": Dinov2ForImageClassification,
// tensors prefixed "dinov2.", or Dinov2Model, bare) -> Vit<Arch::PreLN, S>.
//
// Tensors, d = hidden_size, I = hidden_size * mlp_ratio, P = (image_size / p)^2:
//   embeddings.cls_token                            (1, 1, d)      cls_token
//   embeddings.mask_token                           (1, d)         checked, unused at inference
//   embeddings.position_embeddings                  (1, 1 + P, d)  position_embedding
//   embeddings.patch_embeddings.projection.{weight,bias}  (d, C, p, p), (d)  patch
//   encoder.layer.{i}.norm1.{weight,bias}           (d)      blocks[i].norm1
//   encoder.layer.{i}.attention.attention.{query,key,value}, .attention.output.dense: as ViT
//   encoder.layer.{i}.layer_scale1.lambda1          (d)      folded into attn.out's rows and bias
//   encoder.layer.{i}.norm2.{weight,bias}           (d)      blocks[i].norm2
//   encoder.layer.{i}.mlp.fc1.{weight,bias}         (I, d)   blocks[i].mlp.fc
//   encoder.layer.{i}.mlp.fc2.{weight,bias}         (d, I)   blocks[i].mlp.proj
//   encoder.layer.{i}.layer_scale2.lambda1          (d)      folded into mlp.proj's rows and bias
//   layernorm.{weight,bias}                         (d)      final norm (every token)
//   classifier.{weight,bias}  (K, 2d), never prefixed: reads [cls, mean of the
//       patch tokens] of the final norm's output (Pooling::ClsPatchMean).
// Without a classifier (Dinov2Model) the output is the pooled output, the
// normalized cls token: an identity head (d, d), classes = d.
// Layer scale multiplies a branch's output: diag(lambda) (W x + b) is the
// writer (diag(lambda) W, lambda * b), folded in double and rounded once.
// The position embeddings are used at the config's image size, where
// Hugging Face does not interpolate them; other sizes are refused.
//
// config.json: hidden_size, num_hidden_layers, num_attention_heads, image_size,
// patch_size (required), mlp_ratio (default 4), num_channels (3), hidden_act
// ("gelu"), layer_norm_eps (1e-6), qkv_bias (true only), use_swiglu_ffn (false
// only), the classes (num_labels or id2label) when the file has a classifier.

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <optional>
#include <string>

#include "../core/arch.hpp"
#include "../models/config.hpp"
#include "../models/vit.hpp"
#include "error.hpp"
#include "hf_vit.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The DINOv2 config; `classifier`: whether the file has one (classes from the
// config's labels) or not (classes = d, the pooled output).
inline TransformerConfig dinov2_config_from_json(const nlohmann::json& json, const std::string& source,
                                         bool classifier) {
  constexpr const char* op = "hf_dinov2";
  using namespace detail;
  json_require_model_type(op, json, source, "dinov2");
  TransformerConfig config = vit_like_config(op, json, source, 1e-6, "gelu");
  json_require_bool(op, json, source, "qkv_bias", true,
                    "prenorm's DINOv2 reads query, key and value biases");
  json_require_bool(op, json, source, "use_swiglu_ffn", false,
                    "prenorm's DINOv2 has the fc1-activation-fc2 MLP, not SwiGLU");
  double ratio = 4.0;
  if (const nlohmann::json* value = find_key(json, "mlp_ratio"); value && !value->is_null()) {
    if (!value->is_number() || !(value->get<double>() > 0))
      fail_with<FormatError>(op, source, ": 'mlp_ratio' is ", value->dump(),
                             ", expected a number > 0");
    ratio = value->get<double>();
  }
  config.mlp_width = Index(double(config.width) * ratio);  // Dinov2MLP: int(hidden_size * mlp_ratio)
  if (config.mlp_width < 1)
    fail_with<FormatError>(op, source, ": 'mlp_ratio' ", ratio, " times 'hidden_size' ",
                           config.width, " leaves no MLP width");
  if (classifier) {
    const std::optional<Index> classes = hf_class_count(op, json, source);
    if (!classes)
      fail_with<FormatError>(op, source, ": missing 'num_labels' and 'id2label' (the number of "
                                         "classes of the file's classifier)");
    config.classes = *classes;
    config.pooling = Pooling::ClsPatchMean;
  } else {
    config.classes = config.width;
  }
  validate_config(op, config, source);
  return config;
}

namespace detail {

inline std::vector<ExpectedTensor> dinov2_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, I = c.mlp_width, K = c.classes;
  std::vector<ExpectedTensor> e;
  const std::string emb = p + "embeddings.";
  vit_embeddings_expected(e, c, emb);
  e.push_back({emb + "mask_token", {1, d}, "(1, hidden_size)"});
  for (Index i = 0; i < c.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    for (const char* norm : {"norm1", "norm2"}) {
      e.push_back({l + norm + ".weight", {d}, "(hidden_size)"});
      e.push_back({l + norm + ".bias", {d}, "(hidden_size)"});
    }
    vit_attention_expected(e, c, l);
    e.push_back({l + "layer_scale1.lambda1", {d}, "(hidden_size)"});
    e.push_back({l + "layer_scale2.lambda1", {d}, "(hidden_size)"});
    e.push_back({l + "mlp.fc1.weight", {I, d}, "(hidden_size * mlp_ratio, hidden_size)"});
    e.push_back({l + "mlp.fc1.bias", {I}, "(hidden_size * mlp_ratio)"});
    e.push_back({l + "mlp.fc2.weight", {d, I}, "(hidden_size, hidden_size * mlp_ratio)"});
    e.push_back({l + "mlp.fc2.bias", {d}, "(hidden_size)"});
  }
  e.push_back({p + "layernorm.weight", {d}, "(hidden_size)"});
  e.push_back({p + "layernorm.bias", {d}, "(hidden_size)"});
  if (c.pooling == Pooling::ClsPatchMean) {
    e.push_back({"classifier.weight", {K, 2 * d}, "(num_labels, 2 * hidden_size)"});
    e.push_back({"classifier.bias", {K}, "(num_labels)"});
  }
  return e;
}

// A writer scaled by a layer scale: diag(lambda) W, lambda * b (in double).
template <class S>
void fold_layer_scale(const SafetensorsFile& file, const std::string& weight,
                      const std::string& bias, const std::string& lambda, Linear<S>& out) {
  const Vector<double> scale = file.vector<double>(lambda);
  out.weight = (scale.asDiagonal() * file.matrix<double>(weight)).cast<S>();
  out.bias = scale.cwiseProduct(file.vector<double>(bias)).cast<S>();
}

}  // namespace detail

// Loads a DINOv2 checkpoint as a Pre-LN ViT. Throws FormatError naming the
// file and the tensor on any mismatch.
template <class S>
Vit<Arch::PreLN, S> load_hf_dinov2(const SafetensorsFile& file, const nlohmann::json& json,
                                   const std::string& source) {
  constexpr const char* op = "hf_dinov2";
  const TransformerConfig config = dinov2_config_from_json(json, source, file.contains("classifier.weight"));
  const std::string p =
      detail::hf_tensor_prefix(op, file, "embeddings.patch_embeddings.projection.weight", "dinov2.");
  detail::check_tensors(op, file, detail::dinov2_expected(config, p), {},
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width) + ", tensor prefix '" +
                            p + "'");
  const Index d = config.width;
  Vit<Arch::PreLN, S> model(config);
  detail::read_vit_embeddings(file, p + "embeddings.", model);
  for (Index i = 0; i < config.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    auto& b = model.blocks[std::size_t(i)];
    b.norm1_gamma = file.vector<S>(l + "norm1.weight");
    b.norm1_beta = file.vector<S>(l + "norm1.bias");
    detail::read_vit_attention(file, l, b);
    detail::fold_layer_scale(file, l + "attention.output.dense.weight",
                             l + "attention.output.dense.bias", l + "layer_scale1.lambda1",
                             b.attn.out);
    b.norm2_gamma = file.vector<S>(l + "norm2.weight");
    b.norm2_beta = file.vector<S>(l + "norm2.bias");
    b.mlp.fc.weight = file.matrix<S>(l + "mlp.fc1.weight");
    b.mlp.fc.bias = file.vector<S>(l + "mlp.fc1.bias");
    detail::fold_layer_scale(file, l + "mlp.fc2.weight", l + "mlp.fc2.bias",
                             l + "layer_scale2.lambda1", b.mlp.proj);
  }
  model.final_gamma = file.vector<S>(p + "layernorm.weight");
  model.final_beta = file.vector<S>(p + "layernorm.bias");
  if (config.pooling == Pooling::ClsPatchMean) {
    model.head.weight = file.matrix<S>("classifier.weight");
    model.head.bias = file.vector<S>("classifier.bias");
  } else {  // the pooled output: the normalized cls token itself
    model.head.weight = RowMatrix<S>::Identity(d, d);
    model.head.bias = Vector<S>::Zero(d);
  }
  model.validate(op);
  return model;
}

template <class S>
Vit<Arch::PreLN, S> load_hf_dinov2(const std::filesystem::path& path,
                                   const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_dinov2", path, config, [](const SafetensorsFile& file, const nlohmann::json& json,
                                    const std::string& source) { return load_hf_dinov2<S>(file, json, source); });
}

}  // namespace prenorm::io
