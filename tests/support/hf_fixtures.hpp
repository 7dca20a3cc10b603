// Small random checkpoints in the Hugging Face layouts of the decoder families
// of issue 19 (and GPT-2, which prenorm already reads), for the loader tests
// and the references of hf_reference.hpp.
//
// Each write_<family>_fixture(dir, options, dtype, seed) writes into `dir`
//   config.json        the keys of the family's config class as the Hub's
//                      checkpoints have them (model_type, architectures, ...)
//   model.safetensors  the tensors under the names, shapes and layouts that
//                      save_pretrained gives them, every one in `dtype`
// and returns a Fixture holding the config and every tensor read back from the
// file as double (so the in-memory copy equals the file, F16 / BF16 rounding
// included).
//
// Families, options and functions (sizes: HfSizes, d = 32, 4 heads, 3 layers,
// vocab 80, context 64 unless the options say otherwise):
//   gpt2         Gpt2Options {prefix, activation, untied_head}    write_gpt2_fixture
//   gpt_neox     NeoxOptions {parallel_residual, rotary_pct, rotary_emb_base,
//                hidden_act, rope_parameters}                     write_gpt_neox_fixture
//   opt          OptOptions {head (Omitted / TiedCopy / Untied), prefix,
//                do_layer_norm_before (false: the OPT-350m layout with
//                project_in / project_out and no final norm)}  write_opt_fixture
//   phi          PhiOptions {partial_rotary_factor, rope_theta, kv_heads,
//                rope_parameters}                                 write_phi_fixture
//   gptj         GptjOptions {rotary_dim}                         write_gptj_fixture
//   gpt_neo      GptNeoOptions {layer_types ("global" / "local" per layer),
//                window_size}                                     write_gpt_neo_fixture
//   gpt_bigcode  BigcodeOptions {multi_query}                     write_gpt_bigcode_fixture
//   bloom        BloomOptions {prefix, apply_residual_connection_post_layernorm}
//                (6 heads of 8 by default: non power of two ALiBi) write_bloom_fixture
// The encoder families (sizes: ImageSizes, d = 16, 2 heads, 2 layers, 8 x 8
// images of 3 channels in 4 x 4 patches, 5 classes unless the options say
// otherwise; random_images gives inputs):
//   clip_vision  ClipVisionOptions {whole ("clip": vision_config and a text
//                tower), projection (visual_projection)}          write_clip_vision_fixture
//   dinov2       Dinov2Options {prefix, classifier}               write_dinov2_fixture
//   deit         DeitOptions {teacher (two heads), mask_token}    write_deit_fixture
// write_fixture(dir, config, tensors, dtype) writes any config and tensor map
// (e.g. one family's tensors renamed into another's layout); read_fixture(dir)
// reads a directory back (e.g. one written by prenorm's own writers).
//
// The weights put offsets on the residual stream, so that a norm that does not
// center changes the logits: embedding rows with a mean of 0.5 to 1, norm betas
// of mean 0.5, gammas in 1 +- 0.3, and writers into the residual stream (the
// attention output and MLP output biases) with a mean of 0.3.
// The encoders' class (and distillation) tokens have a mean of 0.75, their
// patch biases 0.3, and DINOv2's layer scales are 1 +- 0.5.

#pragma once

#include <nlohmann/json.hpp>

#include <prenorm/io/dtype.hpp>
#include <prenorm/io/safetensors.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace prenorm_test::hf {

namespace fs = std::filesystem;
using prenorm::io::Dtype;

// One tensor: its shape and its values in C order.
struct HfTensor {
  std::vector<std::int64_t> shape;
  std::vector<double> values;
};
using HfTensors = std::map<std::string, HfTensor>;

struct Fixture {
  fs::path dir;
  nlohmann::json config;
  Dtype dtype = Dtype::F32;
  HfTensors tensors;  // as stored in the file, widened to double

  fs::path model_path() const { return dir / "model.safetensors"; }
  fs::path config_path() const { return dir / "config.json"; }
  std::string model_type() const { return config.at("model_type").get<std::string>(); }
  int vocab() const { return config.at("vocab_size").get<int>(); }
};

// Every tensor of a safetensors file, widened to double.
inline HfTensors read_tensors(const fs::path& path) {
  const prenorm::io::SafetensorsFile file(path);
  HfTensors tensors;
  for (const std::string& name : file.names()) {
    HfTensor& t = tensors[name];
    t.shape = file.info(name).shape;
    t.values = file.values<double>(name);
  }
  return tensors;
}

// config.json and model.safetensors of `dir`.
inline Fixture read_fixture(const fs::path& dir) {
  Fixture f;
  f.dir = dir;
  std::ifstream in(dir / "config.json");
  if (!in) throw std::runtime_error("read_fixture: cannot open " + (dir / "config.json").string());
  f.config = nlohmann::json::parse(in);
  f.tensors = read_tensors(f.model_path());
  const prenorm::io::SafetensorsFile file(f.model_path());
  if (!file.names().empty())
    f.dtype = file.info(file.names().front()).dtype.value_or(Dtype::F32);
  return f;
}

// Writes config.json and model.safetensors (every tensor in `dtype`) into
// `dir` (created if needed), and reads them back.
inline Fixture write_fixture(const fs::path& dir, const nlohmann::ordered_json& config,
                             const HfTensors& tensors, Dtype dtype) {
  fs::create_directories(dir);
  prenorm::io::SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  for (const auto& [name, t] : tensors) {
    std::int64_t count = 1;
    for (std::int64_t n : t.shape) count *= n;
    if (count != std::int64_t(t.values.size()))
      throw std::logic_error("write_fixture: tensor '" + name + "' has " +
                             std::to_string(t.values.size()) + " values for its shape");
    writer.add(name, dtype, t.shape, std::span<const double>(t.values));
  }
  writer.write(dir / "model.safetensors");
  std::ofstream(dir / "config.json") << config.dump(2) << "\n";
  Fixture f = read_fixture(dir);
  f.dtype = dtype;
  return f;
}

