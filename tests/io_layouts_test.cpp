// Tests of the checkpoint layouts: include/prenorm/io/hf_gpt2.hpp, hf_vit.hpp,
// prenorm_layout.hpp and any_model.hpp.
//
// Models are tiny random Pre-LN GPTs and ViTs with random norm affines and
// biases. Checked:
//  - Hugging Face GPT-2 files (with and without the "transformer." prefix,
//    without lm_head.weight, with a copy of wte as lm_head.weight, with a
//    separate lm_head.weight, with the old attn.bias / attn.masked_bias
//    buffers) load into models whose logits equal the source model's exactly
//    (F32 files of float models), and equal those of an independent reference
//    forward written from Hugging Face's definitions that reads the file's
//    tensors directly (Conv1D (in, out), c_attn split into q | k | v);
//  - the same for ViT files (with and without "vit."), against a reference
//    with the (d, C, p, p) convolution and separate query / key / value;
//  - config.json parsing and writing (defaults, n_inner null, activations,
//    num_labels / id2label) and its errors, which name the key and the file;
//  - missing, unknown and misshapen tensors are refused with messages naming
//    the file, the tensor, and the expected and actual shapes;
//  - prenorm's layout round-trips every architecture (GPT untied, tied,
//    keep-tied, with a head bias; ViT) exactly in F32
//    (float) and F64 (double): every tensor and every config field; its
//    metadata is validated strictly;
//  - the path loaders load_hf_gpt2(path), load_hf_vit(path) find config.json
//    beside the file or take one given, and without one name the path they
//    looked for; load_prenorm(path) loads too;
//  - detect_layout and load_any_model, with config.json beside the file or given.

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::TransformerConfig;
using prenorm::Arch;
using prenorm::Gpt;
using prenorm::GptConfig;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vit;
using prenorm::VitConfig;
using io::Dtype;
using io::FormatError;
using io::SafetensorsFile;
using io::SafetensorsWriter;
using MatD = RowMatrix<double>;

// --- helpers -----------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "prenorm-layouts-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code error;
    fs::remove_all(path_, error);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Expects `body` to throw prenorm::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& body, const std::vector<std::string>& parts) {
  try {
    body();
    ADD_FAILURE() << "no exception; expected one mentioning '" << parts.front() << "'";
  } catch (const prenorm::Error& error) {
    const std::string message = error.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "the message does not mention '" << part << "':\n  " << message;
  }
}

GptConfig tiny_gpt(bool tied = true) {
  return GptConfig{.vocab = 29, .context = 12, .width = 12, .heads = 3, .layers = 2,
                   .mlp_width = 20, .epsilon = 1e-5, .activation = prenorm::Activation::GeluTanh,
                   .tied = tied, .head_bias = false};
}

VitConfig tiny_vit() {
  return VitConfig{.image_size = 8, .patch_size = 4, .channels = 2, .classes = 7, .width = 10,
                   .heads = 2, .layers = 2, .mlp_width = 16, .epsilon = 1e-12,
                   .activation = prenorm::Activation::GeluErf};
}

template <class S>
Gpt<Arch::PreLN, S> random_gpt(bool tied, std::uint64_t seed) {
  Gpt<Arch::PreLN, S> model(tiny_gpt(tied));
  model.init_random(seed, 0.3, /*random_affine=*/true);
  return model;
}

template <class S>
Vit<Arch::PreLN, S> random_vit(std::uint64_t seed) {
  Vit<Arch::PreLN, S> model(tiny_vit());
  model.init_random(seed, 0.3, /*random_affine=*/true);
  return model;
}

const std::vector<int> kTokens = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};

template <class S>
std::vector<S> random_images(const TransformerConfig& c, Index batch, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<S> pixels(std::size_t(batch * c.channels * c.image_size * c.image_size));
  for (S& p : pixels) p = S(normal(rng));
  return pixels;
}

template <class Model>
RowMatrix<typename Model::Scalar> gpt_logits(Model& model) {
  return model.forward(prenorm::TokenBatch{kTokens, 1, Index(kTokens.size())});
}

template <class Model>
RowMatrix<typename Model::Scalar> vit_logits(Model& model, const std::vector<typename Model::Scalar>& images,
                                             Index batch) {
  const TransformerConfig& c = model.config;
  return model.forward(prenorm::ImageBatch<typename Model::Scalar>{
      images, batch, c.channels, c.image_size, c.image_size});
}

// max |a - b| / max |b|
template <class A, class B>
double relative_error(const A& a, const B& b) {
  const MatD x = a.template cast<double>(), y = b.template cast<double>();
  return (x - y).cwiseAbs().maxCoeff() / std::max(y.cwiseAbs().maxCoeff(), 1e-300);
}

// Every tensor (and the config) of two models, compared exactly.
template <class M1, class M2>
void expect_same_parameters(const M1& a, const M2& b) {
  std::vector<std::pair<std::string, MatD>> first, second;
  const auto collect = [](auto& list) {
    return [&list](const std::string& name, const auto& t) {
      list.emplace_back(name, MatD(t.template cast<double>()));
    };
  };
  a.visit_parameters(collect(first));
  b.visit_parameters(collect(second));
  ASSERT_EQ(first.size(), second.size());
  for (std::size_t i = 0; i < first.size(); ++i) {
    ASSERT_EQ(first[i].first, second[i].first);
    ASSERT_EQ(first[i].second.rows(), second[i].second.rows()) << first[i].first;
    ASSERT_EQ(first[i].second.cols(), second[i].second.cols()) << first[i].first;
    EXPECT_TRUE(first[i].second == second[i].second) << first[i].first << " differs";
  }
}

void expect_same_config(const TransformerConfig& a, const TransformerConfig& b) {
  EXPECT_EQ(a.stem, b.stem);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.context, b.context);
  EXPECT_EQ(a.image_size, b.image_size);
  EXPECT_EQ(a.patch_size, b.patch_size);
  EXPECT_EQ(a.channels, b.channels);
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.heads, b.heads);
  EXPECT_EQ(a.layers, b.layers);
  EXPECT_EQ(a.mlp_width, b.mlp_width);
  EXPECT_EQ(a.epsilon, b.epsilon);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.topology, b.topology);
  EXPECT_EQ(a.head_size(), b.head_size());
  EXPECT_EQ(a.head, b.head);
  EXPECT_EQ(a.tied, b.tied);
  EXPECT_EQ(a.head_bias, b.head_bias);
  EXPECT_EQ(a.classes, b.classes);
}

