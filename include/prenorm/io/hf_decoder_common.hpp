#pragma once
// Pieces shared by the Hugging Face decoder loaders hf_gpt_neox.hpp,
// hf_opt.hpp, hf_phi.hpp and hf_gptj.hpp: config.json keys (model_type, the
// rotary settings of transformers v4 and v5, refused settings), reading
// nn.Linear tensors, stacking separate q, k, v projections into prenorm's
// fused qkv, ignoring per-layer buffers, and telling a tied head saved twice
// from an untied one.

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../core/types.hpp"
#include "../layers/attention_options.hpp"
#include "../layers/linear.hpp"
#include "error.hpp"
#include "layout_util.hpp"
#include "safetensors.hpp"

namespace prenorm::io::detail {

// json_require_model_type and json_bool are in layout_util.hpp (shared with the
// other family loaders).

// Throws when `key` is present and not null: a setting prenorm does not implement.
inline void json_require_null(const char* op, const nlohmann::json& json,
                              const std::string& source, const char* key, const char* why) {
  const nlohmann::json* value = find_key(json, key);
  if (value != nullptr && !value->is_null())
    fail_with<FormatError>(op, source, ": '", key, "' is ", value->dump(),
                           ", only null is supported (", why, ")");
}

// A number field in (0, maximum]; missing or null: `fallback`.
inline double json_fraction(const char* op, const nlohmann::json& json, const std::string& source,
                            const char* key, double fallback) {
  const double value = json_positive(op, json, source, key, fallback);
  if (value > 1)
    fail_with<FormatError>(op, source, ": '", key, "' is ", value, ", expected a number in (0, 1]");
  return value;
}

// The rotary embedding of a config.json, on int(head_dim * fraction)
// coordinates of each head (HF's rotary_ndims): from transformers v5's
// "rope_parameters" {rope_type, rope_theta, partial_rotary_factor} when
// present, else from the legacy keys `fraction_key` and `base_key`. Rope
// scaling (a non-null "rope_scaling", a rope_type other than "default") is
// refused: prenorm implements the plain rotary embedding only.
inline Rotary json_rotary(const char* op, const nlohmann::json& json, const std::string& source,
                          Index head_dim, RotaryPairing pairing, const char* fraction_key,
                          double fraction_default, const char* base_key) {
  json_require_null(op, json, source, "rope_scaling",
                    "prenorm implements the rotary embedding without scaling");
  double fraction = 0, base = 0;
  std::string where;
  if (const nlohmann::json* r = find_key(json, "rope_parameters"); r && !r->is_null()) {
    if (!r->is_object())
      fail_with<FormatError>(op, source, ": 'rope_parameters' is ", r->dump(),
                             ", expected an object");
    const std::string type = json_string(op, *r, source, "rope_type", std::string("default"));
    if (type != "default")
      fail_with<FormatError>(op, source, ": 'rope_parameters.rope_type' is \"", type,
                             "\", only \"default\" is supported (prenorm implements the rotary "
                             "embedding without scaling)");
    fraction = json_fraction(op, *r, source, "partial_rotary_factor", fraction_default);
    base = json_positive(op, *r, source, "rope_theta", 10000.0);
    where = "rope_parameters.partial_rotary_factor";
  } else {
    fraction = json_fraction(op, json, source, fraction_key, fraction_default);
    base = json_positive(op, json, source, base_key, 10000.0);
    where = fraction_key;
  }
  const auto dims = Index(double(head_dim) * fraction);  // int(head_size * pct), as HF
  if (dims % 2 != 0)
    fail_with<FormatError>(op, source, ": '", where, "' ", fraction, " of head_dim ", head_dim,
                           " rotates ", dims, " coordinates, expected an even number");
  return Rotary{.dims = dims, .pairing = pairing, .base = base};
}

// Whether `name` is <prefix><digits><suffix> for one of `suffixes`: a buffer
// of layer <digits> that older checkpoints save (causal masks, rotary
// inv_freq), which the loaders ignore.
inline bool layer_buffer(std::string_view name, std::string_view prefix,
                         std::initializer_list<std::string_view> suffixes) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  name.remove_prefix(prefix.size());
  std::size_t digits = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits == 0) return false;
  name.remove_prefix(digits);
  for (std::string_view suffix : suffixes)
    if (name == suffix) return true;
  return false;
}

