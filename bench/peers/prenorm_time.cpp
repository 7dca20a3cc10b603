// prenorm-peers-time: times prenorm's forward of a Hugging Face GPT-2 or ViT
// checkpoint for the peer benchmark (bench/peers/run.sh), as Pre-LN or after
// the exact conversion to Pre-RMSNorm / Pre-CRMSNorm, and prints one JSON line.
//
//   prenorm-peers-time MODEL.safetensors (--tokens-file IDS.txt | --image IMAGE.npy)
//                      [--arch pre_ln|pre_rmsnorm|pre_crmsnorm] [--threads N]
//                      [--warmup N] [--runs N] [--logits-out LOGITS.npy] [--label NAME]
//
// --tokens-file  a text file of comma-separated token ids: one sequence (GPT)
// --image        a float32 .npy [B, C, H, W] (ViT)
// --arch         the architecture timed (default pre_ln, the checkpoint's own);
//                the others are prenorm::convert of it (tied head: Untie)
// --threads N    prenorm::set_num_threads(N) (default: OpenMP's)
// --warmup N     untimed forwards first (default 3)
// --runs N       timed forwards (default 20); the median is reported
// --logits-out   the logits of the last forward as float32 .npy:
//                [tokens x vocab] or [batch x classes]
// --label NAME   copied into the JSON line as "case" (run.sh: the case's name)
//
// The model is loaded in float. One Session / Session does every
// forward, so after the warm-up no forward allocates: what is timed is the
// forward itself. Output (times in ms):
//   {"case": NAME, "model": ..., "arch": "pre_crmsnorm", "threads": 1, "runs": 20,
//    "median_ms": ..., "min_ms": ..., "max_ms": ...}
// Exit codes: 0 success, 1 bad input, 2 usage error.

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::Arch;
using prenorm::Index;
using prenorm::RowMatrix;

constexpr const char* kUsage =
    "usage: prenorm-peers-time MODEL.safetensors (--tokens-file IDS.txt | --image IMAGE.npy)\n"
    "                          [--arch pre_ln|pre_rmsnorm|pre_crmsnorm] [--threads N]\n"
    "                          [--warmup N] [--runs N] [--logits-out LOGITS.npy]\n"
    "                          [--label NAME]\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-peers-time: " << message << "\n" << kUsage;
  std::exit(2);
}

struct Options {
  fs::path model;
  std::optional<fs::path> tokens_file, image, logits_out;
  std::string label;
  Arch arch = Arch::PreLN;
  int threads = 0, warmup = 3, runs = 20;
};

int parse_int(const std::string& flag, const std::string& text, int min) {
  std::size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < min)
    usage_error(flag + " takes an integer >= " + std::to_string(min) + ", got '" + text + "'");
  return value;
}

Options parse(int argc, char** argv) {
  Options o;
  std::optional<fs::path> model;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) {
      if (model) usage_error("expected one MODEL file, got '" + model->string() + "' and '" + arg + "'");
      model = arg;
      continue;
    }
    if (i + 1 >= argc) usage_error(arg + " needs a value");
    const std::string value = argv[++i];
    if (arg == "--tokens-file") o.tokens_file = value;
    else if (arg == "--image") o.image = value;
    else if (arg == "--logits-out") o.logits_out = value;
    else if (arg == "--label") o.label = value;
    else if (arg == "--threads") o.threads = parse_int(arg, value, 1);
    else if (arg == "--warmup") o.warmup = parse_int(arg, value, 0);
    else if (arg == "--runs") o.runs = parse_int(arg, value, 1);
    else if (arg == "--arch") {
      if (value == "pre_ln") o.arch = Arch::PreLN;
      else if (value == "pre_rmsnorm") o.arch = Arch::PreRMSNorm;
      else if (value == "pre_crmsnorm") o.arch = Arch::PreCRMSNorm;
      else usage_error("--arch takes pre_ln, pre_rmsnorm or pre_crmsnorm, got '" + value + "'");
    } else usage_error("unknown option '" + arg + "'");
  }
  if (!model) usage_error("expected one MODEL file");
  o.model = *model;
  if (o.tokens_file.has_value() == o.image.has_value())
    usage_error("pass exactly one of --tokens-file and --image");
  return o;
}

// The ids of a text file "12,7,3" (whitespace around the commas is allowed).
std::vector<int> read_tokens(const fs::path& path) {
  std::ifstream in(path);
  if (!in) prenorm::detail::fail("prenorm-peers-time", path.string(), ": cannot be read");
  std::vector<int> ids;
  std::string item;
  while (std::getline(in, item, ',')) {
    std::istringstream field(item);
    int id = -1;
    if (!(field >> id) || id < 0 || !(field >> std::ws).eof())
      prenorm::detail::fail("prenorm-peers-time", path.string(), ": '", item,
                            "' is not a non-negative integer token id");
    ids.push_back(id);
  }
  if (ids.empty()) prenorm::detail::fail("prenorm-peers-time", path.string(), ": no token ids");
  return ids;
}

