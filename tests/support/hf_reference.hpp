// Reference logits of the Hugging Face decoder families of issue 19 (and
// GPT-2), computed from a checkpoint's config.json and tensors with explicit
// loops in long double, following the Hugging Face modeling code line by line.
// Nothing here uses prenorm's models, layers or ops: only the tensors (as
// read by hf_fixtures.hpp's read_tensors / a Fixture) and the config.
//
// Families and functions, each (config, tensors, tokens) or (Fixture, tokens)
// -> Mat logits [T x vocab] for the token ids `tokens` at positions 0..T-1
// (one sequence, no padding, no cache):
//   gpt2         reference_logits_gpt2         GPT2LMHeadModel
//   gpt_neox     reference_logits_gpt_neox     GPTNeoXForCausalLM
//   opt          reference_logits_opt          OPTForCausalLM (pre- and post-LN)
//   phi          reference_logits_phi          PhiForCausalLM
//   gptj         reference_logits_gptj         GPTJForCausalLM
//   gpt_neo      reference_logits_gpt_neo      GPTNeoForCausalLM
//   gpt_bigcode  reference_logits_gpt_bigcode  GPTBigCodeForCausalLM
//   bloom        reference_logits_bloom        BloomForCausalLM
//   any of them  reference_logits              (dispatches on model_type)
// and the image encoders, (config, tensors, image [C x H x W]) -> Mat [1 x outputs]
// (the output the Hugging Face class returns):
//   clip_vision_model, clip  reference_outputs_clip_vision  image embeds / pooler_output
//   dinov2                   reference_outputs_dinov2       logits / pooler_output
//   deit                     reference_outputs_deit         logits (with or without teacher)
//   any of them              reference_outputs(Fixture, image), and
//                            reference_outputs(Fixture, pixels, images) for a batch
// Settings these families have that the reference does not implement (rope
// scaling, Phi's qk_layernorm, cross attention, ...) throw
// std::invalid_argument naming the key.
//
// Building blocks, usable on their own: layer_norm, linear (nn.Linear, W (out,
// in)), conv1d (GPT-2's Conv1D, W (in, out)), activation (by ACT2FN name, and
// BLOOM's own bloom_gelu), rope_rotate_half (GPT-NeoX / Phi), rope_every_two
// (GPT-J), alibi_slopes (build_alibi_tensor) and causal_attention
// (scaling, GPT-Neo's window, ALiBi, grouped / multi-query kv heads).
//
// Numerics worth knowing when comparing with a runtime:
//  - BLOOM's GELU uses the constant 0.79788456, not sqrt(2/pi)
//    (= 0.7978845608028654): a runtime with the exact constant differs by
//    about 1e-10 relative, above a 1e-12 double tolerance.
//  - HF computes the ALiBi slopes in float32; they are powers of two (exact)
//    for fewer than 16 heads, which is what the fixtures use.
//  - HF builds rotary cos / sin in float32; here they are long double.

#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "hf_fixtures.hpp"

namespace prenorm_test::hf {

using LD = long double;
using Vec = std::vector<LD>;

// A row-major matrix of long double (rows = tokens).
struct Mat {
  int rows = 0;
  int cols = 0;
  Vec v;
  Mat() = default;
  Mat(int r, int c) : rows(r), cols(c), v(std::size_t(r) * std::size_t(c), 0.0L) {}
  LD& operator()(int r, int c) { return v[std::size_t(r) * std::size_t(cols) + std::size_t(c)]; }
  LD operator()(int r, int c) const {
    return v[std::size_t(r) * std::size_t(cols) + std::size_t(c)];
  }
};

// ||a - b|| / ||b|| (Frobenius), infinity on a shape mismatch.
inline double relative_error(const Mat& a, const Mat& b) {
  if (a.rows != b.rows || a.cols != b.cols) return INFINITY;
  LD diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.v.size(); ++i) {
    diff += (a.v[i] - b.v[i]) * (a.v[i] - b.v[i]);
    norm += b.v[i] * b.v[i];
  }
  return double(std::sqrt(diff / norm));
}

// The same against any matrix with (row, col) access (e.g. an Eigen matrix).
template <class M>
double relative_error_to(const M& actual, const Mat& reference) {
  if (int(actual.rows()) != reference.rows || int(actual.cols()) != reference.cols)
    return INFINITY;
  LD diff = 0, norm = 0;
  for (int r = 0; r < reference.rows; ++r)
    for (int c = 0; c < reference.cols; ++c) {
      const LD e = reference(r, c), a = LD(actual(r, c));
      diff += (a - e) * (a - e);
      norm += e * e;
    }
  return double(std::sqrt(diff / norm));
}

namespace detail {

[[noreturn]] inline void refuse(const std::string& what) {
  throw std::invalid_argument("hf_reference: " + what);
}

// config[key] when present and not null, else `fallback` (the config class default).
template <class T>
T config_value(const nlohmann::json& config, const std::string& key, T fallback) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  return it->get<T>();
}
template <class T>
T config_required(const nlohmann::json& config, const std::string& key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) refuse("config.json has no '" + key + "'");
  return it->get<T>();
}

// Read access to a checkpoint's tensors by name.
class Weights {
 public:
  explicit Weights(const HfTensors& tensors) : tensors_(tensors) {}
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const HfTensor& at(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) refuse("no tensor '" + name + "'");
    return it->second;
  }
  Mat matrix(const std::string& name) const {
    const HfTensor& t = at(name);
    if (t.shape.size() != 2) refuse("tensor '" + name + "' is not a matrix");
    Mat m(int(t.shape[0]), int(t.shape[1]));
    for (std::size_t i = 0; i < m.v.size(); ++i) m.v[i] = t.values[i];
    return m;
  }
  Vec vector(const std::string& name) const {
    const HfTensor& t = at(name);
    if (t.shape.size() != 1) refuse("tensor '" + name + "' is not a vector");
    return Vec(t.values.begin(), t.values.end());
  }
  // The first of `prefixes` under which `name` exists.
  std::string prefix_of(const std::string& name, std::initializer_list<const char*> prefixes) const {
    for (const char* p : prefixes)
      if (has(p + name)) return p;
    refuse("no tensor '" + name + "' under any known prefix");
  }

 private:
  const HfTensors& tensors_;
};

}  // namespace detail

// ===========================================================================
// Building blocks
// ===========================================================================

// table[tokens[t] ] for each t, with HF's index offset (OPT's positions: 2).
inline Mat embedding(const Mat& table, std::span<const int> ids, int offset = 0) {
  Mat x(int(ids.size()), table.cols);
  for (int t = 0; t < x.rows; ++t) {
    const int row = ids[std::size_t(t)] + offset;
    if (row < 0 || row >= table.rows) detail::refuse("embedding index out of range");
    for (int c = 0; c < x.cols; ++c) x(t, c) = table(row, c);
  }
  return x;
}

// Row positions 0..T-1 (position_ids = arange(T)).
inline std::vector<int> positions(int count) {
  std::vector<int> p(static_cast<std::size_t>(count));
  for (int t = 0; t < count; ++t) p[std::size_t(t)] = t;
  return p;
}

// nn.LayerNorm: (x - mean) / sqrt(var + eps) * gamma + beta, biased variance.
inline Mat layer_norm(const Mat& x, const Vec& gamma, const Vec& beta, LD eps) {
  Mat y(x.rows, x.cols);
  for (int t = 0; t < x.rows; ++t) {
    LD mean = 0;
    for (int c = 0; c < x.cols; ++c) mean += x(t, c);
    mean /= x.cols;
    LD var = 0;
    for (int c = 0; c < x.cols; ++c) var += (x(t, c) - mean) * (x(t, c) - mean);
    var /= x.cols;
    const LD inv = 1.0L / std::sqrt(var + eps);
    for (int c = 0; c < x.cols; ++c) y(t, c) = (x(t, c) - mean) * inv * gamma[std::size_t(c)] + beta[std::size_t(c)];
  }
  return y;
}

