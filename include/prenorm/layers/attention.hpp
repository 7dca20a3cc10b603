#pragma once
// Multi-head self-attention with a fused QKV projection (GPT-2's c_attn), and
// the variants of the Pre-LN families as data members (defaults: GPT-2's):
//   [q | k | v] = x Wqkv^T + bqkv:  q of H*hd columns (head h at h*hd), k and v of
//                 G*hd each (G = kv_heads; 0 means H), hd = head_dim;
//   q_h, k_g   <- rotary(q_h, p), rotary(k_g, p)   on their first rotary.dims
//                 coordinates, p the token's position (layers/attention_options.hpp);
//   s_h(i, j)  = scale * q_h(i) . k_g(j) [+ slope_h * (j - i) with alibi],
//                 g = h / (H / G) (grouped-query: Hugging Face's repeat_kv;
//                 multi-query: G = 1), scale = score_scale, or 1/sqrt(hd) when 0;
//   context_h  = softmax_j(s_h) v_g over the keys j that query i sees: all,
//                 j <= i (causal), or i - window < j <= i (window > 0, GPT-Neo's local);
//   y          = [context_1 ... context_H] Wout^T + bout.
//
// Per (sequence, head), blocks of queries against blocks of keys with an
// online softmax (attend), the products Eigen GEMMs on strided blocks of the
// row-major QKV buffer or KV cache (no transposed copies): at most one
// [query block x key block] of scores per thread (or a short bidirectional
// sequence's T x T), whatever the sequence or cache length. Each query
// block reads only the keys it may see (causal: up to its last query, which
// halves the work of a long prompt; with a window, only the window's). The
// rotary embedding is applied once, in place, to the QKV buffer before.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/softmax.hpp"
#include "attention_options.hpp"
#include "linear.hpp"

namespace prenorm {

// Buffers of one attention forward, reused between calls (no allocation once
// they have grown to the largest shape seen).
template <class S>
struct AttentionWorkspace {
  RowMatrix<S> qkv;      // [tokens x (heads + 2*kv_heads)*head_dim]
  RowMatrix<S> context;  // [tokens x heads*head_dim]
  Vector<S> scores;      // one [query block x key block] per thread (64-byte aligned slots)
  detail::RotaryTable<S> rotary;  // cos, sin [tokens x rotary.dims/2] of the positions
};

namespace detail {

// The size of the blocks that cut n items into as few blocks of at most
// max_block as possible, as even as possible (300 by 256: 150, 150), so
// that no block is a small remainder.
constexpr Index even_block(Index n, Index max_block) {
  if (n <= max_block) return std::max<Index>(n, 1);
  const Index blocks = (n + max_block - 1) / max_block;
  return (n + blocks - 1) / blocks;
}

}  // namespace detail

template <class S>
class MultiHeadAttention {
 public:
  using Scalar = S;
  // The blocks attend() computes scores for: at most kQueryBlock queries
  // against kKeyBlock keys; a block of fewer queries (a decoding step, the
  // last block) takes as many more keys, up to the same kQueryBlock *
  // kKeyBlock scores. Chosen by measurement (docs/DESIGN.md, "Blockwise
  // attention"): 256 keys beat 128 by about 8 % of the attention's time on
  // GPT-2 at T = 512 and 10 % on ViT-Ti; 96 queries lost 6 % on GPT-2 at
  // T = 128 (more causal work); 48 were no better.
  static constexpr Index kQueryBlock = 64;
  static constexpr Index kKeyBlock = 256;
  // A bidirectional (sequence, head) of at most this many T x keys scores is
  // one block of all queries and keys: smaller query blocks save no work
  // there, and on ViT-Ti (197 x 197) blocks of 64 queries cost 6-7 % of the
  // attention's time (each block packs K and V again for its products).
  static constexpr Index kShortScores = 256 * 256;

  // ((heads + 2*kv_heads)*head_dim, width): output rows [q heads..., k heads..., v heads...]
  Linear<S> qkv;
  Linear<S> out;  // (width, heads*head_dim)
  Index heads = 0;
  Index head_dim = 0;
  bool causal = false;
  Index kv_heads = 0;       // key/value heads, a divisor of heads; 0: heads (plain multi-head)
  Rotary rotary;            // rotary embedding of q and k (dims 0: none)
  bool alibi = false;       // BLOOM's ALiBi bias slope_h * (j - i) on the scaled scores
  Index window = 0;         // > 0: local attention to the last `window` keys (causal only)
  double score_scale = 0;   // the scores' factor; 0: 1/sqrt(head_dim) (GPT-Neo: 1)

