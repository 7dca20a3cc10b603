#pragma once
// GPT: a decoder-only Pre-Norm transformer.
//   h = E[tok] + P[pos + offset];  blocks;  logits = head(NormF(h)) (+ head_bias)
// The position table P is optional (config.learned_positions: families with
// rotary embeddings or ALiBi have none) and may be read at an offset (OPT's 2).
// Gpt holds the parameters; the forward pass and its state (buffers, logits,
// KV cache) are a GptSession's (gpt_session.hpp).
//
// Tied heads (config.tied, GPT-2): the head is the token table E (vocab, d).
//   PreLN (and any architecture but the two below): the lookup reads E, and
//   logits = E . NormF(h).
//   PreRMSNorm, PreCRMSNorm ("keep tied" conversion): E stays the ORIGINAL
//   (vocab, d) table, stored once. A looked-up row is recentered (minus its
//   mean over d) and, for PreCRMSNorm, loses its last coordinate; before the
//   head, the normalized main branch is decompressed (PreCRMSNorm:
//   x_d = -sum(x~)), then u = tied_gamma * x + tied_beta (the folded final
//   LayerNorm affine) and logits = E . u. This costs O(d) per token.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../layers/block.hpp"
#include "../layers/embedding.hpp"
#include "../layers/linear.hpp"
#include "../ops/arch_traits.hpp"
#include "../ops/main_branch.hpp"
#include "config.hpp"

namespace prenorm {

// A batch of equal-length token sequences: sequence b is ids[b*seq, (b+1)*seq).
struct TokenBatch {
  std::span<const int> ids;  // [batch * seq]
  Index batch = 0;
  Index seq = 0;

  TokenBatch() = default;
  TokenBatch(std::span<const int> ids_, Index batch_, Index seq_)
      : ids(ids_), batch(batch_), seq(seq_) {}
};

namespace detail {

// The keep-tied head's input: u [N x d] = gamma * decompress(x) + beta, for
// the normalized main branch x [N x m] (m = d - 1: x_d = -sum(x); m = d: x).
// gamma, beta (d): the final LayerNorm's affine, folded out of the blocks.
// This is the converter's head transform seen from the activations
// (branch::read_input), applied per token.
template <class S>
void tied_head_input(const ConstRowsRef<S>& x, const Vector<S>& gamma, const Vector<S>& beta,
                     RowsRef<S> u) {
  for_each_row(x.rows(), u.cols(), [&](Index r) { branch::read_input(x.row(r), gamma, beta, u.row(r)); });
}

}  // namespace detail

template <Arch A, class S>
class Gpt {
 public:
  using Scalar = S;
  using Block = PreNormBlock<A, S>;
  static constexpr Arch arch = A;
  // Called with -1 after the embeddings and with i after block i, on the main
  // branch h [tokens x main] (residual adds complete).
  using BlockHook = std::function<void(Index, const RowMatrix<S>&)>;

  GptConfig config;
  Embedding<S> token_embedding;     // (vocab, main); (vocab, d) when tied_affine()
  Embedding<S> position_embedding;  // (context + position_offset, main), or (0, main) without learned positions
  std::vector<Block> blocks;        // [layers]
  Vector<S> final_gamma;            // (d), PreLN only (empty otherwise)
  Vector<S> final_beta;             // (d), PreLN only
  Vector<S> tied_gamma;             // (d), tied_affine() only: the folded final norm affine
  Vector<S> tied_beta;              // (d), tied_affine() only
  Linear<S> head;                   // (vocab, main) without bias; (0 x 0) when tied
  Vector<S> head_bias;              // (vocab) when config.head_bias, else empty

  // Zero weights of the right shapes; gammas (final, blocks, tied) are 1.
  explicit Gpt(const GptConfig& config_) : config(config_) {
    config.validate("Gpt");
    const Index d = config.width, m = main();
    token_embedding = Embedding<S>(config.vocab, tied_affine() ? d : m);
    position_embedding = Embedding<S>(config.position_rows(), m);
    blocks.reserve(config.layers);
    for (Index i = 0; i < config.layers; ++i) blocks.push_back(make_block(i));
    if (ArchTraits<A>::affine) {
      final_gamma.setOnes(d);
      final_beta.setZero(d);
    }
    if (tied_affine()) {
      tied_gamma.setOnes(d);
      tied_beta.setZero(d);
    }
    if (!config.tied) head = Linear<S>(m, config.vocab, /*with_bias=*/false);
    if (config.head_bias) head_bias.setZero(config.vocab);
  }