// nn.Linear: x W^T + b, W (out, in); `bias` may be null.
inline Mat linear(const Mat& x, const Mat& w, const Vec* bias) {
  if (w.cols != x.cols) detail::refuse("linear: weight (out, in) does not match the input width");
  Mat y(x.rows, w.rows);
  for (int t = 0; t < x.rows; ++t)
    for (int o = 0; o < w.rows; ++o) {
      LD s = bias ? (*bias)[std::size_t(o)] : 0.0L;
      for (int i = 0; i < x.cols; ++i) s += x(t, i) * w(o, i);
      y(t, o) = s;
    }
  return y;
}

// GPT-2's Conv1D: x W + b, W (in, out).
inline Mat conv1d(const Mat& x, const Mat& w, const Vec& bias) {
  if (w.rows != x.cols) detail::refuse("conv1d: weight (in, out) does not match the input width");
  Mat y(x.rows, w.cols);
  for (int t = 0; t < x.rows; ++t)
    for (int o = 0; o < w.cols; ++o) {
      LD s = bias[std::size_t(o)];
      for (int i = 0; i < x.cols; ++i) s += x(t, i) * w(i, o);
      y(t, o) = s;
    }
  return y;
}

inline Mat add(const Mat& a, const Mat& b) {
  Mat y = a;
  for (std::size_t i = 0; i < y.v.size(); ++i) y.v[i] += b.v[i];
  return y;
}

// Columns [begin, begin + count) of x.
inline Mat columns(const Mat& x, int begin, int count) {
  Mat y(x.rows, count);
  for (int t = 0; t < x.rows; ++t)
    for (int c = 0; c < count; ++c) y(t, c) = x(t, begin + c);
  return y;
}

// ACT2FN[name] (activations.py), and "bloom_gelu" (modeling_bloom.bloom_gelu_forward).
inline LD activation(const std::string& name, LD x) {
  constexpr LD kPi = 3.141592653589793238462643383279502884L;
  if (name == "gelu" || name == "gelu_python")  // GELUActivation: exact, erf
    return 0.5L * x * (1.0L + std::erf(x / std::sqrt(2.0L)));
  if (name == "gelu_new" || name == "gelu_pytorch_tanh")  // tanh approximation, sqrt(2 / pi)
    return 0.5L * x * (1.0L + std::tanh(std::sqrt(2.0L / kPi) * (x + 0.044715L * x * x * x)));
  if (name == "bloom_gelu")  // x * 0.5 * (1 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    return x * 0.5L * (1.0L + std::tanh(0.79788456L * x * (1.0L + 0.044715L * x * x)));
  if (name == "relu") return x > 0 ? x : 0.0L;
  if (name == "quick_gelu") return x / (1.0L + std::exp(-1.702L * x));
  detail::refuse("activation '" + name + "' is not implemented");
}

inline Mat activation(const std::string& name, Mat x) {
  for (LD& value : x.v) value = activation(name, value);
  return x;
}

// --- rotary ----------------------------------------------------------------------

// inv_freq = 1 / base ** (arange(0, dim, 2) / dim): dim / 2 frequencies.
inline Vec rope_inv_freq(int dim, LD base) {
  Vec f(static_cast<std::size_t>(dim / 2));
  for (int i = 0; i < dim / 2; ++i) f[std::size_t(i)] = 1.0L / std::pow(base, LD(2 * i) / LD(dim));
  return f;
}

// GPT-NeoX / Phi / Llama: on the first `ndims` features of each row t
// (position pos[t]), x_rot * cos + rotate_half(x_rot) * sin, with
// emb = cat(freqs, freqs) and rotate_half(x) = cat(-x2, x1); the rest passes.
inline void rope_rotate_half(Mat& x, int ndims, LD base, std::span<const int> pos) {
  if (ndims == 0) return;
  const Vec inv_freq = rope_inv_freq(ndims, base);
  const int half = ndims / 2;
  for (int t = 0; t < x.rows; ++t) {
    const auto n = static_cast<std::size_t>(ndims);
    Vec cos(n), sin(n), rotated(n);
    for (int i = 0; i < ndims; ++i) {
      const LD angle = LD(pos[std::size_t(t)]) * inv_freq[std::size_t(i % half)];  // cat(freqs, freqs)
      cos[std::size_t(i)] = std::cos(angle);
      sin[std::size_t(i)] = std::sin(angle);
      rotated[std::size_t(i)] = i < half ? -x(t, i + half) : x(t, i - half);  // cat(-x2, x1)
    }
    for (int i = 0; i < ndims; ++i)
      x(t, i) = x(t, i) * cos[std::size_t(i)] + rotated[std::size_t(i)] * sin[std::size_t(i)];
  }
}

// GPT-J: create_sinusoidal_positions (base 10000) gives sin, cos of
// pos * inv_freq; apply_rotary_pos_emb repeat_interleaves them by 2 and
// computes x * cos + rotate_every_two(x) * sin on the first `rotary_dim`
// features, rotate_every_two(x) = (-x1, x0, -x3, x2, ...).
inline void rope_every_two(Mat& x, int rotary_dim, std::span<const int> pos, LD base = 10000.0L) {
  const Vec inv_freq = rope_inv_freq(rotary_dim, base);
  for (int t = 0; t < x.rows; ++t) {
    Vec out(static_cast<std::size_t>(rotary_dim));
    for (int i = 0; i < rotary_dim; ++i) {
      const LD angle = LD(pos[std::size_t(t)]) * inv_freq[std::size_t(i / 2)];  // repeat_interleave
      const LD rotated = i % 2 == 0 ? -x(t, i + 1) : x(t, i - 1);
      out[std::size_t(i)] = x(t, i) * std::cos(angle) + rotated * std::sin(angle);
    }
    for (int i = 0; i < rotary_dim; ++i) x(t, i) = out[std::size_t(i)];
  }
}

// --- ALiBi ----------------------------------------------------------------------

// modeling_bloom.build_alibi_tensor's slopes: with p the largest power of two
// <= heads, base = 2^(-(2^-(log2 p - 3))), slopes base^1..base^p; for the
// heads - p others, extra_base = 2^(-(2^-(log2 2p - 3))) to the odd powers
// 1, 3, 5, ...
inline Vec alibi_slopes(int heads) {
  const int p = 1 << int(std::floor(std::log2(double(heads))));
  const LD base = std::pow(2.0L, -std::pow(2.0L, -(std::log2(LD(p)) - 3.0L)));
  Vec slopes;
  for (int i = 1; i <= p; ++i) slopes.push_back(std::pow(base, LD(i)));
  if (p != heads) {
    const LD extra_base = std::pow(2.0L, -std::pow(2.0L, -(std::log2(LD(2 * p)) - 3.0L)));
    const int remaining = std::min(p, heads - p);
    for (int i = 1; i < 1 + 2 * remaining; i += 2) slopes.push_back(std::pow(extra_base, LD(i)));
  }
  return slopes;
}

// --- attention ------------------------------------------------------------------

