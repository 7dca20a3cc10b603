// prenorm-convert: converts a checkpoint between Pre-LN, Pre-RMSNorm and
// Pre-CRMSNorm and writes it in prenorm's own layout.
//
//   prenorm-convert --to {pre-ln|pre-rmsnorm|pre-crmsnorm} [--tied {untie|keep}]
//                   [--config CONFIG.json] [--dtype {auto|same|F32|F16|BF16|F64}]
//                   [--max-shard-size SIZE] [--verify-tolerance X] INPUT OUTPUT
//
// INPUT is in any of the layouts of io::load_any_model (Hugging Face GPT-2,
// ViT and the decoder and encoder families of README's tables, prenorm's own; the Hugging
// Face ones read CONFIG.json, by default the config.json beside INPUT): a
// .safetensors file, a sharded checkpoint's model.safetensors.index.json, or a
// directory holding either. The model is converted in double and rounded
// once to the output dtype. A GPT in the Hugging Face GPT-2 layout or in
// prenorm's is streamed (prenorm/convert/streaming.hpp): read one block (or
// a chunk of table rows) at a time, converted and written while the next is
// computed, so memory does not grow with the layers; the others (ViT, the
// decoder families) are loaded whole. The default, "auto", keeps the
// converted model equal to the source at float precision: F32 for F16 and
// BF16 inputs (the transformed weights are not representable in 16 bits),
// the input's dtype otherwise; "same" is always the input's. A model
// already in the target architecture is re-saved unchanged (only the layout
// and the dtype change; --tied applies only when the architecture changes).
// A ViT whose output is not logits (CLIP's image embeddings, a pooled output:
// model_output.hpp) keeps that name in the metadata key "output", for prenorm-infer.
//
// OUTPUT is a .safetensors file, a sharded checkpoint's index
// (*.safetensors.index.json, then always sharded) or a folder (created if
// needed; model.safetensors in it, or model.safetensors.index.json when the
// tensors exceed --max-shard-size, default 5GB). Shards follow the Hugging
// Face convention: <prefix>-0000i-of-0000N.safetensors beside the index
// <prefix>.safetensors.index.json, each holding at most SIZE bytes of tensors
// (a larger tensor alone). A .safetensors OUTPUT that would exceed SIZE is an
// error: name an index or a folder. Everything is written atomically:
// temporaries in the target folder, renamed when all are complete, so a
// failure leaves no partial file and no partial set of shards. Writing onto
// INPUT (or its config, or one of its shards), under any name, is refused.
//
// Verification: the written OUTPUT is read back (in double, from its dtype;
// streamed GPTs block by block) and run next to the source model on a probe input (a few tokens, or one
// image; examples/model_check.hpp); the relative error of the logits is
// printed. It is the deviation the conversion and the output dtype introduced:
// about 1e-7 in F32, about the 16-bit epsilon with an explicit 16-bit
// --dtype. With --verify-tolerance X, an error above X (or NaN) fails the run
// (exit 1) and the output is removed.
//
// Progress goes to stderr, a one-line summary to stdout. Exit codes: 0
// success, 2 usage error, 1 bad input (the message names the file and the tensor).

#include <prenorm/convert.hpp>
#include <prenorm/convert/streaming.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "model_check.hpp"
#include "model_output.hpp"

#include <malloc.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::Arch;