  MultiHeadAttention() = default;
  // Zero weights with biases. width: the main-branch width the layer reads and writes.
  MultiHeadAttention(Index width, Index heads_, Index head_dim_, bool causal_, bool bias = true,
                     Index kv_heads_ = 0)
      : qkv(width, (heads_ + 2 * (kv_heads_ != 0 ? kv_heads_ : heads_)) * head_dim_, bias),
        out(heads_ * head_dim_, width, bias),
        heads(heads_),
        head_dim(head_dim_),
        causal(causal_),
        kv_heads(kv_heads_) {}

  Index inner() const { return heads * head_dim; }  // heads*head_dim
  Index kv_head_count() const { return kv_heads != 0 ? kv_heads : heads; }
  Index kv_inner() const { return kv_head_count() * head_dim; }  // the KV cache's columns
  Index qkv_rows() const { return inner() + 2 * kv_inner(); }
  Index width() const { return qkv.in_features(); }

  // y [batch*T x width] = Attn(x [batch*T x width]); sequence b is rows [b*T, (b+1)*T).
  // A wider y gets the output in its first width columns and zeros in the
  // rest, and lets the output projection run padded (Linear::forward_padded).
  void forward(const ConstRowsRef<S>& x, Index batch, RowsRef<S> y, AttentionWorkspace<S>& ws) const {
    const Index tokens = check_forward("MultiHeadAttention::forward", x, batch, y);
    if (tokens == 0) return;
    const Index T = tokens / batch, I = inner(), R = qkv_rows();
    ws.qkv.resize(tokens, R);
    qkv.forward_padded(x, ws.qkv);
    if (rotary.dims != 0) rotate(T, 0, ws);
    ws.context.resize(tokens, I);
    const S* q = ws.qkv.data();
    attend(q, R, q + I, q + I + kv_inner(), R, T, batch, T, 0, ws);
    out.forward_padded(ws.context, y);
  }
  // The same with buffers of its own (allocates; for tests and one-off calls).
  void forward(const ConstRowsRef<S>& x, Index batch, RowsRef<S> y) const {
    AttentionWorkspace<S> ws;
    forward(x, batch, y, ws);
  }

  // Incremental decoding. x [batch*T x width] holds T new tokens per sequence,
  // at positions [past, past+T). keys, values [batch*capacity x kv_heads*head_dim]
  // hold position p of sequence b in row b*capacity + p: the new rows are
  // written (keys after their rotary embedding), then the queries attend to
  // positions [0, past+T) (the window's with one). y: as in forward.
  void forward_cached(const ConstRowsRef<S>& x, Index batch, Index past, RowMatrix<S>& keys,
                      RowMatrix<S>& values, RowsRef<S> y, AttentionWorkspace<S>& ws) const {
    constexpr const char* op = "MultiHeadAttention::forward_cached";
    const Index tokens = check_forward(op, x, batch, y);
    if (tokens == 0) return;
    const Index T = tokens / batch, I = inner(), KI = kv_inner(), R = qkv_rows();
    if (keys.cols() != KI || values.cols() != KI || keys.rows() != values.rows() ||
        keys.rows() % batch != 0)
      detail::fail(op, "keys (", keys.rows(), " x ", keys.cols(), ") and values (", values.rows(),
                   " x ", values.cols(), ") must both be (batch*capacity x ", KI,
                   ") with batch ", batch, " (kv_heads*head_dim columns)");
    const Index capacity = keys.rows() / batch;
    if (past < 0 || past + T > capacity)
      detail::fail(op, "positions [", past, ", ", past + T, ") do not fit the cache capacity ", capacity);
    ws.qkv.resize(tokens, R);
    qkv.forward_padded(x, ws.qkv);
    if (rotary.dims != 0) rotate(T, past, ws);
    for (Index b = 0; b < batch; ++b) {
      keys.middleRows(b * capacity + past, T) = ws.qkv.block(b * T, I, T, KI);
      values.middleRows(b * capacity + past, T) = ws.qkv.block(b * T, I + KI, T, KI);
    }
    ws.context.resize(tokens, I);
    attend(ws.qkv.data(), R, keys.data(), values.data(), KI, capacity, batch, T, past, ws);
    out.forward_padded(ws.context, y);
  }

