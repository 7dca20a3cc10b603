// prenorm-train-demo: trains a small character-level GPT on Shakespeare in
// three architectures from one initialization and one batch sequence:
//
//   pre_ln        Pre-LN, trained directly
//   pre_rmsnorm   the same Pre-LN parameters trained through the converter,
//   pre_crmsnorm  computing in Pre-RMSNorm / Pre-CRMSNorm (ReparamTrainer)
//
// The three loss curves agree up to float rounding (docs/DESIGN.md §6): the loss
// table shows them side by side with the time per step. Then the trained
// Pre-LN model is converted for inference, checked against the trained
// Pre-RMSNorm model, and both sample a few lines through the KV cache.
//
//   prenorm-train-demo [--steps N] [--batch B] [--lr X] [--seed S] [--threads N]
//                      [--data PATH] [--csv PATH] [--json]
//
// The loss curves go to a CSV file (default train_losses.csv), and to a PNG
// next to it when gnuplot is installed. With --json, stdout is one JSON object
// with a loss array per architecture (progress goes to stderr).

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#ifndef PRENORM_EXAMPLES_DATA_DIR
#define PRENORM_EXAMPLES_DATA_DIR "examples/data"
#endif

namespace {

using prenorm::Arch;
using prenorm::Index;
using Scalar = float;
using GptLN = prenorm::Gpt<Arch::PreLN, Scalar>;
using Opt = prenorm::AdamW<Scalar>;

constexpr Index kContext = 64;

struct Options {
  int steps = 500;
  Index batch = 16;
  double lr = 1e-3;
  std::uint64_t seed = 1337;
  int threads = 1;  // small model: OpenMP costs more than it saves on a busy machine
  std::string data = std::string(PRENORM_EXAMPLES_DATA_DIR) + "/tinyshakespeare.txt";
  std::string csv = "train_losses.csv";
  bool json = false;
};

constexpr const char* kUsage =
    "usage: prenorm-train-demo [--steps N] [--batch B] [--lr X] [--seed S] [--threads N]\n"
    "                          [--data PATH] [--csv PATH] [--json]\n"
    "  --steps N    training steps per architecture (default 500)\n"
    "  --batch B    sequences of 64 characters per step (default 16)\n"
    "  --lr X       AdamW learning rate (default 0.001)\n"
    "  --seed S     initialization, batches and sampling (default 1337)\n"
    "  --threads N  OpenMP threads (default 1: the model is small)\n"
    "  --data PATH  training text (default: the shipped tinyshakespeare.txt)\n"
    "  --csv PATH   loss curves (default train_losses.csv; a PNG beside it with gnuplot)\n"
    "  --json       print the loss curves as JSON on stdout\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "prenorm-train-demo: " << message << "\n" << kUsage;
  std::exit(2);
}

long long parse_int(std::string_view flag, const char* text, long long min, long long max) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || value < min || value > max)
    usage_error(std::string(flag) + " takes an integer in [" + std::to_string(min) + ", " +
                std::to_string(max) + "], got '" + text + "'");
  return value;
}

double parse_double(std::string_view flag, const char* text) {
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0) || !std::isfinite(value))
    usage_error(std::string(flag) + " takes a number > 0, got '" + text + "'");
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
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    constexpr std::string_view kValueFlags[] = {"--steps", "--batch", "--lr", "--seed",
                                                 "--threads", "--data", "--csv"};
    if (std::find(std::begin(kValueFlags), std::end(kValueFlags), arg) == std::end(kValueFlags))
      usage_error("unknown argument '" + std::string(arg) + "'");
    if (i + 1 >= argc) usage_error(std::string(arg) + " needs a value");
    const char* value = argv[++i];
    if (arg == "--steps") o.steps = int(parse_int(arg, value, 1, 1000000));
    else if (arg == "--batch") o.batch = Index(parse_int(arg, value, 1, 4096));
    else if (arg == "--lr") o.lr = parse_double(arg, value);
    else if (arg == "--seed") o.seed = std::uint64_t(parse_int(arg, value, 0, 1LL << 62));
    else if (arg == "--threads") o.threads = int(parse_int(arg, value, 1, 1024));
    else if (arg == "--data") o.data = value;
    else o.csv = value;
  }
  if (o.csv.empty()) usage_error("--csv needs a non-empty path");
  return o;
}