constexpr const char* kUsage =
    "usage: prenorm-convert --to {pre-ln|pre-rmsnorm|pre-crmsnorm} [--tied {untie|keep}]\n"
    "                       [--config CONFIG.json] [--dtype {auto|same|F32|F16|BF16|F64}]\n"
    "                       [--max-shard-size SIZE] [--verify-tolerance X] INPUT OUTPUT\n"
    "\n"
    "Reads a Hugging Face checkpoint (GPT-2, GPT-NeoX, OPT, Phi, GPT-J, GPT-BigCode,\n"
    "GPT-Neo, BLOOM; ViT, CLIP vision, DINOv2, DeiT; with its config.json: --config, or\n"
    "config.json beside INPUT) or a prenorm checkpoint, converts it exactly (in double)\n"
    "to the target architecture and writes it in prenorm's layout. INPUT is a .safetensors\n"
    "file, a sharded checkpoint's model.safetensors.index.json, or a folder holding either.\n"
    "A GPT-2-layout or prenorm-layout GPT is streamed (one block in memory at a time,\n"
    "conversion and check); other models are loaded whole.\n"
    "  --to      target architecture (required); the same architecture re-saves the model\n"
    "  --tied    what a tied GPT head becomes: untie (default, fastest) or keep (stored\n"
    "            once, transformed per token); only when the architecture changes\n"
    "  --config  the config.json of a Hugging Face checkpoint\n"
    "  --dtype   output dtype; auto (default) is exact at float precision: F32 for F16\n"
    "            and BF16 inputs, the input's otherwise; same is the input's\n"
    "  --max-shard-size  most tensor bytes per file (default 5GB; B, KB, MB, GB, TB are\n"
    "            powers of 1000, KiB, MiB, GiB, TiB of 1024, a bare number is bytes). OUTPUT\n"
    "            a .safetensors file (must fit), a *.safetensors.index.json (always shards:\n"
    "            <prefix>-0000i-of-0000N.safetensors beside it) or a folder (model.safetensors,\n"
    "            or model.safetensors.index.json and shards when larger)\n"
    "  --verify-tolerance  the written model is run next to the source on a probe input\n"
    "            and the relative error of the logits printed; above X: exit 1, OUTPUT removed\n"
    "Exit codes: 0 success, 1 bad input, 2 usage error.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-convert: " << message << "\n" << kUsage;
  std::exit(2);
}

struct Options {
  Arch to = Arch::PreLN;
  prenorm::TiedPolicy tied = prenorm::TiedPolicy::Untie;
  std::optional<fs::path> config;
  // The output dtype: a fixed one, or chosen from the input's (output_dtype).
  enum class DtypeRule { Auto, Same, Fixed } dtype_rule = DtypeRule::Auto;
  io::Dtype dtype = io::Dtype::F32;  // when Fixed
  std::uint64_t max_shard_size = 5'000'000'000;  // tensor bytes per output file
  std::optional<double> verify_tolerance;
  fs::path input, output;
};

// "5GB", "500MB", "2GiB", "1000": a byte count (see --max-shard-size); nullopt
// when malformed, zero or too large.
std::optional<std::uint64_t> parse_size(std::string_view text) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 19) return std::nullopt;
  const std::uint64_t number = std::stoull(std::string(text.substr(0, digits)));
  std::string unit(text.substr(digits));
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  static constexpr std::pair<const char*, std::uint64_t> kUnits[] = {
      {"", 1},        {"B", 1},           {"KB", 1000},      {"MB", 1000'000},
      {"GB", 1000'000'000}, {"TB", 1000'000'000'000}, {"KIB", 1ull << 10}, {"MIB", 1ull << 20},
      {"GIB", 1ull << 30},  {"TIB", 1ull << 40}};
  for (const auto& [name, scale] : kUnits) {
    std::uint64_t size = 0;
    if (unit == name && !__builtin_mul_overflow(number, scale, &size) && size > 0) return size;
  }
  return std::nullopt;
}

std::optional<Arch> parse_arch(std::string_view text) {
  if (text == "pre-ln" || text == "pre_ln") return Arch::PreLN;
  if (text == "pre-rmsnorm" || text == "pre_rmsnorm") return Arch::PreRMSNorm;
  if (text == "pre-crmsnorm" || text == "pre_crmsnorm") return Arch::PreCRMSNorm;
  return std::nullopt;
}

Options parse(int argc, char** argv) {
  Options o;
  bool have_to = false;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--") {
      for (++i; i < argc; ++i) positional.emplace_back(argv[i]);
      break;
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
    if (arg != "--to" && arg != "--tied" && arg != "--config" && arg != "--dtype" &&
        arg != "--max-shard-size" && arg != "--verify-tolerance")
      usage_error("unknown option '" + arg + "'");
    if (!inline_value) {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      value = argv[++i];
    }
    if (arg == "--to") {
      const std::optional<Arch> arch = parse_arch(value);
      if (!arch)
        usage_error("--to takes pre-ln, pre-rmsnorm or pre-crmsnorm, got '" + value + "'");
      o.to = *arch;
      have_to = true;
    } else if (arg == "--tied") {
      if (value == "untie") o.tied = prenorm::TiedPolicy::Untie;
      else if (value == "keep") o.tied = prenorm::TiedPolicy::Keep;
      else usage_error("--tied takes untie or keep, got '" + value + "'");
    } else if (arg == "--config") {
      if (value.empty()) usage_error("--config needs a file name");
      o.config = value;
    } else if (arg == "--verify-tolerance") {
      o.verify_tolerance = prenorm_tools::parse_tolerance(value);
      if (!o.verify_tolerance)
        usage_error("--verify-tolerance takes a number >= 0, got '" + value + "'");
    } else if (arg == "--max-shard-size") {
      const std::optional<std::uint64_t> size = parse_size(value);
      if (!size)
        usage_error("--max-shard-size takes a positive size such as 5GB, 500MB, 2GiB or a byte "
                    "count, got '" + value + "'");
      o.max_shard_size = *size;
    } else {  // --dtype
      if (value == "auto") {
        o.dtype_rule = Options::DtypeRule::Auto;
      } else if (value == "same") {
        o.dtype_rule = Options::DtypeRule::Same;
      } else {
        std::string upper = value;
        for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
        const std::optional<io::Dtype> dtype = io::dtype_from_name(upper);
        if (!dtype)
          usage_error("--dtype takes auto, same, F32, F16, BF16 or F64, got '" + value + "'");
        o.dtype_rule = Options::DtypeRule::Fixed;
        o.dtype = *dtype;
      }
    }
  }
  if (!have_to) usage_error("--to is required");
  if (positional.size() != 2)
    usage_error("expected INPUT and OUTPUT, got " + std::to_string(positional.size()) +
                " file argument" + (positional.size() == 1 ? "" : "s"));
  o.input = io::model_file_path(positional[0]);
  o.output = positional[1];
  if (o.input.empty() || o.output.empty()) usage_error("empty file name");
  return o;
}

