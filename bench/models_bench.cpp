// Whole-model inference of the four architectures on the same shapes:
//   BM_forward<arch, gpt3_small, float>/batch:1/seq:{128,512}   GPT-3 Small (12 x 768, vocab 50257)
//   BM_forward<arch, vit_ti16|vit_s16, float>/batch:{1,16}/seq:197
//   BM_forward<arch, vit_b16, float>/batch:1/seq:197
//   BM_decode_step<arch, gpt3_small, float>/batch:1/seq:512     one KV-cache step at position 511
// arch is pre_ln, pre_rmsnorm, pre_crmsnorm or no_norm. The weights are random
// (a fast generator: only the shapes matter for time); one model per
// (arch, model) is built on first use and kept.
//
// Counters: tokens/s (GPT) or images/s (ViT), and FLOP/s of the matrix
// products, counted as 2 * (multiply-adds) with the architecture's own widths:
//   GPT token: layers * (2*d*3d + 2*d*d + 2*2*d*mlp) + 2*d*vocab, plus attention
//   2*2*T_keys*d per layer (causal: T_keys averages (T+1)/2 in a prompt).

#include <benchmark/benchmark.h>

#include <prenorm/models.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using prenorm::Arch;
using prenorm::Index;

// Fills every tensor with uniform values of standard deviation 0.02 (gammas 1)
// from a xorshift generator: a GPT-3 Small takes well under a second.
template <class Model>
void cheap_init(Model& model, std::uint64_t seed) {
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  model.visit_parameters([&](const std::string& name, auto& t) {
    using S = typename std::decay_t<decltype(t)>::Scalar;
    const bool gamma = name.size() >= 5 && name.compare(name.size() - 5, 5, "gamma") == 0;
    for (Index i = 0; i < t.size(); ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      const double u = double(state >> 11) * 0x1.0p-53 - 0.5;  // [-0.5, 0.5)
      t.data()[i] = gamma ? S(1) : S(u * 0.0693);               // sd 0.02
    }
  });
}

// One model per (arch, preset name), built on first use.
template <class Model, class Config>
Model& cached_model(const std::string& key, const Config& config) {
  static std::map<std::string, std::unique_ptr<Model>> models;
  auto& slot = models[key];
  if (!slot) {
    slot = std::make_unique<Model>(config);
    cheap_init(*slot, 42);
  }
  return *slot;
}

// 2 * multiply-adds of the linear layers for one token of a model of width
// `main` (the architecture's main-branch width).
double linear_flops_per_token(Index main, Index inner_attn, Index mlp, Index layers) {
  return 2.0 * double(layers) * double(main) * (3.0 * inner_attn + inner_attn + 2.0 * mlp);
}