struct AttentionSpec {
  LD scale = 1.0L;    // scores = (q . k) * scale / divisor (+ alibi)
  LD divisor = 1.0L;  // GPT-J divides by sqrt(head_dim) after masking
  int window = 0;     // GPT-Neo local: key j visible from i when i - j < window; 0 = all
  Vec alibi = {};     // per query head: + slope * j (build_alibi_tensor: slope * key position)
  bool causal = true; // false: every key visible (the image encoders)
};

// Causal (or, with spec.causal false, bidirectional) softmax attention of query heads q[h] (T x hd) over kv heads k, v;
// query head h reads kv head h / (heads / kv_heads) (repeat_kv). Masked scores
// are left out of the softmax (HF's finfo.min gives them weight exactly 0).
// Returns the heads merged: T x (heads * hd), head h at columns h * hd.
inline Mat causal_attention(const std::vector<Mat>& q, const std::vector<Mat>& k,
                            const std::vector<Mat>& v, const AttentionSpec& spec) {
  const int heads = int(q.size()), kv_heads = int(k.size());
  if (kv_heads == 0 || heads % kv_heads != 0 || v.size() != k.size())
    detail::refuse("causal_attention: the query heads are not a multiple of the kv heads");
  const int T = q[0].rows, hd = q[0].cols, group = heads / kv_heads;
  Mat out(T, heads * hd);
  for (int h = 0; h < heads; ++h) {
    const Mat& kh = k[std::size_t(h / group)];
    const Mat& vh = v[std::size_t(h / group)];
    for (int i = 0; i < T; ++i) {
      const int first = spec.window > 0 ? std::max(0, i - spec.window + 1) : 0;
      const int last = spec.causal ? i : T - 1;
      Vec score(static_cast<std::size_t>(last + 1), 0.0L);
      LD max = -INFINITY;
      for (int j = first; j <= last; ++j) {
        LD s = 0;
        for (int c = 0; c < hd; ++c) s += q[std::size_t(h)](i, c) * kh(j, c);
        s = s * spec.scale / spec.divisor;
        if (!spec.alibi.empty()) s += spec.alibi[std::size_t(h)] * LD(j);
        score[std::size_t(j)] = s;
        max = std::max(max, s);
      }
      LD sum = 0;
      for (int j = first; j <= last; ++j) sum += (score[std::size_t(j)] = std::exp(score[std::size_t(j)] - max));
      for (int c = 0; c < hd; ++c) {
        LD acc = 0;
        for (int j = first; j <= last; ++j) acc += score[std::size_t(j)] / sum * vh(j, c);
        out(i, h * hd + c) = acc;
      }
    }
  }
  return out;
}

// Heads of x: head h = columns [offset + h * stride, + hd).
inline std::vector<Mat> split_heads(const Mat& x, int heads, int hd, int stride, int offset) {
  std::vector<Mat> result;
  for (int h = 0; h < heads; ++h) result.push_back(columns(x, offset + h * stride, hd));
  return result;
}

// The logits of the final hidden states: h W^T (+ b), W (vocab, d).
inline Mat head(const Mat& h, const Mat& w, const Vec* bias = nullptr) { return linear(h, w, bias); }

// ===========================================================================
// The families
// ===========================================================================

// modeling_gpt2.py: GPT2LMHeadModel (GPT2Block, GPT2Attention, GPT2MLP).
// Conv1D weights (in, out); c_attn columns [q | k | v]; head tied to wte
// unless tie_word_embeddings is false.
inline Mat reference_logits_gpt2(const nlohmann::json& c, const HfTensors& tensors,
                                 std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = w.prefix_of("wte.weight", {"transformer.", ""});
  const int d = config_required<int>(c, "n_embd"), heads = config_required<int>(c, "n_head");
  const int layers = config_required<int>(c, "n_layer"), hd = d / heads;
  const LD eps = config_value<double>(c, "layer_norm_epsilon", 1e-5);
  const std::string act = config_value<std::string>(c, "activation_function", "gelu_new");
  if (config_value<bool>(c, "add_cross_attention", false)) refuse("add_cross_attention");
  const bool scale = config_value<bool>(c, "scale_attn_weights", true);
  const bool by_layer = config_value<bool>(c, "scale_attn_by_inverse_layer_idx", false);
  const std::vector<int> pos = positions(int(tokens.size()));

  Mat h = add(embedding(w.matrix(p + "wte.weight"), tokens),
              embedding(w.matrix(p + "wpe.weight"), pos));
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "h." + std::to_string(i) + ".";
    // GPT2Block: residual + attn(ln_1(h)); residual + mlp(ln_2(h))
    const Mat a = layer_norm(h, w.vector(l + "ln_1.weight"), w.vector(l + "ln_1.bias"), eps);
    const Mat qkv = conv1d(a, w.matrix(l + "attn.c_attn.weight"), w.vector(l + "attn.c_attn.bias"));
    AttentionSpec spec;
    if (scale) spec.divisor = std::sqrt(LD(hd));  // attn_weights / value.size(-1) ** 0.5
    if (by_layer) spec.divisor *= LD(i + 1);
    const Mat attn = causal_attention(split_heads(qkv, heads, hd, hd, 0),
                                      split_heads(qkv, heads, hd, hd, d),
                                      split_heads(qkv, heads, hd, hd, 2 * d), spec);
    h = add(h, conv1d(attn, w.matrix(l + "attn.c_proj.weight"), w.vector(l + "attn.c_proj.bias")));
    const Mat m = layer_norm(h, w.vector(l + "ln_2.weight"), w.vector(l + "ln_2.bias"), eps);
    const Mat f = activation(act, conv1d(m, w.matrix(l + "mlp.c_fc.weight"), w.vector(l + "mlp.c_fc.bias")));
    h = add(h, conv1d(f, w.matrix(l + "mlp.c_proj.weight"), w.vector(l + "mlp.c_proj.bias")));
  }
  h = layer_norm(h, w.vector(p + "ln_f.weight"), w.vector(p + "ln_f.bias"), eps);
  const bool tied = config_value<bool>(c, "tie_word_embeddings", true);
  return head(h, w.matrix(tied ? p + "wte.weight" : "lm_head.weight"));
}

namespace detail {

// The rotary settings of a config: (fraction, base) from transformers v5's
// "rope_parameters" when present, else from the legacy keys. rope_scaling
// (or a rope_type other than "default") is not implemented.
inline std::pair<double, double> rope_settings(const nlohmann::json& c, const char* fraction_key,
                                               double fraction_default, const char* base_key) {
  if (c.contains("rope_scaling") && !c.at("rope_scaling").is_null()) refuse("rope_scaling");
  if (c.contains("rope_parameters") && !c.at("rope_parameters").is_null()) {
    const nlohmann::json& r = c.at("rope_parameters");
    if (config_value<std::string>(r, "rope_type", "default") != "default")
      refuse("rope_parameters.rope_type other than \"default\"");
    return {config_value<double>(r, "partial_rotary_factor", fraction_default),
            config_value<double>(r, "rope_theta", 10000.0)};
  }
  return {config_value<double>(c, fraction_key, fraction_default),
          config_value<double>(c, base_key, 10000.0)};
}

}  // namespace detail