// The same file under two names (links included)?
bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code error;
  return fs::equivalent(a, b, error) && !error;
}

// The output dtype for an input in `input` (see --dtype). "auto" widens 16-bit
// inputs to F32: a converted weight is a product and sum of stored ones, which
// 16 bits cannot hold, and rounding it back would move the logits by about
// the 16-bit epsilon (issue 20: 3.4e-2 relative for a BF16 GPT-2).
io::Dtype output_dtype(const Options& o, io::Dtype input) {
  switch (o.dtype_rule) {
    case Options::DtypeRule::Fixed: return o.dtype;
    case Options::DtypeRule::Same: return input;
    case Options::DtypeRule::Auto: break;
  }
  return input == io::Dtype::F16 || input == io::Dtype::BF16 ? io::Dtype::F32 : input;
}

// Converts (or, for the same architecture, copies) `model` to `To`.
template <Arch To, class Model>
auto to_arch(const Model& model, const prenorm::ConvertOptions& options) {
  if constexpr (Model::arch == To) return model;
  else return prenorm::convert<To>(model, options);
}

// Whether `path` names a folder: an existing one, or ending in '/'.
bool names_a_folder(const fs::path& path) {
  std::error_code error;
  return fs::is_directory(path, error) || !path.has_filename();
}

// What write_output wrote.
struct Written {
  std::vector<fs::path> files;  // the file, or the index and then the shards
  std::optional<fs::path> made_folder;

  // Removes it all (a failed verification).
  void remove() const {
    std::error_code error;
    for (const fs::path& file : files) fs::remove(file, error);
    if (made_folder) fs::remove(*made_folder, error);
  }
};

// Where OUTPUT goes for `size` bytes of tensors (see the top of this file).
struct OutputPlan {
  fs::path target;  // the file, or the index when sharded
  bool sharded = false;
  std::optional<fs::path> made_folder;  // an OUTPUT folder that does not exist yet
};