template <Arch A>
void bm_gpt_forward(benchmark::State& state, const prenorm::GptConfig& config, const std::string& key) {
  using S = float;
  auto& model = cached_model<prenorm::Gpt<A, S>>(key, config);
  const Index batch = state.range(0), seq = state.range(1);
  std::vector<int> ids(batch * seq);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = int((i * 7919) % config.vocab);
  const prenorm::TokenBatch tokens{ids, batch, seq};
  model.forward(tokens);  // warm-up: workspaces reach their size
  for (auto _ : state) {
    const auto& logits = model.forward(tokens);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  const double tokens_done = double(state.iterations()) * double(batch * seq);
  const Index m = model.main(), d = config.width;
  const double flops = linear_flops_per_token(m, config.attention_width(), config.mlp_width, config.layers) +
                       2.0 * double(d) * double(config.vocab) +
                       2.0 * 2.0 * double(config.layers) * double(config.attention_width()) * double(seq + 1) / 2;
  state.counters["tokens/s"] = benchmark::Counter(tokens_done, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] = benchmark::Counter(tokens_done * flops, benchmark::Counter::kIsRate);
}

template <Arch A>
void bm_gpt_decode_step(benchmark::State& state, const prenorm::GptConfig& config, const std::string& key) {
  using S = float;
  auto& model = cached_model<prenorm::Gpt<A, S>>(key, config);
  const Index batch = state.range(0), context = state.range(1);
  auto cache = model.make_cache(batch, context);
  std::vector<int> prompt(batch * (context - 1));
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = int((i * 7919) % config.vocab);
  model.prefill(cache, prenorm::TokenBatch{prompt, batch, context - 1});
  const std::vector<int> next(batch, 464);
  model.step(cache, next);  // warm-up
  for (auto _ : state) {
    cache.length = context - 1;  // the step always attends to context positions
    const auto& logits = model.step(cache, next);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  const double tokens_done = double(state.iterations()) * double(batch);
  state.counters["tokens/s"] = benchmark::Counter(tokens_done, benchmark::Counter::kIsRate);
}

template <Arch A>
void bm_vit_forward(benchmark::State& state, const prenorm::VitConfig& config, const std::string& key) {
  using S = float;
  auto& model = cached_model<prenorm::Vit<A, S>>(key, config);
  const Index batch = state.range(0), n = config.image_size, C = config.channels;
  std::vector<S> pixels(batch * C * n * n);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = S(int(i % 255) - 127) / S(128);
  const prenorm::ImageBatch<S> images{pixels, batch, C, n, n};
  model.forward(images);  // warm-up
  for (auto _ : state) {
    const auto& logits = model.forward(images);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  const double images_done = double(state.iterations()) * double(batch);
  const Index T = config.tokens(), m = model.main();
  const double flops_per_image =
      double(T) * linear_flops_per_token(m, config.attention_width(), config.mlp_width, config.layers) +
      2.0 * double(T) * double(config.patch_features()) * double(m) +
      2.0 * 2.0 * double(config.layers) * double(T) * double(T) * double(config.attention_width());
  state.counters["images/s"] = benchmark::Counter(images_done, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] = benchmark::Counter(images_done * flops_per_image, benchmark::Counter::kIsRate);
}

std::string bm_name(const char* bm, Arch arch, const char* model) {
  return std::string(bm) + "<" + std::string(prenorm::arch_name(arch)) + ", " + model + ", float>";
}

template <Arch A>
void register_gpt_forward() {
  const std::string key = std::string(prenorm::arch_name(A)) + "/gpt3_small";
  benchmark::RegisterBenchmark(bm_name("BM_forward", A, "gpt3_small").c_str(), [key](benchmark::State& s) {
    bm_gpt_forward<A>(s, prenorm::presets::gpt3_small, key);
  })->ArgNames({"batch", "seq"})->Args({1, 128})->Args({1, 512})->Unit(benchmark::kMillisecond)->UseRealTime();
}

template <Arch A>
void register_vit_forward(const char* model, const prenorm::VitConfig& config, std::vector<Index> batches) {
  const std::string key = std::string(prenorm::arch_name(A)) + "/" + model;
  auto* bm = benchmark::RegisterBenchmark(bm_name("BM_forward", A, model).c_str(),
                                          [key, config](benchmark::State& s) { bm_vit_forward<A>(s, config, key); });
  bm->ArgNames({"batch", "seq"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (Index b : batches) bm->Args({b, config.tokens()});
}

template <Arch A>
void register_gpt_decode() {
  const std::string key = std::string(prenorm::arch_name(A)) + "/gpt3_small";
  benchmark::RegisterBenchmark(bm_name("BM_decode_step", A, "gpt3_small").c_str(), [key](benchmark::State& s) {
    bm_gpt_decode_step<A>(s, prenorm::presets::gpt3_small, key);
  })->ArgNames({"batch", "seq"})->Args({1, 512})->Unit(benchmark::kMillisecond)->UseRealTime();
}

// Calls f.template operator()<A>() for the four architectures, in a fixed order.
template <class F>
void for_each_arch(F&& f) {
  f.template operator()<Arch::PreLN>();
  f.template operator()<Arch::PreRMSNorm>();
  f.template operator()<Arch::PreCRMSNorm>();
  f.template operator()<Arch::NoNorm>();
}

// Registered before main (benchmark_main's or one's own) runs; the four
// architectures of one shape run one after the other, so that they compare
// under the same machine load.
const bool registered = [] {
  namespace p = prenorm::presets;
  for_each_arch([]<Arch A>() { register_gpt_forward<A>(); });
  for_each_arch([]<Arch A>() { register_vit_forward<A>("vit_ti16", p::vit_ti16, {1, 16}); });
  for_each_arch([]<Arch A>() { register_vit_forward<A>("vit_s16", p::vit_s16, {1, 16}); });
  for_each_arch([]<Arch A>() { register_vit_forward<A>("vit_b16", p::vit_b16, {1}); });
  for_each_arch([]<Arch A>() { register_gpt_decode<A>(); });
  return true;
}();

}  // namespace
