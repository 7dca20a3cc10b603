// prenorm-bench-train: training steps (include/prenorm/train/).
//
// One step = forward, cross-entropy, backward and AdamW, in float, for
//   pre_ln        Pre-LN trained directly (Trainer)
//   pre_rmsnorm   Pre-LN parameters trained through the converter: the step
//   pre_crmsnorm  runs in Pre-RMSNorm / Pre-CRMSNorm (ReparamTrainer, default
//                 options: the adjoint inside the backward, the conversion
//                 inside the optimizer step); on a tied GPT, the argument
//                 keep says what phi's head is: keep:1 kept tied
//                 (TiedPolicy::Keep, the default), keep:0 untied (Untie,
//                 a vocab x d head written every step)
//   no_norm       no normalization (Trainer): a lower bound
// on the models
//   gpt3_small     GPT-3 Small (124M, tied, vocab 50257), batch 4 x seq 64
//   gpt_w256       GPT, width 256, 4 layers, 4 heads, MLP 1024, tied, vocab 50257
//                  (GPT-2's), batch 8 x seq 128
//   gpt_w256_v256  the same with a byte-level vocab of 256 (the blocks dominate)
//   vit_ti16       ViT-Ti/16, 224 x 224 images, 1000 classes, batch 8
//
// Counters (from the trainers' StepTimings):
//   tokens_per_s   tokens (GPT: batch x seq; ViT: batch x 197) per second
//   norm_share     share of the step in the normalization kernels (forward + backward)
//   convert_share  share in phi = convert(theta)            (reparameterized only)
//   adjoint_share  share in grad_theta = J^T grad_phi       (reparameterized only)
//
// stream_store/mib:N is the floor of phi's writes: N MiB written with the
// non-temporal stores the fused conversion uses (detail::stream_copy, from
// one row in L1), counter bytes_per_s.
//
// Each benchmark builds its model once (kept across repetitions; one model in
// memory at a time) and runs one untimed warm-up step. Targets are measured
// single-threaded and pinned:
//   taskset -c 1 prenorm-bench-train --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include "no_norm.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using prenorm::AdamW;
using prenorm::AdamWOptions;
using prenorm::Arch;
using prenorm::Index;

using S = float;

