// prenorm-demo: converts a GPT-2-small-shaped Pre-LN model into Pre-RMSNorm
// and Pre-CRMSNorm models, shows that they compute the same logits, and times
// the forward of each against Pre-LN. (The bound without normalization, and
// with it the norm share of a forward, is the benchmarks' no_norm baseline:
// bench/README.md; an example uses the library's three architectures only.)
//
//   prenorm-demo [--layers N] [--width D] [--heads H] [--seq T] [--threads N]
//                [--seed S] [--runs R] [--json]

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using prenorm::Arch;
using prenorm::Gpt;
using prenorm::Index;
using Scalar = float;

struct Options {
  Index layers = 12, width = 768, heads = 12, seq = 128, vocab = 50257;
  int threads = 0;  // 0: all
  std::uint64_t seed = 2023;
  int runs = 5;
  bool json = false;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-demo: " << message << "\n"
            << "usage: prenorm-demo [--layers N] [--width D] [--heads H] [--seq T] [--vocab V]\n"
            << "                    [--threads N] [--seed S] [--runs R] [--json]\n";
  std::exit(2);
}

long long parse_int(std::string_view flag, const char* text, long long min) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < min)
    usage_error(std::string(flag) + " takes an integer >= " + std::to_string(min) + ", got '" +
                text + "'");
  return value;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--json") {
      o.json = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") usage_error("converts and times a GPT-2-shaped model");
    if (i + 1 >= argc) usage_error("unknown option or missing value: " + std::string(arg));
    const char* value = argv[++i];
    if (arg == "--layers") o.layers = parse_int(arg, value, 0);
    else if (arg == "--width") o.width = parse_int(arg, value, 2);
    else if (arg == "--heads") o.heads = parse_int(arg, value, 1);
    else if (arg == "--seq") o.seq = parse_int(arg, value, 1);
    else if (arg == "--vocab") o.vocab = parse_int(arg, value, 1);
    else if (arg == "--threads") o.threads = int(parse_int(arg, value, 0));
    else if (arg == "--seed") o.seed = std::uint64_t(parse_int(arg, value, 0));
    else if (arg == "--runs") o.runs = int(parse_int(arg, value, 1));
    else usage_error("unknown option: " + std::string(arg));
  }
  if (o.width % o.heads != 0)
    usage_error("--width " + std::to_string(o.width) + " is not divisible by --heads " +
                std::to_string(o.heads));
  return o;
}

// Progress goes to stderr, so that --json leaves stdout to the JSON.
void progress(const std::string& line) { std::cerr << "[prenorm-demo] " << line << std::endl; }

// Random weights that look like a trained Pre-LN model's: gamma around 1,
// nonzero beta and biases, and embeddings with a large shared mean and a few
// outlier dimensions (as GPT-2's have), which is what makes the recentering
// in the conversion matter.
Gpt<Arch::PreLN, Scalar> make_pre_ln_model(const prenorm::TransformerConfig& config, std::uint64_t seed) {
  Gpt<Arch::PreLN, Scalar> model(config);
  model.init_random(seed, 0.02, /*random_affine=*/true);
  auto& table = model.token_embedding.table;
  table.array() += Scalar(0.25);
  std::mt19937_64 rng(seed + 1);
  for (int k = 0; k < 3; ++k) {
    const Index column = Index(rng() % std::uint64_t(config.width));
    table.col(column).array() *= Scalar(8);
  }
  model.position_embedding.table.array() += Scalar(0.1);
  return model;
}