// modeling_gpt_neox.py: GPTNeoXForCausalLM (GPTNeoXLayer, GPTNeoXAttention,
// GPTNeoXRotaryEmbedding, apply_rotary_pos_emb, GPTNeoXMLP).
// query_key_value rows per head [q, k, v] (view(heads, 3 * head_size));
// rotary (rotate_half) on rotary_ndims = int(head_size * rotary_pct);
// parallel: h + attn(ln1 h) + mlp(ln2 h); else a = h + attn(ln1 h), a + mlp(ln2 a).
inline Mat reference_logits_gpt_neox(const nlohmann::json& c, const HfTensors& tensors,
                                     std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = "gpt_neox.";
  const int d = config_required<int>(c, "hidden_size");
  const int heads = config_required<int>(c, "num_attention_heads");
  const int layers = config_required<int>(c, "num_hidden_layers"), hd = d / heads;
  const LD eps = config_value<double>(c, "layer_norm_eps", 1e-5);
  const std::string act = config_value<std::string>(c, "hidden_act", "gelu");
  const bool parallel = config_value<bool>(c, "use_parallel_residual", true);
  const bool bias = config_value<bool>(c, "attention_bias", true);
  const auto [pct, base] = rope_settings(c, "rotary_pct", 0.25, "rotary_emb_base");
  const int rotary_ndims = int(double(hd) * pct);
  const std::vector<int> pos = positions(int(tokens.size()));

  Mat h = embedding(w.matrix(p + "embed_in.weight"), tokens);
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    const Mat x = layer_norm(h, w.vector(l + "input_layernorm.weight"),
                             w.vector(l + "input_layernorm.bias"), eps);
    Vec qkv_bias, dense_bias;
    if (bias) {
      qkv_bias = w.vector(l + "attention.query_key_value.bias");
      dense_bias = w.vector(l + "attention.dense.bias");
    }
    const Mat qkv = linear(x, w.matrix(l + "attention.query_key_value.weight"), bias ? &qkv_bias : nullptr);
    std::vector<Mat> q = split_heads(qkv, heads, hd, 3 * hd, 0);
    std::vector<Mat> k = split_heads(qkv, heads, hd, 3 * hd, hd);
    const std::vector<Mat> v = split_heads(qkv, heads, hd, 3 * hd, 2 * hd);
    for (int j = 0; j < heads; ++j) {
      rope_rotate_half(q[std::size_t(j)], rotary_ndims, base, pos);
      rope_rotate_half(k[std::size_t(j)], rotary_ndims, base, pos);
    }
    const Mat attn = linear(causal_attention(q, k, v, {.scale = 1.0L / std::sqrt(LD(hd))}),
                            w.matrix(l + "attention.dense.weight"), bias ? &dense_bias : nullptr);
    const Vec b1 = w.vector(l + "mlp.dense_h_to_4h.bias"), b2 = w.vector(l + "mlp.dense_4h_to_h.bias");
    auto mlp = [&](const Mat& y) {
      return linear(activation(act, linear(y, w.matrix(l + "mlp.dense_h_to_4h.weight"), &b1)),
                    w.matrix(l + "mlp.dense_4h_to_h.weight"), &b2);
    };
    const Vec g2 = w.vector(l + "post_attention_layernorm.weight");
    const Vec beta2 = w.vector(l + "post_attention_layernorm.bias");
    if (parallel) {
      const Mat m = mlp(layer_norm(h, g2, beta2, eps));
      h = add(add(m, attn), h);  // mlp_output + attn_output + hidden_states
    } else {
      const Mat a = add(attn, h);
      h = add(mlp(layer_norm(a, g2, beta2, eps)), a);
    }
  }
  h = layer_norm(h, w.vector(p + "final_layer_norm.weight"), w.vector(p + "final_layer_norm.bias"), eps);
  const bool tied = config_value<bool>(c, "tie_word_embeddings", false);
  return head(h, w.matrix(tied ? p + "embed_in.weight" : "embed_out.weight"));
}

// modeling_opt.py: OPTForCausalLM (OPTDecoder, OPTDecoderLayer, OPTAttention,
// OPTLearnedPositionalEmbedding with offset 2). Pre-LN when
// do_layer_norm_before (every released size but 350m), post-LN otherwise;
// project_in / project_out when word_embed_proj_dim != hidden_size; head tied
// to embed_tokens unless tie_word_embeddings is false.
inline Mat reference_logits_opt(const nlohmann::json& c, const HfTensors& tensors,
                                std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = w.prefix_of("embed_tokens.weight", {"model.decoder.", "decoder."});
  const int d = config_required<int>(c, "hidden_size");
  const int heads = config_required<int>(c, "num_attention_heads");
  const int layers = config_required<int>(c, "num_hidden_layers"), hd = d / heads;
  const bool pre = config_value<bool>(c, "do_layer_norm_before", true);
  const bool final_norm = pre && !config_value<bool>(c, "_remove_final_layer_norm", false);
  const bool bias = config_value<bool>(c, "enable_bias", true);
  if (!config_value<bool>(c, "layer_norm_elementwise_affine", true))
    refuse("layer_norm_elementwise_affine false");
  const std::string act = config_value<std::string>(c, "activation_function", "relu");
  const LD eps = 1e-5L;  // nn.LayerNorm's default: OPT's config has no epsilon
  const std::vector<int> pos = positions(int(tokens.size()));
  auto lin = [&](const Mat& x, const std::string& name) {
    if (!bias) return linear(x, w.matrix(name + ".weight"), nullptr);
    const Vec b = w.vector(name + ".bias");
    return linear(x, w.matrix(name + ".weight"), &b);
  };
  auto norm = [&](const Mat& x, const std::string& name) {
    return layer_norm(x, w.vector(name + ".weight"), w.vector(name + ".bias"), eps);
  };

  Mat inputs = embedding(w.matrix(p + "embed_tokens.weight"), tokens);
  if (w.has(p + "project_in.weight")) inputs = linear(inputs, w.matrix(p + "project_in.weight"), nullptr);
  Mat h = add(inputs, embedding(w.matrix(p + "embed_positions.weight"), pos, /*offset=*/2));
  const LD scaling = 1.0L / std::sqrt(LD(hd));  // head_dim ** -0.5
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    Mat residual = h;
    if (pre) h = norm(h, l + "self_attn_layer_norm");
    Mat q = lin(h, l + "self_attn.q_proj");
    for (LD& x : q.v) x *= scaling;  // query_states = q_proj(hidden_states) * scaling
    const Mat k = lin(h, l + "self_attn.k_proj"), v = lin(h, l + "self_attn.v_proj");
    h = lin(causal_attention(split_heads(q, heads, hd, hd, 0), split_heads(k, heads, hd, hd, 0),
                             split_heads(v, heads, hd, hd, 0), {}),
            l + "self_attn.out_proj");
    h = add(residual, h);
    if (!pre) h = norm(h, l + "self_attn_layer_norm");
    residual = h;
    if (pre) h = norm(h, l + "final_layer_norm");
    h = lin(activation(act, lin(h, l + "fc1")), l + "fc2");
    h = add(residual, h);
    if (!pre) h = norm(h, l + "final_layer_norm");
  }
  if (final_norm) h = norm(h, p + "final_layer_norm");
  if (w.has(p + "project_out.weight")) h = linear(h, w.matrix(p + "project_out.weight"), nullptr);
  const bool tied = config_value<bool>(c, "tie_word_embeddings", true);
  return head(h, w.matrix(tied ? p + "embed_tokens.weight" : "lm_head.weight"));
}