// The model kept between the repetitions of one benchmark.
struct Fixture {
  std::string key;
  std::function<double()> step;  // one training step, returns the loss
  std::function<prenorm::StepTimings&()> timings;
  std::shared_ptr<void> trainer;
  std::shared_ptr<void> data;  // what the batch points into
  Index tokens = 0;            // per step
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

AdamWOptions adamw() { return {.lr = 1e-5, .weight_decay = 0.1}; }

prenorm::GptConfig gpt_w256(Index vocab) {
  return {.vocab = vocab, .context = 128, .width = 256, .heads = 4, .layers = 4, .mlp_width = 1024};
}

// A trainer of architecture A for a model template (Gpt or Vit) and its batch.
template <Arch A, class Model, class Batch>
void make_fixture(const std::string& key, const Model& init, std::shared_ptr<void> data,
                  Batch batch, Index tokens, prenorm::TiedPolicy tied = prenorm::TiedPolicy::Keep) {
  Fixture& f = fixture();
  using Opt = AdamW<S>;
  if constexpr (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm) {
    auto trainer = std::make_shared<prenorm::ReparamTrainer<A, Model, Opt>>(
        init, Opt(adamw()), prenorm::ReparamOptions{.tied = tied});
    trainer->step(batch);  // warm-up: first-step allocations
    trainer->timing = true;
    f.step = [t = trainer.get(), batch] { return t->step(batch); };
    f.timings = [t = trainer.get()]() -> prenorm::StepTimings& { return t->timings; };
    f.trainer = trainer;
  } else {
    using Target = typename prenorm::TrainTraits<Model>::template WithArch<A>;
    Target model(init.config);
    if constexpr (A == Arch::PreLN) model = init;
    else model.init_random(1);
    auto trainer = std::make_shared<prenorm::Trainer<Target, Opt>>(std::move(model), Opt(adamw()));
    trainer->step(batch);
    trainer->timing = true;
    f.step = [t = trainer.get(), batch] { return t->step(batch); };
    f.timings = [t = trainer.get()]() -> prenorm::StepTimings& { return t->timings; };
    f.trainer = trainer;
  }
  f.data = std::move(data);
  f.key = key;
  f.tokens = tokens;
}

void run(benchmark::State& state) {
  Fixture& f = fixture();
  f.timings().reset();
  for (auto _ : state) benchmark::DoNotOptimize(f.step());
  const prenorm::StepTimings& t = f.timings();
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(f.tokens) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["norm_share"] = t.share(t.norm);
  state.counters["convert_share"] = t.share(t.convert);
  state.counters["adjoint_share"] = t.share(t.adjoint);
}

struct TokenData {
  std::vector<int> ids, targets;
};

// Arguments: batch, seq, and (reparameterized, tied) keep: 1 TiedPolicy::Keep, 0 Untie.
template <Arch A>
void BM_gpt(benchmark::State& state, const std::string& name, prenorm::TransformerConfig config,
            bool has_policy) {
  const Index B = state.range(0), T = state.range(1);
  const prenorm::TiedPolicy tied = has_policy && state.range(2) == 0 ? prenorm::TiedPolicy::Untie
                                                                     : prenorm::TiedPolicy::Keep;
  const std::string key = std::string(prenorm::ArchTraits<A>::name) + "/" + name +
                          (has_policy ? "/keep:" + std::to_string(state.range(2)) : "");
  if (fixture().key != key) {
    fixture() = Fixture{};  // free the previous model first
    prenorm::Gpt<Arch::PreLN, S> init(config);
    init.init_random(1);
    auto data = std::make_shared<TokenData>();
    std::mt19937_64 rng(2);
    std::uniform_int_distribution<int> tok(0, int(config.vocab) - 1);
    for (Index i = 0; i < B * T; ++i) data->ids.push_back(tok(rng));
    for (Index i = 0; i < B * T; ++i) data->targets.push_back(tok(rng));
    const prenorm::GptBatch batch{prenorm::TokenBatch(data->ids, B, T), data->targets};
    make_fixture<A>(key, init, data, batch, B * T, tied);
  }
  run(state);
}

struct ImageData {
  std::vector<S> pixels;
  std::vector<int> labels;
};

template <Arch A>
void BM_vit(benchmark::State& state, const std::string& name, prenorm::TransformerConfig config) {
  const Index B = state.range(0);
  const std::string key = std::string(prenorm::ArchTraits<A>::name) + "/" + name;
  if (fixture().key != key) {
    fixture() = Fixture{};  // free the previous model first
    prenorm::Vit<Arch::PreLN, S> init(config);
    init.init_random(1);
    auto data = std::make_shared<ImageData>();
    std::mt19937_64 rng(3);
    std::normal_distribution<float> n(0.f, 1.f);
    const Index pixels = B * config.channels * config.image_size * config.image_size;
    for (Index i = 0; i < pixels; ++i) data->pixels.push_back(n(rng));
    for (Index b = 0; b < B; ++b) data->labels.push_back(int(rng() % std::uint64_t(config.classes)));
    const prenorm::VitBatch<S> batch{
        prenorm::ImageBatch<S>{data->pixels, B, config.channels, config.image_size, config.image_size},
        data->labels};
    make_fixture<A>(key, init, data, batch, B * config.tokens());
  }
  run(state);
}

template <Arch A>
void register_gpt(const std::string& name, const prenorm::TransformerConfig& config, int64_t batch,
                  int64_t seq) {
  const std::string full = std::string(prenorm::ArchTraits<A>::name) + "/" + name;
  const bool policy = (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm) && config.tied;
  auto* b = benchmark::RegisterBenchmark(full.c_str(), BM_gpt<A>, name, config, policy);
  b->UseRealTime()->Unit(benchmark::kMillisecond);
  if (policy) b->ArgNames({"batch", "seq", "keep"})->Args({batch, seq, 1})->Args({batch, seq, 0});
  else b->ArgNames({"batch", "seq"})->Args({batch, seq});
}

template <Arch A>
void register_vit(const std::string& name, const prenorm::TransformerConfig& config, int64_t batch) {
  const std::string full = std::string(prenorm::ArchTraits<A>::name) + "/" + name;
  benchmark::RegisterBenchmark(full.c_str(), BM_vit<A>, name, config)
      ->ArgNames({"batch"})
      ->Args({batch})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

template <class F>
void for_each_arch(F&& f) {
  f(std::integral_constant<Arch, Arch::PreLN>{});
  f(std::integral_constant<Arch, Arch::PreRMSNorm>{});
  f(std::integral_constant<Arch, Arch::PreCRMSNorm>{});
  f(std::integral_constant<Arch, prenorm_bench::kNoNorm>{});
}

// N MiB of non-temporal stores, as phi's writes in the fused conversion.
void BM_stream_store(benchmark::State& state) {
  const Index n = state.range(0) * (Index(1) << 20) / Index(sizeof(S)), row = 768;
  std::vector<S> src(row, S(1));
  std::unique_ptr<S[]> dst(new S[std::size_t(n)]);
  for (Index i = 0; i < n; ++i) dst[std::size_t(i)] = S(0);  // touch the pages
  for (auto _ : state) {
    for (Index i = 0; i + row <= n; i += row) prenorm::detail::stream_copy(src.data(), dst.get() + i, row);
    prenorm::detail::stream_fence();
    benchmark::DoNotOptimize(dst.get());
    benchmark::ClobberMemory();
  }
  // Bytes written per iteration: n / row rows of row floats.
  state.counters["bytes_per_s"] = benchmark::Counter(
      double(n / row * row) * sizeof(S) * double(state.iterations()), benchmark::Counter::kIsRate);
}

// Model by model, the four architectures next to each other, so that the
// ratios within a model come from neighbouring measurements.
const bool registered = [] {
  benchmark::RegisterBenchmark("stream_store", BM_stream_store)
      ->ArgNames({"mib"})
      ->Arg(512)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for_each_arch([](auto a) { register_gpt<a.value>("gpt3_small", prenorm::presets::gpt3_small, 4, 64); });
  for_each_arch([](auto a) { register_gpt<a.value>("gpt_w256", gpt_w256(50257), 8, 128); });
  for_each_arch([](auto a) { register_gpt<a.value>("gpt_w256_v256", gpt_w256(256), 8, 128); });
  for_each_arch([](auto a) { register_vit<a.value>("vit_ti16", prenorm::presets::vit_ti16, 8); });
  return true;
}();

}  // namespace