// Copies `file` into a new file at `path`, with `metadata` as its metadata,
// every tensor passed through `edit` (return false to drop it; it may change
// the name, shape and values), plus `extra` tensors (all F32).
struct EditableTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};
void rewrite(const SafetensorsFile& file, const fs::path& path,
             const std::map<std::string, std::string>& metadata,
             const std::function<bool(EditableTensor&)>& edit = {},
             const std::vector<EditableTensor>& extra = {}) {
  SafetensorsWriter writer;
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  for (const std::string& name : file.names()) {
    EditableTensor tensor{name, file.info(name).shape, file.values<float>(name)};
    if (edit && !edit(tensor)) continue;
    writer.add(tensor.name, Dtype::F32, tensor.shape, std::span<const float>(tensor.values));
  }
  for (const EditableTensor& tensor : extra)
    writer.add(tensor.name, Dtype::F32, tensor.shape, std::span<const float>(tensor.values));
  writer.write(path);
}

// --- independent reference forwards, from Hugging Face's definitions ----------

// Row-wise LayerNorm of x [n x d] with weight, bias (d).
MatD ref_layer_norm(const MatD& x, const std::vector<double>& w, const std::vector<double>& b,
                    double eps) {
  MatD y(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    double mean = 0, var = 0;
    for (Index c = 0; c < x.cols(); ++c) mean += x(r, c);
    mean /= double(x.cols());
    for (Index c = 0; c < x.cols(); ++c) var += (x(r, c) - mean) * (x(r, c) - mean);
    var /= double(x.cols());
    for (Index c = 0; c < x.cols(); ++c)
      y(r, c) = (x(r, c) - mean) / std::sqrt(var + eps) * w[std::size_t(c)] + b[std::size_t(c)];
  }
  return y;
}

