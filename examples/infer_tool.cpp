// prenorm-infer: runs a GPT or ViT checkpoint in any of the layouts of
// io::load_any_model (Hugging Face GPT-2, ViT and the decoder and encoder
// families of README's tables, prenorm's own) of any architecture. MODEL may be a
// .safetensors file, a sharded checkpoint's model.safetensors.index.json, or a
// directory holding either (and config.json).
//
//   prenorm-infer MODEL.safetensors [--config CONFIG.json]
//                 (--tokens 1,2,3 | --image IMAGE.npy)
//                 [--logits-out LOGITS.npy] [--generate N] [--threads N] [--double]
//
// --tokens       comma-separated token ids of one sequence (GPT)
// --image        a float32 (or float64) .npy of shape [C,H,W] or [B,C,H,W] (ViT;
//                C, H and W those of the model's config)
// --logits-out   writes the outputs as float32 .npy (C order): the logits
//                [tokens x vocab] for --tokens; for --image [batch x outputs],
//                the logits, or what the Hugging Face class returns instead
//                (CLIP's image embeddings, a pooled output: model_output.hpp)
//                (atomically)
// --generate N   decodes N tokens greedily after the prompt, with the KV cache,
//                and prints their ids (GPT)
// --threads N    threads (default: OpenMP's); results do not depend on it
// --double       computes in double instead of float
//
// Prints a short summary: the model, then the top-5 of the last position or
// of each image (for embeddings, their leading values). Exit codes: 0
// success, 2 usage error, 1 bad input.

#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "model_output.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::Arch;
using prenorm::Index;
using prenorm::RowMatrix;

constexpr const char* kUsage =
    "usage: prenorm-infer MODEL.safetensors [--config CONFIG.json]\n"
    "                     (--tokens 1,2,3 | --image IMAGE.npy)\n"
    "                     [--logits-out LOGITS.npy] [--generate N] [--threads N] [--double]\n"
    "\n"
    "Runs a GPT (--tokens) or ViT (--image, float .npy [C,H,W] or [B,C,H,W]) checkpoint in\n"
    "a Hugging Face layout (GPT-2, GPT-NeoX, OPT, Phi, GPT-J, GPT-BigCode, GPT-Neo, BLOOM;\n"
    "ViT, CLIP vision, DINOv2, DeiT; config.json: --config, or beside MODEL) or in\n"
    "prenorm's layout, and prints the top-5 of the last position or of each image (for\n"
    "CLIP's image embeddings or a pooled output, their leading values). MODEL is\n"
    "a .safetensors file, a sharded checkpoint's model.safetensors.index.json, or a folder\n"
    "holding either.\n"
    "  --logits-out  float32 .npy of the outputs: [tokens x vocab] or [batch x outputs]\n"
    "  --generate N  greedy decoding of N more tokens with the KV cache (GPT)\n"
    "  --threads N   number of threads\n"
    "  --double      compute in double (default: float)\n"
    "Exit codes: 0 success, 1 bad input, 2 usage error.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-infer: " << message << "\n" << kUsage;
  std::exit(2);
}

struct Options {
  fs::path model;
  std::optional<fs::path> config;
  std::optional<std::vector<int>> tokens;
  std::optional<fs::path> image;
  std::optional<fs::path> logits_out;
  Index generate = 0;
  int threads = 0;
  bool use_double = false;
};

long long parse_count(std::string_view flag, const std::string& text, long long min) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || value < min ||
      text.find_first_not_of("0123456789") != std::string::npos)
    usage_error(std::string(flag) + " takes an integer >= " + std::to_string(min) + ", got '" +
                text + "'");
  return value;
}