// --- random weights ------------------------------------------------------------

namespace detail {

// Uniform numbers from the raw 64-bit stream (the same on every standard library).
class FixtureRng {
 public:
  explicit FixtureRng(std::uint64_t seed) : gen_(seed) {}
  double uniform() { return double(gen_() >> 11) * 0x1.0p-53 * 2.0 - 1.0; }  // [-1, 1)
  std::vector<double> values(std::size_t n, double scale, double mean = 0.0) {
    std::vector<double> v(n);
    for (double& x : v) x = mean + scale * uniform();
    return v;
  }

 private:
  std::mt19937_64 gen_;
};

// Adds tensors to a map with the fixture's value conventions.
class Builder {
 public:
  explicit Builder(std::uint64_t seed) : rng_(seed) {}

  // nn.Linear weight (out, in), or Conv1D (in, out) with `conv1d`: entries of
  // size 1 / sqrt(in), so that activations stay of order one.
  void linear(const std::string& name, std::int64_t out, std::int64_t in, bool conv1d = false) {
    HfTensor& t = tensors[name];
    t.shape = conv1d ? std::vector<std::int64_t>{in, out} : std::vector<std::int64_t>{out, in};
    t.values = rng_.values(std::size_t(out * in), 1.5 / std::sqrt(double(in)));
  }
  void bias(const std::string& name, std::int64_t n) { vector(name, n, 0.2, 0.0); }
  // A bias added to the residual stream: mean 0.3.
  void residual_bias(const std::string& name, std::int64_t n) { vector(name, n, 0.2, 0.3); }
  // LayerNorm weight and bias: gamma 1 +- 0.3, beta 0.5 +- 0.25.
  void layer_norm(const std::string& prefix, std::int64_t n) {
    vector(prefix + "weight", n, 0.3, 1.0);
    vector(prefix + "bias", n, 0.25, 0.5);
  }
  // Embedding (rows, d): each row has its own mean in [0.5, 1] and noise 0.5.
  void embedding(const std::string& name, std::int64_t rows, std::int64_t d) {
    HfTensor& t = tensors[name];
    t.shape = {rows, d};
    t.values.resize(std::size_t(rows * d));
    for (std::int64_t r = 0; r < rows; ++r) {
      const double mean = 0.75 + 0.25 * rng_.uniform();
      for (std::int64_t c = 0; c < d; ++c) t.values[std::size_t(r * d + c)] = mean + 0.5 * rng_.uniform();
    }
  }
  void vector(const std::string& name, std::int64_t n, double scale, double mean) {
    tensors[name] = HfTensor{{n}, rng_.values(std::size_t(n), scale, mean)};
  }
  void copy(const std::string& to, const std::string& from) { tensors[to] = tensors.at(from); }
  // A convolution weight (out, C, p, p), entries of size 1 / sqrt(C p p).
  void conv(const std::string& name, std::int64_t out, std::int64_t channels, std::int64_t p) {
    tensors[name] = HfTensor{{out, channels, p, p},
                             rng_.values(std::size_t(out * channels * p * p),
                                         1.5 / std::sqrt(double(channels * p * p)))};
  }
  // The same values under another shape (a (1, 1, d) token, a (1, T, d) table).
  void reshape(const std::string& name, std::vector<std::int64_t> shape) {
    tensors.at(name).shape = std::move(shape);
  }

  HfTensors tensors;

 private:
  FixtureRng rng_;
};

inline const char* torch_dtype(Dtype dtype) {
  switch (dtype) {
    case Dtype::F16: return "float16";
    case Dtype::BF16: return "bfloat16";
    case Dtype::F64: return "float64";
    default: return "float32";
  }
}

inline std::string layer(const std::string& prefix, int i) {
  return prefix + std::to_string(i) + ".";
}

}  // namespace detail

// Sizes shared by the families. mlp = 0 means the family's default (4 d).
struct HfSizes {
  int vocab = 80;
  int width = 32;
  int heads = 4;
  int layers = 3;
  int context = 64;
  int mlp = 0;
  double epsilon = 1e-5;
  int mlp_width() const { return mlp > 0 ? mlp : 4 * width; }
  int head_dim() const { return width / heads; }
};

// A random token sequence of length `count` for `f` (ids in [0, vocab)).
inline std::vector<int> random_tokens(const Fixture& f, int count, std::uint64_t seed) {
  detail::FixtureRng rng(seed);
  std::vector<int> tokens(static_cast<std::size_t>(count));
  for (int& t : tokens) t = int((rng.uniform() + 1.0) * 0.5 * f.vocab()) % f.vocab();
  return tokens;
}

// --- GPT-2 (GPT2LMHeadModel): Conv1D (in, out) weights, c_attn columns [q | k | v]
struct Gpt2Options {
  HfSizes sizes = {};
  bool prefix = true;  // "transformer." names (GPT2LMHeadModel's state dict)
  std::string activation = "gelu_new";
  bool untied_head = false;  // write lm_head.weight (and tie_word_embeddings false)
};