OutputPlan plan_output(std::uint64_t size, const Options& o) {
  OutputPlan plan{o.output, io::SafetensorsFile::is_index_path(o.output), std::nullopt};
  if (names_a_folder(o.output)) {
    plan.sharded = size > o.max_shard_size;
    plan.target = o.output / (plan.sharded ? "model.safetensors.index.json" : "model.safetensors");
  } else if (!plan.sharded && size > o.max_shard_size) {
    throw std::runtime_error("the converted model has " + std::to_string(size) +
                             " bytes of tensors, more than --max-shard-size (" +
                             std::to_string(o.max_shard_size) + "): name a folder or a "
                             "*.safetensors.index.json as OUTPUT '" + o.output.string() +
                             "' to write shards");
  }
  std::error_code error;
  const fs::path folder = plan.target.parent_path();
  if (names_a_folder(o.output) && !fs::exists(folder, error)) plan.made_folder = folder;
  return plan;
}

// Runs write(plan) for OUTPUT, which returns the files written; an OUTPUT
// folder that does not exist is made here, and goes again if writing fails.
template <class Write>
Written write_planned(const OutputPlan& plan, const Write& write) {
  if (plan.made_folder) fs::create_directories(*plan.made_folder);
  try {
    return Written{write(plan), plan.made_folder};
  } catch (...) {
    std::error_code error;
    if (plan.made_folder) fs::remove(*plan.made_folder, error);
    throw;
  }
}

// Writes `writer` as OUTPUT (see the top of this file), refusing to replace
// any of `inputs`.
Written write_output(io::SafetensorsWriter writer, const Options& o,
                     const std::vector<fs::path>& inputs) {
  return write_planned(plan_output(writer.data_size(), o), [&](const OutputPlan& plan) {
    if (plan.sharded)
      return io::write_sharded(std::move(writer).split(o.max_shard_size), plan.target, inputs);
    writer.write(plan.target, inputs);
    return std::vector<fs::path>{plan.target};
  });
}

// Checks the model written against the source and prints the figure; a
// failure (or an error above --verify-tolerance) removes OUTPUT.
template <class Compare>
prenorm_tools::Comparison verify(const Written& written, io::Dtype dtype, const Options& o,
                                 const Compare& compare) {
  prenorm_tools::Comparison check;
  try {
    check = compare(written.files.front());
  } catch (...) {
    written.remove();
    throw;
  }
  std::cerr << "prenorm-convert: verify: " << check.probe << ": the logits of "
            << written.files.front().string() << " (" << io::dtype_name(dtype)
            << ") differ from the source's by " << check.logits_error << " (relative)\n";
  if (o.verify_tolerance && !(check.logits_error <= *o.verify_tolerance)) {
    written.remove();
    std::ostringstream message;
    message << "verification failed: the logits of the converted model differ from the source's "
               "by " << check.logits_error << " (relative), more than --verify-tolerance "
            << *o.verify_tolerance << "; removed OUTPUT '" << o.output.string() << "'";
    throw std::runtime_error(message.str());
  }
  return check;
}

// The one-line summary on stdout.
void summary(const Options& o, io::Layout layout, io::ModelKind kind, Arch from, bool tied_gpt,
             std::size_t tensors, io::Dtype dtype, const Written& written,
             const prenorm_tools::Comparison& check) {
  std::uintmax_t bytes = 0;
  for (const fs::path& path : written.files) bytes += fs::file_size(path);
  std::cout << o.input.string() << " (" << io::layout_name(layout) << ", "
            << io::model_kind_name(kind) << ") " << prenorm::arch_name(from) << " -> "
            << prenorm::arch_name(o.to);
  if (tied_gpt && from != o.to)
    std::cout << " (tied: " << (o.tied == prenorm::TiedPolicy::Keep ? "keep" : "untie") << ")";
  std::cout << ": " << tensors << " tensors, " << io::dtype_name(dtype) << " -> "
            << written.files.front().string();
  if (written.files.size() > 1) std::cout << " and " << written.files.size() - 1 << " shards";
  std::cout << " (" << bytes << " bytes), logits relative error " << check.logits_error << "\n";
}

// What the conversion does, on stderr.
void announce(const Options& o, Arch from, bool tied_gpt) {
  if (from == o.to)
    std::cerr << "prenorm-convert: the model is already " << prenorm::arch_name(from)
              << ": re-saving it unchanged in prenorm's layout\n";
  else
    std::cerr << "prenorm-convert: converting " << prenorm::arch_name(from) << " -> "
              << prenorm::arch_name(o.to)
              << (tied_gpt ? (o.tied == prenorm::TiedPolicy::Keep ? " (tied head: keep)"
                                                                  : " (tied head: untie)")
                           : "")
              << " in double\n";
}