// modeling_phi.py: PhiForCausalLM (PhiDecoderLayer, PhiAttention, PhiMLP,
// PhiRotaryEmbedding). One input_layernorm feeds both branches:
// h + attn(ln h) + mlp(ln h); partial rotary (rotate_half) on
// int(head_dim * partial_rotary_factor) features with rope_theta; grouped kv
// heads (repeat_kv); lm_head with bias.
inline Mat reference_logits_phi(const nlohmann::json& c, const HfTensors& tensors,
                                std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = "model.";
  const int d = config_required<int>(c, "hidden_size");
  const int heads = config_required<int>(c, "num_attention_heads");
  const int kv_heads = config_value<int>(c, "num_key_value_heads", heads);
  const int layers = config_required<int>(c, "num_hidden_layers"), hd = d / heads;
  const LD eps = config_value<double>(c, "layer_norm_eps", 1e-5);
  const std::string act = config_value<std::string>(c, "hidden_act", "gelu_new");
  if (config_value<bool>(c, "qk_layernorm", false)) refuse("qk_layernorm");
  const auto [factor, theta] = rope_settings(c, "partial_rotary_factor", 0.5, "rope_theta");
  const int rotary_ndims = int(double(hd) * factor);
  const std::vector<int> pos = positions(int(tokens.size()));
  auto lin = [&](const Mat& x, const std::string& name) {
    const Vec b = w.vector(name + ".bias");
    return linear(x, w.matrix(name + ".weight"), &b);
  };

  Mat h = embedding(w.matrix(p + "embed_tokens.weight"), tokens);
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    const Mat x = layer_norm(h, w.vector(l + "input_layernorm.weight"),
                             w.vector(l + "input_layernorm.bias"), eps);
    std::vector<Mat> q = split_heads(lin(x, l + "self_attn.q_proj"), heads, hd, hd, 0);
    std::vector<Mat> k = split_heads(lin(x, l + "self_attn.k_proj"), kv_heads, hd, hd, 0);
    const std::vector<Mat> v = split_heads(lin(x, l + "self_attn.v_proj"), kv_heads, hd, hd, 0);
    for (Mat& m : q) rope_rotate_half(m, rotary_ndims, theta, pos);
    for (Mat& m : k) rope_rotate_half(m, rotary_ndims, theta, pos);
    const Mat attn = lin(causal_attention(q, k, v, {.scale = 1.0L / std::sqrt(LD(hd))}),
                         l + "self_attn.dense");
    const Mat mlp = lin(activation(act, lin(x, l + "mlp.fc1")), l + "mlp.fc2");
    h = add(add(attn, mlp), h);  // attn_outputs + feed_forward_hidden_states + residual
  }
  h = layer_norm(h, w.vector(p + "final_layernorm.weight"), w.vector(p + "final_layernorm.bias"), eps);
  if (config_value<bool>(c, "tie_word_embeddings", false))
    return head(h, w.matrix(p + "embed_tokens.weight"));
  const Vec b = w.vector("lm_head.bias");
  return head(h, w.matrix("lm_head.weight"), &b);
}

// modeling_gptj.py: GPTJForCausalLM (GPTJBlock, GPTJAttention, GPTJMLP,
// create_sinusoidal_positions, rotate_every_two, apply_rotary_pos_emb).
// One ln_1 feeds both branches; q/k/v/out_proj without bias; interleaved
// rotary on the first rotary_dim features; scores divided by sqrt(head_dim)
// after masking; lm_head with bias.
inline Mat reference_logits_gptj(const nlohmann::json& c, const HfTensors& tensors,
                                 std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = "transformer.";
  const int d = config_required<int>(c, "n_embd"), heads = config_required<int>(c, "n_head");
  const int layers = config_required<int>(c, "n_layer"), hd = d / heads;
  const int rotary_dim = config_required<int>(c, "rotary_dim");
  const LD eps = config_value<double>(c, "layer_norm_epsilon", 1e-5);
  const std::string act = config_value<std::string>(c, "activation_function", "gelu_new");
  const std::vector<int> pos = positions(int(tokens.size()));

  Mat h = embedding(w.matrix(p + "wte.weight"), tokens);
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "h." + std::to_string(i) + ".";
    const Mat x = layer_norm(h, w.vector(l + "ln_1.weight"), w.vector(l + "ln_1.bias"), eps);
    std::vector<Mat> q = split_heads(linear(x, w.matrix(l + "attn.q_proj.weight"), nullptr), heads, hd, hd, 0);
    std::vector<Mat> k = split_heads(linear(x, w.matrix(l + "attn.k_proj.weight"), nullptr), heads, hd, hd, 0);
    const std::vector<Mat> v = split_heads(linear(x, w.matrix(l + "attn.v_proj.weight"), nullptr), heads, hd, hd, 0);
    for (Mat& m : q) rope_every_two(m, rotary_dim, pos);
    for (Mat& m : k) rope_every_two(m, rotary_dim, pos);
    const Mat attn = linear(causal_attention(q, k, v, {.divisor = std::sqrt(LD(hd))}),
                            w.matrix(l + "attn.out_proj.weight"), nullptr);
    const Vec b1 = w.vector(l + "mlp.fc_in.bias"), b2 = w.vector(l + "mlp.fc_out.bias");
    const Mat mlp = linear(activation(act, linear(x, w.matrix(l + "mlp.fc_in.weight"), &b1)),
                           w.matrix(l + "mlp.fc_out.weight"), &b2);
    h = add(add(attn, mlp), h);  // attn_output + feed_forward_hidden_states + residual
  }
  h = layer_norm(h, w.vector(p + "ln_f.weight"), w.vector(p + "ln_f.bias"), eps);
  if (config_value<bool>(c, "tie_word_embeddings", false)) return head(h, w.matrix(p + "wte.weight"));
  const Vec b = w.vector("lm_head.bias");
  return head(h, w.matrix("lm_head.weight"), &b);
}

// The per-layer attention types of a GPT-Neo config: attention_types
// expanded (GPTNeoConfig.expand_attention_types_params), checked against
// attention_layers when the file has it.
inline std::vector<std::string> gpt_neo_layer_types(const nlohmann::json& c) {
  std::vector<std::string> types;
  for (const nlohmann::json& item : detail::config_required<nlohmann::json>(c, "attention_types"))
    for (int n = 0; n < item.at(1).get<int>(); ++n)
      for (const nlohmann::json& t : item.at(0)) types.push_back(t.get<std::string>());
  if (c.contains("attention_layers") && c.at("attention_layers").get<std::vector<std::string>>() != types)
    detail::refuse("attention_layers does not match attention_types");
  return types;
}

// modeling_gpt_neo.py: GPTNeoForCausalLM (GPTNeoBlock, GPTNeoSelfAttention,
// GPTNeoMLP). No 1/sqrt(head_dim) scaling; q/k/v without bias; "local"
// layers see the keys j with i - j < window_size (bias ^ tril(bias,
// -window_size)); nn.Linear MLP; head tied to wte.
inline Mat reference_logits_gpt_neo(const nlohmann::json& c, const HfTensors& tensors,
                                    std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = "transformer.";
  const int d = config_required<int>(c, "hidden_size"), heads = config_required<int>(c, "num_heads");
  const int layers = config_required<int>(c, "num_layers"), hd = d / heads;
  const int window = config_value<int>(c, "window_size", 256);
  const LD eps = config_value<double>(c, "layer_norm_epsilon", 1e-5);
  const std::string act = config_value<std::string>(c, "activation_function", "gelu_new");
  const std::vector<std::string> types = gpt_neo_layer_types(c);
  if (int(types.size()) != layers) refuse("attention_types does not give one type per layer");
  const std::vector<int> pos = positions(int(tokens.size()));
  auto lin = [&](const Mat& x, const std::string& name) {
    const Vec b = w.vector(name + ".bias");
    return linear(x, w.matrix(name + ".weight"), &b);
  };

  Mat h = add(embedding(w.matrix(p + "wte.weight"), tokens), embedding(w.matrix(p + "wpe.weight"), pos));
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "h." + std::to_string(i) + ".";
    const std::string a = l + "attn.attention.";
    const Mat x = layer_norm(h, w.vector(l + "ln_1.weight"), w.vector(l + "ln_1.bias"), eps);
    AttentionSpec spec;  // attn_weights = torch.matmul(query, key.transpose(-1, -2)): unscaled
    if (types[std::size_t(i)] == "local") spec.window = window;
    else if (types[std::size_t(i)] != "global") refuse("attention type '" + types[std::size_t(i)] + "'");
    const Mat attn = causal_attention(
        split_heads(linear(x, w.matrix(a + "q_proj.weight"), nullptr), heads, hd, hd, 0),
        split_heads(linear(x, w.matrix(a + "k_proj.weight"), nullptr), heads, hd, hd, 0),
        split_heads(linear(x, w.matrix(a + "v_proj.weight"), nullptr), heads, hd, hd, 0), spec);
    h = add(h, lin(attn, a + "out_proj"));
    const Mat m = layer_norm(h, w.vector(l + "ln_2.weight"), w.vector(l + "ln_2.bias"), eps);
    h = add(h, lin(activation(act, lin(m, l + "mlp.c_fc")), l + "mlp.c_proj"));
  }
  h = layer_norm(h, w.vector(p + "ln_f.weight"), w.vector(p + "ln_f.bias"), eps);
  const bool tied = config_value<bool>(c, "tie_word_embeddings", true);
  return head(h, w.matrix(tied ? p + "wte.weight" : "lm_head.weight"));
}

