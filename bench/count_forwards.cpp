// prenorm-count-forwards: runs a fixed number of forwards of one benchmarked
// model, for instruction counts that repeat exactly (valgrind's callgrind),
// where wall-clock times on a shared machine do not.
//
//   prenorm-count-forwards [--forwards=N] [--decode | --block] [--eigen-cache-sizes=L1,L2,L3]
//                          MODEL ARCH BATCH SEQ
//
// MODEL is gpt3_small, vit_ti16, vit_s16 or vit_b16; ARCH is pre_ln,
// pre_rmsnorm, pre_crmsnorm or no_norm; BATCH and SEQ are the benchmark's
// args (a ViT's SEQ must be its 197 tokens). --decode (GPT only): one
// KV-cache step at context SEQ instead of a prompt forward. --block (ViT
// only): one block, as BM_block_forward runs it. N defaults to 1.
// --eigen-cache-sizes (bytes) sets the cache sizes Eigen chooses its product
// blocking for (Eigen::setCpuCacheSizes) before anything runs: under valgrind
// Eigen reads valgrind's virtual CPU (l1=32K, l2=256K, l3=8M), so pass the
// sizes a native run prints (49152,2097152,503316480 on the benchmark
// machine) to count the products as they are blocked natively.
//
// The model, weights, inputs and warm-up are those of prenorm-bench-models
// (bench_models.hpp). After the warm-up, exactly N calls run inside
// prenorm_counted_forwards(), which is never inlined, so
//
//   OMP_NUM_THREADS=1 valgrind --tool=callgrind --collect-atstart=no
//       --toggle-collect='*prenorm_counted_forwards*'
//       prenorm-count-forwards vit_ti16 pre_ln 16 197
//
// (one command line)
//
// counts the N forwards and nothing else (construction, random weights and
// the warm-up are outside). The program prints what it ran, the cache sizes
// Eigen blocks its products for (valgrind reports its own CPU, so compare them
// with a native run), the wall time, and a checksum of the last output.

#include "bench_models.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace {

using namespace prenorm_bench;

// One workload behind a virtual call, so that the counted function is one
// plain (non-template) function with a fixed name.
struct Runner {
  virtual ~Runner() = default;
  virtual const prenorm::RowMatrix<Scalar>& run() = 0;
};

template <class Model, class Work>
struct RunnerOf final : Runner {
  std::unique_ptr<Model> model;
  std::unique_ptr<Work> work;
  const prenorm::RowMatrix<Scalar>& run() override { return work->run(); }
};

}  // namespace

// The counted region: exactly `forwards` calls of runner.run(). Not inlined,
// not cloned (noipa), so its name is what callgrind's --toggle-collect sees.
// Returns a sum over the last output, so that nothing is dropped.
[[gnu::noinline, gnu::noipa]] double prenorm_counted_forwards(Runner& runner, long forwards) {
  const prenorm::RowMatrix<Scalar>* out = nullptr;
  for (long i = 0; i < forwards; ++i) out = &runner.run();
  return out ? double(out->sum()) : 0.0;
}

namespace {

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "prenorm-count-forwards: %s\n"
               "usage: prenorm-count-forwards [--forwards=N] [--decode | --block] [--eigen-cache-sizes=L1,L2,L3]\n"
               "                              MODEL ARCH BATCH SEQ\n"
               "  MODEL: gpt3_small, vit_ti16, vit_s16, vit_b16\n"
               "  ARCH:  pre_ln, pre_rmsnorm, pre_crmsnorm, no_norm\n",
               why);
  std::exit(2);
}

Index parse_index(const char* s, const char* what) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v <= 0) usage((std::string(what) + " must be a positive integer").c_str());
  return Index(v);
}

// The work a run counts: a prompt or image forward, a KV-cache step, or one ViT block.
enum class Work { Forward, DecodeStep, Block };

// A runner of Work on a fresh model: model and work built, warm-up run.
template <class Model, class W, class Config>
std::unique_ptr<Runner> runner_of(const Config& config, Index batch, Index second_arg) {
  auto r = std::make_unique<RunnerOf<Model, W>>();
  r->model = make_model<Model>(config);
  if constexpr (std::is_constructible_v<W, Model&, Index, Index>)
    r->work = std::make_unique<W>(*r->model, batch, second_arg);
  else
    r->work = std::make_unique<W>(*r->model, batch);
  return r;
}