inline Fixture write_gpt2_fixture(const fs::path& dir, const Gpt2Options& o, Dtype dtype,
                                  std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const std::string p = o.prefix ? "transformer." : "";
  detail::Builder b(seed);
  b.embedding(p + "wte.weight", s.vocab, d);
  b.embedding(p + "wpe.weight", s.context, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = detail::layer(p + "h.", i);
    b.layer_norm(h + "ln_1.", d);
    b.linear(h + "attn.c_attn.weight", 3 * d, d, /*conv1d=*/true);
    b.bias(h + "attn.c_attn.bias", 3 * d);
    b.linear(h + "attn.c_proj.weight", d, d, true);
    b.residual_bias(h + "attn.c_proj.bias", d);
    b.layer_norm(h + "ln_2.", d);
    b.linear(h + "mlp.c_fc.weight", I, d, true);
    b.bias(h + "mlp.c_fc.bias", I);
    b.linear(h + "mlp.c_proj.weight", d, I, true);
    b.residual_bias(h + "mlp.c_proj.bias", d);
  }
  b.layer_norm(p + "ln_f.", d);
  if (o.untied_head) b.embedding("lm_head.weight", s.vocab, d);
  nlohmann::ordered_json c;
  c["activation_function"] = o.activation;
  c["architectures"] = {"GPT2LMHeadModel"};
  c["attn_pdrop"] = 0.1;
  c["bos_token_id"] = 0;
  c["embd_pdrop"] = 0.1;
  c["eos_token_id"] = 0;
  c["initializer_range"] = 0.02;
  c["layer_norm_epsilon"] = s.epsilon;
  c["model_type"] = "gpt2";
  c["n_ctx"] = s.context;
  c["n_embd"] = d;
  c["n_head"] = s.heads;
  c["n_inner"] = s.mlp > 0 ? nlohmann::ordered_json(I) : nlohmann::ordered_json(nullptr);
  c["n_layer"] = s.layers;
  c["n_positions"] = s.context;
  c["resid_pdrop"] = 0.1;
  c["scale_attn_weights"] = true;
  c["tie_word_embeddings"] = !o.untied_head;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- GPT-NeoX / Pythia (GPTNeoXForCausalLM): query_key_value rows per head [q, k, v]
struct NeoxOptions {
  HfSizes sizes = {};
  bool parallel_residual = true;
  double rotary_pct = 0.25;
  double rotary_emb_base = 10000.0;
  std::string hidden_act = "gelu";
  // Write the rotary settings as transformers v5 does ("rope_parameters":
  // {rope_type, rope_theta, partial_rotary_factor}) instead of rotary_pct /
  // rotary_emb_base.
  bool rope_parameters = false;
};

inline Fixture write_gpt_neox_fixture(const fs::path& dir, const NeoxOptions& o, Dtype dtype,
                                      std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const std::string p = "gpt_neox.";
  detail::Builder b(seed);
  b.embedding(p + "embed_in.weight", s.vocab, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "layers.", i);
    b.layer_norm(l + "input_layernorm.", d);
    b.layer_norm(l + "post_attention_layernorm.", d);
    b.linear(l + "attention.query_key_value.weight", 3 * d, d);
    b.bias(l + "attention.query_key_value.bias", 3 * d);
    b.linear(l + "attention.dense.weight", d, d);
    b.residual_bias(l + "attention.dense.bias", d);
    b.linear(l + "mlp.dense_h_to_4h.weight", I, d);
    b.bias(l + "mlp.dense_h_to_4h.bias", I);
    b.linear(l + "mlp.dense_4h_to_h.weight", d, I);
    b.residual_bias(l + "mlp.dense_4h_to_h.bias", d);
  }
  b.layer_norm(p + "final_layer_norm.", d);
  b.embedding("embed_out.weight", s.vocab, d);
  nlohmann::ordered_json c;
  c["architectures"] = {"GPTNeoXForCausalLM"};
  c["attention_bias"] = true;
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 0;
  c["classifier_dropout"] = 0.1;
  c["eos_token_id"] = 0;
  c["hidden_act"] = o.hidden_act;
  c["hidden_dropout"] = 0.0;
  c["hidden_size"] = d;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = I;
  c["layer_norm_eps"] = s.epsilon;
  c["max_position_embeddings"] = s.context;
  c["model_type"] = "gpt_neox";
  c["num_attention_heads"] = s.heads;
  c["num_hidden_layers"] = s.layers;
  if (o.rope_parameters) {
    c["rope_parameters"] = {{"rope_type", "default"},
                            {"rope_theta", o.rotary_emb_base},
                            {"partial_rotary_factor", o.rotary_pct}};
  } else {
    c["rope_scaling"] = nullptr;
    c["rotary_emb_base"] = o.rotary_emb_base;
    c["rotary_pct"] = o.rotary_pct;
  }
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["use_parallel_residual"] = o.parallel_residual;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- OPT (OPTForCausalLM): separate q/k/v/out_proj, positions offset by 2, ReLU
enum class OptHead {
  Omitted,   // no lm_head.weight: tied to embed_tokens (what save_pretrained writes)
  TiedCopy,  // lm_head.weight, a copy of embed_tokens (a tied head saved twice)
  Untied,    // lm_head.weight of its own and tie_word_embeddings false
};

struct OptOptions {
  HfSizes sizes = {};
  OptHead head = OptHead::Omitted;
  bool prefix = true;  // "model.decoder." (OPTForCausalLM), else "decoder." (OPTModel)
  // false: OPT-350m's post-LN layout, with word_embed_proj_dim = d / 2,
  // project_in / project_out and no final layer norm (to test the refusal).
  bool do_layer_norm_before = true;
};

inline Fixture write_opt_fixture(const fs::path& dir, const OptOptions& o, Dtype dtype,
                                 std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, F = s.mlp_width();
  const int proj = o.do_layer_norm_before ? d : d / 2;  // word_embed_proj_dim
  const std::string p = o.prefix ? "model.decoder." : "decoder.";
  detail::Builder b(seed);
  b.embedding(p + "embed_tokens.weight", s.vocab, proj);
  b.embedding(p + "embed_positions.weight", s.context + 2, d);
  if (o.do_layer_norm_before) {
    b.layer_norm(p + "final_layer_norm.", d);
  } else {
    b.linear(p + "project_in.weight", d, proj);
    b.linear(p + "project_out.weight", proj, d);
  }
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "layers.", i);
    for (const char* x : {"k", "v", "q"}) {
      b.linear(l + "self_attn." + x + "_proj.weight", d, d);
      b.bias(l + "self_attn." + x + "_proj.bias", d);
    }
    b.linear(l + "self_attn.out_proj.weight", d, d);
    b.residual_bias(l + "self_attn.out_proj.bias", d);
    b.layer_norm(l + "self_attn_layer_norm.", d);
    b.linear(l + "fc1.weight", F, d);
    b.bias(l + "fc1.bias", F);
    b.linear(l + "fc2.weight", d, F);
    b.residual_bias(l + "fc2.bias", d);
    b.layer_norm(l + "final_layer_norm.", d);
  }
  if (o.head == OptHead::TiedCopy) b.copy("lm_head.weight", p + "embed_tokens.weight");
  if (o.head == OptHead::Untied) b.embedding("lm_head.weight", s.vocab, proj);
  nlohmann::ordered_json c;
  c["_remove_final_layer_norm"] = false;
  c["activation_dropout"] = 0.0;
  c["activation_function"] = "relu";
  c["architectures"] = {"OPTForCausalLM"};
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 2;
  c["do_layer_norm_before"] = o.do_layer_norm_before;
  c["dropout"] = 0.1;
  c["enable_bias"] = true;
  c["eos_token_id"] = 2;
  c["ffn_dim"] = F;
  c["hidden_size"] = d;
  c["init_std"] = 0.02;
  c["layer_norm_elementwise_affine"] = true;
  c["layerdrop"] = 0.0;
  c["max_position_embeddings"] = s.context;
  c["model_type"] = "opt";
  c["num_attention_heads"] = s.heads;
  c["num_hidden_layers"] = s.layers;
  c["pad_token_id"] = 1;
  c["prefix"] = "</s>";
  c["tie_word_embeddings"] = o.head != OptHead::Untied;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  c["word_embed_proj_dim"] = proj;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- Phi-1 / 1.5 / 2 (PhiForCausalLM): one shared norm, parallel branches,