// modeling_gpt_bigcode.py: GPTBigCodeForCausalLM (GPTBigCodeBlock,
// GPTBigCodeAttention, GPTBigCodeMLP). nn.Linear weights; multi_query:
// c_attn rows [q (d) | k (head_dim) | v (head_dim)], one kv head; else rows
// per head [q, k, v] (view(heads, 3 * head_dim)); head tied to wte.
inline Mat reference_logits_gpt_bigcode(const nlohmann::json& c, const HfTensors& tensors,
                                        std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = "transformer.";
  const int d = config_required<int>(c, "n_embd"), heads = config_required<int>(c, "n_head");
  const int layers = config_required<int>(c, "n_layer"), hd = d / heads;
  const LD eps = config_value<double>(c, "layer_norm_epsilon", 1e-5);
  const std::string act = config_value<std::string>(c, "activation_function", "gelu_pytorch_tanh");
  const bool multi_query = config_value<bool>(c, "multi_query", true);
  const bool scale = config_value<bool>(c, "scale_attn_weights", true);
  if (config_value<bool>(c, "add_cross_attention", false)) refuse("add_cross_attention");
  const std::vector<int> pos = positions(int(tokens.size()));
  auto lin = [&](const Mat& x, const std::string& name) {
    const Vec b = w.vector(name + ".bias");
    return linear(x, w.matrix(name + ".weight"), &b);
  };

  Mat h = add(embedding(w.matrix(p + "wte.weight"), tokens), embedding(w.matrix(p + "wpe.weight"), pos));
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "h." + std::to_string(i) + ".";
    const Mat x = layer_norm(h, w.vector(l + "ln_1.weight"), w.vector(l + "ln_1.bias"), eps);
    const Mat qkv = lin(x, l + "attn.c_attn");
    // scale_attention_softmax_in_fp32's unscale multiplies and divides by
    // layer_idx + 1 around the softmax: no change in exact arithmetic.
    const AttentionSpec spec{.scale = scale ? 1.0L / std::sqrt(LD(hd)) : 1.0L};
    const Mat attn =
        multi_query
            ? causal_attention(split_heads(qkv, heads, hd, hd, 0), {columns(qkv, d, hd)},
                               {columns(qkv, d + hd, hd)}, spec)
            : causal_attention(split_heads(qkv, heads, hd, 3 * hd, 0),
                               split_heads(qkv, heads, hd, 3 * hd, hd),
                               split_heads(qkv, heads, hd, 3 * hd, 2 * hd), spec);
    h = add(lin(attn, l + "attn.c_proj"), h);
    const Mat m = layer_norm(h, w.vector(l + "ln_2.weight"), w.vector(l + "ln_2.bias"), eps);
    h = add(h, lin(activation(act, lin(m, l + "mlp.c_fc")), l + "mlp.c_proj"));
  }
  h = layer_norm(h, w.vector(p + "ln_f.weight"), w.vector(p + "ln_f.bias"), eps);
  const bool tied = config_value<bool>(c, "tie_word_embeddings", true);
  return head(h, w.matrix(tied ? p + "wte.weight" : "lm_head.weight"));
}

// modeling_bloom.py: BloomForCausalLM (BloomModel, BloomBlock,
// BloomAttention, BloomMLP, build_alibi_tensor, bloom_gelu_forward).
// word_embeddings_layernorm on the embeddings; query_key_value rows
// [heads, 3, head_dim]; scores = alibi + (q . k) / sqrt(head_dim) (baddbmm,
// alibi = slope * key position); the residual is the block input, or the
// norm's output with apply_residual_connection_post_layernorm; head tied.
inline Mat reference_logits_bloom(const nlohmann::json& c, const HfTensors& tensors,
                                  std::span<const int> tokens) {
  using namespace detail;
  const Weights w(tensors);
  const std::string p = w.prefix_of("word_embeddings.weight", {"transformer.", ""});
  const int d = config_required<int>(c, "hidden_size"), heads = config_required<int>(c, "n_head");
  const int layers = config_required<int>(c, "n_layer"), hd = d / heads;
  const LD eps = config_value<double>(c, "layer_norm_epsilon", 1e-5);
  const bool post = config_value<bool>(c, "apply_residual_connection_post_layernorm", false);
  auto lin = [&](const Mat& x, const std::string& name) {
    const Vec b = w.vector(name + ".bias");
    return linear(x, w.matrix(name + ".weight"), &b);
  };
  auto norm = [&](const Mat& x, const std::string& name) {
    return layer_norm(x, w.vector(name + ".weight"), w.vector(name + ".bias"), eps);
  };

  Mat h = norm(embedding(w.matrix(p + "word_embeddings.weight"), tokens), p + "word_embeddings_layernorm");
  const AttentionSpec spec{.scale = 1.0L / std::sqrt(LD(hd)), .alibi = alibi_slopes(heads)};
  for (int i = 0; i < layers; ++i) {
    const std::string l = p + "h." + std::to_string(i) + ".";
    const Mat ln = norm(h, l + "input_layernorm");
    const Mat& residual = post ? ln : h;
    const Mat fused = lin(ln, l + "self_attention.query_key_value");  // view(heads, 3, head_dim)
    const Mat context = causal_attention(split_heads(fused, heads, hd, 3 * hd, 0),
                                         split_heads(fused, heads, hd, 3 * hd, hd),
                                         split_heads(fused, heads, hd, 3 * hd, 2 * hd), spec);
    const Mat attention_output = add(lin(context, l + "self_attention.dense"), residual);
    const Mat ln2 = norm(attention_output, l + "post_attention_layernorm");
    const Mat& residual2 = post ? ln2 : attention_output;
    h = add(lin(activation("bloom_gelu", lin(ln2, l + "mlp.dense_h_to_4h")), l + "mlp.dense_4h_to_h"),
            residual2);
  }
  h = norm(h, p + "ln_f");
  const bool tied = config_value<bool>(c, "tie_word_embeddings", true);
  return head(h, w.matrix(tied ? p + "word_embeddings.weight" : "lm_head.weight"));
}

// ===========================================================================
// The image encoders: (config, tensors, image [C x H x W]) -> Mat [1 x outputs]
// ===========================================================================

