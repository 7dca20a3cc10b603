#pragma once
// The Hugging Face DeiT layout (model_type "deit": DeiTForImageClassificationWithTeacher,
// e.g. facebook/deit-base-distilled-patch16-224, or DeiTForImageClassification)
// -> Vit<Arch::PreLN, S> with a distillation token.
//
// The names are ViT's (hf_vit.hpp) with the prefix "deit." (or none), plus
//   deit.embeddings.distillation_token   (1, 1, d)       distillation_token (after the cls token)
//   deit.embeddings.position_embeddings  (1, 2 + P, d)   position_embedding (cls, distillation, patches)
//   deit.embeddings.mask_token           (1, 1, d)       optional (masked image modeling), unused
// and the head: with the teacher, cls_classifier.{weight,bias} (K, d) on the cls
// token and distillation_classifier.{weight,bias} (K, d) on the distillation
// token, whose logits the model averages: one head over [cls, distillation]
// (Pooling::ClsDistillation), weight [W_c / 2, W_d / 2], bias (b_c + b_d) / 2
// (in double, rounded once); without it, classifier.{weight,bias} (K, d) on the
// cls token (Pooling::Cls).
//
// config.json: ViT's keys (hidden_size, num_hidden_layers, num_attention_heads,
// intermediate_size, image_size, patch_size; num_channels 3, hidden_act "gelu",
// layer_norm_eps 1e-12, qkv_bias true) and the classes (num_labels or id2label).

#include <nlohmann/json.hpp>

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

// The DeiT config (the pooling is the file's: see load_hf_deit).
inline TransformerConfig deit_config_from_json(const nlohmann::json& json, const std::string& source) {
  constexpr const char* op = "hf_deit";
  TransformerConfig config = detail::vit_classifier_config(op, json, source, "deit");
  config.distillation_token = true;
  config.pooling = Pooling::ClsDistillation;
  detail::validate_config(op, config, source);
  return config;
}

namespace detail {

// Whether the file has the two heads of DeiTForImageClassificationWithTeacher.
inline bool deit_with_teacher(const SafetensorsFile& file) {
  return file.contains("cls_classifier.weight") || file.contains("distillation_classifier.weight");
}

inline std::vector<ExpectedTensor> deit_expected(const TransformerConfig& c, const std::string& p) {
  const std::int64_t d = c.width, K = c.classes;
  std::vector<ExpectedTensor> e;
  vit_embeddings_expected(e, c, p + "embeddings.");
  vit_layers_expected(e, c, p);
  const auto head = [&](const std::string& name) {
    e.push_back({name + ".weight", {K, d}, "(num_labels, hidden_size)"});
    e.push_back({name + ".bias", {K}, "(num_labels)"});
  };
  if (c.pooling == Pooling::ClsDistillation) {
    head("cls_classifier");
    head("distillation_classifier");
  } else {
    head("classifier");
  }
  return e;
}

}  // namespace detail

// Loads a DeiT checkpoint as a Pre-LN ViT with a distillation token. Throws
// FormatError naming the file and the tensor on any mismatch.
template <class S>
Vit<Arch::PreLN, S> load_hf_deit(const SafetensorsFile& file, const nlohmann::json& json,
                                 const std::string& source) {
  constexpr const char* op = "hf_deit";
  TransformerConfig config = deit_config_from_json(json, source);
  if (!detail::deit_with_teacher(file)) config.pooling = Pooling::Cls;
  const std::string p =
      detail::hf_tensor_prefix(op, file, "embeddings.patch_embeddings.projection.weight", "deit.");
  const std::string mask = p + "embeddings.mask_token";
  detail::check_tensors(op, file, detail::deit_expected(config, p),
                        [&](std::string_view name) { return name == mask; },
                        "config: num_hidden_layers " + std::to_string(config.layers) +
                            ", hidden_size " + std::to_string(config.width) + ", tensor prefix '" +
                            p + "'");
  Vit<Arch::PreLN, S> model(config);
  detail::read_vit_body(file, p, model);
  if (config.pooling == Pooling::ClsDistillation) {
    // logits = (W_c x_cls + b_c + W_d x_dist + b_d) / 2: one head over [x_cls, x_dist].
    const Index d = config.width;
    RowMatrix<double> w(config.classes, 2 * d);
    w.leftCols(d) = 0.5 * file.matrix<double>("cls_classifier.weight");
    w.rightCols(d) = 0.5 * file.matrix<double>("distillation_classifier.weight");
    model.head.weight = w.cast<S>();
    model.head.bias = (0.5 * (file.vector<double>("cls_classifier.bias") +
                              file.vector<double>("distillation_classifier.bias")))
                          .cast<S>();
  } else {
    model.head.weight = file.matrix<S>("classifier.weight");
    model.head.bias = file.vector<S>("classifier.bias");
  }
  model.validate(op);
  return model;
}

template <class S>
Vit<Arch::PreLN, S> load_hf_deit(const std::filesystem::path& path,
                                 const std::optional<std::filesystem::path>& config = {}) {
  return detail::load_with_hf_config(
      "hf_deit", path, config, [](const SafetensorsFile& file, const nlohmann::json& json,
                                  const std::string& source) { return load_hf_deit<S>(file, json, source); });
}

}  // namespace prenorm::io
