#pragma once
// Loading a model whose layout and architecture are known only at run time
// (what prenorm-convert and prenorm-infer do).
//
//   detect_layout(file, config)
//                         prenorm metadata (format "prenorm") -> Layout::Prenorm;
//                         else the model_type (or, without one, an entry of
//                         the architectures) of the config.json (`config`, or
//                         beside the file, when there is one) when it names a
//                         family read by data + loader code: the decoders
//                         gpt_neox, opt, phi, gptj, gpt_bigcode, gpt_neo,
//                         bloom, the encoders clip_vision_model and clip,
//                         dinov2, deit (hf_<family>.hpp) -> Layout::Hf<Family>;
//                         else wte.weight or transformer.wte.weight -> Layout::HfGpt2;
//                         else the ViT patch projection (with or without "vit.")
//                         -> Layout::HfVit; else FormatError.
//   load_any_model<S>(path, config)
//                         the model as an AnyModel<S> (a std::variant of the
//                         GPT and ViT of the three architectures). The
//                         Hugging Face layouts take their config.json from
//                         `config`, or from config.json beside the file.

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "../core/arch.hpp"
#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "error.hpp"
#include "hf_bloom.hpp"
#include "hf_clip_vision.hpp"
#include "hf_deit.hpp"
#include "hf_dinov2.hpp"
#include "hf_gpt2.hpp"
#include "hf_gpt_bigcode.hpp"
#include "hf_gpt_neo.hpp"
#include "hf_gpt_neox.hpp"
#include "hf_gptj.hpp"
#include "hf_opt.hpp"
#include "hf_phi.hpp"
#include "hf_vit.hpp"
#include "layout_util.hpp"
#include "prenorm_layout.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

enum class Layout {
  Prenorm,
  HfGpt2,
  HfVit,
  // Decoder families told by config.json's model_type (or architectures).
  HfGptNeox,
  HfOpt,
  HfPhi,
  HfGptj,
  HfGptBigcode,
  HfGptNeo,
  HfBloom,
  // Encoder families, told the same way.
  HfClipVision,
  HfDinov2,
  HfDeit,
};

constexpr std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::Prenorm: return "prenorm";
    case Layout::HfGpt2: return "hf_gpt2";
    case Layout::HfVit: return "hf_vit";
    case Layout::HfGptNeox: return "hf_gpt_neox";
    case Layout::HfOpt: return "hf_opt";
    case Layout::HfPhi: return "hf_phi";
    case Layout::HfGptj: return "hf_gptj";
    case Layout::HfGptBigcode: return "hf_gpt_bigcode";
    case Layout::HfGptNeo: return "hf_gpt_neo";
    case Layout::HfBloom: return "hf_bloom";
    case Layout::HfClipVision: return "hf_clip_vision";
    case Layout::HfDinov2: return "hf_dinov2";
    case Layout::HfDeit: return "hf_deit";
  }
  return "unknown";
}

// The family that a config.json names by its model_type or, when it has
// none, by an entry of its architectures; nullopt for any other (GPT-2 and ViT
// are told by their tensor names).
inline std::optional<Layout> hf_family_layout(const nlohmann::json& json) {
  struct Family {
    const char* model_type;
    const char* architectures[3];
    Layout layout;
  };
  static constexpr Family kFamilies[] = {
      {"gpt_neox", {"GPTNeoXForCausalLM", "GPTNeoXModel"}, Layout::HfGptNeox},
      {"opt", {"OPTForCausalLM", "OPTModel"}, Layout::HfOpt},
      {"phi", {"PhiForCausalLM", "PhiModel"}, Layout::HfPhi},
      {"gptj", {"GPTJForCausalLM", "GPTJModel"}, Layout::HfGptj},
      {"gpt_bigcode", {"GPTBigCodeForCausalLM", "GPTBigCodeModel"}, Layout::HfGptBigcode},
      {"gpt_neo", {"GPTNeoForCausalLM", "GPTNeoModel"}, Layout::HfGptNeo},
      {"bloom", {"BloomForCausalLM", "BloomModel"}, Layout::HfBloom},
      {"clip_vision_model", {"CLIPVisionModelWithProjection", "CLIPVisionModel"}, Layout::HfClipVision},
      {"clip", {"CLIPModel"}, Layout::HfClipVision},
      {"dinov2", {"Dinov2ForImageClassification", "Dinov2Model"}, Layout::HfDinov2},
      {"deit",
       {"DeiTForImageClassificationWithTeacher", "DeiTForImageClassification", "DeiTModel"},
       Layout::HfDeit},
  };
  if (!json.is_object()) return std::nullopt;
  const nlohmann::json* type = detail::find_key(json, "model_type");
  const nlohmann::json* architectures = detail::find_key(json, "architectures");
  for (const Family& family : kFamilies) {
    if (type) {
      if (type->is_string() && type->get<std::string>() == family.model_type) return family.layout;
    } else if (architectures && architectures->is_array()) {
      for (const nlohmann::json& name : *architectures)
        for (const char* known : family.architectures)
          if (known && name.is_string() && name.get<std::string>() == known) return family.layout;
    }
  }
  return std::nullopt;
}

