#pragma once
// prenorm's own checkpoint layout: a safetensors file that holds a GPT or ViT
// of any of the library's architectures (Pre-LN, Pre-RMSNorm, Pre-CRMSNorm),
// with everything needed to rebuild it in "__metadata__".
//
// Tensor names are the names of visit_parameters with "[i]" written ".i"
// (blocks[3].attn.qkv.weight -> blocks.3.attn.qkv.weight); matrices are stored
// [rows, cols] as prenorm holds them (Linear weights (out, in)), vectors [n].
// Empty tensors (norm affines of Pre-RMSNorm, the head of a tied GPT, ...)
// are omitted. README.md ("Checkpoint layout") lists the names.
//
// Metadata (every value a string):
//   format "prenorm", format_version "1", kind "gpt" | "vit",
//   arch "pre_ln" | "pre_rmsnorm" | "pre_crmsnorm",
//   width, heads, head_dim, layers, mlp_width (decimal integers),
//   epsilon (17 significant digits: the double round-trips exactly),
//   activation "gelu_tanh" | "gelu_erf" | "relu" | "quick_gelu",
//   topology "parallel_shared_norm" | "parallel_two_norms" (optional: written
//     only when not sequential, so Sequential files are as before),
//   converted_from "none" or an arch name,
//   GPT: vocab, context, tied "untied" | "keep", head_bias "true" | "false",
//     and the attention options only where they differ from GPT-2's (so that
//     a GPT-2-like model's file has none of them): kv_heads; rotary_dims,
//     rotary_pairing "rotate_half" | "interleaved", rotary_base; alibi "true";
//     score_scale; window, window_period; and the position options likewise:
//     learned_positions "false"; position_offset;
//   ViT: classes, image_size, patch_size, channels, and the encoder-family
//     options only where set (a plain ViT's file has none of them):
//     stem_norm "true"; distillation_token "true";
//     pooling "cls_distillation" | "cls_patch_mean";
//     output "logits" | "image_embeds" | "pooler_output" (optional: what the
//     head gives, as Hugging Face names it; written by prenorm-convert for
//     CLIP vision and DINOv2 files, read by prenorm-infer; logits when absent).
// Reading is strict: a missing key, a key that is not in this list (or is for
// the other kind), or a value that does not parse throws FormatError naming
// the key and the file; so do missing, unknown or misshapen tensors.

#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../models/config.hpp"
#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "../ops/activation.hpp"
#include "error.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

inline constexpr std::string_view kPrenormFormat = "prenorm";
inline constexpr int kPrenormFormatVersion = 1;

enum class ModelKind { Gpt, Vit };

constexpr std::string_view model_kind_name(ModelKind kind) {
  return kind == ModelKind::Gpt ? "gpt" : "vit";
}

// What the metadata of a prenorm-layout file says.
struct PrenormMetadata {
  ModelKind kind = ModelKind::Gpt;
  Arch arch = Arch::PreLN;
  TransformerConfig gpt = GptConfig{};  // when kind == Gpt
  TransformerConfig vit = VitConfig{};  // when kind == Vit
  std::optional<Arch> converted_from;
  std::string vit_output = "logits";  // ViT: the metadata's output (see above)
};

// Whether the file says it is in prenorm's layout (metadata format = "prenorm").
inline bool is_prenorm_layout(const SafetensorsFile& file) {
  const auto found = file.metadata().find("format");
  return found != file.metadata().end() && found->second == kPrenormFormat;
}

// The tensor name in the file for a visit_parameters name: "[i]" -> ".i".
inline std::string prenorm_tensor_name(std::string_view visit_name) {
  std::string name;
  name.reserve(visit_name.size());
  for (char c : visit_name) {
    if (c == '[') name += '.';
    else if (c != ']') name += c;
  }
  return name;
}

// Options of save_prenorm.
struct PrenormSaveOptions {
  std::optional<Arch> converted_from;         // the architecture the model was converted from
  std::vector<std::filesystem::path> inputs = {};  // files the write must not replace
};

namespace detail {

inline std::string format_epsilon(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value,
                                    std::chars_format::general,
                                    std::numeric_limits<double>::max_digits10);
  return std::string(buffer, result.ptr);
}

inline std::optional<Arch> arch_from_name(std::string_view name) {
  for (Arch arch : {Arch::PreLN, Arch::PreRMSNorm, Arch::PreCRMSNorm})
    if (arch_name(arch) == name) return arch;
  return std::nullopt;
}

