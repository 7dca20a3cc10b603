#pragma once
// Helpers shared by the model layouts (hf_gpt2.hpp, hf_vit.hpp,
// prenorm_layout.hpp): JSON files, finding a Hugging Face file's config.json,
// checking a safetensors file against the list of tensors a layout expects,
// and reading those tensors.
//
// Every check reports FormatError naming the operation, the file and the
// tensors, e.g.
//   "prenorm::hf_gpt2: gpt2.safetensors: missing tensors 'h.1.ln_1.weight',
//    'h.1.ln_1.bias' (2 of 38 expected)"
//   "prenorm::hf_gpt2: gpt2.safetensors: tensor 'h.0.attn.c_attn.weight' has
//    shape [12, 30], expected [12, 36] (Conv1D (in, out) = (n_embd, 3*n_embd))"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/types.hpp"
#include "../layers/topology.hpp"  // require_sequential_hf
#include "../ops/activation.hpp"
#include "atomic_file.hpp"
#include "error.hpp"
#include "json_file.hpp"
#include "safetensors.hpp"

namespace prenorm::io {

// The config.json of the Hugging Face file `model` (in `layout`): `config`
// when given, else config.json in the file's folder. Throws FileError naming
// the path it looked for when there is none; `option` names the way to pass
// one (the argument or the command-line option) in the message.
inline std::filesystem::path hf_config_path(const char* op, const std::filesystem::path& model,
                                            const std::optional<std::filesystem::path>& config,
                                            std::string_view layout, std::string_view option) {
  if (config) return *config;
  const std::filesystem::path beside =
      (model.has_parent_path() ? model.parent_path() : std::filesystem::path(".")) / "config.json";
  std::error_code error;
  if (!std::filesystem::is_regular_file(beside, error))
    detail::fail_with<FileError>(op, model.string(), ": a ", layout,
                                 " file needs its config.json: none at '", beside.string(),
                                 "' (pass one with ", option, ")");
  return beside;
}

// One tensor a layout expects: its name in the file and its shape.
struct ExpectedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string what;  // what the shape means, for messages: "(vocab_size, n_embd)"
};

namespace detail {

// "'a', 'b', 'c' (and 7 more)": at most `shown` names.
inline std::string quote_names(const std::vector<std::string>& names, std::size_t shown = 8) {
  std::string text;
  for (std::size_t i = 0; i < names.size() && i < shown; ++i) {
    if (i > 0) text += ", ";
    text += "'" + names[i] + "'";
  }
  if (names.size() > shown) text += " (and " + std::to_string(names.size() - shown) + " more)";
  return text;
}

// Checks `file` against `expected` (every tensor present, with its shape and
// a float dtype) and that every other tensor of the file is `ignored` (a
// buffer the layout does not use). Reports, in this order, the missing
// tensors, the unknown ones, then the first wrong shape or dtype.
inline void check_tensors(const char* op, const SafetensorsFile& file,
                          const std::vector<ExpectedTensor>& expected,
                          const std::function<bool(std::string_view)>& ignored,
                          std::string_view hint = {}) {
  const std::string path = file.path().string();
  std::vector<std::string> missing;
  std::unordered_set<std::string> known;
  for (const ExpectedTensor& tensor : expected) {
    known.insert(tensor.name);
    if (!file.contains(tensor.name)) missing.push_back(tensor.name);
  }
  if (!missing.empty())
    fail_with<FormatError>(op, path, ": missing ", missing.size() == 1 ? "tensor " : "tensors ",
                           quote_names(missing), " (", missing.size(), " of ", expected.size(),
                           " expected)", hint.empty() ? "" : "; ", hint);
  std::vector<std::string> unknown;
  for (const std::string& name : file.names())
    if (known.count(name) == 0 && !(ignored && ignored(name))) unknown.push_back(name);
  if (!unknown.empty())
    fail_with<FormatError>(op, path, ": unknown ", unknown.size() == 1 ? "tensor " : "tensors ",
                           quote_names(unknown), " (not part of the layout)",
                           hint.empty() ? "" : "; ", hint);
  for (const ExpectedTensor& tensor : expected) {
    const TensorInfo& info = file.info(tensor.name);
    if (info.shape != tensor.shape)
      fail_with<FormatError>(op, path, ": tensor '", tensor.name, "' has shape ",
                             format_shape(info.shape), ", expected ", format_shape(tensor.shape),
                             tensor.what.empty() ? "" : " ", tensor.what);
    if (!info.dtype)
      fail_with<FormatError>(op, path, ": tensor '", tensor.name, "' has dtype ", info.dtype_name,
                             ", expected one of ", kSupportedDtypes);
  }
}

// The dtype of the tensors `names` of `file` (those present and readable):
// theirs when they share one, otherwise the widest (F16 with BF16 gives F32).
inline Dtype common_dtype(const SafetensorsFile& file, const std::vector<std::string>& names) {
  std::optional<Dtype> common;
  bool mixed = false;
  int widest = 0;
  for (const std::string& name : names) {
    if (!file.contains(name) || !file.info(name).dtype) continue;
    const Dtype dtype = *file.info(name).dtype;
    if (common && *common != dtype) mixed = true;
    if (!common) common = dtype;
    const int rank = dtype == Dtype::F64 ? 3 : dtype == Dtype::F32 ? 2 : 1;
    widest = std::max(widest, rank);
  }
  if (!common) return Dtype::F32;
  if (!mixed) return *common;
  return widest == 3 ? Dtype::F64 : Dtype::F32;
}

inline std::vector<std::string> names_of(const std::vector<ExpectedTensor>& expected) {
  std::vector<std::string> names;
  names.reserve(expected.size());
  for (const ExpectedTensor& tensor : expected) names.push_back(tensor.name);
  return names;
}

// Tensor `name` of any rank, its values in C order viewed as (rows, cols).
// The shape was checked by check_tensors.
template <class S>
RowMatrix<S> read_as_matrix(const SafetensorsFile& file, const std::string& name, Index rows,
                            Index cols) {
  const std::vector<S> values = file.values<S>(name);
  RowMatrix<S> result(rows, cols);
  if (!values.empty()) std::copy(values.begin(), values.end(), result.data());
  return result;
}

template <class S>
Vector<S> read_as_vector(const SafetensorsFile& file, const std::string& name) {
  const std::vector<S> values = file.values<S>(name);
  Vector<S> result(Index(values.size()));
  if (!values.empty()) std::copy(values.begin(), values.end(), result.data());
  return result;
}

// --- config.json fields ---------------------------------------------------

// The JSON value of `key`, or nullptr when absent.
inline const nlohmann::json* find_key(const nlohmann::json& json, const char* key) {
  const auto found = json.find(key);
  return found == json.end() ? nullptr : &*found;
}

// An integer field >= minimum. Missing: `fallback`, or an error when none.
inline Index json_integer(const char* op, const nlohmann::json& json, const std::string& source,
                          const char* key, Index minimum, std::optional<Index> fallback = {}) {
  const nlohmann::json* value = find_key(json, key);
  if (value == nullptr || value->is_null()) {
    if (fallback) return *fallback;
    fail_with<FormatError>(op, source, ": missing '", key, "'");
  }
  if (!value->is_number_integer())
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(),
                           ", expected an integer >= ", minimum);
  const auto number = value->get<std::int64_t>();
  if (number < minimum || (value->is_number_unsigned() && value->get<std::uint64_t>() >
                                                              std::uint64_t(INT64_MAX)))
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(),
                           ", expected an integer >= ", minimum);
  return Index(number);
}

