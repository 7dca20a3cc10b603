#pragma once
// The model workloads shared by prenorm-bench-models (models_bench.cpp) and
// prenorm-count-forwards (count_forwards.cpp), so that the timings and the
// instruction counts measure the same construction and the same inputs:
//   - the presets by name (gpt3_small; vit_ti16, vit_s16, vit_b16),
//   - random weights from a fixed seed (cheap_init, kSeed),
//   - the inputs (token ids, pixels), and
//   - one unit of work: GptForward (a prompt forward), GptDecodeStep (one
//     KV-cache step at position context-1), VitForward (a batch of images),
//     WeightStream (one read of as many bytes as a model's parameters).
// A workload's constructor builds its inputs and runs one warm-up call (the
// workspaces reach their size); run() then allocates nothing and repeats
// exactly the same work.
//
// FLOPs are 2 * (multiply-adds) of the matrix products, with the
// architecture's own widths:
//   GPT token: layers * (2*d*3d + 2*d*d + 2*2*d*mlp) + 2*d*vocab, plus attention
//   2*2*T_keys*d per layer (causal: T_keys averages (T+1)/2 in a prompt).

#include <prenorm/models.hpp>

#include "no_norm.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace prenorm_bench {

using prenorm::Arch;
using prenorm::Index;
using Scalar = float;

// The seed of every benchmarked model's weights.
inline constexpr std::uint64_t kSeed = 42;

// Fills every tensor with uniform values of standard deviation 0.02 (gammas 1)
// from a xorshift generator: a GPT-3 Small takes well under a second (only the
// shapes matter for time).
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

// The presets by the names used in benchmark names; nullopt for another name.
inline std::optional<prenorm::TransformerConfig> gpt_preset(std::string_view name) {
  if (name == "gpt3_small") return prenorm::TransformerConfig(prenorm::presets::gpt3_small);
  return std::nullopt;
}
inline std::optional<prenorm::TransformerConfig> vit_preset(std::string_view name) {
  if (name == "vit_ti16") return prenorm::TransformerConfig(prenorm::presets::vit_ti16);
  if (name == "vit_s16") return prenorm::TransformerConfig(prenorm::presets::vit_s16);
  if (name == "vit_b16") return prenorm::TransformerConfig(prenorm::presets::vit_b16);
  return std::nullopt;
}

// 2 * multiply-adds of the linear layers for one token of a model whose main
// branch is `main` wide.
inline double linear_flops_per_token(Index main, Index inner_attn, Index mlp, Index layers) {
  return 2.0 * double(layers) * double(main) * (3.0 * inner_attn + inner_attn + 2.0 * mlp);
}

// 2 * multiply-adds per image of `layers` blocks of a ViT whose main branch
// is `main` wide: the linear layers of every token, and the attention's two
// products (T x T scores, then their sum of values) at every layer.
inline double vit_blocks_flops_per_image(const prenorm::TransformerConfig& c, Index main, Index layers) {
  const double T = double(c.tokens());
  return T * linear_flops_per_token(main, c.attention_width(), c.mlp_width, layers) +
         2.0 * 2.0 * double(layers) * T * T * double(c.attention_width());
}

// Deterministic token ids: (i * 7919) mod vocab.
inline std::vector<int> token_ids(Index count, Index vocab) {
  std::vector<int> ids(count);
  for (Index i = 0; i < count; ++i) ids[i] = int((i * 7919) % vocab);
  return ids;
}

// A prompt forward of batch x seq tokens (logits for every position).
template <Arch A>
class GptForward {
 public:
  using Model = prenorm::Gpt<A, Scalar>;
  static constexpr const char* kItems = "tokens/s";

  GptForward(Model& model, Index batch, Index seq)
      : model_(model), session_(model), batch_(batch), seq_(seq),
        ids_(token_ids(batch * seq, model.config.vocab)) {
    run();  // warm-up
  }

  const prenorm::RowMatrix<Scalar>& run() { return session_.forward(prenorm::TokenBatch{ids_, batch_, seq_}); }

  Index items() const { return batch_ * seq_; }  // tokens per run()
  double flops_per_item() const {
    const auto& c = model_.config;
    return linear_flops_per_token(model_.main(), c.attention_width(), c.mlp_width, c.layers) +
           2.0 * double(c.width) * double(c.vocab) +
           2.0 * 2.0 * double(c.layers) * double(c.attention_width()) * double(seq_ + 1) / 2;
  }

 private:
  Model& model_;
  prenorm::Session<A, Scalar> session_;
  Index batch_, seq_;
  std::vector<int> ids_;
};

// One KV-cache decoding step: batch sequences of context-1 cached positions
// (a prefill at construction), each run() adds the token at position
// context-1, attending to `context` positions, then rewinds the cache.
template <Arch A>
class GptDecodeStep {
 public:
  using Model = prenorm::Gpt<A, Scalar>;
  static constexpr const char* kItems = "tokens/s";

  GptDecodeStep(Model& model, Index batch, Index context)
      : model_(model), session_(model), batch_(batch), context_(context), next_(batch, 464) {
    const auto prompt = token_ids(batch * (context - 1), model.config.vocab);
    session_.prefill(prenorm::TokenBatch{prompt, batch, context - 1}, context);
    run();  // warm-up
  }

  const prenorm::RowMatrix<Scalar>& run() {
    session_.rewind(context_ - 1);  // the step always attends to context positions
    return session_.step(next_);
  }

  Index items() const { return batch_; }  // tokens per run()
  double flops_per_item() const { return 0; }  // not reported: the step is memory-bound