// The text and its character vocabulary.
struct Corpus {
  std::vector<char> chars;  // id -> character, sorted
  std::array<int, 256> id{};
  std::vector<int> ids;     // the text, encoded

  std::string decode(const std::vector<int>& v) const {
    std::string s;
    for (int i : v) s += chars[std::size_t(i)];
    return s;
  }
};

Corpus load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "prenorm-train-demo: cannot read the training text '" << path << "'\n" << kUsage;
    std::exit(2);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (Index(text.size()) < 4 * (kContext + 1)) {
    std::cerr << "prenorm-train-demo: '" << path << "' is too short to train on (" << text.size()
              << " bytes)\n";
    std::exit(2);
  }
  Corpus c;
  std::array<bool, 256> seen{};
  for (unsigned char ch : text) seen[ch] = true;
  for (int ch = 0; ch < 256; ++ch)
    if (seen[std::size_t(ch)]) {
      c.id[std::size_t(ch)] = int(c.chars.size());
      c.chars.push_back(char(ch));
    }
  c.ids.reserve(text.size());
  for (unsigned char ch : text) c.ids.push_back(c.id[ch]);
  return c;
}

// Random windows of kContext + 1 characters: inputs and next-character targets.
struct Batches {
  std::vector<std::vector<int>> inputs, targets;
  Index batch = 0;

  Batches(const std::vector<int>& ids, Index begin, Index end, int count, Index batch_,
          std::uint64_t seed)
      : batch(batch_) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<Index> start(begin, end - kContext - 1);
    for (int s = 0; s < count; ++s) {
      std::vector<int> in, tg;
      for (Index b = 0; b < batch; ++b) {
        const Index p = start(rng);
        in.insert(in.end(), ids.begin() + p, ids.begin() + p + kContext);
        tg.insert(tg.end(), ids.begin() + p + 1, ids.begin() + p + kContext + 1);
      }
      inputs.push_back(std::move(in));
      targets.push_back(std::move(tg));
    }
  }
  prenorm::GptBatch operator[](std::size_t s) const {
    return {prenorm::TokenBatch(inputs[s], batch, kContext), targets[s]};
  }
};

struct Curve {
  std::string name;
  std::vector<double> losses;
  double seconds = 0;  // training time (steps only)
  double val_loss = 0;
};

// Writes `contents` to `path` through a temporary file and a rename, so that
// the path never holds a half-written file.
bool write_atomically(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out << contents;
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      return false;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) std::remove(tmp.c_str());
  return !ec;
}

std::string csv_text(const std::vector<Curve>& curves) {
  std::ostringstream s;
  s << "step";
  for (const Curve& c : curves) s << "," << c.name;
  s << "\n";
  s.precision(9);
  for (std::size_t i = 0; i < curves[0].losses.size(); ++i) {
    s << i + 1;
    for (const Curve& c : curves) s << "," << c.losses[i];
    s << "\n";
  }
  return s.str();
}

// A PNG of the curves next to the CSV when gnuplot is installed (quietly
// nothing otherwise). Returns the PNG's path, or "".
std::string plot(const std::string& csv) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) return "";
  std::filesystem::path png = csv;
  png.replace_extension(".png");
  const std::string script_path = csv + ".gp";
  std::ofstream script(script_path);
  if (!script) return "";
  const std::string tmp_png = png.string() + ".tmp";
  script << "set terminal pngcairo size 900,540 noenhanced\n"
         << "set output '" << tmp_png << "'\n"
         << "set datafile separator ','\n"
         << "set key autotitle columnhead\n"
         << "set title 'prenorm-train-demo: character-level GPT on tiny shakespeare'\n"
         << "set xlabel 'step'\nset ylabel 'training loss (cross-entropy, nats)'\nset grid\n"
         << "plot '" << csv << "' using 1:2 with lines lw 2, '' using 1:3 with lines dt 2 lw 2, "
         << "'' using 1:4 with lines dt 3 lw 2\n";
  script.close();
  const int rc = std::system(("gnuplot '" + script_path + "' > /dev/null 2>&1").c_str());
  std::remove(script_path.c_str());
  std::error_code ec;
  if (rc != 0 || !std::filesystem::exists(tmp_png)) {
    std::remove(tmp_png.c_str());
    return "";
  }
  std::filesystem::rename(tmp_png, png, ec);
  return ec ? "" : png.string();
}

