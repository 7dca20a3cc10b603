#pragma once
// GptSession: the state of GPT inference, apart from the model's parameters.
//
// A Gpt holds parameters only and is read, never written, by a forward. A
// session owns everything a forward writes: the main branch and its
// normalized copy, the branch and attention buffers, the logits, and the KV
// cache of incremental decoding. So one model serves any number of sessions
// at once (one per thread), and a session allocates only when a call needs
// larger buffers than an earlier one: a repeated forward of the same shape,
// or a decoding step after the first, allocates nothing.
//
//   Gpt<Arch::PreCRMSNorm, float> model = ...;
//   GptSession session(model);                 // keeps a reference to model
//   const auto& logits = session.forward(tokens);       // [batch*seq x vocab]
//   session.prefill(prompt);  session.step(next);       // KV-cache decoding

#include <Eigen/Core>

#include <algorithm>
#include <span>
#include <vector>

#include "gpt.hpp"

namespace prenorm {

// Keys and values of every layer for incremental decoding.
template <class S>
struct KvCache {
  Index batch = 0;     // sequences
  Index capacity = 0;  // positions per sequence
  Index length = 0;    // positions filled, the same for every sequence
  std::vector<RowMatrix<S>> keys;    // [layers] of (batch*capacity, kv_heads*head_dim): row b*capacity + p
  std::vector<RowMatrix<S>> values;  // [layers], same shape

  KvCache() = default;
  KvCache(Index layers, Index batch_, Index capacity_, Index kv_width)
      : batch(batch_),
        capacity(capacity_),
        keys(layers, RowMatrix<S>::Zero(batch_ * capacity_, kv_width)),
        values(layers, RowMatrix<S>::Zero(batch_ * capacity_, kv_width)) {}
};

template <Arch A, class S>
class GptSession {
 public:
  using Model = Gpt<A, S>;
  using BlockHook = typename Model::BlockHook;

  // The model must outlive the session and keep its shapes while the session
  // is used (its weights may change between calls: a trainer's model).
  explicit GptSession(const Model& model) : model_(&model) {}

  const Model& model() const { return *model_; }