 private:
  Model& model_;
  prenorm::Session<A, Scalar> session_;
  Index batch_, context_;
  std::vector<int> next_;
};

// The memory floor of a decoding step (issue 18: one KV-cache step of GPT-2
// small at context 512 <= 1.25 x the time to stream all its weights once):
// each run() reads a buffer of as many bytes as the model's parameters
// (every weight, bias, gain and table, in the model's scalar) once, a plain
// sum, the buffer far larger than the caches (GPT-3 Small: 501 MB).
class WeightStream {
 public:
  static constexpr const char* kItems = "bytes/s";

  template <class Model>
  explicit WeightStream(const Model& model) {
    Index values = 0;
    model.visit_parameters([&](const std::string&, const auto& t) {
      values += t.size() * Index(sizeof(typename std::decay_t<decltype(t)>::Scalar));
    });
    values /= Index(sizeof(Scalar));
    buffer_.resize(values);
    for (Index i = 0; i < values; ++i) buffer_[i] = Scalar(int(i % 255) - 127) / Scalar(128);
    run();  // warm-up
  }

  const prenorm::RowMatrix<Scalar>& run() {
    sum_(0, 0) = buffer_.sum();
    return sum_;
  }

  Index items() const { return buffer_.size() * Index(sizeof(Scalar)); }  // bytes per run()
  double flops_per_item() const { return 0; }

 private:
  prenorm::Vector<Scalar> buffer_;  // 64-byte aligned (Eigen's allocator)
  prenorm::RowMatrix<Scalar> sum_ = prenorm::RowMatrix<Scalar>::Zero(1, 1);
};

// A forward of batch images of the config's size (logits of the cls tokens).
template <Arch A>
class VitForward {
 public:
  using Model = prenorm::Vit<A, Scalar>;
  static constexpr const char* kItems = "images/s";

  VitForward(Model& model, Index batch) : model_(model), session_(model), batch_(batch) {
    const auto& c = model.config;
    pixels_.resize(batch * c.channels * c.image_size * c.image_size);
    for (std::size_t i = 0; i < pixels_.size(); ++i) pixels_[i] = Scalar(int(i % 255) - 127) / Scalar(128);
    run();  // warm-up
  }

  const prenorm::RowMatrix<Scalar>& run() {
    const auto& c = model_.config;
    return session_.forward(prenorm::ImageBatch<Scalar>{pixels_, batch_, c.channels, c.image_size, c.image_size});
  }

  Index items() const { return batch_; }  // images per run()
  double flops_per_item() const {
    const auto& c = model_.config;
    return vit_blocks_flops_per_image(c, model_.main(), c.layers) +
           2.0 * double(c.tokens()) * double(c.patch_features()) * double(model_.main());
  }

 private:
  Model& model_;
  prenorm::Session<A, Scalar> session_;
  Index batch_;
  std::vector<Scalar> pixels_;
};

// One block of a ViT at batch images (its first block, with the model's
// weights) as Vit::forward runs it: y = Norm1(h), then the fused block
// (h += Attn(y), y = Norm2(h), branch = Mlp(y), with branch as wide as
// branch_width(), so that the writers run padded), then h += branch. Each
// run() first restores h to the same input (a copy of [batch*tokens x main],
// the same for every architecture), so that every run does the same work. It
// times the per-block cost that a forward repeats layers times, without the
// embedding and the head.
template <Arch A>
class VitBlockForward {
 public:
  using Model = prenorm::Vit<A, Scalar>;
  using Block = typename Model::Block;
  static constexpr const char* kItems = "images/s";

  VitBlockForward(Model& model, Index batch) : model_(model), batch_(batch) {
    const Index rows = batch * model.config.tokens(), m = model.main();
    input_.resize(rows, m);
    for (Index i = 0; i < input_.size(); ++i)
      input_.data()[i] = Scalar(int(i * 7919 % 255) - 127) / Scalar(128);
    x_.resize(rows, m);
    branch_.resize(rows, model.blocks.front().branch_width());
    run();  // warm-up
  }

  const prenorm::RowMatrix<Scalar>& run() {
    h_ = input_;
    const Block& block = model_.blocks.front();
    block.norm1(h_, x_);
    block.forward_fused(h_, x_, branch_, batch_, workspace_);
    h_ += branch_.leftCols(block.main());
    return h_;
  }

  Index items() const { return batch_; }  // images per run()
  double flops_per_item() const {
    return vit_blocks_flops_per_image(model_.config, model_.main(), 1);
  }

 private:
  Model& model_;
  Index batch_;
  prenorm::RowMatrix<Scalar> input_, h_, x_;
  prenorm::RowMatrix<Scalar> branch_;  // [batch*tokens x branch_width()]
  prenorm::BlockWorkspace<Scalar> workspace_;
};

// A model with random weights (cheap_init, kSeed), packed for the GEMM
// backend as for inference (a no-op without oneDNN).
template <class Model, class Config>
std::unique_ptr<Model> make_model(const Config& config) {
  auto model = std::make_unique<Model>(config);
  cheap_init(*model, kSeed);
  prenorm::pack_weights(*model);
  return model;
}

// Calls f.template operator()<A>() for the four architectures (the library's
// three and the baseline kNoNorm), in a fixed order.
template <class F>
void for_each_arch(F&& f) {
  f.template operator()<Arch::PreLN>();
  f.template operator()<Arch::PreRMSNorm>();
  f.template operator()<Arch::PreCRMSNorm>();
  f.template operator()<kNoNorm>();
}

}  // namespace prenorm_bench