// Streams the conversion of `source` to OUTPUT (planned once its size is known).
template <class Source>
Written write_planned_streaming(const Options& o, const Source& source, io::Dtype dtype,
                                const prenorm::ConvertOptions& options,
                                const io::PrenormSaveOptions& save, std::optional<OutputPlan>& plan,
                                std::size_t& tensors) {
  try {
    const std::vector<fs::path> files = io::convert_gpt_streaming(
        source, o.to, dtype,
        [&](std::uint64_t size, std::size_t count) {
          plan = plan_output(size, o);
          tensors = count;
          std::cerr << "prenorm-convert: writing " << o.output.string() << " ("
                    << io::dtype_name(dtype) << ", " << count << " tensors)\n";
          if (plan->made_folder) fs::create_directories(*plan->made_folder);
          return io::StreamOutput{plan->target, plan->sharded, o.max_shard_size, save.inputs};
        },
        options, save);
    return Written{files, plan->made_folder};
  } catch (...) {
    std::error_code error;
    if (plan && plan->made_folder) fs::remove(*plan->made_folder, error);
    throw;
  }
}

// A GPT in the Hugging Face GPT-2 layout or prenorm's: converted and
// verified group by group (prenorm/convert/streaming.hpp), in memory that
// does not grow with the number of layers.
int run_streaming(const Options& o, const io::SafetensorsFile& file, const io::OpenedGpt& opened) {
  // One thread: the work is reading, converting row by row and writing
  // (bound by memory and disk), and the check's products have 8 rows; with
  // two, Eigen's threads spin-wait on each other in every product, which cost
  // 12 s of CPU on a GPT-2-medium on a shared 2-core machine (and 2x the wall time).
  prenorm::set_num_threads(1);
  const Arch from = std::visit([](const auto& m) { return std::decay_t<decltype(m)>::Model::arch; },
                               opened.checkpoint);
  const prenorm::TransformerConfig config = std::visit([](const auto& m) { return m.config(); },
                                               opened.checkpoint);
  if (opened.layout == io::Layout::Prenorm && o.config)
    std::cerr << "prenorm-convert: note: " << o.input.string()
              << " is in prenorm's layout; --config is not used\n";
  std::cerr << "prenorm-convert: " << o.input.string() << ": " << io::layout_name(opened.layout)
            << " layout, gpt " << prenorm::arch_name(from) << ", " << file.size() << " tensors, "
            << io::dtype_name(opened.dtype);
  if (opened.config_path) std::cerr << ", config " << opened.config_path->string();
  std::cerr << " (streamed: one block at a time)\n";
  const io::Dtype dtype = output_dtype(o, opened.dtype);
  announce(o, from, config.tied);

  io::PrenormSaveOptions save;
  save.converted_from = from == o.to ? opened.converted_from : std::optional<Arch>(from);
  save.inputs = file.files();
  if (opened.config_path) save.inputs.push_back(*opened.config_path);
  const prenorm::ConvertOptions convert_options{.tied = o.tied};
  std::optional<OutputPlan> plan;
  std::size_t tensors = 0;
  const Written written = std::visit(
      [&](const auto& source) {
        return write_planned_streaming(o, source, dtype, convert_options, save, plan, tensors);
      },
      opened.checkpoint);

  const prenorm_tools::Comparison check = verify(written, dtype, o, [&](const fs::path& path) {
    const io::SafetensorsFile out(path);
    const std::optional<io::OpenedGpt> converted = io::open_gpt_checkpoint(out);
    if (!converted) throw std::runtime_error(path.string() + ": not read back as a GPT");
    return prenorm_tools::compare_gpt_checkpoints(opened.checkpoint, converted->checkpoint);
  });
  summary(o, opened.layout, io::ModelKind::Gpt, from, config.tied, tensors, dtype, written, check);
  return 0;
}