  // Logits [batch*seq x vocab] of every position; row b*seq + t is sequence b,
  // position t. The reference stays valid until the next call on this session.
  const RowMatrix<S>& forward(const TokenBatch& tokens) {
    return forward_impl("GptSession::forward", tokens, nullptr);
  }
  // The same, calling hook(-1, h) after the embeddings and hook(i, h) after
  // block i with the main branch h [tokens x main] (residual adds complete).
  const RowMatrix<S>& forward(const TokenBatch& tokens, const BlockHook& hook) {
    return forward_impl("GptSession::forward", tokens, &hook);
  }
  // The same from a batch of sequences, which must all have the same length.
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch) {
    return forward_impl("GptSession::forward", gather("GptSession::forward", batch), nullptr);
  }
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch, const BlockHook& hook) {
    return forward_impl("GptSession::forward", gather("GptSession::forward", batch), &hook);
  }

  // The normalized main branch NormF(h) [batch*seq x main] that the head reads
  // (h itself without norms), without the head.
  const RowMatrix<S>& forward_hidden(const TokenBatch& tokens, const BlockHook* hook = nullptr) {
    constexpr const char* op = "GptSession::forward_hidden";
    model_->check_tokens(op, tokens, 0);
    model_->validate(op);
    run(tokens, 0, nullptr, hook);
    return final_input();
  }

  // logits [rows x vocab] = head(x) for a normalized main branch x [rows x main].
  const RowMatrix<S>& head_forward(const ConstRowsRef<S>& x) {
    if (x.cols() != model_->main())
      detail::fail("GptSession::head_forward", "x has ", x.cols(), " columns, expected ",
                   model_->main());
    apply_head(x);
    return logits_;
  }

  // The main branch h [tokens x main] after the last forward.
  const RowMatrix<S>& main_branch() const { return h_; }

  // Starts decoding: makes the cache hold tokens.batch sequences of up to
  // `capacity` positions (0: the model's context; the storage is reused when
  // the batch and capacity are those of the last prefill), fills it with the
  // prompts and returns their logits [batch*seq x vocab], equal to forward(tokens).
  const RowMatrix<S>& prefill(const TokenBatch& tokens, Index capacity = 0) {
    constexpr const char* op = "GptSession::prefill";
    const Index context = model_->config.context;
    if (capacity == 0) capacity = context;
    if (tokens.batch < 0 || capacity < 0 || capacity > context)
      detail::fail(op, "batch ", tokens.batch, " and capacity ", capacity,
                   " must be >= 0, and the capacity at most the context ", context);
    const Index layers = model_->config.layers, kv = model_->config.kv_width();
    if (cache_.batch != tokens.batch || cache_.capacity != capacity ||
        Index(cache_.keys.size()) != layers ||
        (layers > 0 && cache_.keys[0].cols() != kv))
      cache_ = KvCache<S>(layers, tokens.batch, capacity, kv);
    cache_.length = 0;
    return extend_impl(op, tokens);
  }
  // Appends tokens (seq more per sequence) to the cache: logits [batch*seq x vocab]
  // of the new positions.
  const RowMatrix<S>& extend(const TokenBatch& tokens) {
    return extend_impl("GptSession::extend", tokens);
  }
  // One decoding step: next [batch] holds one token per sequence. Logits [batch x vocab].
  const RowMatrix<S>& step(std::span<const int> next) {
    return extend_impl("GptSession::step", TokenBatch{next, Index(next.size()), 1});
  }

  // The cache of the decoding started by the last prefill.
  const KvCache<S>& cache() const { return cache_; }

  // Forgets the positions from `length` on, so that the next extend or step
  // writes position `length` again (e.g. to try another continuation).
  void rewind(Index length) {
    if (length < 0 || length > cache_.length)
      detail::fail("GptSession::rewind", "length ", length, " is outside [0, ", cache_.length,
                   "] (the positions in the cache)");
    cache_.length = length;
  }

 private:
  friend Model;  // Gpt::forward runs a session of its own, with its own operation name

  const Model* model_;
  BlockWorkspace<S> workspace_;
  RowMatrix<S> h_, x_;    // [tokens x main]: main branch, normalized
  RowMatrix<S> branch_;   // [tokens x branch_width()]: pending branch output in its first main columns
  RowMatrix<S> u_;        // [tokens x d]: the tied head's input
  RowMatrix<S> logits_;   // [tokens x vocab]
  std::vector<int> ids_;  // the gathered batch
  KvCache<S> cache_;

  // Copies an equal-length batch into ids_.
  TokenBatch gather(const char* op, const std::vector<std::vector<int>>& batch) {
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

  const RowMatrix<S>& forward_impl(const char* op, const TokenBatch& tokens, const BlockHook* hook) {
    model_->check_tokens(op, tokens, 0);
    model_->validate(op);
    run(tokens, 0, nullptr, hook);
    apply_head(final_input());
    return logits_;
  }

  const RowMatrix<S>& extend_impl(const char* op, const TokenBatch& tokens) {
    const GptConfig& config = model_->config;
    if (cache_.keys.empty() && config.layers > 0)
      detail::fail(op, "no decoding started: call prefill first");
    if (tokens.batch != cache_.batch)
      detail::fail(op, "the batch has ", tokens.batch, " sequences, the cache holds ", cache_.batch);
    if (cache_.length + tokens.seq > cache_.capacity)
      detail::fail(op, "the cache is full: ", cache_.length, " + ", tokens.seq,
                   " positions exceed its capacity ", cache_.capacity);
    model_->check_tokens(op, tokens, cache_.length);
    model_->validate(op);
    run(tokens, cache_.length, &cache_, nullptr);
    cache_.length += tokens.seq;
    apply_head(final_input());
    return logits_;
  }

  // What the head reads: NormF(h), or h itself without norms.
  const RowMatrix<S>& final_input() const { return ArchTraits<A>::input(h_, x_); }

  // Embeddings, blocks and the final norm: leaves NormF(h) in final_input().
  void run(const TokenBatch& t, Index past, KvCache<S>* cache, const BlockHook* hook) {
    const Model& g = *model_;
    const Index B = t.batch, T = t.seq, N = B * T, m = g.main();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, g.blocks.empty() ? m : g.blocks[0].branch_width());
    if (N == 0) return;
    embed(t.ids.data(), T, past);
    if (hook) (*hook)(-1, h_);
    const Index L = Index(g.blocks.size());
    if (L == 0) final_norm();
    else g.blocks[0].norm1(h_, x_);
    for (Index i = 0; i < L; ++i) {
      if (cache)
        g.blocks[i].forward_fused_cached(h_, x_, branch_, B, past, cache->keys[i], cache->values[i],
                                         workspace_);
      else
        g.blocks[i].forward_fused(h_, x_, branch_, B, workspace_);
      if (hook) {  // complete the residual add, show it, then normalize unfused
        h_ += branch_.leftCols(m);
        (*hook)(i, h_);
        if (i + 1 < L) g.blocks[i + 1].norm1(h_, x_);
        else final_norm();
      } else if (i + 1 < L) {
        g.blocks[i + 1].add_norm1(h_, branch_.leftCols(m), x_);
      } else {
        ArchTraits<A>::add_forward(h_, branch_.leftCols(m), g.final_gamma, g.final_beta, x_,
                                   S(g.config.epsilon));
      }
    }
  }

  void final_norm() {
    ArchTraits<A>::forward(h_, model_->final_gamma, model_->final_beta, x_, S(model_->config.epsilon));
  }

  // h_ [tokens x main] = token rows + position rows (none without learned
  // positions). Token t of a sequence is at position past + t, row past + t + offset.
  void embed(const int* ids, Index T, Index past) {
    const Model& g = *model_;
    const Index m = g.main();
    const auto& E = g.token_embedding.table;
    const auto& P = g.position_embedding.table;
    const bool recenter = g.tied_affine(), positions = g.config.learned_positions;
    const Index offset = past + g.config.position_offset;
    detail::for_each_row(h_.rows(), m, [&](Index r) {
      if (recenter) branch::write(E.row(ids[r]), h_.row(r));
      else h_.row(r) = E.row(ids[r]);
      if (positions) h_.row(r) += P.row(offset + r % T);
    });
  }

  // logits_ [rows x vocab] = head(x), x [rows x main] normalized.
  void apply_head(const ConstRowsRef<S>& x) {
    const Model& g = *model_;
    const Index N = x.rows();
    logits_.resize(N, g.config.vocab);
    if (N == 0) return;
    const auto& E = g.token_embedding;
    if (g.tied_affine()) {
      // u = tied_gamma * decompress(x) + tied_beta, then logits = u E^T.
      u_.resize(N, g.config.width);
      detail::tied_head_input<S>(x, g.tied_gamma, g.tied_beta, u_);
      E.multiply_transposed(u_, logits_);
    } else if (g.config.tied) {
      E.multiply_transposed(x, logits_);
    } else {
      g.head.product_padded(x, logits_);  // a decoding row at depth d - 1: masked tail
    }
    if (g.head_bias.size() != 0)
      detail::for_each_row(N, g.config.vocab,
                           [&](Index r) { logits_.row(r) += g.head_bias.transpose(); });
  }
};

template <Arch A, class S>
GptSession(const Gpt<A, S>&) -> GptSession<A, S>;

// Gpt's convenience forwards: a session of their own, their own operation name.
template <Arch A, class S>
RowMatrix<S> Gpt<A, S>::forward(const TokenBatch& tokens) const {
  GptSession<A, S> session(*this);
  return session.forward_impl("Gpt::forward", tokens, nullptr);
}
template <Arch A, class S>
RowMatrix<S> Gpt<A, S>::forward(const TokenBatch& tokens, const BlockHook& hook) const {
  GptSession<A, S> session(*this);
  return session.forward_impl("Gpt::forward", tokens, &hook);
}
template <Arch A, class S>
RowMatrix<S> Gpt<A, S>::forward(const std::vector<std::vector<int>>& batch) const {
  GptSession<A, S> session(*this);
  return session.forward_impl("Gpt::forward", session.gather("Gpt::forward", batch), nullptr);
}
template <Arch A, class S>
RowMatrix<S> Gpt<A, S>::forward(const std::vector<std::vector<int>>& batch,
                                const BlockHook& hook) const {
  GptSession<A, S> session(*this);
  return session.forward_impl("Gpt::forward", session.gather("Gpt::forward", batch), &hook);
}

}  // namespace prenorm