// partial rotary (rotate_half), gelu_new, biased lm_head
struct PhiOptions {
  HfSizes sizes = {};
  double partial_rotary_factor = 0.5;
  double rope_theta = 10000.0;
  int kv_heads = 0;  // num_key_value_heads; 0 = heads
  bool rope_parameters = false;  // write the rotary settings as transformers v5
};

inline Fixture write_phi_fixture(const fs::path& dir, const PhiOptions& o, Dtype dtype,
                                 std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const int kv = o.kv_heads > 0 ? o.kv_heads : s.heads;
  const int kv_width = kv * s.head_dim();
  const std::string p = "model.";
  detail::Builder b(seed);
  b.embedding(p + "embed_tokens.weight", s.vocab, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "layers.", i);
    b.linear(l + "self_attn.q_proj.weight", d, d);
    b.bias(l + "self_attn.q_proj.bias", d);
    b.linear(l + "self_attn.k_proj.weight", kv_width, d);
    b.bias(l + "self_attn.k_proj.bias", kv_width);
    b.linear(l + "self_attn.v_proj.weight", kv_width, d);
    b.bias(l + "self_attn.v_proj.bias", kv_width);
    b.linear(l + "self_attn.dense.weight", d, d);
    b.residual_bias(l + "self_attn.dense.bias", d);
    b.linear(l + "mlp.fc1.weight", I, d);
    b.bias(l + "mlp.fc1.bias", I);
    b.linear(l + "mlp.fc2.weight", d, I);
    b.residual_bias(l + "mlp.fc2.bias", d);
    b.layer_norm(l + "input_layernorm.", d);
  }
  b.layer_norm(p + "final_layernorm.", d);
  b.embedding("lm_head.weight", s.vocab, d);
  b.bias("lm_head.bias", s.vocab);
  nlohmann::ordered_json c;
  c["architectures"] = {"PhiForCausalLM"};
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 1;
  c["embd_pdrop"] = 0.0;
  c["eos_token_id"] = 2;
  c["hidden_act"] = "gelu_new";
  c["hidden_size"] = d;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = I;
  c["layer_norm_eps"] = s.epsilon;
  c["max_position_embeddings"] = s.context;
  c["model_type"] = "phi";
  c["num_attention_heads"] = s.heads;
  c["num_hidden_layers"] = s.layers;
  c["num_key_value_heads"] = kv;
  if (o.rope_parameters) {
    c["rope_parameters"] = {{"rope_type", "default"},
                            {"rope_theta", o.rope_theta},
                            {"partial_rotary_factor", o.partial_rotary_factor}};
  } else {
    c["partial_rotary_factor"] = o.partial_rotary_factor;
    c["rope_scaling"] = nullptr;
    c["rope_theta"] = o.rope_theta;
  }
  c["qk_layernorm"] = false;
  c["resid_pdrop"] = 0.1;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- GPT-J (GPTJForCausalLM): one norm, parallel branches, interleaved rotary