// Reads the metadata map strictly; every error names the key and `file`.
class MetadataReader {
 public:
  MetadataReader(const std::map<std::string, std::string>& metadata, std::string file)
      : metadata_(metadata), file_(std::move(file)) {}

  const std::string& text(const char* key) {
    used_.insert(key);
    const auto found = metadata_.find(key);
    if (found == metadata_.end())
      fail_with<FormatError>(kOp, file_, ": __metadata__ has no '", key, "'");
    return found->second;
  }

  [[noreturn]] void bad(const char* key, const std::string& value, std::string_view expected) {
    fail_with<FormatError>(kOp, file_, ": __metadata__ '", key, "' is '", value, "', expected ",
                           expected);
  }

  Index integer(const char* key, Index minimum) {
    const std::string& value = text(key);
    std::int64_t number = 0;
    const char* end = value.data() + value.size();
    const auto result = std::from_chars(value.data(), end, number);
    const bool digits_only =
        !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
    if (!digits_only || result.ec != std::errc() || result.ptr != end || number < minimum)
      bad(key, value, "a decimal integer >= " + std::to_string(minimum));
    return Index(number);
  }

  double positive(const char* key) {
    const std::string& value = text(key);
    double number = 0;
    const char* end = value.data() + value.size();
    const auto result = std::from_chars(value.data(), end, number);
    if (value.empty() || result.ec != std::errc() || result.ptr != end || !(number > 0) ||
        !std::isfinite(number))
      bad(key, value, "a finite number > 0");
    return number;
  }

  bool has(const char* key) const { return metadata_.count(key) != 0; }

  bool boolean(const char* key) {
    const std::string& value = text(key);
    if (value == "true") return true;
    if (value == "false") return false;
    bad(key, value, "'true' or 'false'");
  }

  Arch arch(const char* key) {
    const std::string& value = text(key);
    const std::optional<Arch> arch = arch_from_name(value);
    if (!arch) bad(key, value, "one of pre_ln, pre_rmsnorm, pre_crmsnorm");
    return *arch;
  }

  RotaryPairing rotary_pairing(const char* key) {
    const std::string& value = text(key);
    for (RotaryPairing p : {RotaryPairing::RotateHalf, RotaryPairing::Interleaved})
      if (value == rotary_pairing_name(p)) return p;
    bad(key, value, "'rotate_half' or 'interleaved'");
  }

  Activation activation(const char* key) {
    const std::string& value = text(key);
    Activation activation{};
    if (!activation_from_name(value, activation))
      bad(key, value, "'gelu_tanh', 'gelu_erf', 'relu' or 'quick_gelu'");
    return activation;
  }

  // An optional key: Cls when absent.
  Pooling pooling(const char* key) {
    if (!has(key)) return Pooling::Cls;
    const std::string& value = text(key);
    for (Pooling p : {Pooling::Cls, Pooling::ClsDistillation, Pooling::ClsPatchMean})
      if (value == pooling_name(p)) return p;
    bad(key, value, "'cls', 'cls_distillation' or 'cls_patch_mean'");
  }

  // An optional key: Sequential when absent.
  BlockTopology topology(const char* key) {
    if (metadata_.find(key) == metadata_.end()) return BlockTopology::Sequential;
    const std::string& value = text(key);
    BlockTopology topology{};
    if (!topology_from_name(value, topology))
      bad(key, value, "'sequential', 'parallel_shared_norm' or 'parallel_two_norms'");
    return topology;
  }

  // Every key of the metadata was read.
  void check_all_used(std::string_view kind) const {
    for (const auto& [key, value] : metadata_)
      if (used_.count(key) == 0)
        fail_with<FormatError>(kOp, file_, ": __metadata__ has an unknown key '", key,
                               "' (value '", value, "') for a ", kind, " model");
  }

  const std::string& file() const { return file_; }

  static constexpr const char* kOp = "prenorm_layout";

 private:
  const std::map<std::string, std::string>& metadata_;
  std::string file_;
  std::set<std::string, std::less<>> used_;
};

template <class Model>
constexpr bool is_gpt_model = false;
template <Arch A, class S>
constexpr bool is_gpt_model<Gpt<A, S>> = true;
template <class Model>
constexpr bool is_vit_model = false;
template <Arch A, class S>
constexpr bool is_vit_model<Vit<A, S>> = true;