  // Block `layer` as the constructor makes it: zero weights, the config's
  // attention options (for that layer) and topology. A reader that holds one
  // block at a time (io/streaming.hpp) makes its blocks with it.
  Block make_block(Index layer) const {
    Block b(config.width, config.heads, config.head_size(), config.mlp_width, /*causal=*/true,
            config.activation, S(config.epsilon));
    set_attention_options(b.attn, layer);
    b.set_topology(config.topology);
    return b;
  }

  Index width() const { return config.width; }                 // d
  Index main() const { return ArchTraits<A>::main_width(config.width); }  // d, or d-1 for PreCRMSNorm
  // Whether the tied table is the original (vocab, d) one, transformed on the fly.
  bool tied_affine() const {
    return config.tied && (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm);
  }

  // GPT-2-like random weights, deterministic in seed: linear weights and
  // embeddings N(0, stddev), the residual output projections N(0, stddev /
  // sqrt(2 layers)), biases 0, gammas 1, betas 0. With random_affine, biases,
  // betas and gamma - 1 are N(0, 0.1) instead, so that tests exercise them.
  void init_random(std::uint64_t seed, double stddev = 0.02, bool random_affine = false) {
    std::mt19937_64 rng(seed);
    const auto fill = [&](auto& t, double scale, double offset) {
      detail::random_fill(t, rng, scale, offset);
    };
    const double proj_std = stddev / std::sqrt(2.0 * double(std::max<Index>(config.layers, 1)));
    const double affine = random_affine ? 0.1 : 0.0;
    fill(token_embedding.table, stddev, 0);
    fill(position_embedding.table, stddev / 2, 0);
    for (Block& b : blocks) detail::init_block_random(b, rng, stddev, proj_std, affine);
    fill(final_gamma, affine, 1);
    fill(final_beta, affine, 0);
    fill(tied_gamma, affine, 1);
    fill(tied_beta, affine, 0);
    fill(head.weight, stddev, 0);
    fill(head_bias, affine, 0);
  }

  // Calls f(name, tensor) for every tensor (RowMatrix<S>& or Vector<S>&, empty
  // ones included), in a fixed order; names as in validate() messages.
  template <class F>
  void visit_parameters(F&& f) {
    visit_impl(*this, f);
  }
  template <class F>
  void visit_parameters(F&& f) const {
    visit_impl(*this, f);
  }

  // Throws prenorm::Error naming the first tensor whose shape does not match
  // the config and architecture, e.g. "prenorm::Gpt::validate:
  // blocks[3].attn.qkv.weight is (2304 x 768), expected (2304 x 767)".
  void validate(const char* op = "Gpt::validate") const {
    config.validate(op);
    const Index d = config.width, m = main();
    token_embedding.validate(op, "token_embedding", config.vocab, tied_affine() ? d : m);
    position_embedding.validate(op, "position_embedding", config.position_rows(), m);
    if (Index(blocks.size()) != config.layers)
      detail::fail(op, "blocks has ", blocks.size(), " blocks, expected ", config.layers, " (layers)");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto name = [i] { return "blocks[" + std::to_string(i) + "]"; };
      const Block& b = blocks[i];
      if (b.width != d) detail::fail(op, name(), ".width is ", b.width, ", expected ", d);
      if (!b.attn.causal) detail::fail(op, name(), ".attn.causal is false, expected true");
      check_attention_options(op, name, b.attn, Index(i));
      if (b.topology != config.topology)
        detail::fail(op, name(), ".topology is ", topology_name(b.topology), ", expected ",
                     topology_name(config.topology), " (the config's)");
      b.validate(op, name, config.heads, config.head_size(), config.mlp_width);
    }
    check_vector(op, "final_gamma", final_gamma, ArchTraits<A>::affine ? d : 0);
    check_vector(op, "final_beta", final_beta, ArchTraits<A>::affine ? d : 0);
    check_vector(op, "tied_gamma", tied_gamma, tied_affine() ? d : 0);
    check_vector(op, "tied_beta", tied_beta, tied_affine() ? d : 0);
    if (config.tied) {
      if (head.weight.size() != 0)
        detail::fail(op, "head.weight is (", head.weight.rows(), " x ", head.weight.cols(),
                     "), expected (0 x 0): the head is tied to token_embedding");
    } else {
      head.validate(op, "head", m, config.vocab);
    }
    check_vector(op, "head.bias", head.bias, 0);
    check_vector(op, "head_bias", head_bias, config.head_bias ? config.vocab : 0);
  }

