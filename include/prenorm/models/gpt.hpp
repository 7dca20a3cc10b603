#pragma once
// GPT: a decoder-only Pre-Norm transformer with learned positions.
//   h = E[tok] + P[pos];  blocks;  logits = head(NormF(h)) (+ head_bias)
//
// Tied heads (config.tied, GPT-2): the head is the token table E (vocab, d).
//   PreLN, NoNorm: the lookup reads E, and logits = E . NormF(h).
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

// Keys and values of every layer for incremental decoding.
template <class S>
struct KvCache {
  Index batch = 0;     // sequences
  Index capacity = 0;  // positions per sequence
  Index length = 0;    // positions filled, the same for every sequence
  std::vector<RowMatrix<S>> keys;    // [layers] of (batch*capacity, heads*head_dim): row b*capacity + p
  std::vector<RowMatrix<S>> values;  // [layers], same shape

  KvCache() = default;
  KvCache(Index layers, Index batch_, Index capacity_, Index kv_width)
      : batch(batch_),
        capacity(capacity_),
        keys(layers, RowMatrix<S>::Zero(batch_ * capacity_, kv_width)),
        values(layers, RowMatrix<S>::Zero(batch_ * capacity_, kv_width)) {}

  void clear() { length = 0; }
};

namespace detail {

// The keep-tied lookup (TiedPolicy::Keep), one token: out [m] = the first m
// coordinates of row - mean(row), plus pos. row [d] is the original table's
// row (mean over all d), pos [m] the position row; m = d or d - 1.
// The converter's table transform (branch::write), applied per token.
template <class S, class Row, class Pos, class Out>
void tied_lookup_row(const Row& row, const Pos& pos, Out&& out) {
  branch::write(row, out);
  out += pos;
}

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
  Embedding<S> position_embedding;  // (context, main)
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
    position_embedding = Embedding<S>(config.context, m);
    blocks.reserve(config.layers);
    for (Index i = 0; i < config.layers; ++i)
      blocks.emplace_back(d, config.heads, config.head_size(), config.mlp_width, /*causal=*/true,
                          config.activation, S(config.epsilon));
    if (has_norm_affine(A)) {
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

  Index width() const { return config.width; }                 // d
  Index main() const { return main_width_of(A, config.width); }  // d, or d-1 for PreCRMSNorm
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
    position_embedding.validate(op, "position_embedding", config.context, m);
    if (Index(blocks.size()) != config.layers)
      detail::fail(op, "blocks has ", blocks.size(), " blocks, expected ", config.layers, " (layers)");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto name = [i] { return "blocks[" + std::to_string(i) + "]"; };
      const Block& b = blocks[i];
      if (b.width != d) detail::fail(op, name(), ".width is ", b.width, ", expected ", d);
      if (!b.attn.causal) detail::fail(op, name(), ".attn.causal is false, expected true");
      b.validate(op, name, config.heads, config.head_size(), config.mlp_width);
    }
    check_vector(op, "final_gamma", final_gamma, has_norm_affine(A) ? d : 0);
    check_vector(op, "final_beta", final_beta, has_norm_affine(A) ? d : 0);
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
  // position t. The reference stays valid until the next call on this model.
  // Workspace is reused: no allocation after the first call for a given shape
  // (beyond the packing buffers Eigen's GEMM takes from the heap for products
  // too large for its stack limit).
  const RowMatrix<S>& forward(const TokenBatch& tokens) { return forward_impl(tokens, nullptr); }
  const RowMatrix<S>& forward(const TokenBatch& tokens, const BlockHook& hook) {
    return forward_impl(tokens, &hook);
  }
  // The same from a batch of sequences, which must all have the same length.
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch) {
    return forward_impl(gather(batch, "Gpt::forward"), nullptr);
  }
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch, const BlockHook& hook) {
    return forward_impl(gather(batch, "Gpt::forward"), &hook);
  }

  // The normalized main branch NormF(h) [batch*seq x main] that the head reads
  // (NoNorm: h itself), without the head.
  const RowMatrix<S>& forward_hidden(const TokenBatch& tokens, const BlockHook* hook = nullptr) {
    constexpr const char* op = "Gpt::forward_hidden";
    check_tokens(op, tokens, 0);
    validate(op);
    run(tokens, 0, nullptr, hook);
    return final_input();
  }

  // logits [rows x vocab] = head(x) for a normalized main branch x [rows x main].
  const RowMatrix<S>& head_forward(const ConstRowsRef<S>& x) {
    if (x.cols() != main())
      detail::fail("Gpt::head_forward", "x has ", x.cols(), " columns, expected ", main());
    apply_head(x);
    return logits_;
  }

  // The main branch h [tokens x main] after the last forward.
  const RowMatrix<S>& main_branch() const { return h_; }

  // A cache for `batch` sequences of up to `capacity` positions (0: the context).
  KvCache<S> make_cache(Index batch, Index capacity = 0) const {
    if (capacity == 0) capacity = config.context;
    if (batch < 0 || capacity < 0 || capacity > config.context)
      detail::fail("Gpt::make_cache", "batch ", batch, " and capacity ", capacity,
                   " must be >= 0, and the capacity at most the context ", config.context);
    return KvCache<S>(config.layers, batch, capacity, config.attention_width());
  }

  // Starts the cache over with tokens (a prompt per sequence) and returns the
  // logits of its positions [batch*seq x vocab], equal to forward(tokens).
  const RowMatrix<S>& prefill(KvCache<S>& cache, const TokenBatch& tokens) {
    cache.length = 0;
    return extend_impl("Gpt::prefill", cache, tokens);
  }
  // Appends tokens (seq more per sequence) to the cache: logits [batch*seq x vocab]
  // of the new positions.
  const RowMatrix<S>& extend(KvCache<S>& cache, const TokenBatch& tokens) {
    return extend_impl("Gpt::extend", cache, tokens);
  }
  // One decoding step: next [batch] holds one token per sequence. Logits [batch x vocab].
  const RowMatrix<S>& step(KvCache<S>& cache, std::span<const int> next) {
    return extend_impl("Gpt::step", cache, TokenBatch{next, Index(next.size()), 1});
  }

 private:
  BlockWorkspace<S> workspace_;
  RowMatrix<S> h_, x_;    // [tokens x main]: main branch, normalized
  RowMatrix<S> branch_;   // [tokens x branch_width()]: pending branch output in its first main columns
  RowMatrix<S> u_;        // [tokens x d]: the tied head's input
  RowMatrix<S> logits_;   // [tokens x vocab]
  std::vector<int> ids_;  // the gathered batch

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

  // Copies an equal-length batch into ids_.
  TokenBatch gather(const std::vector<std::vector<int>>& batch, const char* op) {
    const Index seq = batch.empty() ? 0 : Index(batch[0].size());
    for (std::size_t b = 1; b < batch.size(); ++b)
      if (Index(batch[b].size()) != seq)
        detail::fail(op, "ragged batch: sequence ", b, " has ", batch[b].size(),
                     " tokens, expected ", seq, " (the length of sequence 0)");
    ids_.resize(batch.size() * seq);
    for (std::size_t b = 0; b < batch.size(); ++b)
      std::copy(batch[b].begin(), batch[b].end(), ids_.begin() + b * seq);
    return TokenBatch{ids_, Index(batch.size()), seq};
  }

  // Checks shape, length (positions [past, past+seq) within the context) and ids.
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

  const RowMatrix<S>& forward_impl(const TokenBatch& tokens, const BlockHook* hook) {
    constexpr const char* op = "Gpt::forward";
    check_tokens(op, tokens, 0);
    validate(op);
    run(tokens, 0, nullptr, hook);
    apply_head(final_input());
    return logits_;
  }

  const RowMatrix<S>& extend_impl(const char* op, KvCache<S>& cache, const TokenBatch& tokens) {
    if (tokens.batch != cache.batch)
      detail::fail(op, "the batch has ", tokens.batch, " sequences, the cache holds ", cache.batch);
    if (Index(cache.keys.size()) != config.layers || Index(cache.values.size()) != config.layers)
      detail::fail(op, "the cache has ", cache.keys.size(), " layers, expected ", config.layers);
    for (std::size_t i = 0; i < cache.keys.size(); ++i)
      if (cache.keys[i].rows() != cache.batch * cache.capacity ||
          cache.keys[i].cols() != config.attention_width() ||
          cache.values[i].rows() != cache.keys[i].rows() ||
          cache.values[i].cols() != cache.keys[i].cols())
        detail::fail(op, "cache keys[", i, "] is (", cache.keys[i].rows(), " x ",
                     cache.keys[i].cols(), "), expected (", cache.batch * cache.capacity, " x ",
                     config.attention_width(), ")");
    if (cache.length + tokens.seq > cache.capacity)
      detail::fail(op, "the cache is full: ", cache.length, " + ", tokens.seq,
                   " positions exceed its capacity ", cache.capacity);
    check_tokens(op, tokens, cache.length);
    validate(op);
    run(tokens, cache.length, &cache, nullptr);
    cache.length += tokens.seq;
    apply_head(final_input());
    return logits_;
  }

  // What the head reads: NormF(h), or h itself for NoNorm.
  const RowMatrix<S>& final_input() const { return A == Arch::NoNorm ? h_ : x_; }

  // Embeddings, blocks and the final norm: leaves NormF(h) in final_input().
  void run(const TokenBatch& t, Index past, KvCache<S>* cache, const BlockHook* hook) {
    const Index B = t.batch, T = t.seq, N = B * T, m = main();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, blocks.empty() ? m : blocks[0].branch_width());
    if (N == 0) return;
    embed(t.ids.data(), T, past);
    if (hook) (*hook)(-1, h_);
    const Index L = Index(blocks.size());
    if (L == 0) final_norm();
    else blocks[0].norm1(h_, x_);
    for (Index i = 0; i < L; ++i) {
      if (cache)
        blocks[i].forward_fused_cached(h_, x_, branch_, B, past, cache->keys[i], cache->values[i],
                                       workspace_);
      else
        blocks[i].forward_fused(h_, x_, branch_, B, workspace_);
      if (hook) {  // complete the residual add, show it, then normalize unfused
        h_ += branch_.leftCols(m);
        (*hook)(i, h_);
        if (i + 1 < L) blocks[i + 1].norm1(h_, x_);
        else final_norm();
      } else if (i + 1 < L) {
        blocks[i + 1].add_norm1(h_, branch_.leftCols(m), x_);
      } else {
        pre_norm_add_forward<A>(h_, branch_.leftCols(m), final_gamma, final_beta, x_, S(config.epsilon));
      }
    }
  }

  void final_norm() {
    if constexpr (A != Arch::NoNorm)
      pre_norm_forward<A>(h_, final_gamma, final_beta, x_, S(config.epsilon));
  }

  // h_ [tokens x main] = token rows + position rows. Token t of a sequence is at position past + t.
  void embed(const int* ids, Index T, Index past) {
    const Index m = main();
    const auto& E = token_embedding.table;
    const auto& P = position_embedding.table;
    const bool recenter = tied_affine();
    detail::for_each_row(h_.rows(), m, [&](Index r) {
      const Index pos = past + r % T;
      if (recenter) detail::tied_lookup_row<S>(E.row(ids[r]), P.row(pos), h_.row(r));
      else h_.row(r) = E.row(ids[r]) + P.row(pos);
    });
  }

  // logits_ [rows x vocab] = head(x), x [rows x main] normalized.
  void apply_head(const ConstRowsRef<S>& x) {
    const Index N = x.rows();
    logits_.resize(N, config.vocab);
    if (N == 0) return;
    const auto& E = token_embedding.table;
    if (tied_affine()) {
      // u = tied_gamma * decompress(x) + tied_beta, then logits = u E^T.
      u_.resize(N, config.width);
      detail::tied_head_input<S>(x, tied_gamma, tied_beta, u_);
      logits_.noalias() = u_ * E.transpose();
    } else if (config.tied) {
      logits_.noalias() = x * E.transpose();
    } else {
      head.product_padded(x, logits_);  // a decoding row at depth d - 1: masked tail
    }
    if (head_bias.size() != 0)
      detail::for_each_row(N, config.vocab, [&](Index r) { logits_.row(r) += head_bias.transpose(); });
  }
};

}  // namespace prenorm
