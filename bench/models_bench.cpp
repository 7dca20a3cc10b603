// Whole-model inference of the four architectures on the same shapes:
//   BM_forward<arch, gpt3_small, float>/batch:1/seq:{128,512}   GPT-3 Small (12 x 768, vocab 50257)
//   BM_forward<arch, vit_ti16|vit_s16, float>/batch:{1,16}/seq:197
//   BM_forward<arch, vit_b16, float>/batch:1/seq:197
//   BM_decode_step<arch, gpt3_small, float>/batch:1/seq:512     one KV-cache step at position 511
//   BM_stream_weights<gpt3_small, float>                        one read of as many bytes as its
//                                                                parameters (the step's memory floor)
//   BM_block_forward<arch, vit_ti16, float>/batch:16/seq:197     one block of the ViT-Ti b16 forward
// arch is pre_ln, pre_rmsnorm, pre_crmsnorm or no_norm. The models, their
// random weights, inputs and FLOP counts are those of bench_models.hpp, shared
// with prenorm-count-forwards (instruction counts of the same work); one model
// per (arch, model) is built on first use and kept.
//
// Counters: items_per_second (tokens or images per second), the same under
// the name tokens/s (GPT) or images/s (ViT), and FLOP/s of the matrix products
// (forwards only; see bench_models.hpp for how they are counted).

#include <benchmark/benchmark.h>

#include "bench_models.hpp"

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace prenorm_bench;

// One model per (arch, preset name), built on first use.
template <class Model, class Config>
Model& cached_model(const std::string& key, const Config& config) {
  static std::map<std::string, std::unique_ptr<Model>> models;
  auto& slot = models[key];
  if (!slot) slot = make_model<Model>(config);
  return *slot;
}

// Times work.run() (its constructor did the warm-up) and sets the counters.
template <class Work>
void time_work(benchmark::State& state, Work& work) {
  for (auto _ : state) {
    const auto& out = work.run();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double items = double(state.iterations()) * double(work.items());
  state.SetItemsProcessed(std::int64_t(items));
  state.counters[Work::kItems] = benchmark::Counter(items, benchmark::Counter::kIsRate);
  if (const double flops = work.flops_per_item(); flops > 0)
    state.counters["FLOP/s"] = benchmark::Counter(items * flops, benchmark::Counter::kIsRate);
}

template <Arch A>
void bm_gpt_forward(benchmark::State& state, const prenorm::TransformerConfig& config, const std::string& key) {
  GptForward<A> work(cached_model<prenorm::Gpt<A, Scalar>>(key, config), state.range(0), state.range(1));
  time_work(state, work);
}

template <Arch A>
void bm_gpt_decode_step(benchmark::State& state, const prenorm::TransformerConfig& config, const std::string& key) {
  GptDecodeStep<A> work(cached_model<prenorm::Gpt<A, Scalar>>(key, config), state.range(0), state.range(1));
  time_work(state, work);
}

// Work: VitForward or VitBlockForward.
template <template <Arch> class Work, Arch A>
void bm_vit(benchmark::State& state, const prenorm::TransformerConfig& config, const std::string& key) {
  if (state.range(1) != config.tokens()) {
    state.SkipWithError("seq must be the ViT's token count (1 + patches)");
    return;
  }
  Work<A> work(cached_model<prenorm::Vit<A, Scalar>>(key, config), state.range(0));
  time_work(state, work);
}

std::string bm_name(const char* bm, std::string_view arch, const char* model) {
  return std::string(bm) + "<" + std::string(arch) + ", " + model + ", float>";
}

// Registers name<arch, model, float>/batch:b/seq:s for the four architectures,
// one after the other: the four architectures of a row run next to each other
// (under the same machine load), and rows run in the order registered.
template <class Bench>
void register_row(const char* bm, const char* model, Index batch, Index seq, Bench bench) {
  for_each_arch([&]<Arch A>() {
    benchmark::RegisterBenchmark(bm_name(bm, prenorm::ArchTraits<A>::name, model).c_str(),
                                 [bench](benchmark::State& s) { bench.template operator()<A>(s); })
        ->ArgNames({"batch", "seq"})
        ->Args({batch, seq})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  });
}

void register_gpt_forward(Index batch, Index seq) {
  register_row("BM_forward", "gpt3_small", batch, seq, []<Arch A>(benchmark::State& s) {
    bm_gpt_forward<A>(s, prenorm::presets::gpt3_small, std::string(prenorm::ArchTraits<A>::name) + "/gpt3_small");
  });
}

// bm: "BM_forward" (Work = VitForward) or "BM_block_forward" (VitBlockForward).
template <template <Arch> class Work>
void register_vit(const char* bm, const char* model, const prenorm::TransformerConfig& config, Index batch) {
  const std::string name = model;
  register_row(bm, model, batch, config.tokens(), [name, config]<Arch A>(benchmark::State& s) {
    bm_vit<Work, A>(s, config, std::string(prenorm::ArchTraits<A>::name) + "/" + name);
  });
}

void register_gpt_decode(Index batch, Index context) {
  register_row("BM_decode_step", "gpt3_small", batch, context, []<Arch A>(benchmark::State& s) {
    bm_gpt_decode_step<A>(s, prenorm::presets::gpt3_small, std::string(prenorm::ArchTraits<A>::name) + "/gpt3_small");
  });
}

// BM_stream_weights<model, float>, right after the decode row: the step's
// time over this one is issue 18's KV-step ratio (target <= 1.25), both
// measured in the same run. The buffer is sized from pre_ln's model (every
// architecture has the same parameters, give or take a gamma).
void register_weight_stream() {
  benchmark::RegisterBenchmark("BM_stream_weights<gpt3_small, float>", [](benchmark::State& s) {
    WeightStream work(cached_model<prenorm::Gpt<Arch::PreLN, Scalar>>("pre_ln/gpt3_small",
                                                                       prenorm::presets::gpt3_small));
    time_work(s, work);
  })->Unit(benchmark::kMillisecond)->UseRealTime();
}

// Registered before main (benchmark_main's or one's own) runs, row by row.
const bool registered = [] {
  namespace p = prenorm::presets;
  register_gpt_forward(1, 128);
  register_gpt_forward(1, 512);
  register_vit<VitForward>("BM_forward", "vit_ti16", p::vit_ti16, 1);
  register_vit<VitForward>("BM_forward", "vit_ti16", p::vit_ti16, 16);
  register_vit<VitForward>("BM_forward", "vit_s16", p::vit_s16, 1);
  register_vit<VitForward>("BM_forward", "vit_s16", p::vit_s16, 16);
  register_vit<VitForward>("BM_forward", "vit_b16", p::vit_b16, 1);
  register_gpt_decode(1, 512);
  register_weight_stream();
  register_vit<VitBlockForward>("BM_block_forward", "vit_ti16", p::vit_ti16, 16);
  return true;
}();

}  // namespace