template <Arch A>
std::unique_ptr<Runner> make_runner(std::string_view model_name, Work work, Index batch, Index seq) {
  if (const auto config = gpt_preset(model_name)) {
    using Model = prenorm::Gpt<A, Scalar>;
    if (seq > config->context) usage("SEQ exceeds the GPT's context");
    if (work == Work::Block) usage("--block is for ViT models");
    if (work == Work::DecodeStep) {
      if (seq < 2) usage("the decode context SEQ must be >= 2");
      return runner_of<Model, GptDecodeStep<A>>(*config, batch, seq);
    }
    return runner_of<Model, GptForward<A>>(*config, batch, seq);
  }
  if (const auto config = vit_preset(model_name)) {
    using Model = prenorm::Vit<A, Scalar>;
    if (work == Work::DecodeStep) usage("--decode is for GPT models");
    if (seq != config->tokens()) usage("a ViT's SEQ must be its token count (197 for /16 at 224 x 224)");
    if (work == Work::Block) return runner_of<Model, VitBlockForward<A>>(*config, batch, seq);
    return runner_of<Model, VitForward<A>>(*config, batch, seq);
  }
  usage("unknown MODEL");
}

std::unique_ptr<Runner> make_runner(std::string_view arch, std::string_view model, Work work, Index batch,
                                    Index seq) {
  std::unique_ptr<Runner> runner;
  bool found = false;
  for_each_arch([&]<Arch A>() {
    if (arch == prenorm::ArchTraits<A>::name) {
      runner = make_runner<A>(model, work, batch, seq);
      found = true;
    }
  });
  if (!found) usage("unknown ARCH");
  return runner;
}

}  // namespace

int main(int argc, char** argv) {
  long forwards = 1;
  Work work = Work::Forward;
  std::ptrdiff_t caches[3] = {};
  const char* positional[4] = {};
  int npos = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--forwards=")) forwards = long(parse_index(argv[i] + 11, "--forwards"));
    else if (a == "--decode" || a == "--block") {
      if (work != Work::Forward) usage("--decode and --block exclude each other");
      work = a == "--decode" ? Work::DecodeStep : Work::Block;
    }
    else if (a.starts_with("--eigen-cache-sizes=")) {
      long long l1 = 0, l2 = 0, l3 = 0;
      char tail = 0;
      if (std::sscanf(argv[i] + 20, "%lld,%lld,%lld%c", &l1, &l2, &l3, &tail) != 3 || l1 <= 0 || l2 <= 0 ||
          l3 <= 0)
        usage("--eigen-cache-sizes expects three positive byte counts L1,L2,L3");
      caches[0] = l1, caches[1] = l2, caches[2] = l3;
    }
    else if (a.starts_with("-")) usage("unknown option");
    else if (npos < 4) positional[npos++] = argv[i];
    else usage("too many arguments");
  }
  if (npos != 4) usage("expected MODEL ARCH BATCH SEQ");
  const std::string_view model = positional[0], arch = positional[1];
  const Index batch = parse_index(positional[2], "BATCH"), seq = parse_index(positional[3], "SEQ");

  if (caches[0] > 0) Eigen::setCpuCacheSizes(caches[0], caches[1], caches[2]);
  try {
    auto runner = make_runner(arch, model, work, batch, seq);  // includes the warm-up
    const char* what = work == Work::DecodeStep ? "decode_step" : work == Work::Block ? "block_forward" : "forward";
    std::printf("%s %s %s batch=%ld seq=%ld forwards=%ld threads=%d\n", what,
                std::string(model).c_str(), std::string(arch).c_str(), long(batch), long(seq), forwards,
                prenorm::num_threads());
    std::printf("eigen cache sizes (bytes): l1=%td l2=%td l3=%td\n", Eigen::l1CacheSize(), Eigen::l2CacheSize(),
                Eigen::l3CacheSize());
    const auto t0 = std::chrono::steady_clock::now();
    const double checksum = prenorm_counted_forwards(*runner, forwards);
    const auto t1 = std::chrono::steady_clock::now();
    std::printf("wall %.3f ms per forward, checksum %.9g\n",
                std::chrono::duration<double, std::milli>(t1 - t0).count() / double(forwards), checksum);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prenorm-count-forwards: %s\n", e.what());
    return 1;
  }
  return 0;
}