// Samples `count` characters after `prompt` through the KV cache: greedy
// (temperature 0) or with a seeded temperature.
template <prenorm::Arch A>
std::vector<int> sample(const prenorm::Gpt<A, Scalar>& model, const std::vector<int>& prompt,
                        Index count, double temperature, std::uint64_t seed) {
  prenorm::Session session(model);
  const prenorm::KvCache<Scalar>& cache = session.cache();
  std::mt19937_64 rng(seed);
  std::vector<int> context = prompt, out;
  const prenorm::RowMatrix<Scalar>* logits =
      &session.prefill(prenorm::TokenBatch(context, 1, Index(context.size())), kContext);
  Index row = Index(context.size()) - 1;
  for (Index i = 0; i < count; ++i) {
    const auto z = logits->row(row);
    int next = 0;
    if (temperature <= 0) {
      z.maxCoeff(&next);
    } else {
      std::vector<double> p(std::size_t(z.size()));
      const double max = double(z.maxCoeff());
      for (Index k = 0; k < z.size(); ++k) p[std::size_t(k)] = std::exp((double(z[k]) - max) / temperature);
      std::discrete_distribution<int> pick(p.begin(), p.end());
      next = pick(rng);
    }
    out.push_back(next);
    if (cache.length == cache.capacity) {  // the window is full: start over with its second half
      context.assign(context.end() - kContext / 2, context.end());
      logits = &session.prefill(prenorm::TokenBatch(context, 1, Index(context.size())), kContext);
      row = Index(context.size()) - 1;
    }
    context.push_back(next);
    const std::vector<int> step{next};
    logits = &session.step(step);
    row = 0;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  prenorm::set_num_threads(o.threads);
  std::ostream& log = o.json ? std::cerr : std::cout;
  {
    std::error_code ec;
    if (std::filesystem::equivalent(o.csv, o.data, ec))
      usage_error("--csv '" + o.csv + "' is the training text; refusing to overwrite it");
  }

  const Corpus corpus = load(o.data);
  const Index vocab = Index(corpus.chars.size());
  const Index split = Index(corpus.ids.size()) * 9 / 10;  // the last tenth is held out
  const Batches train(corpus.ids, 0, split, o.steps, o.batch, o.seed);
  const Batches val(corpus.ids, split, Index(corpus.ids.size()), 8, o.batch, o.seed + 1);

  const prenorm::GptConfig config{.vocab = vocab, .context = kContext, .width = 128, .heads = 4,
                                  .layers = 4, .mlp_width = 512, .tied = true};
  GptLN init(config);
  init.init_random(o.seed, 0.02);
  Index params = 0;
  init.visit_parameters([&](const std::string&, const auto& t) { params += Index(t.size()); });
  log << "prenorm-train-demo: character-level GPT on " << o.data << "\n"
      << "  " << corpus.ids.size() << " characters (" << vocab << " distinct; last 10% held out), "
      << params << " parameters (width 128, 4 layers, 4 heads, context 64, tied)\n"
      << "  " << o.steps << " steps of AdamW (lr " << o.lr << ", weight decay 0.1, clip 1.0), batch "
      << o.batch << " x 64, float, " << prenorm::num_threads() << " thread(s)\n\n";

  const prenorm::AdamWOptions adamw{.lr = o.lr, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8,
                                    .weight_decay = 0.1, .decay_vectors = false};
  const auto make_opt = [&] {
    Opt opt(adamw);
    opt.max_grad_norm = 1.0;
    return opt;
  };
  prenorm::Trainer<GptLN, Opt> ln(init, make_opt());
  prenorm::ReparamTrainer<Arch::PreRMSNorm, GptLN, Opt> rms(init, make_opt());
  prenorm::ReparamTrainer<Arch::PreCRMSNorm, GptLN, Opt> crms(init, make_opt());
  ln.timing = rms.timing = crms.timing = true;

  std::vector<Curve> curves{{"pre_ln", {}, 0, 0}, {"pre_rmsnorm", {}, 0, 0}, {"pre_crmsnorm", {}, 0, 0}};
  // Each architecture takes its step in turn, on the same batch.
  const auto run_step = [&](auto& trainer, Curve& curve, std::size_t s) {
    const double before = trainer.timings.total;
    curve.losses.push_back(trainer.step(train[s]));
    curve.seconds += trainer.timings.total - before;
  };
  const int every = std::max(1, o.steps / 20);
  log << "  step     pre_ln  pre_rmsnorm  pre_crmsnorm   | ms/step: pre_ln  pre_rmsnorm  pre_crmsnorm\n";
  for (int s = 0; s < o.steps; ++s) {
    run_step(ln, curves[0], std::size_t(s));
    run_step(rms, curves[1], std::size_t(s));
    run_step(crms, curves[2], std::size_t(s));
    if ((s + 1) % every == 0 || s == 0 || s + 1 == o.steps) {
      char line[160];
      std::snprintf(line, sizeof line, "  %4d  %9.4f  %11.4f  %12.4f   |        %6.1f  %11.1f  %12.1f\n",
                    s + 1, curves[0].losses.back(), curves[1].losses.back(), curves[2].losses.back(),
                    1e3 * curves[0].seconds / (s + 1), 1e3 * curves[1].seconds / (s + 1),
                    1e3 * curves[2].seconds / (s + 1));
      log << line;
    }
  }

  // Held-out loss, and the agreement of the curves.
  for (int k = 0; k < 8; ++k) {
    curves[0].val_loss += ln.evaluate(val[std::size_t(k)]) / 8;
    curves[1].val_loss += rms.evaluate(val[std::size_t(k)]) / 8;
    curves[2].val_loss += crms.evaluate(val[std::size_t(k)]) / 8;
  }
  double worst[3] = {0, 0, 0};
  for (int c = 1; c < 3; ++c)
    for (int s = 0; s < o.steps; ++s)
      worst[c] = std::max(worst[c], std::abs(curves[std::size_t(c)].losses[std::size_t(s)] -
                                             curves[0].losses[std::size_t(s)]) /
                                        curves[0].losses[std::size_t(s)]);
  double sum = 0;
  for (const Curve& c : curves) sum += c.seconds;
  log << "\n  architecture   train loss   held-out loss   max rel. diff to pre_ln   time/step   total    speedup\n";
  for (int c = 0; c < 3; ++c) {
    const Curve& cv = curves[std::size_t(c)];
    char line[200];
    std::snprintf(line, sizeof line, "  %-13s  %10.4f   %13.4f   %23.1e   %7.1f ms   %5.1f s   %6.3fx\n",
                  cv.name.c_str(), cv.losses.back(), cv.val_loss, worst[c], 1e3 * cv.seconds / o.steps,
                  cv.seconds, curves[0].seconds / cv.seconds);
    log << line;
  }
  {
    char line[120];
    std::snprintf(line, sizeof line, "  sum over the three variants: %.1f s (speedup: Pre-LN time / time)\n", sum);
    log << line;
    const auto share = [](const prenorm::StepTimings& t, double part) { return 100 * t.share(part); };
    std::snprintf(line, sizeof line, "  share of a step: normalization %.1f%% / %.1f%% / %.1f%%, ",
                  share(ln.timings, ln.timings.norm), share(rms.timings, rms.timings.norm),
                  share(crms.timings, crms.timings.norm));
    log << line;
    std::snprintf(line, sizeof line, "conversion + adjoint - / %.1f%% / %.1f%%\n",
                  share(rms.timings, rms.timings.convert + rms.timings.adjoint),
                  share(crms.timings, crms.timings.convert + crms.timings.adjoint));
    log << line;
  }

  // The loss curves: CSV (and a PNG with gnuplot).
  if (!write_atomically(o.csv, csv_text(curves))) {
    std::cerr << "prenorm-train-demo: cannot write '" << o.csv << "'\n";
    return 1;
  }
  log << "\n  loss curves: " << o.csv;
  const std::string png = plot(o.csv);
  if (!png.empty()) log << ", " << png;
  log << "\n";

  // Inference: the trained Pre-LN model converted, against the trained Pre-RMSNorm model.
  auto converted = prenorm::convert<Arch::PreRMSNorm>(ln.model(), {.tied = prenorm::TiedPolicy::Keep});
  auto& trained_rms = const_cast<prenorm::Gpt<Arch::PreRMSNorm, Scalar>&>(rms.phi());
  const prenorm::TokenBatch probe = val[0].inputs;
  const prenorm::RowMatrix<Scalar> ln_logits = ln.model().forward(probe);
  const prenorm::RowMatrix<Scalar> conv_logits = converted.forward(probe);
  const prenorm::RowMatrix<Scalar> rms_logits = trained_rms.forward(probe);
  const double exact = (conv_logits - ln_logits).cwiseAbs().maxCoeff();
  const double drift = (conv_logits - rms_logits).cwiseAbs().maxCoeff();
  Index same = 0;
  for (Index r = 0; r < conv_logits.rows(); ++r) {
    Index a = 0, b = 0;
    conv_logits.row(r).maxCoeff(&a);
    rms_logits.row(r).maxCoeff(&b);
    same += a == b;
  }
  const double agree = double(same) / double(conv_logits.rows());
  // The conversion is exact up to float rounding; the two trainings differ by
  // the rounding of their float arithmetic, carried along the steps.
  const double scale = 1.0 + double(ln_logits.cwiseAbs().maxCoeff());
  const bool ok = exact <= 1e-4 * scale && drift <= 1e-2 * scale && agree >= 0.99;
  char line[400];
  std::snprintf(line, sizeof line,
                "\n  inference: the trained Pre-LN model converted to Pre-RMSNorm (keep-tied head), max |logit diff|\n"
                "    against the trained Pre-LN model       %.2e (the conversion: float rounding)\n"
                "    against the trained Pre-RMSNorm model  %.2e (float rounding carried over %d steps)\n"
                "    greedy next characters agree on %.1f%% of %lld positions -> %s\n",
                exact, drift, o.steps, 100 * agree, static_cast<long long>(conv_logits.rows()),
                ok ? "they agree" : "THEY DIFFER");
  log << line;

  const std::string prompt_text = "ROMEO:\n";
  std::vector<int> prompt;
  for (unsigned char ch : prompt_text)
    prompt.push_back(std::find(corpus.chars.begin(), corpus.chars.end(), char(ch)) != corpus.chars.end()
                         ? corpus.id[ch]
                         : 0);
  const std::vector<int> a = sample(converted, prompt, 240, 0.8, o.seed);
  const std::vector<int> b = sample(trained_rms, prompt, 240, 0.8, o.seed);
  log << "\n  samples (temperature 0.8, seed " << o.seed << ", KV cache), prompt \"ROMEO:\\n\"\n"
      << "  --- converted Pre-LN model ---\n"
      << prompt_text << corpus.decode(a) << "\n"
      << "  --- trained Pre-RMSNorm model ---\n"
      << prompt_text << corpus.decode(b) << "\n";

  if (o.json) {
    std::ostringstream j;
    j.precision(9);
    j << "{";
    for (std::size_t c = 0; c < curves.size(); ++c) {
      j << (c ? ", " : "") << "\"" << curves[c].name << "\": [";
      for (std::size_t s = 0; s < curves[c].losses.size(); ++s)
        j << (s ? ", " : "") << curves[c].losses[s];
      j << "]";
    }
    j << ", \"seconds\": {";
    for (std::size_t c = 0; c < curves.size(); ++c)
      j << (c ? ", " : "") << "\"" << curves[c].name << "\": " << curves[c].seconds;
    j << "}, \"held_out_loss\": {";
    for (std::size_t c = 0; c < curves.size(); ++c)
      j << (c ? ", " : "") << "\"" << curves[c].name << "\": " << curves[c].val_loss;
    j << "}, \"steps\": " << o.steps << ", \"inference_agrees\": " << (ok ? "true" : "false") << "}\n";
    std::cout << j.str();
  }
  return ok ? 0 : 1;
}