  // Logits [batch*seq x vocab] of every position; row b*seq + t is sequence b,
  // position t. A convenience that runs a GptSession of its own (and so
  // allocates): for repeated calls, decoding or hooks on a hot path, keep a
  // GptSession (models/gpt_session.hpp), which owns every buffer.
  RowMatrix<S> forward(const TokenBatch& tokens) const;
  RowMatrix<S> forward(const TokenBatch& tokens, const BlockHook& hook) const;
  // The same from a batch of sequences, which must all have the same length.
  RowMatrix<S> forward(const std::vector<std::vector<int>>& batch) const;
  RowMatrix<S> forward(const std::vector<std::vector<int>>& batch, const BlockHook& hook) const;

  // Checks shape, length (positions [past, past+seq) within the context) and
  // ids; op names the caller in the message.
  void check_tokens(const char* op, const TokenBatch& t, Index past) const {
    if (t.batch < 0 || t.seq < 0 || Index(t.ids.size()) != t.batch * t.seq)
      detail::fail(op, "the token batch has ", t.ids.size(), " ids, expected batch ", t.batch,
                   " x seq ", t.seq);
    if (past + t.seq > config.context) {
      if (past == 0)
        detail::fail(op, "sequence length ", t.seq, " exceeds the context ", config.context);
      detail::fail(op, "positions [", past, ", ", past + t.seq, ") exceed the context ",
                   config.context);
    }
    for (Index i = 0; i < Index(t.ids.size()); ++i)
      if (t.ids[i] < 0 || t.ids[i] >= config.vocab)
        detail::fail(op, "token id ", t.ids[i], " at sequence ", i / t.seq, ", position ",
                     past + i % t.seq, " is out of range [0, ", config.vocab, ")");
  }

 private:
  // Gives attn (plain, from the block's constructor) the config's options for layer i.
  void set_attention_options(MultiHeadAttention<S>& attn, Index layer) const {
    if (config.kv_head_count() != config.heads)  // fewer key/value rows in qkv
      attn = MultiHeadAttention<S>(attn.width(), config.heads, config.head_size(), /*causal=*/true,
                                   /*bias=*/true, config.kv_heads);
    attn.rotary = config.rotary;
    attn.alibi = config.alibi;
    attn.score_scale = config.score_scale;
    attn.window = config.layer_window(layer);
  }

  // Throws unless block i's attention has the config's options for layer i.
  template <class Name>
  void check_attention_options(const char* op, const Name& name, const MultiHeadAttention<S>& a,
                               Index i) const {
    const Rotary& r = a.rotary;
    const Rotary& e = config.rotary;
    const auto fail = [&](auto&&... parts) { detail::fail(op, name(), ".attn.", parts...); };
    if (a.kv_head_count() != config.kv_head_count())
      fail("kv_heads is ", a.kv_head_count(), ", expected ", config.kv_head_count(), " (kv_heads)");
    if (!(r == e))
      fail("rotary is {dims ", r.dims, ", ", rotary_pairing_name(r.pairing), ", base ", r.base,
           "}, expected {dims ", e.dims, ", ", rotary_pairing_name(e.pairing), ", base ", e.base,
           "} (rotary)");
    if (a.alibi != config.alibi)
      fail("alibi is ", a.alibi ? "true" : "false", ", expected ", config.alibi ? "true" : "false",
           " (alibi)");
    if (a.score_scale != config.score_scale)
      fail("score_scale is ", a.score_scale, ", expected ", config.score_scale, " (score_scale)");
    if (a.window != config.layer_window(i))
      fail("window is ", a.window, ", expected ", config.layer_window(i), " (window ",
           config.window, " every ", config.window_period, " layers)");
  }

  static void check_vector(const char* op, const char* name, const Vector<S>& v, Index expected) {
    if (v.size() != expected)
      detail::fail(op, name, " has ", v.size(), " elements, expected ", expected);
  }

  template <class Self, class F>
  static void visit_impl(Self& self, F& f) {
    f(std::string("token_embedding.table"), self.token_embedding.table);
    f(std::string("position_embedding.table"), self.position_embedding.table);
    for (std::size_t i = 0; i < self.blocks.size(); ++i)
      visit_block_parameters("blocks[" + std::to_string(i) + "].", self.blocks[i], f);
    f(std::string("final_gamma"), self.final_gamma);
    f(std::string("final_beta"), self.final_beta);
    f(std::string("tied_gamma"), self.tied_gamma);
    f(std::string("tied_beta"), self.tied_beta);
    f(std::string("head.weight"), self.head.weight);
    f(std::string("head_bias"), self.head_bias);
  }
};

}  // namespace prenorm

// The forward pass lives with the state it needs, in the session.
#include "gpt_session.hpp"