// Runs warmup + runs forwards of `forward` (which returns the logits) and
// prints the JSON line; writes the last logits when asked.
template <class Forward>
void time_forwards(const Options& o, Forward&& forward) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < o.warmup; ++i) forward();
  std::vector<double> ms;
  const RowMatrix<float>* logits = nullptr;
  for (int i = 0; i < o.runs; ++i) {
    const auto start = Clock::now();
    logits = &forward();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  if (o.logits_out) io::write_npy_matrix(*o.logits_out, *logits, {o.model});
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const std::size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  nlohmann::ordered_json line;
  if (!o.label.empty()) line["case"] = o.label;
  line["model"] = o.model.string();
  line["arch"] = std::string(prenorm::arch_name(o.arch));
  line["threads"] = prenorm::num_threads();
  line["runs"] = o.runs;
  line["median_ms"] = median;
  line["min_ms"] = sorted.front();
  line["max_ms"] = sorted.back();
  std::cout << line.dump() << "\n";
}

template <Arch A>
void time_gpt(const prenorm::Gpt<A, float>& model, const Options& o) {
  const std::vector<int> ids = read_tokens(*o.tokens_file);
  const prenorm::TokenBatch tokens{ids, 1, Index(ids.size())};
  prenorm::Session session(model);
  time_forwards(o, [&]() -> const RowMatrix<float>& { return session.forward(tokens); });
}

template <Arch A>
void time_vit(const prenorm::Vit<A, float>& model, const Options& o) {
  const io::NpyArray<float> image = io::read_npy<float>(*o.image);
  if (image.shape.size() != 4)
    prenorm::detail::fail("prenorm-peers-time", o.image->string(), ": has ", image.shape.size(),
                          " dimensions, expected 4 [B, C, H, W]");
  const prenorm::ImageBatch<float> batch{image.values, Index(image.shape[0]), Index(image.shape[1]),
                                         Index(image.shape[2]), Index(image.shape[3])};
  prenorm::Session session(model);
  time_forwards(o, [&]() -> const RowMatrix<float>& { return session.forward(batch); });
}

// Times the Pre-LN model as loaded or converted to o.arch.
template <template <Arch, class> class Model>
void time_model(const Model<Arch::PreLN, float>& model, const Options& o) {
  // A copy of its own, packed for the GEMM backend as for inference.
  const auto run = [&o]<Arch A>(Model<A, float> m) {
    prenorm::pack_weights(m);
    if constexpr (std::is_same_v<Model<A, float>, prenorm::Gpt<A, float>>) time_gpt(m, o);
    else time_vit(m, o);
  };
  switch (o.arch) {
    case Arch::PreLN: run(model); return;
    case Arch::PreRMSNorm: run(prenorm::convert<Arch::PreRMSNorm>(model)); return;
    case Arch::PreCRMSNorm: run(prenorm::convert<Arch::PreCRMSNorm>(model)); return;
  }
  prenorm::detail::fail("prenorm-peers-time", "unknown architecture");
}

int run(const Options& o) {
  io::LoadedModel<float> loaded = io::load_any_model<float>(o.model);
  if (auto* gpt = std::get_if<prenorm::Gpt<Arch::PreLN, float>>(&loaded.model)) {
    if (!o.tokens_file)
      prenorm::detail::fail("prenorm-peers-time", o.model.string(), ": a GPT reads --tokens-file");
    time_model<prenorm::Gpt>(*gpt, o);
  } else if (auto* vit = std::get_if<prenorm::Vit<Arch::PreLN, float>>(&loaded.model)) {
    if (!o.image)
      prenorm::detail::fail("prenorm-peers-time", o.model.string(), ": a ViT reads --image");
    time_model<prenorm::Vit>(*vit, o);
  } else {
    prenorm::detail::fail("prenorm-peers-time", o.model.string(),
                          ": expected a Pre-LN checkpoint (Hugging Face GPT-2 or ViT), found ",
                          prenorm::arch_name(io::arch_of(loaded.model)));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  if (options.threads > 0) prenorm::set_num_threads(options.threads);
  try {
    return run(options);
  } catch (const std::exception& error) {
    std::cerr << "prenorm-peers-time: error: " << error.what() << "\n";
    return 1;
  }
}