inline double json_positive(const char* op, const nlohmann::json& json, const std::string& source,
                            const char* key, std::optional<double> fallback = {}) {
  const nlohmann::json* value = find_key(json, key);
  if (value == nullptr || value->is_null()) {
    if (fallback) return *fallback;
    fail_with<FormatError>(op, source, ": missing '", key, "'");
  }
  if (!value->is_number() || !(value->get<double>() > 0) ||
      !std::isfinite(value->get<double>()))
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(),
                           ", expected a finite number > 0");
  return value->get<double>();
}

inline std::string json_string(const char* op, const nlohmann::json& json,
                               const std::string& source, const char* key,
                               std::optional<std::string> fallback = {}) {
  const nlohmann::json* value = find_key(json, key);
  if (value == nullptr || value->is_null()) {
    if (fallback) return *fallback;
    fail_with<FormatError>(op, source, ": missing '", key, "'");
  }
  if (!value->is_string())
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(), ", expected a string");
  return value->get<std::string>();
}

// A Hugging Face activation name (ACT2FN's key: GPT-2's activation_function,
// ViT's hidden_act) as prenorm's Activation; fallback when the key is absent.
inline Activation json_hf_activation(const char* op, const nlohmann::json& json,
                                     const std::string& source, const char* key,
                                     const char* fallback) {
  const std::string name = json_string(op, json, source, key, std::string(fallback));
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::GeluTanh;
  if (name == "gelu" || name == "gelu_python") return Activation::GeluErf;
  if (name == "relu") return Activation::Relu;
  if (name == "quick_gelu") return Activation::QuickGelu;
  fail_with<FormatError>(op, source, ": '", key, "' is \"", name,
                         "\", which prenorm does not implement (supported: \"gelu_new\", "
                         "\"gelu_pytorch_tanh\" (tanh approximation), \"gelu\", "
                         "\"gelu_python\" (exact), \"relu\", \"quick_gelu\")");
}

// The Hugging Face name of an activation, for a config.json. Throws for
// BLOOM's GELU, which ACT2FN does not have (BLOOM hard-codes it).
inline const char* hf_activation_name(Activation activation) {
  switch (activation) {
    case Activation::GeluTanhBloom:
      prenorm::detail::fail("hf_activation_name", "the activation gelu_tanh_bloom (BLOOM's GELU) "
                            "has no Hugging Face activation name");
    case Activation::GeluTanh: return "gelu_new";
    case Activation::GeluErf: return "gelu";
    case Activation::Relu: return "relu";
    case Activation::QuickGelu: return "quick_gelu";
  }
  return "unknown";
}