// The tensors the file must hold for `model` (built from the metadata).
template <class Model>
std::vector<ExpectedTensor> prenorm_expected(const Model& model) {
  std::vector<ExpectedTensor> expected;
  model.visit_parameters([&](const std::string& name, const auto& tensor) {
    if (tensor.size() == 0) return;
    using T = std::decay_t<decltype(tensor)>;
    if constexpr (T::ColsAtCompileTime == 1)
      expected.push_back({prenorm_tensor_name(name), {tensor.size()}, ""});
    else
      expected.push_back({prenorm_tensor_name(name), {tensor.rows(), tensor.cols()}, ""});
  });
  return expected;
}

// A GPT's attention and position options, each only where it differs from GPT-2's.
inline void write_attention_options(SafetensorsWriter& writer, const TransformerConfig& c) {
  if (!c.learned_positions) writer.set_metadata("learned_positions", "false");
  if (c.position_offset != 0) writer.set_metadata("position_offset", std::to_string(c.position_offset));
  if (c.kv_head_count() != c.heads) writer.set_metadata("kv_heads", std::to_string(c.kv_heads));
  if (c.rotary.dims != 0) {
    writer.set_metadata("rotary_dims", std::to_string(c.rotary.dims));
    writer.set_metadata("rotary_pairing", std::string(rotary_pairing_name(c.rotary.pairing)));
    writer.set_metadata("rotary_base", format_epsilon(c.rotary.base));
  }
  if (c.alibi) writer.set_metadata("alibi", "true");
  if (c.score_scale != 0) writer.set_metadata("score_scale", format_epsilon(c.score_scale));
  if (c.window != 0) {
    writer.set_metadata("window", std::to_string(c.window));
    writer.set_metadata("window_period", std::to_string(c.window_period));
  }
}

// What write_attention_options wrote; an absent key leaves GPT-2's default.
inline void read_attention_options(MetadataReader& m, TransformerConfig& c) {
  if (m.has("learned_positions")) c.learned_positions = m.boolean("learned_positions");
  if (m.has("position_offset")) c.position_offset = m.integer("position_offset", 0);
  if (m.has("kv_heads")) c.kv_heads = m.integer("kv_heads", 1);
  if (m.has("rotary_dims")) {
    c.rotary.dims = m.integer("rotary_dims", 2);
    c.rotary.pairing = m.rotary_pairing("rotary_pairing");
    c.rotary.base = m.positive("rotary_base");
  }
  if (m.has("alibi")) c.alibi = m.boolean("alibi");
  if (m.has("score_scale")) c.score_scale = m.positive("score_scale");
  if (m.has("window")) {
    c.window = m.integer("window", 1);
    c.window_period = m.integer("window_period", 1);
  }
}

// Metadata shared by GPT and ViT.
template <class Config>
void common_metadata(SafetensorsWriter& writer, ModelKind kind, Arch arch, const Config& config,
                     const PrenormSaveOptions& options) {
  writer.set_metadata("format", std::string(kPrenormFormat));
  writer.set_metadata("format_version", std::to_string(kPrenormFormatVersion));
  writer.set_metadata("kind", std::string(model_kind_name(kind)));
  writer.set_metadata("arch", std::string(arch_name(arch)));
  writer.set_metadata("width", std::to_string(config.width));
  writer.set_metadata("heads", std::to_string(config.heads));
  writer.set_metadata("head_dim", std::to_string(config.head_size()));
  writer.set_metadata("layers", std::to_string(config.layers));
  writer.set_metadata("mlp_width", std::to_string(config.mlp_width));
  writer.set_metadata("epsilon", format_epsilon(config.epsilon));
  writer.set_metadata("activation", std::string(activation_name(config.activation)));
  if (config.topology != BlockTopology::Sequential)
    writer.set_metadata("topology", std::string(topology_name(config.topology)));
  writer.set_metadata("converted_from", options.converted_from
                                            ? std::string(arch_name(*options.converted_from))
                                            : std::string("none"));
}

// The metadata of a GPT of architecture `arch` and config `c`.
inline void gpt_metadata(SafetensorsWriter& writer, Arch arch, const TransformerConfig& c,
                         const PrenormSaveOptions& options) {
  common_metadata(writer, ModelKind::Gpt, arch, c, options);
  writer.set_metadata("vocab", std::to_string(c.vocab));
  writer.set_metadata("context", std::to_string(c.context));
  writer.set_metadata("tied", c.tied ? "keep" : "untied");
  writer.set_metadata("head_bias", c.head_bias ? "true" : "false");
  write_attention_options(writer, c);
}