// Which layout `file` is in; `config`: its config.json, if not beside it.
// Throws FormatError naming the file when it is none.
inline Layout detect_layout(const SafetensorsFile& file,
                            const std::optional<std::filesystem::path>& config = {}) {
  if (is_prenorm_layout(file)) return Layout::Prenorm;
  std::filesystem::path path;
  if (config) {
    path = *config;
  } else {
    path = (file.path().has_parent_path() ? file.path().parent_path()
                                          : std::filesystem::path(".")) / "config.json";
  }
  std::error_code error;
  if (std::filesystem::is_regular_file(path, error))
    if (const std::optional<Layout> family = hf_family_layout(read_json_file(path))) return *family;
  if (file.contains("wte.weight") || file.contains("transformer.wte.weight"))
    return Layout::HfGpt2;
  if (file.contains("vit.embeddings.patch_embeddings.projection.weight") ||
      file.contains("embeddings.patch_embeddings.projection.weight"))
    return Layout::HfVit;
  detail::fail_with<FormatError>(
      "detect_layout", file.path().string(),
      ": not a model file prenorm knows: no prenorm metadata (format \"prenorm\"), no config.json "
      "naming a family prenorm reads (model_type gpt_neox, opt, phi, gptj, gpt_bigcode, "
      "gpt_neo, bloom, clip_vision_model, clip, dinov2, deit), no GPT-2 'wte.weight' / 'transformer.wte.weight', no ViT "
      "'vit.embeddings.patch_embeddings.projection.weight'");
}

// `path`, or, when `path` is a directory (a Hugging Face checkpoint folder, as
// the tools accept), the checkpoint in it: `path`/model.safetensors, else the
// index of a sharded one, `path`/model.safetensors.index.json (SafetensorsFile
// opens either). Without both, `path`/model.safetensors, for the error.
inline std::filesystem::path model_file_path(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::is_directory(path, error)) return path;
  const std::filesystem::path single = path / "model.safetensors";
  const std::filesystem::path index = path / "model.safetensors.index.json";
  if (!std::filesystem::exists(single, error) && std::filesystem::exists(index, error)) return index;
  return single;
}

// A GPT or ViT of one of the three architectures.
template <class S>
using AnyModel = std::variant<Gpt<Arch::PreLN, S>, Gpt<Arch::PreRMSNorm, S>,
                              Gpt<Arch::PreCRMSNorm, S>, Vit<Arch::PreLN, S>,
                              Vit<Arch::PreRMSNorm, S>, Vit<Arch::PreCRMSNorm, S>>;

// The kind and architecture of the model held.
template <class S>
ModelKind kind_of(const AnyModel<S>& model) {
  return model.index() < 3 ? ModelKind::Gpt : ModelKind::Vit;
}
template <class S>
Arch arch_of(const AnyModel<S>& model) {
  return std::visit([](const auto& m) { return std::decay_t<decltype(m)>::arch; }, model);
}

// A model and where it came from.
template <class S>
struct LoadedModel {
  AnyModel<S> model;
  Layout layout = Layout::Prenorm;
  Dtype dtype = Dtype::F32;                  // the dtype of the file's weights
  std::size_t tensors = 0;                   // tensors in the file
  std::optional<std::filesystem::path> config_path;  // the config.json read (HF layouts)
  std::optional<Arch> converted_from;        // prenorm layout: the metadata's converted_from
};

namespace detail {

// A decoder family's model: load(file, json, source) with its config.json.
template <class S, class Load, class DtypeOf>
LoadedModel<S> load_hf_decoder(const SafetensorsFile& file,
                               const std::optional<std::filesystem::path>& config, Layout layout,
                               const Load& load, const DtypeOf& dtype_of) {
  const std::filesystem::path path =
      hf_config_path("load_model", file.path(), config, layout_name(layout), "--config");
  AnyModel<S> model = load(file, read_json_file(path), path.string());
  return LoadedModel<S>{std::move(model), layout, dtype_of(file), file.size(), path, std::nullopt};
}

}  // namespace detail

