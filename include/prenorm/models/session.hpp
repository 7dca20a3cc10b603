#pragma once
// Session: the state of inference, apart from the model's parameters.
//
// A Transformer holds parameters only and is read, never written, by a
// forward. A session owns everything a forward writes: the main branch and
// its normalized copy, the branch and attention buffers, the outputs, and the
// KV cache of incremental decoding. So one model serves any number of
// sessions at once (one per thread), and a session allocates only when a call
// needs larger buffers than an earlier one: a repeated forward of the same
// shape, or a decoding step after the first, allocates nothing.
//
//   Transformer<Arch::PreCRMSNorm, float> gpt = ...;   // a token stem
//   Session session(gpt);                               // keeps a reference to the model
//   const auto& logits = session.forward(tokens);       // [batch*seq x vocab]
//   session.prefill(prompt);  session.step(next);       // KV-cache decoding
//   Session vit_session(vit);                           // a patch stem
//   const auto& out = vit_session.forward(images);      // [batch x classes]

#include <Eigen/Core>

#include <algorithm>
#include <span>
#include <vector>

#include "transformer.hpp"

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
class Session {
 public:
  using Model = Transformer<A, S>;
  using BlockHook = typename Model::BlockHook;

  // The model must outlive the session and keep its shapes while the session
  // is used (its weights may change between calls: a trainer's model).
  explicit Session(const Model& model) : model_(&model) {}

  const Model& model() const { return *model_; }

  // --- Token stems ---------------------------------------------------------