namespace detail {

// nn.Conv2d(C, d, kernel p, stride p) of one image [C x H x W] (C order),
// flatten(2).transpose(1, 2): (patches x d), patch (py, px) at row py * (W / p) + px.
inline Mat patch_conv(const Vec& image, int C, int H, int W, const HfTensor& weight,
                      const Vec* bias) {
  const int d = int(weight.shape[0]), p = int(weight.shape[2]), gh = H / p, gw = W / p;
  if (int(weight.shape[1]) != C || int(image.size()) != C * H * W) refuse("patch_conv: shapes");
  Mat x(gh * gw, d);
  for (int py = 0; py < gh; ++py)
    for (int px = 0; px < gw; ++px)
      for (int o = 0; o < d; ++o) {
        LD acc = bias ? (*bias)[std::size_t(o)] : 0.0L;
        for (int c = 0; c < C; ++c)
          for (int ky = 0; ky < p; ++ky)
            for (int kx = 0; kx < p; ++kx)
              acc += LD(weight.values[std::size_t(((o * C + c) * p + ky) * p + kx)]) *
                     image[std::size_t((c * H + py * p + ky) * W + px * p + kx)];
        x(py * gw + px, o) = acc;
      }
  return x;
}

// [tokens (each a d-vector, in order); patches] + the position table (T, d) (its
// values in C order whatever the leading 1s of its shape).
inline Mat with_tokens(const std::vector<Vec>& tokens, const Mat& patches, const HfTensor& positions) {
  const int K = int(tokens.size()), d = patches.cols, T = K + patches.rows;
  if (positions.values.size() != std::size_t(T) * std::size_t(d)) refuse("position table: shape");
  Mat x(T, d);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < d; ++c)
      x(t, c) = (t < K ? tokens[std::size_t(t)][std::size_t(c)] : patches(t - K, c)) +
                LD(positions.values[std::size_t(t * d + c)]);
  return x;
}

// A (1, 1, d) or (d) tensor as a vector.
inline Vec flat(const HfTensor& t) { return Vec(t.values.begin(), t.values.end()); }

// Row t of x as a 1-row matrix.
inline Mat row(const Mat& x, int t) {
  Mat y(1, x.cols);
  for (int c = 0; c < x.cols; ++c) y(0, c) = x(t, c);
  return y;
}

// Bidirectional self-attention of x (T x d) with nn.Linear q, k, v (d, d) and
// the output projection: softmax(q k^T / sqrt(hd)) v, heads at hd columns.
inline Mat encoder_attention(const Mat& x, const Weights& w, int heads, const std::string& q,
                             const std::string& k, const std::string& v, const std::string& out) {
  const Vec bq = w.vector(q + ".bias"), bk = w.vector(k + ".bias"), bv = w.vector(v + ".bias");
  const Mat qm = linear(x, w.matrix(q + ".weight"), &bq), km = linear(x, w.matrix(k + ".weight"), &bk),
            vm = linear(x, w.matrix(v + ".weight"), &bv);
  const int hd = x.cols / heads;
  AttentionSpec spec;
  spec.causal = false;
  spec.scale = 1.0L / std::sqrt(LD(hd));
  const Mat a = causal_attention(split_heads(qm, heads, hd, hd, 0), split_heads(km, heads, hd, hd, 0),
                                 split_heads(vm, heads, hd, hd, 0), spec);
  const Vec bo = w.vector(out + ".bias");
  return linear(a, w.matrix(out + ".weight"), &bo);
}

// fc2(act(fc1(x))).
inline Mat encoder_mlp(const Mat& x, const Weights& w, const std::string& fc1,
                       const std::string& fc2, const std::string& act) {
  const Vec b1 = w.vector(fc1 + ".bias"), b2 = w.vector(fc2 + ".bias");
  return linear(activation(act, linear(x, w.matrix(fc1 + ".weight"), &b1)), w.matrix(fc2 + ".weight"), &b2);
}

inline Mat norm(const Mat& x, const Weights& w, const std::string& name, LD eps) {
  return layer_norm(x, w.vector(name + ".weight"), w.vector(name + ".bias"), eps);
}

// x * lambda, per column (Dinov2LayerScale).
inline Mat scale_columns(Mat x, const Vec& lambda) {
  for (int t = 0; t < x.rows; ++t)
    for (int c = 0; c < x.cols; ++c) x(t, c) *= lambda[std::size_t(c)];
  return x;
}

// The settings every image encoder's config has (the family's defaults for
// layer_norm_eps and hidden_act).
struct EncoderSettings {
  int heads, layers, image_size, channels;
  LD eps;
  std::string act;
};
inline EncoderSettings encoder_settings(const nlohmann::json& c, double eps, const char* act) {
  return {config_required<int>(c, "num_attention_heads"), config_required<int>(c, "num_hidden_layers"),
          config_required<int>(c, "image_size"), config_value<int>(c, "num_channels", 3),
          config_value<double>(c, "layer_norm_eps", eps), config_value<std::string>(c, "hidden_act", act)};
}

// The patch conv `conv` (with `bias`, when given) of `image`.
inline Mat encoder_patches(const Weights& w, const EncoderSettings& s, const Vec& image,
                           const std::string& conv, const Vec* bias) {
  return patch_conv(image, s.channels, s.image_size, s.image_size, w.at(conv), bias);
}

}  // namespace detail

// modeling_clip.py: CLIPVisionModelWithProjection / CLIPModel.get_image_features
// (image embeddings) or CLIPVisionModel (pooler_output, without
// visual_projection). CLIPVisionEmbeddings: conv without bias, class_embedding
// first, position_embedding; pre_layrnorm; CLIPEncoderLayer (layer_norm1,
// CLIPAttention: q scaled by head_dim^-0.5, layer_norm2, CLIPMLP); post_layernorm
// of the class token.
inline Mat reference_outputs_clip_vision(const nlohmann::json& config, const HfTensors& tensors,
                                         const Vec& image) {
  using namespace detail;
  const Weights w(tensors);
  const bool whole = config_value<std::string>(config, "model_type", "") == "clip";
  const nlohmann::json& c = whole ? config.at("vision_config") : config;
  const EncoderSettings s = encoder_settings(c, 1e-5, "quick_gelu");
  const LD eps = s.eps;
  const std::string p = w.prefix_of("embeddings.patch_embedding.weight", {"vision_model.", ""});
  const Mat patches = encoder_patches(w, s, image, p + "embeddings.patch_embedding.weight", nullptr);
  Mat h = with_tokens({w.vector(p + "embeddings.class_embedding")}, patches,
                      w.at(p + "embeddings.position_embedding.weight"));
  h = norm(h, w, p + "pre_layrnorm", eps);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
    const std::string a = l + "self_attn.";
    h = add(h, encoder_attention(norm(h, w, l + "layer_norm1", eps), w, s.heads, a + "q_proj",
                                 a + "k_proj", a + "v_proj", a + "out_proj"));
    h = add(h, encoder_mlp(norm(h, w, l + "layer_norm2", eps), w, l + "mlp.fc1", l + "mlp.fc2", s.act));
  }
  const Mat pooled = norm(row(h, 0), w, p + "post_layernorm", eps);
  if (!w.has("visual_projection.weight")) return pooled;
  return linear(pooled, w.matrix("visual_projection.weight"), nullptr);
}