// Whether tensors `a` and `b` hold the same dtype and bytes (a tied head saved twice).
inline bool same_tensor_bytes(const SafetensorsFile& file, const std::string& a,
                              const std::string& b) {
  const auto x = file.raw_bytes(a), y = file.raw_bytes(b);
  return file.info(a).dtype_name == file.info(b).dtype_name && x.size() == y.size() &&
         (x.empty() || std::memcmp(x.data(), y.data(), x.size()) == 0);
}

// nn.Linear `name`.weight (out, in) and, with `bias`, `name`.bias (out); a
// Linear without bias in the file gets a zero one (exact, and every Linear of
// prenorm's layout then has its bias).
template <class S>
Linear<S> hf_linear(const SafetensorsFile& file, const std::string& name, bool bias) {
  Linear<S> linear;
  linear.weight = file.matrix<S>(name + ".weight");
  linear.bias = bias ? file.vector<S>(name + ".bias") : Vector<S>::Zero(linear.weight.rows());
  return linear;
}

// q, k, v projections stacked into prenorm's fused qkv: rows [q | k | v].
template <class S>
Linear<S> stack_qkv(const Linear<S>& q, const Linear<S>& k, const Linear<S>& v) {
  Linear<S> qkv;
  qkv.weight.resize(q.weight.rows() + k.weight.rows() + v.weight.rows(), q.weight.cols());
  qkv.weight << q.weight, k.weight, v.weight;
  qkv.bias.resize(qkv.weight.rows());
  qkv.bias << q.bias, k.bias, v.bias;
  return qkv;
}

// nn.Linear's expected tensors: `name`.weight (out, in) and, with `bias`,
// `name`.bias (out); out_key, in_key name the sizes in messages ("hidden_size").
inline void expect_linear(std::vector<ExpectedTensor>& e, const std::string& name, Index out,
                          Index in, bool bias, const std::string& out_key,
                          const std::string& in_key) {
  e.push_back({name + ".weight", {out, in}, "(nn.Linear (out, in) = (" + out_key + ", " + in_key + "))"});
  if (bias) e.push_back({name + ".bias", {out}, "(" + out_key + ")"});
}

// A LayerNorm's `prefix`weight and `prefix`bias, both (width).
inline void expect_layer_norm(std::vector<ExpectedTensor>& e, const std::string& prefix,
                              Index width, const char* what) {
  e.push_back({prefix + "weight", {width}, what});
  e.push_back({prefix + "bias", {width}, what});
}

// Whether the head is tied to the token table `embed`, from the config's
// tie_word_embeddings (`tied`), as Hugging Face decides it: tied, the head
// tensor `head` may be absent, or present as a copy (it must then hold the
// same bytes: a different one would be silently overwritten by HF's tying);
// untied, it must be present (check_tensors reports it missing).
inline void check_tied_head(const char* op, const SafetensorsFile& file, bool tied,
                            const std::string& head, const std::string& embed) {
  if (tied && file.contains(head) && file.contains(embed) && !same_tensor_bytes(file, head, embed))
    fail_with<FormatError>(op, file.path().string(), ": tensor '", head, "' differs from '", embed,
                           "', but the config's 'tie_word_embeddings' is true (the head is the "
                           "token table)");
}

// The dtype of the weights of `file` (every float tensor but the `ignored`
// buffers): theirs when they share one, else the widest.
inline Dtype weights_dtype(const SafetensorsFile& file,
                           const std::function<bool(std::string_view)>& ignored) {
  std::vector<std::string> names;
  for (const std::string& name : file.names())
    if (!ignored(name)) names.push_back(name);
  return common_dtype(file, names);
}

}  // namespace prenorm::io::detail