  // The head's outputs of a token batch: TokenLogits, [batch*seq x vocab],
  // row b*seq + t for sequence b, position t. The reference stays valid until
  // the next call on this session.
  const RowMatrix<S>& forward(const TokenBatch& tokens) {
    return forward_tokens("Session::forward", tokens, nullptr);
  }
  // The same, calling hook(-1, h) after the stem and hook(i, h) after block i
  // with the main branch h [tokens x main] (residual adds complete).
  const RowMatrix<S>& forward(const TokenBatch& tokens, const BlockHook& hook) {
    return forward_tokens("Session::forward", tokens, &hook);
  }
  // The same from a batch of sequences, which must all have the same length.
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch) {
    return forward_tokens("Session::forward", gather("Session::forward", batch), nullptr);
  }
  const RowMatrix<S>& forward(const std::vector<std::vector<int>>& batch, const BlockHook& hook) {
    return forward_tokens("Session::forward", gather("Session::forward", batch), &hook);
  }

  // The normalized main branch NormF(h) [batch*seq x main] that a token head
  // reads (h itself without norms), without the head.
  const RowMatrix<S>& forward_hidden(const TokenBatch& tokens, const BlockHook* hook = nullptr) {
    constexpr const char* op = "Session::forward_hidden";
    model_->check_tokens(op, tokens, 0);
    model_->validate(op);
    run_tokens(tokens, 0, nullptr, hook);
    finish_all_rows(hook != nullptr);
    return final_input();
  }

  // logits [rows x vocab] = head(x) for a normalized main branch x [rows x main]
  // (a TokenLogits head).
  const RowMatrix<S>& head_forward(const ConstRowsRef<S>& x) {
    constexpr const char* op = "Session::head_forward";
    check_head(op, Head::TokenLogits);
    if (x.cols() != model_->main())
      detail::fail(op, "x has ", x.cols(), " columns, expected ", model_->main());
    token_head(x);
    return logits_;
  }

  // Starts decoding (a causal token model): makes the cache hold tokens.batch
  // sequences of up to `capacity` positions (0: the model's context; the
  // storage is reused when the batch and capacity are those of the last
  // prefill), fills it with the prompts and returns their logits
  // [batch*seq x vocab], equal to forward(tokens).
  const RowMatrix<S>& prefill(const TokenBatch& tokens, Index capacity = 0) {
    constexpr const char* op = "Session::prefill";
    model_->check_stem(op, Stem::Tokens);
    check_head(op, Head::TokenLogits);
    if (!model_->config.causal)
      detail::fail(op, "the model's attention is bidirectional, expected causal (a KV cache "
                       "holds past positions only)");
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
    return extend_impl("Session::extend", tokens);
  }
  // One decoding step: next [batch] holds one token per sequence. Logits [batch x vocab].
  const RowMatrix<S>& step(std::span<const int> next) {
    return extend_impl("Session::step", TokenBatch{next, Index(next.size()), 1});
  }

  // The cache of the decoding started by the last prefill.
  const KvCache<S>& cache() const { return cache_; }

  // Forgets the positions from `length` on, so that the next extend or step
  // writes position `length` again (e.g. to try another continuation).
  void rewind(Index length) {
    if (length < 0 || length > cache_.length)
      detail::fail("Session::rewind", "length ", length, " is outside [0, ", cache_.length,
                   "] (the positions in the cache)");
    cache_.length = length;
  }

  // --- Patch stems ---------------------------------------------------------

  // Outputs [batch x classes] of images [batch x C x H x W], valid until the
  // next call on this session.
  const RowMatrix<S>& forward(const ImageBatch<S>& images) {
    return forward_images("Session::forward", images, nullptr);
  }
  // The same, calling hook(-1, h) after the stem and hook(i, h) after block i
  // with the main branch h [batch*tokens x main].
  const RowMatrix<S>& forward(const ImageBatch<S>& images, const BlockHook& hook) {
    return forward_images("Session::forward", images, &hook);
  }
  // Outputs [batch x classes] of pre-flattened patches [batch*patches x C*p*p]
  // (image b is rows [b*patches, (b+1)*patches), each row in (c, ky, kx) order).
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches) {
    return forward_patches_impl("Session::forward_patches", patches, nullptr);
  }
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches, const BlockHook& hook) {
    return forward_patches_impl("Session::forward_patches", patches, &hook);
  }

  // --- Either --------------------------------------------------------------

  // The main branch h [tokens x main] after the last forward. Without a hook
  // and with the cls pooling, the last MLP's residual add reaches the cls rows only.
  const RowMatrix<S>& main_branch() const { return h_; }
  // What a pooled head read, pool(NormF(h)) [batch x pooled_parts*main] (h
  // without norms): the normalized cls rows, with the distillation rows or
  // the patch means beside them.
  const RowMatrix<S>& hidden() const { return pooled_; }

 private:
  friend Model;  // Transformer::forward runs a session of its own, with its own operation name

  const Model* model_;
  BlockWorkspace<S> workspace_;
  RowMatrix<S> h_, x_;    // [tokens x main]: main branch, normalized
  RowMatrix<S> branch_;   // [tokens x branch_width()]: pending branch output in its first main columns
  RowMatrix<S> u_;        // [tokens x d]: the tied head's input
  RowMatrix<S> patches_;  // [batch*tokens x C*p*p]; the prefix (cls, distillation) rows are zero
  RowMatrix<S> embed_;    // [batch*tokens x d]: the embeddings a stem norm reads
  RowMatrix<S> stem_;     // [batch*tokens x d]: the stem norm's output, before centering
  RowMatrix<S> pooled_;   // [batch x pooled_parts*main]: a pooled head's input
  RowMatrix<S> logits_;   // [tokens x vocab] or [batch x classes]
  std::vector<int> ids_;  // the gathered batch
  KvCache<S> cache_;

  void check_head(const char* op, Head head) const {
    if (model_->config.head != head)
      detail::fail(op, "the model's head is ", head_name(model_->config.head), ", expected ",
                   head_name(head));
  }

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

  const RowMatrix<S>& forward_tokens(const char* op, const TokenBatch& tokens, const BlockHook* hook) {
    model_->check_tokens(op, tokens, 0);
    check_head(op, Head::TokenLogits);
    model_->validate(op);
    run_tokens(tokens, 0, nullptr, hook);
    finish_all_rows(hook != nullptr);
    token_head(final_input());
    return logits_;
  }

  const RowMatrix<S>& extend_impl(const char* op, const TokenBatch& tokens) {
    const TransformerConfig& config = model_->config;
    if (cache_.keys.empty() && config.layers > 0)
      detail::fail(op, "no decoding started: call prefill first");
    if (tokens.batch != cache_.batch)
      detail::fail(op, "the batch has ", tokens.batch, " sequences, the cache holds ", cache_.batch);
    if (cache_.length + tokens.seq > cache_.capacity)
      detail::fail(op, "the cache is full: ", cache_.length, " + ", tokens.seq,
                   " positions exceed its capacity ", cache_.capacity);
    model_->check_tokens(op, tokens, cache_.length);
    model_->validate(op);
    run_tokens(tokens, cache_.length, &cache_, nullptr);
    finish_all_rows(false);
    cache_.length += tokens.seq;
    token_head(final_input());
    return logits_;
  }

  const RowMatrix<S>& forward_images(const char* op, const ImageBatch<S>& images,
                                     const BlockHook* hook) {
    const Model& v = *model_;
    v.check_images(op, images);
    v.validate(op);
    const Index B = images.batch, T = v.config.tokens(), K = v.config.prefix_tokens();
    patches_.resize(B * T, v.config.patch_features());
    for (Index b = 0; b < B; ++b) patches_.middleRows(b * T, K).setZero();
    v.extract_patches(images, patches_.data(), K);
    run_patches(B, hook);
    return logits_;
  }

  const RowMatrix<S>& forward_patches_impl(const char* op, const ConstRowsRef<S>& patches,
                                           const BlockHook* hook) {
    const Model& v = *model_;
    v.check_stem(op, Stem::Patches);
    const Index P = v.config.patches(), F = v.config.patch_features();
    if (patches.cols() != F || patches.rows() % P != 0)
      detail::fail(op, "patches is ", patches.rows(), " x ", patches.cols(), ", expected (batch*",
                   P, ") x ", F, " (batch*patches x C*p*p)");
    v.validate(op);
    const Index B = patches.rows() / P, T = v.config.tokens(), K = v.config.prefix_tokens();
    patches_.resize(B * T, F);
    for (Index b = 0; b < B; ++b) {
      patches_.middleRows(b * T, K).setZero();
      patches_.middleRows(b * T + K, P) = patches.middleRows(b * P, P);
    }
    run_patches(B, hook);
    return logits_;
  }

  // What a head reads: NormF(h), or h itself without norms.
  const RowMatrix<S>& final_input() const { return ArchTraits<A>::input(h_, x_); }

  // Sizes h_, x_ and branch_ for N rows.
  void resize_stream(Index N) {
    const Model& g = *model_;
    const Index m = g.main();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, g.blocks.empty() ? m : g.blocks[0].branch_width());
  }

  // Token stem and every block but the last residual add, which is pending in
  // branch_ (see finish_all_rows); B sequences of T tokens at positions
  // [past, past + T).
  void run_tokens(const TokenBatch& t, Index past, KvCache<S>* cache, const BlockHook* hook) {
    resize_stream(t.batch * t.seq);
    if (h_.rows() == 0) return;
    embed_tokens(t.ids.data(), t.seq, past);
    run_blocks(t.batch, past, cache, hook);
  }

  // The blocks on h_ from the stem. Leaves the last block's branch output in
  // branch_, not added (the head decides which rows need it), except with a
  // hook, which sees every residual add complete. Without blocks, x_ holds
  // nothing and branch_ is not read.
  void run_blocks(Index B, Index past, KvCache<S>* cache, const BlockHook* hook) {
    const Model& g = *model_;
    const Index m = g.main();
    if (hook) (*hook)(-1, h_);
    const Index L = Index(g.blocks.size());
    if (L > 0) g.blocks[0].norm1(h_, x_);
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
      } else if (i + 1 < L) {
        g.blocks[i + 1].add_norm1(h_, branch_.leftCols(m), x_);
      }
    }
  }

  // The last residual add (unless `added`: a hook did it) and the final norm
  // on every row: leaves NormF(h) in final_input().
  void finish_all_rows(bool added) {
    const Model& g = *model_;
    if (h_.rows() == 0) return;
    const S eps = S(g.config.epsilon);
    if (!g.blocks.empty() && !added)
      ArchTraits<A>::add_forward(h_, branch_.leftCols(g.main()), g.final_gamma, g.final_beta, x_, eps);
    else
      ArchTraits<A>::forward(h_, g.final_gamma, g.final_beta, x_, eps);
  }

  // h_ [tokens x main] = token rows + position rows (none without learned
  // positions). Token t of a sequence is at position past + t, row past + t + offset.
  void embed_tokens(const int* ids, Index T, Index past) {
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
  void token_head(const ConstRowsRef<S>& x) {
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

  // Strided view of the cls rows (row b*tokens) of a [batch*tokens x main] buffer.
  Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> cls_rows(RowMatrix<S>& m) const {
    const Index T = model_->config.tokens();
    return {m.data(), m.rows() / T, m.cols(), Eigen::OuterStride<>(T * m.cols())};
  }

  // From patches_ (prefix rows zero) to logits_ [B x classes].
  void run_patches(Index B, const BlockHook* hook) {
    const Model& v = *model_;
    const TransformerConfig& c = v.config;
    const Index T = c.tokens(), N = B * T, m = v.main();
    resize_stream(N);
    pooled_.resize(B, c.pooled_parts() * m);
    logits_.resize(B, c.classes);
    if (N == 0) return;
    embed_patches(N);
    run_blocks(B, 0, nullptr, hook);
    pool(B, hook != nullptr);
    v.head.forward_padded(pooled_, logits_);
  }

  // h_ [N x main] from patches_: e = patch linear of every row (one GEMM; the
  // zero prefix rows cost little), then the cls (and distillation) token and
  // the positions; with a stem norm, h = LN(e) gamma + beta, centered (and
  // compressed) where the norms do not center.
  void embed_patches(Index N) {
    const Model& v = *model_;
    const TransformerConfig& c = v.config;
    const Index T = c.tokens(), m = v.main(), e = v.embed_width();
    const auto& P = v.position_embedding.table;
    // Without a stem norm e is h, and the product goes through branch_, which
    // is wide enough for it to run padded where that pays (Pre-CRMSNorm).
    RowMatrix<S>& product = c.stem_norm ? embed_ : branch_;
    RowMatrix<S>& embeddings = c.stem_norm ? embed_ : h_;
    if (c.stem_norm) embed_.resize(N, e);
    v.patch.forward_padded(patches_, product);
    detail::for_each_row(N, e, [&](Index r) {
      const Index t = r % T;
      if (t == 0) embeddings.row(r) = v.cls_token.transpose() + P.row(0);
      else if (t == 1 && c.distillation_token)
        embeddings.row(r) = v.distillation_token.transpose() + P.row(1);
      else embeddings.row(r) = product.row(r).head(e) + P.row(t);
    });
    if (!c.stem_norm) return;
    // h = LN(e) gamma + beta starts the stream; a norm without centering
    // needs it zero-mean (and compressed to its first main coordinates).
    const S eps = S(c.epsilon);
    if constexpr (A == Arch::PreLN) {
      layer_norm_forward(embed_, v.stem_gamma, v.stem_beta, h_, eps);
    } else {
      stem_.resize(N, e);
      layer_norm_forward(embed_, v.stem_gamma, v.stem_beta, stem_, eps);
      detail::for_each_row(N, e, [&](Index r) {
        h_.row(r) = stem_.row(r).head(m).array() - stem_.row(r).mean();
      });
    }
  }

  // pooled_ [B x parts*main] = pool(NormF(h)), from the blocks' output with the
  // last residual add pending in branch_ (unless `added`).
  void pool(Index B, bool added) {
    const Model& v = *model_;
    const TransformerConfig& c = v.config;
    const Index T = c.tokens(), m = v.main();
    const S eps = S(c.epsilon);
    if (c.pooling == Pooling::Cls) {
      // The head reads the cls rows only: the last add and the final norm touch only them.
      const auto h_cls = cls_rows(h_);
      if (!v.blocks.empty() && !added)
        ArchTraits<A>::add_forward(h_cls, cls_rows(branch_).leftCols(m), v.final_gamma,
                                   v.final_beta, pooled_, eps);
      else
        ArchTraits<A>::forward(h_cls, v.final_gamma, v.final_beta, pooled_, eps);
      if constexpr (!ArchTraits<A>::has_norm) pooled_ = h_cls;  // no norm: the head reads h
      return;
    }
    // The head reads more rows than the cls one: every row is finished and normalized.
    finish_all_rows(added);
    if constexpr (!ArchTraits<A>::has_norm) x_ = h_;
    const Index K = c.prefix_tokens(), P = c.patches();
    for (Index b = 0; b < B; ++b) {
      pooled_.row(b).head(m) = x_.row(b * T);
      if (c.pooling == Pooling::ClsDistillation)
        pooled_.row(b).tail(m) = x_.row(b * T + 1);
      else  // ClsPatchMean
        pooled_.row(b).tail(m) = x_.middleRows(b * T + K, P).colwise().mean();
    }
  }
};

template <Arch A, class S>
Session(const Transformer<A, S>&) -> Session<A, S>;

// Transformer's convenience forwards: a session of their own, their own operation name.
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const TokenBatch& tokens) const {
  Session<A, S> session(*this);
  return session.forward_tokens("Transformer::forward", tokens, nullptr);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const TokenBatch& tokens, const BlockHook& hook) const {
  Session<A, S> session(*this);
  return session.forward_tokens("Transformer::forward", tokens, &hook);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const std::vector<std::vector<int>>& batch) const {
  Session<A, S> session(*this);
  return session.forward_tokens("Transformer::forward",
                                session.gather("Transformer::forward", batch), nullptr);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const std::vector<std::vector<int>>& batch,
                                        const BlockHook& hook) const {
  Session<A, S> session(*this);
  return session.forward_tokens("Transformer::forward",
                                session.gather("Transformer::forward", batch), &hook);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const ImageBatch<S>& images) const {
  Session<A, S> session(*this);
  return session.forward_images("Transformer::forward", images, nullptr);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward(const ImageBatch<S>& images, const BlockHook& hook) const {
  Session<A, S> session(*this);
  return session.forward_images("Transformer::forward", images, &hook);
}
template <Arch A, class S>
RowMatrix<S> Transformer<A, S>::forward_patches(const ConstRowsRef<S>& patches) const {
  Session<A, S> session(*this);
  return session.forward_patches_impl("Transformer::forward_patches", patches, nullptr);
}

}  // namespace prenorm