  // Throws unless heads, head_dim > 0, the options fit them (kv_heads a
  // divisor of heads, rotary.dims even and <= head_dim, a window only when
  // causal, score_scale 0 or > 0), qkv is ((heads + 2*kv_heads)*head_dim, width)
  // and out is (width, heads*head_dim). name: a string or a callable returning one.
  template <class Name>
  void validate(const char* op, const Name& name, Index width) const {
    check_options(op, [&] { return detail::tensor_name(name) + "."; });
    qkv.validate(op, detail::sub_name(name, ".qkv"), width, qkv_rows());
    out.validate(op, detail::sub_name(name, ".out"), inner(), width);
  }

 private:
  // prefix(): the name of this layer in messages, e.g. "blocks[3].attn.".
  template <class Prefix>
  void check_options(const char* op, const Prefix& prefix) const {
    if (heads <= 0 || head_dim <= 0)
      detail::fail(op, prefix(), "heads is ", heads, " and head_dim ", head_dim, ", expected both > 0");
    detail::check_attention_options(op, prefix, heads, head_dim, kv_heads, rotary, window, causal,
                                    score_scale);
  }

  // Returns the number of tokens, after checking the options, qkv's rows, x
  // [batch*T x width] and y.
  Index check_forward(const char* op, const ConstRowsRef<S>& x, Index batch,
                      const RowsRef<S>& y) const {
    check_options(op, [] { return std::string(); });
    if (qkv.out_features() != qkv_rows())
      detail::fail(op, "qkv has ", qkv.out_features(), " output rows, expected ", qkv_rows(),
                   " ((heads ", heads, " + 2 * kv_heads ", kv_head_count(), ") * head_dim ",
                   head_dim, ")");
    const Index tokens = x.rows();
    if (x.cols() != width())
      detail::fail(op, "x has ", x.cols(), " columns, expected ", width(), " (the width of qkv)");
    if (y.rows() != tokens || y.cols() < out.out_features())
      detail::fail(op, "y is ", y.rows(), " x ", y.cols(), ", expected ", tokens, " x ",
                   out.out_features(), " (tokens x width, or wider)");
    if (tokens != 0 && (batch <= 0 || tokens % batch != 0))
      detail::fail(op, "x has ", tokens, " rows, not a multiple of the batch ", batch);
    return tokens;
  }

  // Rotates, in place, the first rotary.dims coordinates of every q and k head
  // of ws.qkv [batch*T x qkv_rows()], row b*T + t at position past + t.
  void rotate(Index T, Index past, AttentionWorkspace<S>& ws) const {
    ws.rotary.prepare(rotary, past, T);
    const Index kvh = kv_head_count(), I = inner();
    detail::for_each_row(ws.qkv.rows(), 3 * (heads + kvh) * rotary.dims, [&](Index r) {
      const S* c = ws.rotary.cos.row(r % T).data();
      const S* s = ws.rotary.sin.row(r % T).data();
      S* row = ws.qkv.row(r).data();
      detail::rotate_heads(rotary, row, heads, head_dim, c, s);
      detail::rotate_heads(rotary, row + I, kvh, head_dim, c, s);
    });
  }

  // The scores a thread holds at most (256 KB in float), and the most
  // queries of one block.
  static constexpr Index kSlotScores = std::max(kQueryBlock * kKeyBlock, kShortScores);
  static constexpr Index kMaxQueryRows = 256;
  static_assert(kMaxQueryRows >= kQueryBlock && kMaxQueryRows * kMaxQueryRows >= kShortScores);