// Adds every non-empty tensor of `model`.
template <class Model>
void add_tensors(SafetensorsWriter& writer, const Model& model, Dtype dtype) {
  model.visit_parameters([&](const std::string& name, const auto& tensor) {
    if (tensor.size() == 0) return;
    using T = std::decay_t<decltype(tensor)>;
    if constexpr (T::ColsAtCompileTime == 1)
      writer.add_vector(prenorm_tensor_name(name), dtype, tensor);
    else
      writer.add_matrix(prenorm_tensor_name(name), dtype, tensor);
  });
}

// Reads every expected tensor of the file into `model`.
template <class Model>
void read_tensors(const SafetensorsFile& file, Model& model) {
  using S = typename Model::Scalar;
  model.visit_parameters([&](const std::string& name, auto& tensor) {
    if (tensor.size() == 0) return;
    using T = std::decay_t<decltype(tensor)>;
    if constexpr (T::ColsAtCompileTime == 1)
      tensor = file.vector<S>(prenorm_tensor_name(name));
    else
      tensor = file.matrix<S>(prenorm_tensor_name(name));
  });
}

}  // namespace detail

// Reads and checks the metadata of a prenorm-layout file.
inline PrenormMetadata read_prenorm_metadata(const SafetensorsFile& file) {
  detail::MetadataReader m(file.metadata(), file.path().string());
  constexpr const char* op = detail::MetadataReader::kOp;
  if (m.text("format") != kPrenormFormat)
    m.bad("format", m.text("format"), "'prenorm'");
  if (m.text("format_version") != std::to_string(kPrenormFormatVersion))
    m.bad("format_version", m.text("format_version"),
          "'" + std::to_string(kPrenormFormatVersion) + "' (this version of prenorm reads only it)");
  PrenormMetadata result;
  const std::string& kind = m.text("kind");
  if (kind == "gpt") result.kind = ModelKind::Gpt;
  else if (kind == "vit") result.kind = ModelKind::Vit;
  else m.bad("kind", kind, "'gpt' or 'vit'");
  result.arch = m.arch("arch");
  const std::string& from = m.text("converted_from");
  if (from != "none") {
    result.converted_from = detail::arch_from_name(from);
    if (!result.converted_from)
      m.bad("converted_from", from, "'none' or one of pre_ln, pre_rmsnorm, pre_crmsnorm");
  }

  // Fields every config has; head_dim is stored as the actual head size.
  const auto common = [&m](auto& config) {
    config.width = m.integer("width", 2);
    config.heads = m.integer("heads", 1);
    const Index head_dim = m.integer("head_dim", 1);
    config.head_dim = config.width % config.heads == 0 && head_dim == config.width / config.heads
                          ? 0
                          : head_dim;
    config.layers = m.integer("layers", 0);
    config.mlp_width = m.integer("mlp_width", 1);
    config.epsilon = m.positive("epsilon");
    config.activation = m.activation("activation");
    config.topology = m.topology("topology");
  };
  if (result.kind == ModelKind::Gpt) {
    TransformerConfig& c = result.gpt;
    common(c);
    c.vocab = m.integer("vocab", 1);
    c.context = m.integer("context", 1);
    const std::string& tied = m.text("tied");
    if (tied == "keep") c.tied = true;
    else if (tied == "untied") c.tied = false;
    else m.bad("tied", tied, "'untied' or 'keep'");
    c.head_bias = m.boolean("head_bias");
    detail::read_attention_options(m, c);
    detail::validate_config(op, c, m.file());
  } else {
    TransformerConfig& c = result.vit;
    common(c);
    c.classes = m.integer("classes", 1);
    c.image_size = m.integer("image_size", 1);
    c.patch_size = m.integer("patch_size", 1);
    c.channels = m.integer("channels", 1);
    if (m.has("stem_norm")) c.stem_norm = m.boolean("stem_norm");
    if (m.has("distillation_token")) c.distillation_token = m.boolean("distillation_token");
    c.pooling = m.pooling("pooling");
    if (m.has("output")) {
      result.vit_output = m.text("output");
      if (result.vit_output != "logits" && result.vit_output != "image_embeds" &&
          result.vit_output != "pooler_output")
        m.bad("output", result.vit_output, "'logits', 'image_embeds' or 'pooler_output'");
    }
    detail::validate_config(op, c, m.file());
  }
  m.check_all_used(model_kind_name(result.kind));
  return result;
}

// The dtype of a prenorm-layout file's tensors (theirs when shared, else the widest).
inline Dtype prenorm_dtype(const SafetensorsFile& file) {
  for (const std::string& name : file.names())
    if (!file.info(name).dtype)
      detail::fail_with<FormatError>(detail::MetadataReader::kOp, file.path().string(),
                                     ": tensor '", name, "' has dtype ", file.info(name).dtype_name,
                                     ", expected one of ", kSupportedDtypes);
  return detail::common_dtype(file, file.names());
}