// on rotary_dim, q/k/v/out_proj without bias, biased lm_head
struct GptjOptions {
  HfSizes sizes = {};
  int rotary_dim = 4;  // < head_dim (8) by default
};

inline Fixture write_gptj_fixture(const fs::path& dir, const GptjOptions& o, Dtype dtype,
                                  std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const std::string p = "transformer.";
  detail::Builder b(seed);
  b.embedding(p + "wte.weight", s.vocab, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = detail::layer(p + "h.", i);
    b.layer_norm(h + "ln_1.", d);
    for (const char* x : {"k", "v", "q"}) b.linear(h + "attn." + x + "_proj.weight", d, d);
    b.linear(h + "attn.out_proj.weight", d, d);
    b.linear(h + "mlp.fc_in.weight", I, d);
    b.bias(h + "mlp.fc_in.bias", I);
    b.linear(h + "mlp.fc_out.weight", d, I);
    b.residual_bias(h + "mlp.fc_out.bias", d);
  }
  b.layer_norm(p + "ln_f.", d);
  b.embedding("lm_head.weight", s.vocab, d);
  b.bias("lm_head.bias", s.vocab);
  nlohmann::ordered_json c;
  c["activation_function"] = "gelu_new";
  c["architectures"] = {"GPTJForCausalLM"};
  c["attn_pdrop"] = 0.0;
  c["bos_token_id"] = 0;
  c["embd_pdrop"] = 0.0;
  c["eos_token_id"] = 0;
  c["initializer_range"] = 0.02;
  c["layer_norm_epsilon"] = s.epsilon;
  c["model_type"] = "gptj";
  c["n_embd"] = d;
  c["n_head"] = s.heads;
  c["n_inner"] = s.mlp > 0 ? nlohmann::ordered_json(I) : nlohmann::ordered_json(nullptr);
  c["n_layer"] = s.layers;
  c["n_positions"] = s.context;
  c["resid_pdrop"] = 0.0;
  c["rotary"] = true;
  c["rotary_dim"] = o.rotary_dim;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- GPT-Neo (GPTNeoForCausalLM): global and local attention layers, no
// 1/sqrt(d) scaling, q/k/v without bias, nn.Linear MLP, tied head
struct GptNeoOptions {
  HfSizes sizes = {};
  // One entry per layer; empty = "global", "local", "global", ...
  std::vector<std::string> layer_types = {};
  int window_size = 4;
};

inline Fixture write_gpt_neo_fixture(const fs::path& dir, const GptNeoOptions& o, Dtype dtype,
                                     std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  std::vector<std::string> types = o.layer_types;
  if (types.empty())
    for (int i = 0; i < s.layers; ++i) types.push_back(i % 2 == 0 ? "global" : "local");
  if (int(types.size()) != s.layers)
    throw std::invalid_argument("write_gpt_neo_fixture: one layer type per layer");
  const std::string p = "transformer.";
  detail::Builder b(seed);
  b.embedding(p + "wte.weight", s.vocab, d);
  b.embedding(p + "wpe.weight", s.context, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = detail::layer(p + "h.", i);
    b.layer_norm(h + "ln_1.", d);
    for (const char* x : {"k", "v", "q"}) b.linear(h + "attn.attention." + x + "_proj.weight", d, d);
    b.linear(h + "attn.attention.out_proj.weight", d, d);
    b.residual_bias(h + "attn.attention.out_proj.bias", d);
    b.layer_norm(h + "ln_2.", d);
    b.linear(h + "mlp.c_fc.weight", I, d);
    b.bias(h + "mlp.c_fc.bias", I);
    b.linear(h + "mlp.c_proj.weight", d, I);
    b.residual_bias(h + "mlp.c_proj.bias", d);
  }
  b.layer_norm(p + "ln_f.", d);
  // attention_types as the Hub's configs write it: [[pattern, repeats]] with
  // the shortest pattern that repeats to the layer list (e.g. [[["global",
  // "local"], 12]] for GPT-Neo 125M).
  std::size_t period = 1;
  auto repeats_with = [&](std::size_t n) {
    if (types.size() % n != 0) return false;
    for (std::size_t i = n; i < types.size(); ++i)
      if (types[i] != types[i - n]) return false;
    return true;
  };
  while (!repeats_with(period)) ++period;
  const std::vector<std::string> pattern(types.begin(), types.begin() + std::ptrdiff_t(period));
  nlohmann::ordered_json attention_types = nlohmann::ordered_json::array();
  attention_types.push_back({pattern, int(types.size() / period)});
  nlohmann::ordered_json c;
  c["activation_function"] = "gelu_new";
  c["architectures"] = {"GPTNeoForCausalLM"};
  c["attention_dropout"] = 0.0;
  c["attention_layers"] = types;
  c["attention_types"] = attention_types;
  c["bos_token_id"] = 0;
  c["embed_dropout"] = 0.0;
  c["eos_token_id"] = 0;
  c["hidden_size"] = d;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = s.mlp > 0 ? nlohmann::ordered_json(I) : nlohmann::ordered_json(nullptr);
  c["layer_norm_epsilon"] = s.epsilon;
  c["max_position_embeddings"] = s.context;
  c["model_type"] = "gpt_neo";
  c["num_heads"] = s.heads;
  c["num_layers"] = s.layers;
  c["resid_dropout"] = 0.0;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  c["window_size"] = o.window_size;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- GPT-BigCode / StarCoder (GPTBigCodeForCausalLM): GPT-2 names with
// nn.Linear (out, in) weights; multi-query c_attn rows [q (d) | k (hd) | v (hd)],
// or per head [q, k, v] without multi_query; tied head
struct BigcodeOptions {
  HfSizes sizes = {};
  bool multi_query = true;
};

inline Fixture write_gpt_bigcode_fixture(const fs::path& dir, const BigcodeOptions& o,
                                         Dtype dtype, std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const int kv_width = o.multi_query ? s.head_dim() : d;
  const std::string p = "transformer.";
  detail::Builder b(seed);
  b.embedding(p + "wte.weight", s.vocab, d);
  b.embedding(p + "wpe.weight", s.context, d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = detail::layer(p + "h.", i);
    b.layer_norm(h + "ln_1.", d);
    b.linear(h + "attn.c_attn.weight", d + 2 * kv_width, d);
    b.bias(h + "attn.c_attn.bias", d + 2 * kv_width);
    b.linear(h + "attn.c_proj.weight", d, d);
    b.residual_bias(h + "attn.c_proj.bias", d);
    b.layer_norm(h + "ln_2.", d);
    b.linear(h + "mlp.c_fc.weight", I, d);
    b.bias(h + "mlp.c_fc.bias", I);
    b.linear(h + "mlp.c_proj.weight", d, I);
    b.residual_bias(h + "mlp.c_proj.bias", d);
  }
  b.layer_norm(p + "ln_f.", d);
  nlohmann::ordered_json c;
  c["activation_function"] = "gelu_pytorch_tanh";
  c["architectures"] = {"GPTBigCodeForCausalLM"};
  c["attention_softmax_in_fp32"] = true;
  c["attn_pdrop"] = 0.1;
  c["bos_token_id"] = 0;
  c["embd_pdrop"] = 0.1;
  c["eos_token_id"] = 0;
  c["initializer_range"] = 0.02;
  c["layer_norm_epsilon"] = s.epsilon;
  c["model_type"] = "gpt_bigcode";
  c["multi_query"] = o.multi_query;
  c["n_embd"] = d;
  c["n_head"] = s.heads;
  c["n_inner"] = I;
  c["n_layer"] = s.layers;
  c["n_positions"] = s.context;
  c["resid_pdrop"] = 0.1;
  c["scale_attention_softmax_in_fp32"] = true;
  c["scale_attn_weights"] = true;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- BLOOM (BloomForCausalLM): word_embeddings_layernorm, ALiBi,
// query_key_value rows [heads, 3, head_dim], tied head
struct BloomOptions {
  HfSizes sizes = {.vocab = 80, .width = 48, .heads = 6, .layers = 3, .context = 64};
  bool prefix = true;  // "transformer." (BloomForCausalLM), else bare (BloomModel, as bloom-560m)
  bool apply_residual_connection_post_layernorm = false;
};

inline Fixture write_bloom_fixture(const fs::path& dir, const BloomOptions& o, Dtype dtype,
                                   std::uint64_t seed) {
  const HfSizes& s = o.sizes;
  const int d = s.width, I = 4 * d;  // BloomMLP: 4 * hidden_size, always
  const std::string p = o.prefix ? "transformer." : "";
  detail::Builder b(seed);
  b.embedding(p + "word_embeddings.weight", s.vocab, d);
  b.layer_norm(p + "word_embeddings_layernorm.", d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string h = detail::layer(p + "h.", i);
    b.layer_norm(h + "input_layernorm.", d);
    b.linear(h + "self_attention.query_key_value.weight", 3 * d, d);
    b.bias(h + "self_attention.query_key_value.bias", 3 * d);
    b.linear(h + "self_attention.dense.weight", d, d);
    b.residual_bias(h + "self_attention.dense.bias", d);
    b.layer_norm(h + "post_attention_layernorm.", d);
    b.linear(h + "mlp.dense_h_to_4h.weight", I, d);
    b.bias(h + "mlp.dense_h_to_4h.bias", I);
    b.linear(h + "mlp.dense_4h_to_h.weight", d, I);
    b.residual_bias(h + "mlp.dense_4h_to_h.bias", d);
  }
  b.layer_norm(p + "ln_f.", d);
  nlohmann::ordered_json c;
  c["apply_residual_connection_post_layernorm"] = o.apply_residual_connection_post_layernorm;
  c["architectures"] = {"BloomForCausalLM"};
  c["attention_dropout"] = 0.0;
  c["attention_softmax_in_fp32"] = true;
  c["bias_dropout_fusion"] = true;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["hidden_dropout"] = 0.0;
  c["hidden_size"] = d;
  c["initializer_range"] = 0.02;
  c["layer_norm_epsilon"] = s.epsilon;
  c["masked_softmax_fusion"] = true;
  c["model_type"] = "bloom";
  c["n_head"] = s.heads;
  c["n_inner"] = nullptr;
  c["n_layer"] = s.layers;
  c["offset_alibi"] = 100;
  c["pad_token_id"] = 3;
  c["pretraining_tp"] = 1;
  c["skip_bias_add"] = true;
  c["skip_bias_add_qkv"] = false;
  c["slow_but_exact"] = false;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["unk_token_id"] = 0;
  c["use_cache"] = true;
  c["vocab_size"] = s.vocab;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- the encoders -----------------------------------------------------------------

struct ImageSizes {
  int width = 16;
  int heads = 2;
  int layers = 2;
  int mlp = 0;  // 0: 4 d
  int image = 8;
  int patch = 4;
  int channels = 3;
  int classes = 5;
  double epsilon = 1e-6;
  int mlp_width() const { return mlp > 0 ? mlp : 4 * width; }
  int patches() const { return (image / patch) * (image / patch); }
};

// `count` random images [count x C x H x W] (NCHW, values in [-1, 1)).
inline std::vector<double> random_images(const ImageSizes& s, int count, std::uint64_t seed) {
  detail::FixtureRng rng(seed);
  return rng.values(std::size_t(count) * std::size_t(s.channels * s.image * s.image), 1.0);
}

namespace detail {

// A class (or distillation) token (1, 1, d) of mean 0.75.
inline void image_token(Builder& b, const std::string& name, int d) {
  b.vector(name, d, 0.5, 0.75);
  b.reshape(name, {1, 1, d});
}

// The config keys of ViT-like image encoders.
inline void image_config(nlohmann::ordered_json& c, const ImageSizes& s) {
  c["hidden_size"] = s.width;
  c["image_size"] = s.image;
  c["num_attention_heads"] = s.heads;
  c["num_channels"] = s.channels;
  c["num_hidden_layers"] = s.layers;
  c["patch_size"] = s.patch;
}

// The embeddings of DINOv2 and DeiT under `e` ("dinov2.embeddings."): the
// `tokens` (1, 1, d) before the patches, positions (1, tokens + P, d), the patch
// conv with a bias.
inline void vit_embeddings(Builder& b, const std::string& e, const ImageSizes& s,
                           std::initializer_list<const char*> tokens) {
  const int d = s.width, T = int(tokens.size()) + s.patches();
  for (const char* token : tokens) image_token(b, e + token, d);
  b.embedding(e + "position_embeddings", T, d);
  b.reshape(e + "position_embeddings", {1, T, d});
  b.conv(e + "patch_embeddings.projection.weight", d, s.channels, s.patch);
  b.residual_bias(e + "patch_embeddings.projection.bias", d);
}

// The self-attention of a DINOv2 / DeiT layer `l`.
inline void vit_attention(Builder& b, const std::string& l, int d) {
  for (const char* x : {"query", "key", "value"}) {
    b.linear(l + "attention.attention." + x + ".weight", d, d);
    b.bias(l + "attention.attention." + x + ".bias", d);
  }
  b.linear(l + "attention.output.dense.weight", d, d);
  b.residual_bias(l + "attention.output.dense.bias", d);
}

// An MLP that writes the residual stream: fc (I, d), proj (d, I).
inline void residual_mlp(Builder& b, const std::string& fc, const std::string& proj, int d, int I) {
  b.linear(fc + ".weight", I, d);
  b.bias(fc + ".bias", I);
  b.linear(proj + ".weight", d, I);
  b.residual_bias(proj + ".bias", d);
}

inline void labels_config(nlohmann::ordered_json& c, int classes) {
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object(),
                         label2id = nlohmann::ordered_json::object();
  for (int k = 0; k < classes; ++k) {
    id2label[std::to_string(k)] = "LABEL_" + std::to_string(k);
    label2id["LABEL_" + std::to_string(k)] = k;
  }
  c["id2label"] = id2label;
  c["label2id"] = label2id;
}

}  // namespace detail

// --- CLIP vision (CLIPVisionModel / CLIPVisionModelWithProjection, or the
// vision tower of CLIPModel): bias-free patch conv, pre_layrnorm, quick_gelu
struct ClipVisionOptions {
  ImageSizes sizes = {.epsilon = 1e-5};
  bool whole = false;       // model_type "clip" (vision_config, a text tower, logit_scale)
  bool projection = true;   // visual_projection.weight
  int projection_dim = 6;
};

inline Fixture write_clip_vision_fixture(const fs::path& dir, const ClipVisionOptions& o,
                                         Dtype dtype, std::uint64_t seed) {
  const ImageSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width(), T = 1 + s.patches();
  const std::string p = "vision_model.";
  detail::Builder b(seed);
  b.vector(p + "embeddings.class_embedding", d, 0.5, 0.75);
  b.conv(p + "embeddings.patch_embedding.weight", d, s.channels, s.patch);
  b.embedding(p + "embeddings.position_embedding.weight", T, d);
  b.tensors[p + "embeddings.position_ids"] = HfTensor{{1, T}, {}};  // a buffer of older files
  for (int t = 0; t < T; ++t) b.tensors[p + "embeddings.position_ids"].values.push_back(t);
  b.layer_norm(p + "pre_layrnorm.", d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "encoder.layers.", i);
    for (const char* x : {"k", "v", "q"}) {
      b.linear(l + "self_attn." + x + "_proj.weight", d, d);
      b.bias(l + "self_attn." + x + "_proj.bias", d);
    }
    b.linear(l + "self_attn.out_proj.weight", d, d);
    b.residual_bias(l + "self_attn.out_proj.bias", d);
    b.layer_norm(l + "layer_norm1.", d);
    detail::residual_mlp(b, l + "mlp.fc1", l + "mlp.fc2", d, I);
    b.layer_norm(l + "layer_norm2.", d);
  }
  b.layer_norm(p + "post_layernorm.", d);
  if (o.projection) b.linear("visual_projection.weight", o.projection_dim, d);
  nlohmann::ordered_json v;
  v["attention_dropout"] = 0.0;
  v["hidden_act"] = "quick_gelu";
  v["initializer_factor"] = 1.0;
  v["initializer_range"] = 0.02;
  v["intermediate_size"] = I;
  v["layer_norm_eps"] = s.epsilon;
  detail::image_config(v, s);
  v["projection_dim"] = o.projection_dim;
  nlohmann::ordered_json c;
  if (o.whole) {
    // A token of the text tower, its projection and the logit scale: skipped.
    b.linear("text_model.embeddings.token_embedding.weight", 10, d);
    b.linear("text_projection.weight", o.projection_dim, d);
    b.vector("logit_scale", 1, 0.0, 2.6592);
    v["model_type"] = "clip_vision_model";
    c["architectures"] = {"CLIPModel"};
    c["logit_scale_init_value"] = 2.6592;
    c["model_type"] = "clip";
    c["projection_dim"] = o.projection_dim;
    c["text_config"] = {{"hidden_size", d}, {"model_type", "clip_text_model"}};
    c["torch_dtype"] = detail::torch_dtype(dtype);
    c["vision_config"] = v;
  } else {
    c = v;
    c["architectures"] = {o.projection ? "CLIPVisionModelWithProjection" : "CLIPVisionModel"};
    c["model_type"] = "clip_vision_model";
    c["torch_dtype"] = detail::torch_dtype(dtype);
  }
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- DINOv2 (Dinov2ForImageClassification / Dinov2Model): layer scale on both
// branches, mask_token, classifier over [cls, mean of the patch tokens]
struct Dinov2Options {
  ImageSizes sizes = {};
  bool prefix = true;      // "dinov2." (Dinov2ForImageClassification), else bare (Dinov2Model)
  bool classifier = true;  // classifier.{weight,bias} (K, 2d)
};

inline Fixture write_dinov2_fixture(const fs::path& dir, const Dinov2Options& o, Dtype dtype,
                                    std::uint64_t seed) {
  const ImageSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const std::string p = o.prefix ? "dinov2." : "";
  detail::Builder b(seed);
  detail::vit_embeddings(b, p + "embeddings.", s, {"cls_token"});
  b.vector(p + "embeddings.mask_token", d, 0.1, 0.0);
  b.reshape(p + "embeddings.mask_token", {1, d});
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "encoder.layer.", i);
    b.layer_norm(l + "norm1.", d);
    detail::vit_attention(b, l, d);
    b.vector(l + "layer_scale1.lambda1", d, 0.5, 1.0);
    b.layer_norm(l + "norm2.", d);
    detail::residual_mlp(b, l + "mlp.fc1", l + "mlp.fc2", d, I);
    b.vector(l + "layer_scale2.lambda1", d, 0.5, 1.0);
  }
  b.layer_norm(p + "layernorm.", d);
  if (o.classifier) {
    b.linear("classifier.weight", s.classes, 2 * d);
    b.bias("classifier.bias", s.classes);
  }
  nlohmann::ordered_json c;
  c["apply_layernorm"] = true;
  c["architectures"] = {o.classifier ? "Dinov2ForImageClassification" : "Dinov2Model"};
  c["attention_probs_dropout_prob"] = 0.0;
  c["drop_path_rate"] = 0.0;
  c["hidden_act"] = "gelu";
  c["hidden_dropout_prob"] = 0.0;
  detail::image_config(c, s);
  if (o.classifier) detail::labels_config(c, s.classes);
  c["initializer_range"] = 0.02;
  c["layer_norm_eps"] = s.epsilon;
  c["layerscale_value"] = 1.0;
  c["mlp_ratio"] = double(I) / double(d);
  c["model_type"] = "dinov2";
  c["qkv_bias"] = true;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  c["use_swiglu_ffn"] = false;
  return write_fixture(dir, c, b.tensors, dtype);
}

// --- DeiT (DeiTForImageClassificationWithTeacher / DeiTForImageClassification):
// ViT's names under "deit.", a distillation token after the cls token
struct DeitOptions {
  ImageSizes sizes = {.epsilon = 1e-12};
  bool teacher = true;      // cls_classifier and distillation_classifier, else classifier
  bool mask_token = false;  // embeddings.mask_token (use_mask_token)
};

inline Fixture write_deit_fixture(const fs::path& dir, const DeitOptions& o, Dtype dtype,
                                  std::uint64_t seed) {
  const ImageSizes& s = o.sizes;
  const int d = s.width, I = s.mlp_width();
  const std::string p = "deit.";
  detail::Builder b(seed);
  detail::vit_embeddings(b, p + "embeddings.", s, {"cls_token", "distillation_token"});
  if (o.mask_token) detail::image_token(b, p + "embeddings.mask_token", d);
  for (int i = 0; i < s.layers; ++i) {
    const std::string l = detail::layer(p + "encoder.layer.", i);
    b.layer_norm(l + "layernorm_before.", d);
    detail::vit_attention(b, l, d);
    b.layer_norm(l + "layernorm_after.", d);
    detail::residual_mlp(b, l + "intermediate.dense", l + "output.dense", d, I);
  }
  b.layer_norm(p + "layernorm.", d);
  for (const char* head : o.teacher ? std::vector<const char*>{"cls_classifier", "distillation_classifier"}
                                    : std::vector<const char*>{"classifier"}) {
    b.linear(std::string(head) + ".weight", s.classes, d);
    b.bias(std::string(head) + ".bias", s.classes);
  }
  nlohmann::ordered_json c;
  c["architectures"] = {o.teacher ? "DeiTForImageClassificationWithTeacher"
                                  : "DeiTForImageClassification"};
  c["attention_probs_dropout_prob"] = 0.0;
  c["encoder_stride"] = 16;
  c["hidden_act"] = "gelu";
  c["hidden_dropout_prob"] = 0.0;
  detail::image_config(c, s);
  detail::labels_config(c, s.classes);
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = I;
  c["layer_norm_eps"] = s.epsilon;
  c["model_type"] = "deit";
  c["qkv_bias"] = true;
  c["torch_dtype"] = detail::torch_dtype(dtype);
  return write_fixture(dir, c, b.tensors, dtype);
}

}  // namespace prenorm_test::hf