// modeling_dinov2.py: Dinov2ForImageClassification (logits) or Dinov2Model
// (pooler_output). Dinov2Embeddings: cls_token first, the position embeddings
// as they are at the config's size; Dinov2Layer: h + lambda1 * attn(norm1 h),
// then + lambda2 * mlp(norm2 h); layernorm on every token; the classifier
// reads cat(seq[0], mean(seq[1:])).
inline Mat reference_outputs_dinov2(const nlohmann::json& c, const HfTensors& tensors,
                                    const Vec& image) {
  using namespace detail;
  const Weights w(tensors);
  const EncoderSettings s = encoder_settings(c, 1e-6, "gelu");
  const LD eps = s.eps;
  if (config_value<bool>(c, "use_swiglu_ffn", false)) refuse("use_swiglu_ffn");
  const std::string p = w.prefix_of("embeddings.patch_embeddings.projection.weight", {"dinov2.", ""});
  const std::string e = p + "embeddings.";
  const Vec patch_bias = w.vector(e + "patch_embeddings.projection.bias");
  const Mat patches = encoder_patches(w, s, image, e + "patch_embeddings.projection.weight", &patch_bias);
  Mat h = with_tokens({flat(w.at(e + "cls_token"))}, patches, w.at(e + "position_embeddings"));
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    const std::string a = l + "attention.";
    h = add(h, scale_columns(encoder_attention(norm(h, w, l + "norm1", eps), w, s.heads,
                                               a + "attention.query", a + "attention.key",
                                               a + "attention.value", a + "output.dense"),
                             w.vector(l + "layer_scale1.lambda1")));
    h = add(h, scale_columns(encoder_mlp(norm(h, w, l + "norm2", eps), w, l + "mlp.fc1", l + "mlp.fc2", s.act),
                             w.vector(l + "layer_scale2.lambda1")));
  }
  const Mat seq = norm(h, w, p + "layernorm", eps);
  if (!w.has("classifier.weight")) return row(seq, 0);
  Mat pooled(1, 2 * seq.cols);
  for (int k = 0; k < seq.cols; ++k) {
    LD mean = 0;
    for (int t = 1; t < seq.rows; ++t) mean += seq(t, k);
    pooled(0, k) = seq(0, k);
    pooled(0, seq.cols + k) = mean / LD(seq.rows - 1);
  }
  const Vec bias = w.vector("classifier.bias");
  return linear(pooled, w.matrix("classifier.weight"), &bias);
}

// modeling_deit.py: DeiTForImageClassificationWithTeacher ((cls_classifier(seq[0])
// + distillation_classifier(seq[1])) / 2) or DeiTForImageClassification
// (classifier(seq[0])). DeiTEmbeddings: cat(cls, distillation, patches) +
// position_embeddings; DeiTLayer as ViT's (layernorm_before, attention,
// layernorm_after, intermediate, output); layernorm.
inline Mat reference_outputs_deit(const nlohmann::json& c, const HfTensors& tensors,
                                  const Vec& image) {
  using namespace detail;
  const Weights w(tensors);
  const EncoderSettings s = encoder_settings(c, 1e-12, "gelu");
  const LD eps = s.eps;
  const std::string p = w.prefix_of("embeddings.patch_embeddings.projection.weight", {"deit.", ""});
  const std::string e = p + "embeddings.";
  const Vec patch_bias = w.vector(e + "patch_embeddings.projection.bias");
  const Mat patches = encoder_patches(w, s, image, e + "patch_embeddings.projection.weight", &patch_bias);
  Mat h = with_tokens({flat(w.at(e + "cls_token")), flat(w.at(e + "distillation_token"))}, patches,
                      w.at(e + "position_embeddings"));
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    const std::string a = l + "attention.";
    h = add(h, encoder_attention(norm(h, w, l + "layernorm_before", eps), w, s.heads,
                                 a + "attention.query", a + "attention.key", a + "attention.value",
                                 a + "output.dense"));
    h = add(h, encoder_mlp(norm(h, w, l + "layernorm_after", eps), w, l + "intermediate.dense",
                           l + "output.dense", s.act));
  }
  const Mat seq = norm(h, w, p + "layernorm", eps);
  const auto classify = [&](const std::string& name, int t) {
    const Vec bias = w.vector(name + ".bias");
    return linear(row(seq, t), w.matrix(name + ".weight"), &bias);
  };
  if (!w.has("cls_classifier.weight")) return classify("classifier", 0);
  Mat out = add(classify("cls_classifier", 0), classify("distillation_classifier", 1));
  for (LD& x : out.v) x /= 2;
  return out;
}

// Dispatches on the fixture's model_type.
inline Mat reference_outputs(const Fixture& f, const Vec& image) {
  const std::string type = f.model_type();
  if (type == "clip_vision_model" || type == "clip")
    return reference_outputs_clip_vision(f.config, f.tensors, image);
  if (type == "dinov2") return reference_outputs_dinov2(f.config, f.tensors, image);
  if (type == "deit") return reference_outputs_deit(f.config, f.tensors, image);
  detail::refuse("model_type '" + type + "' is not an image encoder");
}

// The same for `images` images [images x C x H x W] (NCHW, as random_images
// gives them): a row of outputs each.
inline Mat reference_outputs(const Fixture& f, const std::vector<double>& pixels, int images) {
  const std::size_t per_image = pixels.size() / std::size_t(images);
  Mat out;
  for (int b = 0; b < images; ++b) {
    const Vec image(pixels.begin() + std::ptrdiff_t(b * per_image),
                    pixels.begin() + std::ptrdiff_t((b + 1) * per_image));
    const Mat row = reference_outputs(f, image);
    if (b == 0) out = Mat(images, row.cols);
    for (int c = 0; c < row.cols; ++c) out(b, c) = row(0, c);
  }
  return out;
}

// Dispatches on config["model_type"].
inline Mat reference_logits(const nlohmann::json& config, const HfTensors& tensors,
                            std::span<const int> tokens) {
  const std::string type = detail::config_required<std::string>(config, "model_type");
  if (type == "gpt2") return reference_logits_gpt2(config, tensors, tokens);
  if (type == "gpt_neox") return reference_logits_gpt_neox(config, tensors, tokens);
  if (type == "opt") return reference_logits_opt(config, tensors, tokens);
  if (type == "phi") return reference_logits_phi(config, tensors, tokens);
  if (type == "gptj") return reference_logits_gptj(config, tensors, tokens);
  if (type == "gpt_neo") return reference_logits_gpt_neo(config, tensors, tokens);
  if (type == "gpt_bigcode") return reference_logits_gpt_bigcode(config, tensors, tokens);
  if (type == "bloom") return reference_logits_bloom(config, tensors, tokens);
  detail::refuse("model_type '" + type + "' has no reference");
}

inline Mat reference_logits(const Fixture& f, std::span<const int> tokens) {
  return reference_logits(f.config, f.tensors, tokens);
}

// The same for a Fixture, family by family.
inline Mat reference_logits_gpt2(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_gpt2(f.config, f.tensors, tokens);
}
inline Mat reference_logits_gpt_neox(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_gpt_neox(f.config, f.tensors, tokens);
}
inline Mat reference_logits_opt(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_opt(f.config, f.tensors, tokens);
}
inline Mat reference_logits_phi(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_phi(f.config, f.tensors, tokens);
}
inline Mat reference_logits_gptj(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_gptj(f.config, f.tensors, tokens);
}
inline Mat reference_logits_gpt_neo(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_gpt_neo(f.config, f.tensors, tokens);
}
inline Mat reference_logits_gpt_bigcode(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_gpt_bigcode(f.config, f.tensors, tokens);
}
inline Mat reference_logits_bloom(const Fixture& f, std::span<const int> tokens) {
  return reference_logits_bloom(f.config, f.tensors, tokens);
}

}  // namespace prenorm_test::hf
