// prenorm-verify: runs two checkpoints on one probe input and prints how far
// apart their logits are; e.g. a source checkpoint and its conversion.
//
//   prenorm-verify [--tolerance X] A B
//
// A and B are in any of the layouts of io::load_any_model (Hugging Face ones
// with the config.json beside them) and any architectures, both GPT or both
// ViT of the same vocabulary (classes, image size): a .safetensors file, a
// sharded checkpoint's model.safetensors.index.json, or a folder holding
// either. Both are run in double on a deterministic probe (a few tokens, or
// one image; examples/model_check.hpp); the relative error of B's logits
// against A's, max |B - A| / max |A|, goes to stdout. Two GPTs in the Hugging
// Face GPT-2 layout or prenorm's are run one block at a time
// (compare_gpt_checkpoints: memory does not grow with the layers); other
// models are loaded whole.
//
// Exit codes: 0 within the tolerance (default 1e-5: a conversion written in
// F32 keeps about 1e-7), 1 above it (or NaN) or bad input (the message names
// the file), 2 usage error.

#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model_check.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::Arch;

constexpr const char* kUsage =
    "usage: prenorm-verify [--tolerance X] A B\n"
    "\n"
    "Runs checkpoints A (the reference) and B in double on one probe input (a few tokens,\n"
    "or one image) and prints the relative error of B's logits against A's. Each is a\n"
    ".safetensors file, a model.safetensors.index.json or a folder, in any layout prenorm\n"
    "reads (Hugging Face ones with config.json beside them) and any architecture.\n"
    "  --tolerance  the largest error accepted (default 1e-5)\n"
    "Exit codes: 0 within the tolerance, 1 above it or bad input, 2 usage error.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-verify: " << message << "\n" << kUsage;
  std::exit(2);
}

struct Options {
  double tolerance = 1e-5;
  fs::path a, b;
};

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--tolerance", 0) == 0) {
      std::string value;
      if (arg.size() > 11 && arg[11] == '=') value = arg.substr(12);
      else if (arg.size() == 11 && i + 1 < argc) value = argv[++i];
      else if (arg.size() == 11) usage_error("--tolerance needs a value");
      else usage_error("unknown option '" + arg + "'");
      const std::optional<double> tolerance = prenorm_tools::parse_tolerance(value);
      if (!tolerance) usage_error("--tolerance takes a number >= 0, got '" + value + "'");
      o.tolerance = *tolerance;
    } else if (arg.size() >= 2 && arg.compare(0, 2, "--") == 0) {
      usage_error("unknown option '" + arg + "'");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2)
    usage_error("expected A and B, got " + std::to_string(positional.size()) + " checkpoint" +
                (positional.size() == 1 ? "" : "s"));
  o.a = io::model_file_path(positional[0]);
  o.b = io::model_file_path(positional[1]);
  return o;
}

// f(), its errors named by `path` when they do not name it already.
template <class F>
auto with_path(const fs::path& path, const F& f) {
  try {
    return f();
  } catch (const std::exception& error) {
    const std::string message = error.what();
    if (message.find(path.string()) != std::string::npos) throw;
    throw std::runtime_error(path.string() + ": " + message);
  }
}

// `path`'s model in double; errors name the file.
io::LoadedModel<double> load(const fs::path& path) {
  return with_path(path, [&] { return io::load_any_model<double>(path); });
}


// Prints what `path` holds.
void describe(const fs::path& path, io::Layout layout, std::string_view kind, Arch arch, io::Dtype dtype,
              bool streamed) {
  std::cerr << "prenorm-verify: " << path.string() << ": " << io::layout_name(layout) << " " << kind
            << " " << prenorm::arch_name(arch) << ", " << io::dtype_name(dtype)
            << (streamed ? " (streamed: one block at a time)" : "") << "\n";
}

// Two GPTs in the Hugging Face GPT-2 layout or prenorm's run block by block
// (prenorm_tools::compare_gpt_checkpoints); nullopt when either is in
// another layout (then both are loaded whole).
std::optional<prenorm_tools::Comparison> compare_streaming(const Options& o) {
  const io::SafetensorsFile a = with_path(o.a, [&] { return io::SafetensorsFile(o.a); });
  const io::SafetensorsFile b = with_path(o.b, [&] { return io::SafetensorsFile(o.b); });
  const std::optional<io::OpenedGpt> x = with_path(o.a, [&] { return io::open_gpt_checkpoint(a); });
  if (!x) return std::nullopt;
  const std::optional<io::OpenedGpt> y = with_path(o.b, [&] { return io::open_gpt_checkpoint(b); });
  if (!y) return std::nullopt;
  prenorm::set_num_threads(1);  // as prenorm-convert's check: 8-row products
  const auto arch = [](const auto& m) { return std::decay_t<decltype(m)>::Model::arch; };
  describe(o.a, x->layout, "gpt", std::visit(arch, x->checkpoint), x->dtype, true);
  describe(o.b, y->layout, "gpt", std::visit(arch, y->checkpoint), y->dtype, true);
  return prenorm_tools::compare_gpt_checkpoints(x->checkpoint, y->checkpoint);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    std::optional<prenorm_tools::Comparison> check = compare_streaming(o);
    if (!check) {
      const io::LoadedModel<double> a = load(o.a), b = load(o.b);
      for (const auto& [path, model] : {std::pair{&o.a, &a}, std::pair{&o.b, &b}})
        describe(*path, model->layout, io::model_kind_name(io::kind_of(model->model)),
                 io::arch_of(model->model), model->dtype, false);
      check = prenorm_tools::compare_models(a.model, b.model);
    }
    const bool pass = check->logits_error <= o.tolerance;
    std::cout << o.b.string() << " vs " << o.a.string() << " (" << check->probe
              << "): logits relative error " << check->logits_error << (pass ? " <= " : " > ")
              << "tolerance " << o.tolerance << (pass ? ": pass" : ": FAIL") << "\n";
    return pass ? 0 : 1;
  } catch (const std::exception& error) {
    std::cerr << "prenorm-verify: error: " << error.what() << "\n";
    return 1;
  }
}