// ||got - ref|| / ||ref|| and max |got - ref| / max |ref| over all logits.
struct Difference {
  double relative_norm = 0, relative_max = 0;
};
Difference difference(const prenorm::RowMatrix<Scalar>& got, const prenorm::RowMatrix<Scalar>& ref) {
  const Eigen::MatrixXd g = got.cast<double>(), r = ref.cast<double>();
  return {(g - r).norm() / r.norm(), (g - r).cwiseAbs().maxCoeff() / r.cwiseAbs().maxCoeff()};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  if (opt.threads > 0) {
    prenorm::set_num_threads(opt.threads);
    Eigen::setNbThreads(opt.threads);
  }
  prenorm::GptConfig config = prenorm::presets::gpt2_small;
  config.layers = opt.layers;
  config.width = opt.width;
  config.heads = opt.heads;
  config.mlp_width = 4 * opt.width;
  config.vocab = opt.vocab;
  config.context = std::max<Index>(config.context, opt.seq);
  config.tied = true;  // GPT-2 ties its head to the token embedding

  try {
    progress("building a Pre-LN GPT: " + std::to_string(config.layers) + " layers, width " +
             std::to_string(config.width) + ", " + std::to_string(config.heads) +
             " heads, vocab " + std::to_string(config.vocab) + ", tied head, seed " +
             std::to_string(opt.seed));
    auto pre_ln = make_pre_ln_model(config, opt.seed);

    std::mt19937_64 rng(opt.seed + 2);
    std::vector<int> ids(std::size_t(opt.seq));
    for (int& id : ids) id = int(rng() % std::uint64_t(config.vocab));
    const prenorm::TokenBatch tokens{ids, 1, opt.seq};

    progress("Pre-LN forward at T=" + std::to_string(opt.seq));
    const prenorm::RowMatrix<Scalar> reference = pre_ln.forward(tokens);

    nlohmann::json report;
    report["model"] = {{"layers", config.layers}, {"width", config.width},
                       {"heads", config.heads},   {"vocab", config.vocab},
                       {"seq", opt.seq},          {"seed", opt.seed},
                       {"threads", prenorm::num_threads()}};

    // Equivalence: every conversion against the Pre-LN logits.
    const auto check = [&](auto&& converted, const std::string& key, const std::string& label) {
      const Difference diff = difference(converted.forward(tokens), reference);
      report["equivalence"][key] = {{"relative_error", diff.relative_norm},
                                    {"max_relative_error", diff.relative_max}};
      char line[160];
      std::snprintf(line, sizeof line, "%s: relative logit error %.3e", label.c_str(),
                    diff.relative_norm);
      progress(line);
    };
    const prenorm::ConvertOptions untie{.tied = prenorm::TiedPolicy::Untie};
    const prenorm::ConvertOptions keep{.tied = prenorm::TiedPolicy::Keep};
    progress("converting to Pre-RMSNorm and Pre-CRMSNorm (both tied policies; arithmetic in double)");
    auto pre_rms = prenorm::convert<Arch::PreRMSNorm>(pre_ln, untie);
    auto pre_crms = prenorm::convert<Arch::PreCRMSNorm>(pre_ln, untie);
    check(pre_rms, "pre_rmsnorm_untie", "Pre-RMSNorm  (untie)");
    check(prenorm::convert<Arch::PreRMSNorm>(pre_ln, keep), "pre_rmsnorm_keep",
          "Pre-RMSNorm  (keep tied)");
    check(pre_crms, "pre_crmsnorm_untie", "Pre-CRMSNorm (untie)");
    check(prenorm::convert<Arch::PreCRMSNorm>(pre_ln, keep), "pre_crmsnorm_keep",
          "Pre-CRMSNorm (keep tied)");
    check(prenorm::convert<Arch::PreLN>(pre_crms, untie), "round_trip_pre_ln",
          "Pre-CRMSNorm -> Pre-LN round trip");

    // Timing: runs interleaved over the variants, so drift hits them alike.
    const std::vector<std::string> names = {"pre_ln", "pre_rmsnorm", "pre_crmsnorm"};
    std::vector<std::vector<double>> ms(names.size());
    // The three models as an inference user runs them: weights packed once for
    // the GEMM backend (a no-op without oneDNN). One session per model: its
    // buffers are allocated by the warm-up run.
    prenorm::pack_weights(pre_ln);
    prenorm::pack_weights(pre_rms);
    prenorm::pack_weights(pre_crms);
    prenorm::Session ln_session(pre_ln);
    prenorm::Session rms_session(pre_rms);
    prenorm::Session crms_session(pre_crms);
    const auto time_ms = [&](auto& session) {
      const auto start = std::chrono::steady_clock::now();
      const auto& logits = session.forward(tokens);
      const auto stop = std::chrono::steady_clock::now();
      if (logits.rows() != opt.seq) std::abort();
      return std::chrono::duration<double, std::milli>(stop - start).count();
    };
    progress("timing the forward at T=" + std::to_string(opt.seq) + ": " +
             std::to_string(opt.runs) + " runs of each, interleaved, after one warm-up");
    for (int run = -1; run < opt.runs; ++run) {
      const double t[] = {time_ms(ln_session), time_ms(rms_session), time_ms(crms_session)};
      if (run >= 0)
        for (std::size_t v = 0; v < names.size(); ++v) ms[v].push_back(t[v]);
    }
    const double base = median(ms[0]);
    for (std::size_t v = 0; v < names.size(); ++v) {
      const double m = median(ms[v]);
      report["timing"][names[v]] = {{"median_ms", m}, {"min_ms", *std::min_element(ms[v].begin(), ms[v].end())},
                                    {"speedup_vs_pre_ln", base / m}};
    }
    report["timing"]["runs"] = opt.runs;

    // Float models: the conversion is exact in double (tests hold it to 1e-12),
    // so anything beyond float rounding means a broken conversion.
    constexpr double kFloatTolerance = 1e-4;
    bool equivalent = true;
    for (const auto& [key, value] : report["equivalence"].items())
      if (!(value["relative_error"].get<double>() <= kFloatTolerance)) {
        std::cerr << "prenorm-demo: " << key << " differs from Pre-LN by "
                  << value["relative_error"].get<double>() << " (> " << kFloatTolerance << ")\n";
        equivalent = false;
      }
    report["equivalent"] = equivalent;

    if (opt.json) {
      std::cout << report.dump(2) << std::endl;
      return equivalent ? 0 : 1;
    }
    std::printf("\nEquivalence with the Pre-LN model (logits of %lld tokens x %lld vocab):\n",
                static_cast<long long>(opt.seq), static_cast<long long>(config.vocab));
    std::printf("  %-22s %16s %20s\n", "model", "||d||/||ref||", "max|d|/max|ref|");
    for (const auto& [key, value] : report["equivalence"].items())
      std::printf("  %-22s %16.3e %20.3e\n", key.c_str(), value["relative_error"].get<double>(),
                  value["max_relative_error"].get<double>());
    std::printf("\nForward time at T=%lld, median of %d runs, %d thread(s):\n",
                static_cast<long long>(opt.seq), opt.runs, prenorm::num_threads());
    std::printf("  %-14s %12s %18s\n", "architecture", "median ms", "speedup vs pre_ln");
    for (std::size_t v = 0; v < names.size(); ++v)
      std::printf("  %-14s %12.2f %17.3fx\n", names[v].c_str(), median(ms[v]), base / median(ms[v]));
    std::printf("\nWall-clock differences of a few percent are within this machine's noise;\n"
                "bench/README.md has pinned medians, and the norm share of a forward\n"
                "(against the bound without normalization, no_norm).\n");
    if (!equivalent) return 1;
  } catch (const std::exception& e) {
    std::cerr << "prenorm-demo: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