double gelu_new(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
double gelu_erf(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

// Attention over q, k, v [n x (heads*hd)]: head h at columns h*hd.
MatD ref_attention(const MatD& q, const MatD& k, const MatD& v, Index heads, bool causal) {
  const Index n = q.rows(), hd = q.cols() / heads;
  MatD context = MatD::Zero(n, q.cols());
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < n; ++i) {
      const Index last = causal ? i : n - 1;
      std::vector<double> scores(std::size_t(last + 1));
      double top = -1e300;
      for (Index j = 0; j <= last; ++j) {
        double s = 0;
        for (Index c = 0; c < hd; ++c) s += q(i, h * hd + c) * k(j, h * hd + c);
        scores[std::size_t(j)] = s / std::sqrt(double(hd));
        top = std::max(top, scores[std::size_t(j)]);
      }
      double total = 0;
      for (double& s : scores) total += (s = std::exp(s - top));
      for (Index j = 0; j <= last; ++j)
        for (Index c = 0; c < hd; ++c)
          context(i, h * hd + c) += scores[std::size_t(j)] / total * v(j, h * hd + c);
    }
  return context;
}

// A tensor of the file as a (rows x cols) matrix of its values in C order.
MatD tensor(const SafetensorsFile& f, const std::string& name, Index rows, Index cols) {
  const std::vector<double> v = f.values<double>(name);
  EXPECT_EQ(Index(v.size()), rows * cols) << name;
  return Eigen::Map<const MatD>(v.data(), rows, cols);
}

// x [n x in] Conv1D: x W + b with W (in, out).
MatD conv1d(const MatD& x, const SafetensorsFile& f, const std::string& name, Index in, Index out) {
  MatD y = x * tensor(f, name + ".weight", in, out);
  const std::vector<double> b = f.values<double>(name + ".bias");
  for (Index r = 0; r < y.rows(); ++r)
    for (Index c = 0; c < out; ++c) y(r, c) += b[std::size_t(c)];
  return y;
}

// x [n x in] torch Linear: x W^T + b with W (out, in).
MatD linear(const MatD& x, const SafetensorsFile& f, const std::string& name, Index in, Index out) {
  MatD y = x * tensor(f, name + ".weight", out, in).transpose();
  const std::vector<double> b = f.values<double>(name + ".bias");
  for (Index r = 0; r < y.rows(); ++r)
    for (Index c = 0; c < out; ++c) y(r, c) += b[std::size_t(c)];
  return y;
}

// GPT2LMHeadModel's logits [tokens x vocab], from the file's tensors.
MatD reference_gpt2_logits(const SafetensorsFile& f, const TransformerConfig& c, const std::string& p) {
  const Index n = Index(kTokens.size()), d = c.width, I = c.mlp_width;
  const MatD wte = tensor(f, p + "wte.weight", c.vocab, d), wpe = tensor(f, p + "wpe.weight", c.context, d);
  MatD h(n, d);
  for (Index t = 0; t < n; ++t) h.row(t) = wte.row(kTokens[std::size_t(t)]) + wpe.row(t);
  const auto ln = [&](const MatD& x, const std::string& name) {
    return ref_layer_norm(x, f.values<double>(name + ".weight"), f.values<double>(name + ".bias"),
                          c.epsilon);
  };
  for (Index i = 0; i < c.layers; ++i) {
    const std::string b = p + "h." + std::to_string(i) + ".";
    const MatD qkv = conv1d(ln(h, b + "ln_1"), f, b + "attn.c_attn", d, 3 * d);
    // GPT2Attention: query, key, value = c_attn(x).split(n_embd, dim=2)
    const MatD context = ref_attention(qkv.middleCols(0, d), qkv.middleCols(d, d),
                                       qkv.middleCols(2 * d, d), c.heads, true);
    h += conv1d(context, f, b + "attn.c_proj", d, d);
    MatD inner = conv1d(ln(h, b + "ln_2"), f, b + "mlp.c_fc", d, I);
    inner = inner.unaryExpr([](double x) { return gelu_new(x); });
    h += conv1d(inner, f, b + "mlp.c_proj", I, d);
  }
  const MatD x = ln(h, p + "ln_f");
  const MatD head = f.contains("lm_head.weight") ? tensor(f, "lm_head.weight", c.vocab, d) : wte;
  return x * head.transpose();
}

// ViTForImageClassification's logits [batch x classes], from the file's tensors.
MatD reference_vit_logits(const SafetensorsFile& f, const TransformerConfig& c, const std::string& p,
                          const std::vector<double>& images, Index batch) {
  const Index d = c.width, C = c.channels, ps = c.patch_size, G = c.grid(), N = c.image_size;
  const Index T = c.tokens(), I = c.mlp_width;
  const std::string e = p + "embeddings.";
  const std::vector<double> conv = f.values<double>(e + "patch_embeddings.projection.weight");
  const std::vector<double> conv_bias = f.values<double>(e + "patch_embeddings.projection.bias");
  const std::vector<double> cls = f.values<double>(e + "cls_token");
  const MatD pos = tensor(f, e + "position_embeddings", T, d);
  MatD logits(batch, c.classes);
  for (Index b = 0; b < batch; ++b) {
    MatD h(T, d);
    for (Index j = 0; j < d; ++j) h(0, j) = cls[std::size_t(j)] + pos(0, j);
    // Conv2d(C, d, kernel p, stride p), then flatten(2).transpose(1, 2).
    for (Index py = 0; py < G; ++py)
      for (Index px = 0; px < G; ++px)
        for (Index j = 0; j < d; ++j) {
          double s = conv_bias[std::size_t(j)];
          for (Index ch = 0; ch < C; ++ch)
            for (Index ky = 0; ky < ps; ++ky)
              for (Index kx = 0; kx < ps; ++kx)
                s += conv[std::size_t(((j * C + ch) * ps + ky) * ps + kx)] *
                     images[std::size_t(((b * C + ch) * N + py * ps + ky) * N + px * ps + kx)];
          h(1 + py * G + px, j) = s + pos(1 + py * G + px, j);
        }
    const auto ln = [&](const MatD& x, const std::string& name) {
      return ref_layer_norm(x, f.values<double>(name + ".weight"), f.values<double>(name + ".bias"),
                            c.epsilon);
    };
    for (Index i = 0; i < c.layers; ++i) {
      const std::string l = p + "encoder.layer." + std::to_string(i) + ".";
      const MatD x = ln(h, l + "layernorm_before");
      const std::string a = l + "attention.attention.";
      const MatD context = ref_attention(linear(x, f, a + "query", d, d), linear(x, f, a + "key", d, d),
                                         linear(x, f, a + "value", d, d), c.heads, false);
      h += linear(context, f, l + "attention.output.dense", d, d);
      MatD inner = linear(ln(h, l + "layernorm_after"), f, l + "intermediate.dense", d, I);
      inner = inner.unaryExpr([](double v) { return gelu_erf(v); });
      h += linear(inner, f, l + "output.dense", I, d);
    }
    const MatD x = ln(h, p + "layernorm");
    logits.row(b) = linear(x.topRows(1), f, "classifier", d, c.classes);
  }
  return logits;
}

// ===========================================================================
// Hugging Face GPT-2
// ===========================================================================

struct Gpt2Case {
  bool prefix;
  bool tied;
  bool tied_head;  // a tied model written with lm_head.weight = wte
  bool buffers;
};

class HfGpt2Layout : public ::testing::TestWithParam<Gpt2Case> {};

TEST_P(HfGpt2Layout, LoadsToTheSameLogits) {
  const Gpt2Case k = GetParam();
  TempDir dir;
  auto source = random_gpt<float>(k.tied, 11);
  io::save_hf_gpt2(source, dir / "model.safetensors", Dtype::F32,
                   {.prefix = k.prefix, .tied_head = k.tied_head, .buffers = k.buffers});
  const SafetensorsFile file(dir / "model.safetensors");
  EXPECT_EQ(file.contains("transformer.wte.weight"), k.prefix);
  EXPECT_EQ(file.contains("lm_head.weight"), !k.tied || k.tied_head);

  const TransformerConfig config = io::gpt2_config_from_json(io::gpt2_config_to_json(source.config), "json");
  auto loaded = io::load_hf_gpt2<float>(file, config);
  EXPECT_EQ(loaded.config.tied, k.tied) << "a copy of wte as lm_head.weight is a tied head";
  expect_same_config(loaded.config, source.config);
  expect_same_parameters(loaded, source);
  const RowMatrix<float> expected = gpt_logits(source);
  EXPECT_TRUE(gpt_logits(loaded) == expected) << "F32 weights load exactly: same logits";

  // Against Hugging Face's definitions, read straight from the file.
  const MatD reference = reference_gpt2_logits(file, source.config, k.prefix ? "transformer." : "");
  auto as_double = io::load_hf_gpt2<double>(file, config);
  const double error = relative_error(gpt_logits(as_double), reference);
  std::printf("[ max error ] GPT-2 vs reference: %.3g\n", error);
  EXPECT_LT(error, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, HfGpt2Layout,
    ::testing::Values(Gpt2Case{false, true, false, false}, Gpt2Case{true, true, false, false},
                      Gpt2Case{false, true, true, false}, Gpt2Case{true, true, true, true},
                      Gpt2Case{false, false, false, false}, Gpt2Case{true, false, false, true}),
    [](const auto& info) {
      const Gpt2Case& k = info.param;
      return std::string(k.prefix ? "Prefixed" : "Bare") +
             (k.tied ? (k.tied_head ? "TiedWithHeadCopy" : "Tied") : "Untied") +
             (k.buffers ? "WithBuffers" : "");
    });

TEST(HfGpt2, HalfPrecisionFilesLoadRounded) {
  TempDir dir;
  auto source = random_gpt<float>(true, 12);
  for (Dtype dtype : {Dtype::F16, Dtype::BF16, Dtype::F64}) {
    io::save_hf_gpt2(source, dir / "model.safetensors", dtype);
    const SafetensorsFile file(dir / "model.safetensors");
    EXPECT_EQ(io::hf_gpt2_dtype(file, source.config), dtype);
    auto loaded = io::load_hf_gpt2<float>(file, source.config);
    const double tolerance = dtype == Dtype::F64 ? 0 : dtype == Dtype::F16 ? 5e-3 : 3e-2;
    EXPECT_LE(relative_error(gpt_logits(loaded), gpt_logits(source)), tolerance)
        << io::dtype_name(dtype);
  }
}

TEST(HfGpt2, AHeadThatDiffersFromWteIsUntied) {
  TempDir dir;
  auto source = random_gpt<float>(true, 13);
  io::save_hf_gpt2(source, dir / "a.safetensors", Dtype::F32, {.tied_head = true});
  const SafetensorsFile a(dir / "a.safetensors");
  rewrite(a, dir / "b.safetensors", a.metadata(), [](EditableTensor& t) {
    if (t.name == "lm_head.weight") t.values[5] += 1.0f;
    return true;
  });
  auto loaded = io::load_hf_gpt2<float>(SafetensorsFile(dir / "b.safetensors"), source.config);
  EXPECT_FALSE(loaded.config.tied);
  EXPECT_EQ(loaded.head.weight.rows(), source.config.vocab);
}

TEST(HfGpt2, LoadsFromAPathWithItsConfigJson) {
  TempDir dir;
  auto source = random_gpt<float>(false, 14);
  const fs::path model = dir / "gpt2/model.safetensors";
  fs::create_directories(model.parent_path());
  io::save_hf_gpt2(source, model, Dtype::F32);
  // Without config.json the error names the path it looked for.
  EXPECT_THROW(io::load_hf_gpt2<float>(model), io::FileError);
  expect_error([&] { io::load_hf_gpt2<float>(model); },
               {"prenorm::hf_gpt2: " + model.string() + ": ", "needs its config.json",
                "none at '" + (dir / "gpt2/config.json").string() + "'"});
  expect_error([&] { io::load_hf_gpt2<float>(dir / "gpt2/none.safetensors"); },
               {(dir / "gpt2/none.safetensors").string(), "cannot open"});

  const RowMatrix<float> expected = gpt_logits(source);
  io::write_json_file(dir / "gpt2/config.json", io::gpt2_config_to_json(source.config));
  auto beside = io::load_hf_gpt2<float>(model);
  EXPECT_TRUE(gpt_logits(beside) == expected) << "config.json beside it";
  fs::rename(dir / "gpt2/config.json", dir / "elsewhere.json");
  auto given = io::load_hf_gpt2<float>(model, dir / "elsewhere.json");
  EXPECT_TRUE(gpt_logits(given) == expected) << "config.json given";
}

TEST(HfGpt2, ConfigJson) {
  nlohmann::json json = {{"model_type", "gpt2"}, {"n_embd", 12},      {"n_head", 3},
                         {"n_layer", 2},         {"vocab_size", 29},  {"n_positions", 12},
                         {"n_inner", nullptr}};
  TransformerConfig c = io::gpt2_config_from_json(json, "config.json");
  EXPECT_EQ(c.mlp_width, 48) << "n_inner null: 4 n_embd";
  EXPECT_EQ(c.epsilon, 1e-5);
  EXPECT_EQ(c.activation, prenorm::Activation::GeluTanh) << "default gelu_new";
  json["activation_function"] = "gelu";
  json["n_inner"] = 20;
  json["layer_norm_epsilon"] = 1e-6;
  c = io::gpt2_config_from_json(json, "config.json");
  EXPECT_EQ(c.activation, prenorm::Activation::GeluErf);
  EXPECT_EQ(c.mlp_width, 20);
  EXPECT_EQ(c.epsilon, 1e-6);
  json["activation_function"] = "gelu_python";
  EXPECT_EQ(io::gpt2_config_from_json(json, "x").activation, prenorm::Activation::GeluErf);

  // Round trip.
  const TransformerConfig back = io::gpt2_config_from_json(io::gpt2_config_to_json(c), "x");
  expect_same_config(back, c);

  // Errors name the key and the file.
  auto bad = json;
  bad["activation_function"] = "swish";
  expect_error([&] { io::gpt2_config_from_json(bad, "my/config.json"); },
               {"my/config.json", "activation_function", "swish"});
  bad = json;
  bad.erase("n_embd");
  expect_error([&] { io::gpt2_config_from_json(bad, "my/config.json"); },
               {"my/config.json", "missing 'n_embd'"});
  bad = json;
  bad["n_head"] = "3";
  expect_error([&] { io::gpt2_config_from_json(bad, "c.json"); }, {"c.json", "'n_head'"});
  bad = json;
  bad["n_head"] = 5;
  expect_error([&] { io::gpt2_config_from_json(bad, "c.json"); }, {"c.json", "divisible"});
  bad = json;
  bad["layer_norm_epsilon"] = -1;
  expect_error([&] { io::gpt2_config_from_json(bad, "c.json"); }, {"layer_norm_epsilon"});
  bad = json;
  bad["scale_attn_by_inverse_layer_idx"] = true;
  expect_error([&] { io::gpt2_config_from_json(bad, "c.json"); },
               {"scale_attn_by_inverse_layer_idx"});
  bad = json;
  bad["model_type"] = "llama";
  expect_error([&] { io::gpt2_config_from_json(bad, "c.json"); }, {"model_type", "llama"});
}

TEST(HfGpt2, BadTensorsAreNamed) {
  TempDir dir;
  auto source = random_gpt<float>(true, 14);
  const fs::path good = dir / "good.safetensors";
  io::save_hf_gpt2(source, good, Dtype::F32);
  const SafetensorsFile file(good);
  const TransformerConfig& c = source.config;
  const fs::path bad = dir / "bad.safetensors";

  rewrite(file, bad, {}, [](EditableTensor& t) { return t.name != "h.1.mlp.c_fc.bias"; });
  expect_error([&] { io::load_hf_gpt2<float>(SafetensorsFile(bad), c); },
               {bad.string(), "missing tensor 'h.1.mlp.c_fc.bias'"});

  rewrite(file, bad, {}, {}, {{"h.0.attn.extra", {2}, {1, 2}}});
  expect_error([&] { io::load_hf_gpt2<float>(SafetensorsFile(bad), c); },
               {bad.string(), "unknown tensor 'h.0.attn.extra'"});

  rewrite(file, bad, {}, [](EditableTensor& t) {
    if (t.name == "h.0.attn.c_attn.weight") {  // stored (out, in) by mistake
      std::swap(t.shape[0], t.shape[1]);
    }
    return true;
  });
  expect_error([&] { io::load_hf_gpt2<float>(SafetensorsFile(bad), c); },
               {bad.string(), "'h.0.attn.c_attn.weight'", "shape [36, 12]", "expected [12, 36]"});

  // A config with more layers than the file: the missing tensors are named.
  TransformerConfig more = c;
  more.layers = 3;
  expect_error([&] { io::load_hf_gpt2<float>(file, more); }, {"missing tensors 'h.2.ln_1.weight'"});
  // Fewer layers: the extra ones are unknown.
  TransformerConfig fewer = c;
  fewer.layers = 1;
  expect_error([&] { io::load_hf_gpt2<float>(file, fewer); }, {"unknown tensors 'h.1."});

  // Both namings in one file.
  rewrite(file, bad, {}, {}, {{"transformer.wte.weight", {1}, {0}}});
  expect_error([&] { io::load_hf_gpt2<float>(SafetensorsFile(bad), c); },
               {"transformer.wte.weight", "wte.weight"});

  // Values that are not floats: the same bytes, declared I32.
  {
    std::vector<std::byte> bytes = io::save_hf_gpt2(source, Dtype::F32).bytes();
    std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const std::size_t at = text.find("\"F32\"", text.find("\"wpe.weight\""));
    ASSERT_NE(at, std::string::npos);
    bytes[at + 1] = std::byte{'I'};
    io::write_file_atomically(bad, std::span<const std::byte>(bytes));
    expect_error([&] { io::load_hf_gpt2<float>(SafetensorsFile(bad), c); },
                 {bad.string(), "'wpe.weight'", "I32"});
  }
}

// ===========================================================================
// Hugging Face ViT
// ===========================================================================

class HfVitLayout : public ::testing::TestWithParam<bool> {};

TEST_P(HfVitLayout, LoadsToTheSameLogits) {
  const bool prefix = GetParam();
  TempDir dir;
  auto source = random_vit<float>(21);
  io::save_hf_vit(source, dir / "model.safetensors", Dtype::F32, {.prefix = prefix});
  const SafetensorsFile file(dir / "model.safetensors");
  EXPECT_EQ(file.contains("vit.embeddings.cls_token"), prefix);
  EXPECT_EQ(file.info((prefix ? "vit." : "") + std::string("embeddings.patch_embeddings.projection.weight")).shape,
            (std::vector<std::int64_t>{10, 2, 4, 4}));

  const TransformerConfig config = io::vit_config_from_json(io::vit_config_to_json(source.config), "json");
  auto loaded = io::load_hf_vit<float>(file, config);
  expect_same_config(loaded.config, source.config);
  expect_same_parameters(loaded, source);
  const auto images = random_images<float>(source.config, 3, 5);
  const RowMatrix<float> expected = vit_logits(source, images, 3);
  EXPECT_TRUE(vit_logits(loaded, images, 3) == expected);

  const std::vector<double> images_d(images.begin(), images.end());
  const MatD reference = reference_vit_logits(file, source.config, prefix ? "vit." : "", images_d, 3);
  auto as_double = io::load_hf_vit<double>(file, config);
  const double error = relative_error(vit_logits(as_double, images_d, 3), reference);
  std::printf("[ max error ] ViT vs reference: %.3g\n", error);
  EXPECT_LT(error, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Prefix, HfVitLayout, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Vit" : "Bare"; });

TEST(HfVit, LoadsFromAPathWithItsConfigJson) {
  TempDir dir;
  auto source = random_vit<float>(22);
  const fs::path model = dir / "vit/model.safetensors";
  fs::create_directories(model.parent_path());
  io::save_hf_vit(source, model, Dtype::F32);
  EXPECT_THROW(io::load_hf_vit<float>(model), io::FileError);
  expect_error([&] { io::load_hf_vit<float>(model); },
               {"prenorm::hf_vit: " + model.string() + ": ", "needs its config.json",
                "none at '" + (dir / "vit/config.json").string() + "'"});

  const auto images = random_images<float>(source.config, 3, 5);
  const RowMatrix<float> expected = vit_logits(source, images, 3);
  io::write_json_file(dir / "vit/config.json", io::vit_config_to_json(source.config));
  auto beside = io::load_hf_vit<float>(model);
  EXPECT_TRUE(vit_logits(beside, images, 3) == expected) << "config.json beside it";
  fs::rename(dir / "vit/config.json", dir / "elsewhere.json");
  auto given = io::load_hf_vit<float>(model, dir / "elsewhere.json");
  EXPECT_TRUE(vit_logits(given, images, 3) == expected) << "config.json given";
}

TEST(HfVit, ConfigJson) {
  nlohmann::json json = {{"model_type", "vit"},      {"hidden_size", 10},    {"num_hidden_layers", 2},
                         {"num_attention_heads", 2}, {"intermediate_size", 16}, {"image_size", 8},
                         {"patch_size", 4},          {"num_labels", 7}};
  TransformerConfig c = io::vit_config_from_json(json, "config.json");
  EXPECT_EQ(c.channels, 3);
  EXPECT_EQ(c.epsilon, 1e-12);
  EXPECT_EQ(c.activation, prenorm::Activation::GeluErf);
  EXPECT_EQ(c.classes, 7);
  json.erase("num_labels");
  json["id2label"] = {{"0", "cat"}, {"1", "dog"}, {"2", "eel"}};
  EXPECT_EQ(io::vit_config_from_json(json, "x").classes, 3) << "the size of id2label";
  json["num_labels"] = 4;
  expect_error([&] { io::vit_config_from_json(json, "c.json"); }, {"c.json", "num_labels", "id2label"});
  json.erase("num_labels");
  json.erase("id2label");
  expect_error([&] { io::vit_config_from_json(json, "c.json"); }, {"c.json", "num_labels"});
  json["num_labels"] = 5;
  json["hidden_act"] = "swish";
  expect_error([&] { io::vit_config_from_json(json, "c.json"); }, {"c.json", "hidden_act", "swish"});
  json["hidden_act"] = "gelu_new";
  json["layer_norm_eps"] = 1e-6;
  c = io::vit_config_from_json(json, "c.json");
  EXPECT_EQ(c.activation, prenorm::Activation::GeluTanh);
  expect_same_config(io::vit_config_from_json(io::vit_config_to_json(c), "x"), c);
  json["image_size"] = 10;
  expect_error([&] { io::vit_config_from_json(json, "c.json"); }, {"c.json", "image_size"});
}

TEST(HfVit, BadTensorsAreNamed) {
  TempDir dir;
  auto source = random_vit<float>(22);
  io::save_hf_vit(source, dir / "good.safetensors", Dtype::F32);
  const SafetensorsFile file(dir / "good.safetensors");
  const fs::path bad = dir / "bad.safetensors";
  rewrite(file, bad, {}, [](EditableTensor& t) {
    return t.name != "vit.encoder.layer.1.attention.attention.key.weight";
  });
  expect_error([&] { io::load_hf_vit<float>(SafetensorsFile(bad), source.config); },
               {bad.string(), "'vit.encoder.layer.1.attention.attention.key.weight'"});
  rewrite(file, bad, {}, [](EditableTensor& t) {
    if (t.name == "vit.embeddings.patch_embeddings.projection.weight") t.shape = {10, 32};
    return true;
  });
  expect_error([&] { io::load_hf_vit<float>(SafetensorsFile(bad), source.config); },
               {"'vit.embeddings.patch_embeddings.projection.weight'", "[10, 32]", "[10, 2, 4, 4]"});
  rewrite(file, bad, {}, {}, {{"vit.pooler.dense.bias", {10}, std::vector<float>(10)}});
  expect_error([&] { io::load_hf_vit<float>(SafetensorsFile(bad), source.config); },
               {"unknown tensor 'vit.pooler.dense.bias'"});
}

// ===========================================================================
// prenorm's layout
// ===========================================================================

template <class Model>
Model round_trip(const Model& model, Dtype dtype, const fs::path& path,
                 std::optional<Arch> converted_from = {}) {
  io::save_prenorm(model, path, dtype, {.converted_from = converted_from});
  const SafetensorsFile file(path);
  Model loaded = io::load_prenorm<Model>(file);
  expect_same_config(loaded.config, model.config);
  expect_same_parameters(loaded, model);
  EXPECT_EQ(io::read_prenorm_metadata(file).converted_from, converted_from);
  EXPECT_EQ(io::prenorm_dtype(file), dtype);
  // No empty tensors are stored.
  for (const std::string& name : file.names()) EXPECT_GT(file.info(name).element_count(), 0) << name;
  return loaded;
}

template <class S>
void round_trip_every_arch(Dtype dtype) {
  TempDir dir;
  int n = 0;
  const auto path = [&] { return dir / ("m" + std::to_string(n++) + ".safetensors"); };
  for (bool tied : {true, false}) {
    auto ln = random_gpt<S>(tied, 31);
    ln.config.epsilon = 1.2345678901234567e-5;  // needs 17 digits
    for (auto& b : ln.blocks) b.epsilon = S(ln.config.epsilon);
    auto back = round_trip(ln, dtype, path());
    EXPECT_TRUE(gpt_logits(back) == gpt_logits(ln));
    for (prenorm::TiedPolicy policy : {prenorm::TiedPolicy::Untie, prenorm::TiedPolicy::Keep}) {
      auto rms = prenorm::convert<Arch::PreRMSNorm>(ln, {.tied = policy});
      auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln, {.tied = policy});
      EXPECT_EQ(rms.tied_affine(), tied && policy == prenorm::TiedPolicy::Keep);
      round_trip(rms, dtype, path(), Arch::PreLN);
      auto crms_back = round_trip(crms, dtype, path(), Arch::PreLN);
      EXPECT_TRUE(gpt_logits(crms_back) == gpt_logits(crms));
      round_trip(prenorm::convert<Arch::PreLN>(crms), dtype, path(), Arch::PreCRMSNorm);
    }
  }
  auto vit = random_vit<S>(32);
  round_trip(vit, dtype, path());
  round_trip(prenorm::convert<Arch::PreRMSNorm>(vit), dtype, path(), Arch::PreLN);
  round_trip(prenorm::convert<Arch::PreCRMSNorm>(vit), dtype, path(), Arch::PreLN);
}

TEST(PrenormLayout, RoundTripsEveryArchitectureExactlyFloatF32) { round_trip_every_arch<float>(Dtype::F32); }
TEST(PrenormLayout, RoundTripsEveryArchitectureExactlyDoubleF64) { round_trip_every_arch<double>(Dtype::F64); }

// Parallel topologies and the newer activations: 'topology' is written only
// when not sequential (a sequential file is as before), and read back.
TEST(PrenormLayout, RoundTripsParallelTopologiesAndActivations) {
  TempDir dir;
  TransformerConfig c = tiny_gpt(false);
  c.topology = prenorm::BlockTopology::ParallelTwoNorms;
  c.activation = prenorm::Activation::QuickGelu;
  Gpt<Arch::PreLN, double> ln(c);
  ln.init_random(45, 0.3, /*random_affine=*/true);
  const auto back = round_trip(ln, Dtype::F64, dir / "two.safetensors");
  EXPECT_TRUE(gpt_logits(back) == gpt_logits(ln));
  const SafetensorsFile file(dir / "two.safetensors");
  EXPECT_EQ(file.metadata().at("topology"), "parallel_two_norms");
  EXPECT_EQ(file.metadata().at("activation"), "quick_gelu");
  EXPECT_TRUE(file.contains("blocks.1.norm2_gamma"));
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
  auto crms_back = round_trip(crms, Dtype::F64, dir / "crms.safetensors", Arch::PreLN);
  EXPECT_TRUE(gpt_logits(crms_back) == gpt_logits(crms));

  VitConfig v = tiny_vit();
  v.topology = prenorm::BlockTopology::ParallelSharedNorm;
  v.activation = prenorm::Activation::Relu;
  Vit<Arch::PreLN, float> vit(v);
  vit.init_random(46, 0.3, /*random_affine=*/true);
  round_trip(vit, Dtype::F32, dir / "shared.safetensors");
  const SafetensorsFile shared(dir / "shared.safetensors");
  EXPECT_EQ(shared.metadata().at("topology"), "parallel_shared_norm");
  EXPECT_FALSE(shared.contains("blocks.0.norm2_gamma")) << "a shared norm has no norm2";

  // Sequential: no 'topology' key; an explicit "sequential" reads as well.
  io::save_prenorm(random_gpt<float>(false, 47), dir / "seq.safetensors", Dtype::F32);
  const SafetensorsFile seq(dir / "seq.safetensors");
  EXPECT_EQ(seq.metadata().count("topology"), 0u);
  std::map<std::string, std::string> metadata = seq.metadata();
  metadata["topology"] = "sequential";
  rewrite(seq, dir / "explicit.safetensors", metadata);
  EXPECT_EQ(io::read_prenorm_metadata(SafetensorsFile(dir / "explicit.safetensors")).gpt.topology,
            prenorm::BlockTopology::Sequential);

  // Hugging Face's names: relu and quick_gelu both ways.
  for (auto [activation, name] : {std::pair{prenorm::Activation::Relu, "relu"},
                                  std::pair{prenorm::Activation::QuickGelu, "quick_gelu"}}) {
    GptConfig g = tiny_gpt(false);
    g.activation = activation;
    const nlohmann::json gj = io::gpt2_config_to_json(g);
    EXPECT_EQ(gj.at("activation_function"), name);
    EXPECT_EQ(io::gpt2_config_from_json(gj, "g.json").activation, activation);
    VitConfig w = tiny_vit();
    w.activation = activation;
    const nlohmann::json vj = io::vit_config_to_json(w);
    EXPECT_EQ(vj.at("hidden_act"), name);
    EXPECT_EQ(io::vit_config_from_json(vj, "v.json").activation, activation);
  }

  // Hugging Face's GPT-2 and ViT have sequential blocks only.
  expect_error([&] { (void)io::gpt2_config_to_json(c); }, {"parallel_two_norms", "sequential blocks only"});
  expect_error([&] { (void)io::vit_config_to_json(v); }, {"parallel_shared_norm", "sequential blocks only"});
}

TEST(PrenormLayout, NamesAndMetadata) {
  TempDir dir;
  auto ln = random_gpt<float>(true, 41);
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln, {.tied = prenorm::TiedPolicy::Keep});
  io::save_prenorm(crms, dir / "m.safetensors", Dtype::F32, {.converted_from = Arch::PreLN});
  const SafetensorsFile file(dir / "m.safetensors");
  for (const char* name : {"token_embedding.table", "position_embedding.table", "blocks.0.attn.qkv.weight",
                           "blocks.1.mlp.proj.bias", "tied_gamma", "tied_beta"})
    EXPECT_TRUE(file.contains(name)) << name;
  for (const char* name : {"final_gamma", "blocks.0.norm1_gamma", "head.weight", "head_bias"})
    EXPECT_FALSE(file.contains(name)) << name << " is empty in a keep-tied Pre-CRMSNorm model";
  EXPECT_EQ(file.info("token_embedding.table").shape, (std::vector<std::int64_t>{29, 12}));
  EXPECT_EQ(file.info("position_embedding.table").shape, (std::vector<std::int64_t>{12, 11}));
  const std::map<std::string, std::string> expected = {
      {"format", "prenorm"}, {"format_version", "1"}, {"kind", "gpt"},   {"arch", "pre_crmsnorm"},
      {"width", "12"},       {"heads", "3"},          {"head_dim", "4"}, {"layers", "2"},
      {"mlp_width", "20"},   {"vocab", "29"},         {"context", "12"}, {"epsilon", "1.0000000000000001e-05"},
      {"activation", "gelu_tanh"}, {"tied", "keep"},  {"head_bias", "false"},
      {"converted_from", "pre_ln"}};
  EXPECT_EQ(file.metadata(), expected);

  auto vit = random_vit<float>(42);
  io::save_prenorm(vit, dir / "v.safetensors", Dtype::F32);
  const SafetensorsFile v(dir / "v.safetensors");
  for (const char* name : {"patch.weight", "patch.bias", "cls_token", "position_embedding",
                           "blocks.1.norm2_beta", "final_gamma", "head.weight", "head.bias"})
    EXPECT_TRUE(v.contains(name)) << name;
  EXPECT_EQ(v.metadata().at("kind"), "vit");
  EXPECT_EQ(v.metadata().at("classes"), "7");
  EXPECT_EQ(v.metadata().at("image_size"), "8");
  EXPECT_EQ(v.metadata().at("patch_size"), "4");
  EXPECT_EQ(v.metadata().at("channels"), "2");
  EXPECT_EQ(v.metadata().at("converted_from"), "none");
}

TEST(PrenormLayout, LoadsFromAPath) {
  TempDir dir;
  auto vit = random_vit<float>(44);
  io::save_prenorm(vit, dir / "v.safetensors", Dtype::F32);
  expect_same_parameters(io::load_prenorm<decltype(vit)>(dir / "v.safetensors"), vit);
  expect_error([&] { io::load_prenorm<decltype(vit)>(dir / "none.safetensors"); },
               {(dir / "none.safetensors").string(), "cannot open"});
}

TEST(PrenormLayout, MetadataIsValidatedStrictly) {
  TempDir dir;
  auto ln = random_gpt<float>(false, 43);
  const fs::path good = dir / "good.safetensors";
  io::save_prenorm(ln, good, Dtype::F32);
  const SafetensorsFile file(good);
  const fs::path bad = dir / "bad.safetensors";
  const auto load = [&] { io::load_prenorm<Gpt<Arch::PreLN, float>>(SafetensorsFile(bad)); };
  const auto with = [&](const std::string& key, const std::optional<std::string>& value) {
    std::map<std::string, std::string> metadata = file.metadata();
    if (value) metadata[key] = *value;
    else metadata.erase(key);
    rewrite(file, bad, metadata);
  };
  for (const char* key : {"format_version", "kind", "arch", "width", "heads", "head_dim", "layers",
                          "mlp_width", "vocab", "context", "epsilon", "activation", "tied",
                          "head_bias", "converted_from"}) {
    with(key, std::nullopt);
    expect_error(load, {bad.string(), std::string("no '") + key + "'"});
  }
  const std::vector<std::pair<std::string, std::string>> bad_values = {
      {"format_version", "2"}, {"kind", "bert"},     {"arch", "post_ln"},   {"width", "-12"},
      {"width", "12.0"},       {"heads", "three"},   {"layers", ""},        {"epsilon", "0"},
      {"epsilon", "1e-5x"},    {"epsilon", "nan"},   {"activation", "swish"}, {"tied", "yes"},
      {"head_bias", "1"},      {"converted_from", "pre_foo"}, {"vocab", "0"},
      {"topology", "parallel"}};
  for (const auto& [key, value] : bad_values) {
    with(key, value);
    expect_error(load, {bad.string(), "'" + key + "'", "'" + value + "'"});
  }
  with("classes", "7");  // a ViT key in a GPT file
  expect_error(load, {bad.string(), "unknown key 'classes'"});
  with("mlp_width", "21");  // parses, but the tensors do not match
  expect_error(load, {bad.string(), "'blocks.0.mlp.fc.weight'", "[20, 12]", "expected [21, 12]"});
  // Wrong architecture or kind for the template.
  expect_error([&] { io::load_prenorm<Gpt<Arch::PreRMSNorm, float>>(file); }, {good.string(), "pre_ln"});
  expect_error([&] { io::load_prenorm<Vit<Arch::PreLN, float>>(file); }, {good.string(), "gpt"});
  // Tensors: missing, unknown, misshapen.
  rewrite(file, bad, file.metadata(), [](EditableTensor& t) { return t.name != "blocks.1.attn.out.bias"; });
  expect_error(load, {bad.string(), "missing tensor 'blocks.1.attn.out.bias'"});
  rewrite(file, bad, file.metadata(), {}, {{"blocks.2.norm1_gamma", {12}, std::vector<float>(12)}});
  expect_error(load, {bad.string(), "unknown tensor 'blocks.2.norm1_gamma'"});
  rewrite(file, bad, file.metadata(), [](EditableTensor& t) {
    if (t.name == "head.weight") t.shape = {12, 29};
    return true;
  });
  expect_error(load, {bad.string(), "'head.weight'", "[12, 29]", "expected [29, 12]"});
}

// ===========================================================================
// Layout detection and the run-time loader
// ===========================================================================

TEST(AnyModel, DetectsAndLoadsEveryLayout) {
  TempDir dir;
  auto gpt = random_gpt<float>(true, 51);
  auto vit = random_vit<float>(52);
  fs::create_directories(dir / "gpt2");
  fs::create_directories(dir / "vit");
  io::save_hf_gpt2(gpt, dir / "gpt2/model.safetensors", Dtype::F32, {.prefix = true});
  io::write_json_file(dir / "gpt2/config.json", io::gpt2_config_to_json(gpt.config));
  io::save_hf_vit(vit, dir / "vit/model.safetensors", Dtype::F16);
  io::write_json_file(dir / "vit/cfg.json", io::vit_config_to_json(vit.config));
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(gpt);
  io::save_prenorm(crms, dir / "crms.safetensors", Dtype::BF16, {.converted_from = Arch::PreLN});

  {
    const SafetensorsFile f(dir / "gpt2/model.safetensors");
    EXPECT_EQ(io::detect_layout(f), io::Layout::HfGpt2);
    auto loaded = io::load_any_model<float>(f);  // config.json beside it
    EXPECT_EQ(loaded.layout, io::Layout::HfGpt2);
    EXPECT_EQ(loaded.dtype, Dtype::F32);
    EXPECT_EQ(loaded.config_path, dir / "gpt2/config.json");
    ASSERT_EQ(loaded.model.index(), 0u);
    EXPECT_TRUE(gpt_logits(std::get<0>(loaded.model)) == gpt_logits(gpt));
  }
  {
    const SafetensorsFile f(dir / "vit/model.safetensors");
    EXPECT_EQ(io::detect_layout(f), io::Layout::HfVit);
    expect_error([&] { io::load_any_model<float>(f); },
                 {(dir / "vit/model.safetensors").string(), "config.json", "--config"});
    auto loaded = io::load_any_model<double>(f, dir / "vit/cfg.json");
    EXPECT_EQ(loaded.dtype, Dtype::F16);
    EXPECT_EQ(io::kind_of(loaded.model), io::ModelKind::Vit);
    EXPECT_EQ(io::arch_of(loaded.model), Arch::PreLN);
  }
  {
    const SafetensorsFile f(dir / "crms.safetensors");
    EXPECT_EQ(io::detect_layout(f), io::Layout::Prenorm);
    auto loaded = io::load_any_model<float>(f);
    EXPECT_EQ(loaded.dtype, Dtype::BF16);
    EXPECT_EQ(loaded.converted_from, Arch::PreLN);
    EXPECT_EQ(io::arch_of(loaded.model), Arch::PreCRMSNorm);
    EXPECT_EQ(loaded.model.index(), 2u);
  }
  {
    SafetensorsWriter writer;
    writer.add_vector("weights", Dtype::F32, prenorm::Vector<float>::Ones(3));
    writer.write(dir / "other.safetensors");
    expect_error([&] { io::detect_layout(SafetensorsFile(dir / "other.safetensors")); },
                 {(dir / "other.safetensors").string(), "wte.weight"});
  }
}

}  // namespace