std::vector<int> parse_tokens(const std::string& text) {
  std::vector<int> ids;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos ||
        item.size() > 9)
      usage_error("--tokens takes comma-separated non-negative integer ids, got '" + text +
                  "' (bad item '" + item + "')");
    ids.push_back(std::stoi(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return ids;
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--double") {
      o.use_double = true;
      continue;
    }
    if (arg.size() < 2 || arg.compare(0, 2, "--") != 0) {
      positional.push_back(arg);
      continue;
    }
    std::string value;
    bool inline_value = false;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    static const std::vector<std::string> kWithValue = {"--config", "--tokens", "--image",
                                                        "--logits-out", "--generate", "--threads"};
    if (std::find(kWithValue.begin(), kWithValue.end(), arg) == kWithValue.end())
      usage_error("unknown option '" + arg + "'");
    if (!inline_value) {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      value = argv[++i];
    }
    if (arg == "--config") o.config = value;
    else if (arg == "--tokens") o.tokens = parse_tokens(value);
    else if (arg == "--image") o.image = value;
    else if (arg == "--logits-out") o.logits_out = value;
    else if (arg == "--generate") o.generate = Index(parse_count(arg, value, 0));
    else o.threads = int(parse_count(arg, value, 1));
  }
  if (positional.size() != 1)
    usage_error("expected one MODEL file, got " + std::to_string(positional.size()));
  o.model = io::model_file_path(positional[0]);
  if (o.tokens.has_value() == o.image.has_value())
    usage_error("pass exactly one of --tokens and --image");
  if (o.generate > 0 && !o.tokens) usage_error("--generate needs --tokens");
  if ((o.config && o.config->empty()) || (o.image && o.image->empty()) ||
      (o.logits_out && o.logits_out->empty()))
    usage_error("empty file name");
  return o;
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code error;
  return a == b || (fs::equivalent(a, b, error) && !error);
}

// "12 (3.2101), 7 (2.9), ...": the k largest entries of a row, largest first
// (ties: the lower index first).
template <class Row>
std::string top_k(const Row& row, Index k) {
  std::vector<Index> order(std::size_t(row.size()));
  std::iota(order.begin(), order.end(), Index(0));
  k = std::min<Index>(k, row.size());
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](Index a, Index b) { return row(a) > row(b) || (row(a) == row(b) && a < b); });
  std::ostringstream text;
  text << std::setprecision(6);
  for (Index i = 0; i < k; ++i)
    text << (i ? ", " : "") << order[std::size_t(i)] << " (" << double(row(order[std::size_t(i)])) << ")";
  return text.str();
}

// The id of the largest logit (the first one on ties).
template <class Row>
int argmax(const Row& row) {
  Index best = 0;
  for (Index i = 1; i < row.size(); ++i)
    if (row(i) > row(best)) best = i;
  return int(best);
}

// `output`: what the model gives (model_output.hpp), e.g. "image_embeds".
template <class Model>
std::string describe(const Model& model, const std::string& output) {
  std::ostringstream text;
  const auto& c = model.config;
  text << prenorm::arch_name(Model::arch) << ", " << c.layers << " layers, width " << c.width
       << ", " << c.heads << " heads";
  if (c.stem == prenorm::Stem::Tokens) {
    text << ", vocab " << c.vocab << ", context " << c.context;
  } else {
    if (output == "logits") text << ", " << c.classes << " classes";
    else text << ", " << prenorm_tools::output_label(output) << " of " << c.classes << " values";
    // The only image shape the model reads (no resizing, no position interpolation).
    text << ", " << c.channels << "x" << c.image_size << "x" << c.image_size << " images";
  }
  return text.str();
}

// "16 values: 0.12, -0.5, ...": the size of a row (an embedding) and its first `k` entries.
template <class Row>
std::string leading_values(const Row& row, Index k) {
  std::ostringstream text;
  text << std::setprecision(6) << row.size() << " values: ";
  for (Index i = 0; i < std::min<Index>(k, row.size()); ++i) text << (i ? ", " : "") << double(row(i));
  if (row.size() > k) text << ", ...";
  return text.str();
}

template <class S, Arch A>
void run_tokens(const prenorm::Transformer<A, S>& model, const Options& o,
                const std::vector<fs::path>& inputs) {
  const std::vector<int>& ids = *o.tokens;
  const Index n = Index(ids.size());
  if (n + std::max<Index>(o.generate - 1, 0) > model.config.context)
    prenorm::detail::fail("prenorm-infer", o.model.string(), ": ", n, " tokens + ", o.generate,
                          " generated exceed the context of ", model.config.context, " positions");
  prenorm::Session session(model);
  const RowMatrix<S> logits = session.forward(prenorm::TokenBatch{ids, 1, n});
  if (o.logits_out) {
    const RowMatrix<float> out = logits.template cast<float>();
    io::write_npy_matrix(*o.logits_out, out, inputs);
  }
  std::cout << "top-5 after position " << n - 1 << " (token " << ids.back()
            << "): " << top_k(logits.row(n - 1), 5) << "\n";
  if (o.generate > 0) {
    std::vector<int> generated;
    int next = argmax(session.prefill(prenorm::TokenBatch{ids, 1, n}, n + o.generate - 1).row(n - 1));
    generated.push_back(next);
    while (Index(generated.size()) < o.generate) {
      const int step[1] = {next};
      next = argmax(session.step(step).row(0));
      generated.push_back(next);
    }
    std::cout << "generated " << generated.size() << " tokens:";
    for (int id : generated) std::cout << " " << id;
    std::cout << "\n";
  }
}