namespace detail {

template <class Model, class Config>
Model load_prenorm_model(const SafetensorsFile& file, ModelKind kind, const Config& config,
                         const PrenormMetadata& meta) {
  constexpr const char* op = MetadataReader::kOp;
  const std::string path = file.path().string();
  if (meta.kind != kind)
    fail_with<FormatError>(op, path, ": holds a ", model_kind_name(meta.kind), " model, not a ",
                           model_kind_name(kind));
  if (meta.arch != Model::arch)
    fail_with<FormatError>(op, path, ": holds a ", arch_name(meta.arch), " model, not a ",
                           arch_name(Model::arch), " one");
  Model model(config);
  check_tensors(op, file, prenorm_expected(model), {},
                std::string("metadata: ") + std::string(model_kind_name(kind)) + ", " +
                    std::string(arch_name(meta.arch)) + ", layers " +
                    std::to_string(config.layers) + ", width " + std::to_string(config.width));
  read_tensors(file, model);
  model.validate(op);
  return model;
}

}  // namespace detail

// Loads a Model (Gpt<A, S> or Vit<A, S>) from a prenorm-layout file. Throws
// FormatError if the file holds another kind or architecture.
template <class Model>
Model load_prenorm(const SafetensorsFile& file) {
  static_assert(detail::is_gpt_model<Model> || detail::is_vit_model<Model>,
                "prenorm::io::load_prenorm loads a Gpt<A, S> or a Vit<A, S>");
  static_assert(is_public_arch(Model::arch),
                "prenorm::io: the prenorm layout holds PreLN, PreRMSNorm and PreCRMSNorm models only");
  const PrenormMetadata meta = read_prenorm_metadata(file);
  if constexpr (detail::is_gpt_model<Model>)
    return detail::load_prenorm_model<Model>(file, ModelKind::Gpt, meta.gpt, meta);
  else
    return detail::load_prenorm_model<Model>(file, ModelKind::Vit, meta.vit, meta);
}

// The same from the file at `path`.
template <class Model>
Model load_prenorm(const std::filesystem::path& path) {
  return load_prenorm<Model>(SafetensorsFile(path));
}

// The prenorm-layout file for `model`, not yet written: a writer holding the
// metadata, then every non-empty tensor in visit order, in `dtype`, for
// bytes() or write(path).
template <Arch A, class S>
[[nodiscard]] SafetensorsWriter save_prenorm(const Gpt<A, S>& model, Dtype dtype,
                                             const PrenormSaveOptions& options = {}) {
  static_assert(is_public_arch(A),
                "prenorm::io: the prenorm layout holds PreLN, PreRMSNorm and PreCRMSNorm models only");
  model.validate("save_prenorm");
  SafetensorsWriter writer;
  detail::gpt_metadata(writer, A, model.config, options);
  detail::add_tensors(writer, model, dtype);
  return writer;
}

template <Arch A, class S>
[[nodiscard]] SafetensorsWriter save_prenorm(const Vit<A, S>& model, Dtype dtype,
                                             const PrenormSaveOptions& options = {}) {
  static_assert(is_public_arch(A),
                "prenorm::io: the prenorm layout holds PreLN, PreRMSNorm and PreCRMSNorm models only");
  model.validate("save_prenorm");
  SafetensorsWriter writer;
  const TransformerConfig& c = model.config;
  detail::common_metadata(writer, ModelKind::Vit, A, c, options);
  writer.set_metadata("classes", std::to_string(c.classes));
  writer.set_metadata("image_size", std::to_string(c.image_size));
  writer.set_metadata("patch_size", std::to_string(c.patch_size));
  writer.set_metadata("channels", std::to_string(c.channels));
  if (c.stem_norm) writer.set_metadata("stem_norm", "true");
  if (c.distillation_token) writer.set_metadata("distillation_token", "true");
  if (c.pooling != Pooling::Cls)
    writer.set_metadata("pooling", std::string(pooling_name(c.pooling)));
  detail::add_tensors(writer, model, dtype);
  return writer;
}

// Writes `model` (a Gpt or Vit of any architecture) in prenorm's layout to
// `path`, atomically, every tensor in `dtype`.
template <class Model>
void save_prenorm(const Model& model, const std::filesystem::path& path, Dtype dtype,
                  const PrenormSaveOptions& options = {}) {
  save_prenorm(model, dtype, options).write(path, options.inputs);
}

}  // namespace prenorm::io