// Loads the model in `file`, converted to S, whatever its layout and architecture.
template <class S>
LoadedModel<S> load_any_model(const SafetensorsFile& file,
                              const std::optional<std::filesystem::path>& config = {}) {
  const Layout layout = detect_layout(file, config);
  const auto make = [&](AnyModel<S>&& model, Dtype dtype) {
    return LoadedModel<S>{std::move(model), layout, dtype, file.size(), std::nullopt, std::nullopt};
  };
  switch (layout) {
    case Layout::HfGpt2: {
      const std::filesystem::path path = hf_config_path("load_model", file.path(), config,
                                                        layout_name(layout), "--config");
      const TransformerConfig c = gpt2_config_from_json(read_json_file(path), path.string());
      AnyModel<S> model = load_hf_gpt2<S>(file, c);  // checks the file first
      LoadedModel<S> loaded = make(std::move(model), hf_gpt2_dtype(file, c));
      loaded.config_path = path;
      return loaded;
    }
    case Layout::HfVit: {
      const std::filesystem::path path = hf_config_path("load_model", file.path(), config,
                                                        layout_name(layout), "--config");
      const TransformerConfig c = vit_config_from_json(read_json_file(path), path.string());
      AnyModel<S> model = load_hf_vit<S>(file, c);
      LoadedModel<S> loaded = make(std::move(model), hf_vit_dtype(file, c));
      loaded.config_path = path;
      return loaded;
    }
    case Layout::HfGptNeox:
      return detail::load_hf_decoder<S>(
          file, config, layout, [](auto&&... a) { return load_hf_gpt_neox<S>(a...); },
          hf_gpt_neox_dtype);
    case Layout::HfOpt:
      return detail::load_hf_decoder<S>(
          file, config, layout, [](auto&&... a) { return load_hf_opt<S>(a...); }, hf_opt_dtype);
    case Layout::HfPhi:
      return detail::load_hf_decoder<S>(
          file, config, layout, [](auto&&... a) { return load_hf_phi<S>(a...); }, hf_phi_dtype);
    case Layout::HfGptj:
      return detail::load_hf_decoder<S>(
          file, config, layout, [](auto&&... a) { return load_hf_gptj<S>(a...); }, hf_gptj_dtype);
    case Layout::HfClipVision:
    case Layout::HfDinov2:
    case Layout::HfDeit: {
      const std::filesystem::path path = hf_config_path("load_model", file.path(), config,
                                                        layout_name(layout), "--config");
      const nlohmann::json json = read_json_file(path);
      AnyModel<S> model = layout == Layout::HfClipVision ? load_hf_clip_vision<S>(file, json, path.string())
                          : layout == Layout::HfDinov2   ? load_hf_dinov2<S>(file, json, path.string())
                                                         : load_hf_deit<S>(file, json, path.string());
      LoadedModel<S> loaded = make(std::move(model), detail::common_dtype(file, file.names()));
      loaded.config_path = path;
      return loaded;
    }
    case Layout::HfGptBigcode:
    case Layout::HfGptNeo:
    case Layout::HfBloom: {
      const std::filesystem::path path = hf_config_path("load_model", file.path(), config,
                                                        layout_name(layout), "--config");
      const nlohmann::json json = read_json_file(path);
      AnyModel<S> model = layout == Layout::HfGptBigcode ? load_hf_gpt_bigcode<S>(file, json, path.string())
                          : layout == Layout::HfGptNeo   ? load_hf_gpt_neo<S>(file, json, path.string())
                                                         : load_hf_bloom<S>(file, json, path.string());
      LoadedModel<S> loaded = make(std::move(model), detail::common_dtype(file, file.names()));
      loaded.config_path = path;
      return loaded;
    }
    case Layout::Prenorm: break;
  }
  const PrenormMetadata meta = read_prenorm_metadata(file);
  const Dtype dtype = prenorm_dtype(file);  // also refuses tensors of other dtypes
  const auto gpt = [&]<Arch A>() -> AnyModel<S> {
    return detail::load_prenorm_model<Gpt<A, S>>(file, ModelKind::Gpt, meta.gpt, meta);
  };
  const auto vit = [&]<Arch A>() -> AnyModel<S> {
    return detail::load_prenorm_model<Vit<A, S>>(file, ModelKind::Vit, meta.vit, meta);
  };
  const bool is_gpt = meta.kind == ModelKind::Gpt;
  LoadedModel<S> loaded = [&]() -> LoadedModel<S> {
    switch (meta.arch) {
      case Arch::PreLN:
        return make(is_gpt ? gpt.template operator()<Arch::PreLN>()
                           : vit.template operator()<Arch::PreLN>(), dtype);
      case Arch::PreRMSNorm:
        return make(is_gpt ? gpt.template operator()<Arch::PreRMSNorm>()
                           : vit.template operator()<Arch::PreRMSNorm>(), dtype);
      case Arch::PreCRMSNorm:
        return make(is_gpt ? gpt.template operator()<Arch::PreCRMSNorm>()
                           : vit.template operator()<Arch::PreCRMSNorm>(), dtype);
    }
    // Unreachable: read_prenorm_metadata accepts the three names only.
    detail::fail_with<FormatError>("load_model", file.path().string(), ": holds architecture ",
                                   int(meta.arch), ", not one of the library's");
  }();
  loaded.converted_from = meta.converted_from;
  return loaded;
}

template <class S>
LoadedModel<S> load_any_model(const std::filesystem::path& path,
                              const std::optional<std::filesystem::path>& config = {}) {
  const SafetensorsFile file(path);
  return load_any_model<S>(file, config);
}

}  // namespace prenorm::io