template <class S, Arch A>
void run_image(const prenorm::Transformer<A, S>& model, const Options& o,
               const std::vector<fs::path>& inputs, const std::string& output) {
  const io::NpyArray<S> image = io::read_npy<S>(*o.image);
  std::vector<std::int64_t> shape = image.shape;
  if (shape.size() == 3) shape.insert(shape.begin(), 1);
  if (shape.size() != 4) {
    std::string text;
    for (std::size_t i = 0; i < image.shape.size(); ++i)
      text += (i ? ", " : "") + std::to_string(image.shape[i]);
    prenorm::detail::fail("prenorm-infer", o.image->string(), ": shape [", text,
                          "], expected [C, H, W] or [B, C, H, W]");
  }
  const prenorm::ImageBatch<S> batch{image.values, Index(shape[0]), Index(shape[1]),
                                     Index(shape[2]), Index(shape[3])};
  RowMatrix<S> logits_storage;
  const RowMatrix<S>* logits = &logits_storage;
  try {
    logits_storage = model.forward(batch);
  } catch (const prenorm::Error& error) {
    prenorm::detail::fail("prenorm-infer", o.image->string(), ": ", error.what());
  }
  if (o.logits_out) {
    const RowMatrix<float> out = logits->template cast<float>();
    io::write_npy_matrix(*o.logits_out, out, inputs);
  }
  // Logits by their top classes; embeddings (no classes) by their leading values.
  for (Index b = 0; b < logits->rows(); ++b)
    if (output == "logits")
      std::cout << "image " << b << ": top-5 " << top_k(logits->row(b), 5) << "\n";
    else
      std::cout << "image " << b << ": " << prenorm_tools::output_label(output) << ", "
                << leading_values(logits->row(b), 8) << "\n";
}

template <class S>
int run(const Options& o) {
  const io::SafetensorsFile file(o.model);
  io::LoadedModel<S> loaded = io::load_any_model<S>(file, o.config);
  std::vector<fs::path> inputs = file.files();  // the file, or the index and its shards
  if (loaded.config_path) inputs.push_back(*loaded.config_path);
  if (o.image) inputs.push_back(*o.image);
  const std::string output = prenorm_tools::model_output(file, loaded.layout);
  std::visit(
      [&](auto& model) {
        std::cout << o.model.string() << ": " << io::layout_name(loaded.layout) << " "
                  << io::model_kind_name(io::kind_of(loaded.model)) << ", " << describe(model, output)
                  << " (" << io::dtype_name(loaded.dtype) << ")\n";
        using Model = std::decay_t<decltype(model)>;
        prenorm::pack_weights(model);  // for the GEMM backend, once (a no-op without oneDNN)
        if (model.config.stem == prenorm::Stem::Tokens) {
          if (!o.tokens)
            prenorm::detail::fail("prenorm-infer", o.model.string(),
                                  ": holds a GPT model, which reads --tokens, not --image");
          run_tokens<S, Model::arch>(model, o, inputs);
        } else {
          if (!o.image)
            prenorm::detail::fail("prenorm-infer", o.model.string(),
                                  ": holds a ViT model, which reads --image, not --tokens");
          run_image<S, Model::arch>(model, o, inputs, output);
        }
      },
      loaded.model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  if (options.logits_out)
    for (const std::optional<fs::path>& input : {std::optional<fs::path>(options.model),
                                                 options.config, options.image})
      if (input && same_file(*input, *options.logits_out))
        usage_error("refusing to write --logits-out '" + options.logits_out->string() +
                    "': it is the input '" + input->string() + "'");
  if (options.threads > 0) prenorm::set_num_threads(options.threads);
  try {
    return options.use_double ? run<double>(options) : run<float>(options);
  } catch (const std::exception& error) {
    std::string message = error.what();
    if (message.find(options.model.string()) == std::string::npos &&
        (!options.image || message.find(options.image->string()) == std::string::npos))
      message = options.model.string() + ": " + message;
    std::cerr << "prenorm-infer: error: " << message << "\n";
    return 1;
  }
}