  // ws.context [batch*T x heads*head_dim] = attention of the queries (row b*T+t
  // of q, stride q_stride) over keys/values k, v (row b*kv_rows+p, stride kv_stride)
  // at positions [0, past+T). Query head h is columns [h*head_dim, (h+1)*head_dim)
  // of q and the context, and reads key/value head h / (heads / kv_heads) of k, v.
  //
  // Blockwise with an online softmax (FlashAttention's recurrence), so that
  // the scores held at any time are one [query block x key block] per thread
  // (kSlotScores at most), whatever T and the cache length: per (sequence,
  // head), per block of queries, the context rows C accumulate exp(s - m) V
  // over the blocks of keys the queries may see, m and l the rows' running
  // maximum and sum; when a block raises m, C and l are first scaled by
  // exp(m_old - m_new); after the last block C /= l. Causal query blocks
  // stop at their last query's key and windowed ones start at their first
  // query's window, so key blocks the mask excludes are never computed. (The
  // training forward, train/layers_backward.hpp, keeps materializing [T x T]
  // probabilities per head: its backward reads them.)
  void attend(const S* q, Index q_stride, const S* k, const S* v, Index kv_stride, Index kv_rows,
              Index batch, Index T, Index past, AttentionWorkspace<S>& ws) const {
    using ConstBlock = Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>>;
    using Block = Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>>;
    const Index hd = head_dim, keys = past + T, tasks = batch * heads;
    const Index group = heads / kv_head_count();  // query heads per key/value head
    const Index ctx_stride = ws.context.cols();
    const S scale = score_scale != 0 ? S(score_scale) : S(1) / std::sqrt(S(hd));
    // Whole blocks of queries (64 = 48 + 16 rows fill Eigen's AVX-512 float
    // kernels; an even split, 197 into 4 x 50, was 1-3 % slower). With a window,
    // blocks of at most `window` queries: a block then reads at most
    // 2*window - 1 keys, each row about half of them (the band's edges).
    const bool one_block = !causal && T * keys <= kShortScores;  // then T <= 256 (T <= keys)
    const Index query_block =
        one_block ? T : std::min(T, window > 0 ? std::min(window, kQueryBlock) : kQueryBlock);
    const Index span = window > 0 ? std::min(keys, window) : keys;  // keys a query sees at most

    // One scores block per thread slot; the flop count decides whether threads pay off.
    const double flops = 4.0 * double(tasks) * double(T) * double(span) * double(hd);
    const Index slots = detail::thread_slots();
    const Index slot_size = detail::aligned_slot_size<S>(kSlotScores);
    if (ws.scores.size() < slots * slot_size) ws.scores.resize(slots * slot_size);

    auto task = [&](Index i, Index slot) {
      const Index b = i / heads, h = i % heads, g = h / group;
      const S* qb = q + b * T * q_stride + h * hd;
      const S* kb = k + b * kv_rows * kv_stride + g * hd;
      const S* vb = v + b * kv_rows * kv_stride + g * hd;
      S* cb = ws.context.data() + b * T * ctx_stride + h * hd;
      S* scores = ws.scores.data() + slot * slot_size;
      const S slope = alibi ? S(alibi_slope(heads, h)) : S(0);
      S row_max[kMaxQueryRows], row_sum[kMaxQueryRows];  // m and l of the block's queries
      for (Index r0 = 0; r0 < T; r0 += query_block) {
        const Index rows = std::min(query_block, T - r0);
        // The block reads keys [first, seen): those its queries may see.
        const Index seen = causal ? past + r0 + rows : keys;
        const Index first = window > 0 ? std::max<Index>(0, past + r0 - window + 1) : 0;
        const Index key_block =
            one_block ? keys : detail::even_block(seen - first, kQueryBlock * kKeyBlock / rows);
        const ConstBlock Q(qb + r0 * q_stride, rows, hd, Eigen::OuterStride<>(q_stride));
        Block C(cb + r0 * ctx_stride, rows, hd, Eigen::OuterStride<>(ctx_stride));
        std::fill(row_max, row_max + rows, -std::numeric_limits<S>::infinity());
        std::fill(row_sum, row_sum + rows, S(0));
        for (Index c0 = first; c0 < seen; c0 += key_block) {
          const Index n = std::min(key_block, seen - c0);
          const ConstBlock K(kb + c0 * kv_stride, n, hd, Eigen::OuterStride<>(kv_stride));
          const ConstBlock V(vb + c0 * kv_stride, n, hd, Eigen::OuterStride<>(kv_stride));
          Eigen::Map<RowMatrix<S>> P(scores, rows, n);  // [rows x n]
          P.noalias() = scale * (Q * K.transpose());
          for (Index r = 0; r < rows; ++r) {
            // Query at position p sees the block's columns [lo, hi): keys [c0 + lo, c0 + hi).
            const Index p = past + r0 + r;
            const Index hi = causal ? std::min(n, p + 1 - c0) : n;
            const Index lo = window > 0 ? std::clamp<Index>(p - window + 1 - c0, 0, n) : 0;
            S* row = &P.coeffRef(r, 0);
            if (alibi)
              for (Index c = lo; c < hi; ++c) row[c] += slope * S(c0 + c - p);
            const S rescale = detail::online_softmax_step(row, n, lo, hi, row_max[r], row_sum[r]);
            if (c0 != first && rescale != S(1)) C.row(r) *= rescale;
          }
          if (c0 == first) C.noalias() = P * V;  // a row that sees nothing here gets 0
          else C.noalias() += P * V;
        }
        for (Index r = 0; r < rows; ++r)
          if (row_sum[r] > 0) C.row(r) *= S(1) / row_sum[r];
      }
    };
    detail::for_each_task(tasks, flops, task);
  }
};

}  // namespace prenorm