// Throws unless the blocks are Sequential: the Hugging Face GPT-2 and ViT
// layouts have no parallel residual.
template <class Config>
void require_sequential_hf(const char* op, const Config& config, const char* layout) {
  if (config.topology != BlockTopology::Sequential)
    prenorm::detail::fail(op, "the model's blocks are ", topology_name(config.topology), ", but ",
                          layout, " has sequential blocks only");
}

// A boolean field that, when present, must equal `required` (a feature the
// layout does not support otherwise).
inline void json_require_bool(const char* op, const nlohmann::json& json,
                              const std::string& source, const char* key, bool required,
                              const char* why) {
  const nlohmann::json* value = find_key(json, key);
  if (value == nullptr || value->is_null()) return;
  if (!value->is_boolean())
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(), ", expected a boolean");
  if (value->get<bool>() != required)
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(),
                           ", only ", required ? "true" : "false", " is supported (", why, ")");
}

// --- the decoder families' loaders (hf_gpt_bigcode, hf_gpt_neo, hf_bloom) ---

// A boolean field; `fallback` when absent or null.
inline bool json_bool(const char* op, const nlohmann::json& json, const std::string& source,
                      const char* key, bool fallback) {
  const nlohmann::json* value = find_key(json, key);
  if (value == nullptr || value->is_null()) return fallback;
  if (!value->is_boolean())
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(), ", expected a boolean");
  return value->get<bool>();
}

// What a family loader's path overload does: opens the safetensors file at
// `path`, reads its config.json (`config`, or config.json beside the file)
// and returns load(file, json, config path) (`layout` names it in messages).
template <class Load>
auto load_with_hf_config(const char* layout, const std::filesystem::path& path,
                         const std::optional<std::filesystem::path>& config, Load&& load) {
  const SafetensorsFile file(path);
  const std::filesystem::path config_path =
      hf_config_path(layout, path, config, layout, "the config argument");
  return load(file, read_json_file(config_path), config_path.string());
}

// Whether `name` is <prefix>h.<digits><suffix> for one of `suffixes` (a
// per-layer buffer such as GPT-2's h.{i}.attn.bias).
inline bool is_layer_tensor(std::string_view name, std::string_view prefix,
                            std::initializer_list<std::string_view> suffixes) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  name.remove_prefix(prefix.size());
  if (name.substr(0, 2) != "h.") return false;
  name.remove_prefix(2);
  std::size_t digits = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits == 0) return false;
  name.remove_prefix(digits);
  return std::find(suffixes.begin(), suffixes.end(), name) != suffixes.end();
}

// Throws unless the object `json` has no model_type or has `expected`.
inline void json_require_model_type(const char* op, const nlohmann::json& json,
                                    const std::string& source, const char* expected) {
  if (!json.is_object())
    fail_with<FormatError>(op, source, ": expected a JSON object, found ", json.type_name());
  if (const nlohmann::json* type = find_key(json, "model_type"))
    if (!type->is_string() || type->get<std::string>() != expected)
      fail_with<FormatError>(op, source, ": 'model_type' is ", type->dump(), ", expected \"",
                             expected, "\"");
}

// `prefix` ("transformer.") when the file names its tensors with it (as the
// ...ForCausalLM classes save them), "" when bare (the base model class);
// `probe` is a tensor every file of the layout has. Throws if both appear.
inline std::string hf_tensor_prefix(const char* op, const SafetensorsFile& file,
                                    const std::string& probe, const std::string& prefix) {
  const bool bare = file.contains(probe), prefixed = file.contains(prefix + probe);
  if (bare && prefixed)
    fail_with<FormatError>(op, file.path().string(), ": has both '", probe, "' and '", prefix,
                           probe, "'; use one naming for the whole file");
  return prefixed ? prefix : "";
}

// The rows of a fused query-key-value projection laid out per head,
// [q_0, k_0, v_0, q_1, ...] with blocks of head_dim rows (view(heads, 3,
// head_dim): GPT-BigCode without multi_query, BLOOM), in prenorm's order
// [q_0 .. q_H-1 | k_0 .. | v_0 .. ]. W: a (3 H hd, in) weight or a (3 H hd) bias.
template <class M>
M qkv_rows_from_per_head(const M& w, Index heads, Index head_dim) {
  M result(w.rows(), w.cols());
  for (Index h = 0; h < heads; ++h)
    for (Index part = 0; part < 3; ++part)  // q, k, v
      result.middleRows((part * heads + h) * head_dim, head_dim) =
          w.middleRows((3 * h + part) * head_dim, head_dim);
  return result;
}

// Rethrows a config's validate() error as a FormatError naming `source`.
template <class Config>
void validate_config(const char* op, const Config& config, const std::string& source) {
  try {
    config.validate(op);
  } catch (const Error& error) {
    fail_with<FormatError>(op, source, ": ", error.what());
  }
}

}  // namespace detail
}  // namespace prenorm::io