// Runs the conversion; throws on bad input.
int run(const Options& o) {
  std::cerr << "prenorm-convert: reading " << o.input.string() << "\n";
  const io::SafetensorsFile file(o.input);
  if (const std::optional<io::OpenedGpt> gpt = io::open_gpt_checkpoint(file, o.config))
    return run_streaming(o, file, *gpt);
  const io::LoadedModel<double> loaded = io::load_any_model<double>(file, o.config);
  const Arch from = io::arch_of(loaded.model);
  const io::ModelKind kind = io::kind_of(loaded.model);
  if (loaded.layout == io::Layout::Prenorm && o.config)
    std::cerr << "prenorm-convert: note: " << o.input.string()
              << " is in prenorm's layout; --config is not used\n";
  std::cerr << "prenorm-convert: " << o.input.string() << ": " << io::layout_name(loaded.layout)
            << " layout, " << io::model_kind_name(kind) << " " << prenorm::arch_name(from) << ", "
            << loaded.tensors << " tensors, " << io::dtype_name(loaded.dtype);
  if (loaded.config_path) std::cerr << ", config " << loaded.config_path->string();
  std::cerr << "\n";

  const io::Dtype dtype = output_dtype(o, loaded.dtype);
  const bool tied_gpt = std::visit([](const auto& m) { return m.config.tied; }, loaded.model);
  const bool same_arch = from == o.to;
  announce(o, from, tied_gpt);

  io::PrenormSaveOptions save;
  save.converted_from = same_arch ? loaded.converted_from : std::optional<Arch>(from);
  save.inputs = file.files();  // the file, or the index and its shards
  if (loaded.config_path) save.inputs.push_back(*loaded.config_path);
  const prenorm::ConvertOptions convert_options{.tied = o.tied};
  io::SafetensorsWriter writer = std::visit(
      [&](const auto& model) {
        switch (o.to) {
          case Arch::PreLN:
            return io::save_prenorm(to_arch<Arch::PreLN>(model, convert_options), dtype, save);
          case Arch::PreRMSNorm:
            return io::save_prenorm(to_arch<Arch::PreRMSNorm>(model, convert_options), dtype,
                                    save);
          case Arch::PreCRMSNorm:
          default:
            return io::save_prenorm(to_arch<Arch::PreCRMSNorm>(model, convert_options), dtype,
                                    save);
        }
      },
      loaded.model);
  // What the head gives (CLIP's image embeddings, a pooled output), for prenorm-infer.
  if (const std::string output = prenorm_tools::model_output(file, loaded.layout); output != "logits")
    writer.set_metadata("output", output);

  std::cerr << "prenorm-convert: writing " << o.output.string() << " (" << io::dtype_name(dtype)
            << ", " << writer.size() << " tensors)\n";
  const std::size_t tensors = writer.size();
  const Written written = write_output(std::move(writer), o, save.inputs);
  // The model as written, against the source.
  const prenorm_tools::Comparison check = verify(written, dtype, o, [&](const fs::path& path) {
    return prenorm_tools::compare_models(loaded.model, io::load_any_model<double>(path).model);
  });
  summary(o, loaded.layout, kind, from, tied_gpt, tensors, dtype, written, check);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Freed blocks stay with the process for the next block of the same
  // shapes, rather than going back to the system (glibc maps allocations of
  // 32 MiB and more on their own, and every new mapping costs a page fault
  // and a page clearing per 4 KiB: 40% of a GPT-2-medium conversion's time).
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
  const Options options = parse(argc, argv);
  // Refuse to write onto the input (or its config) before reading anything.
  for (const std::optional<fs::path>& input : {std::optional<fs::path>(options.input), options.config})
    if (input && (same_file(*input, options.output) || *input == options.output))
      usage_error("refusing to write OUTPUT '" + options.output.string() + "': it is the input '" +
                  input->string() + "'");
  try {
    return run(options);
  } catch (const std::exception& error) {
    std::string message = error.what();
    // Every message names the input file, even those of the converter.
    if (message.find(options.input.string()) == std::string::npos &&
        message.find(options.output.string()) == std::string::npos)
      message = options.input.string() + ": " + message;
    std::cerr << "prenorm-convert: error: " << message << "\n";
    return 1;
  }
}
