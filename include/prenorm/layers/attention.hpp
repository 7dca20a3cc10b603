#pragma once
// Multi-head self-attention with a fused QKV projection (GPT-2's c_attn):
//   [q | k | v] = x Wqkv^T + bqkv,   each of heads*head_dim columns, head h at h*head_dim;
//   context_h  = softmax(q_h k_h^T / sqrt(head_dim), causal mask) v_h;
//   y          = [context_1 ... context_H] Wout^T + bout.
//
// Per (sequence, head) the two products are Eigen GEMMs on strided blocks of
// the row-major QKV buffer (no transposed copies). A causal pass walks the
// queries in chunks, and each chunk reads only the keys it may see, which
// halves the work of a long prompt.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <string>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/softmax.hpp"
#include "linear.hpp"

namespace prenorm {

// Buffers of one attention forward, reused between calls (no allocation once
// they have grown to the largest shape seen).
template <class S>
struct AttentionWorkspace {
  RowMatrix<S> qkv;      // [tokens x 3*heads*head_dim]
  RowMatrix<S> context;  // [tokens x heads*head_dim]
  Vector<S> scores;      // grow-only: one [queries x keys] block per thread
};

template <class S>
class MultiHeadAttention {
 public:
  using Scalar = S;

  Linear<S> qkv;  // (3*heads*head_dim, width): output rows [q heads..., k heads..., v heads...]
  Linear<S> out;  // (width, heads*head_dim)
  Index heads = 0;
  Index head_dim = 0;
  bool causal = false;

  MultiHeadAttention() = default;
  // Zero weights with biases. width: the main-branch width the layer reads and writes.
  MultiHeadAttention(Index width, Index heads_, Index head_dim_, bool causal_, bool bias = true)
      : qkv(width, 3 * heads_ * head_dim_, bias),
        out(heads_ * head_dim_, width, bias),
        heads(heads_),
        head_dim(head_dim_),
        causal(causal_) {}

  Index inner() const { return heads * head_dim; }  // heads*head_dim
  Index width() const { return qkv.in_features(); }

  // y [batch*T x width] = Attn(x [batch*T x width]); sequence b is rows [b*T, (b+1)*T).
  // A wider y gets the output in its first width columns and zeros in the
  // rest, and lets the output projection run padded (Linear::forward_padded).
  void forward(const ConstRowsRef<S>& x, Index batch, RowsRef<S> y, AttentionWorkspace<S>& ws) const {
    const Index tokens = check_forward("MultiHeadAttention::forward", x, batch, y);
    if (tokens == 0) return;
    const Index T = tokens / batch, I = inner();
    ws.qkv.resize(tokens, 3 * I);
    qkv.forward_padded(x, ws.qkv);
    ws.context.resize(tokens, I);
    const S* q = ws.qkv.data();
    attend(q, 3 * I, q + I, q + 2 * I, 3 * I, T, batch, T, 0, T, ws);
    out.forward_padded(ws.context, y);
  }
  // The same with buffers of its own (allocates; for tests and one-off calls).
  void forward(const ConstRowsRef<S>& x, Index batch, RowsRef<S> y) const {
    AttentionWorkspace<S> ws;
    forward(x, batch, y, ws);
  }

  // Incremental decoding. x [batch*T x width] holds T new tokens per sequence,
  // at positions [past, past+T). keys, values [batch*capacity x heads*head_dim]
  // hold position p of sequence b in row b*capacity + p: the new rows are
  // written, then the queries attend to positions [0, past+T). y: as in forward.
  void forward_cached(const ConstRowsRef<S>& x, Index batch, Index past, RowMatrix<S>& keys,
                      RowMatrix<S>& values, RowsRef<S> y, AttentionWorkspace<S>& ws) const {
    constexpr const char* op = "MultiHeadAttention::forward_cached";
    const Index tokens = check_forward(op, x, batch, y);
    if (tokens == 0) return;
    const Index T = tokens / batch, I = inner();
    if (keys.cols() != I || values.cols() != I || keys.rows() != values.rows() ||
        keys.rows() % batch != 0)
      detail::fail(op, "keys (", keys.rows(), " x ", keys.cols(), ") and values (", values.rows(),
                   " x ", values.cols(), ") must both be (batch*capacity x ", I, ") with batch ", batch);
    const Index capacity = keys.rows() / batch;
    if (past < 0 || past + T > capacity)
      detail::fail(op, "positions [", past, ", ", past + T, ") do not fit the cache capacity ", capacity);
    ws.qkv.resize(tokens, 3 * I);
    qkv.forward_padded(x, ws.qkv);
    for (Index b = 0; b < batch; ++b) {
      keys.middleRows(b * capacity + past, T) = ws.qkv.block(b * T, I, T, I);
      values.middleRows(b * capacity + past, T) = ws.qkv.block(b * T, 2 * I, T, I);
    }
    ws.context.resize(tokens, I);
    attend(ws.qkv.data(), 3 * I, keys.data(), values.data(), I, capacity, batch, T, past, capacity, ws);
    out.forward_padded(ws.context, y);
  }

  // Throws unless qkv is (3*heads*head_dim, width) and out is (width, heads*head_dim).
  // name: a string or a callable returning one.
  template <class Name>
  void validate(const char* op, const Name& name, Index width) const {
    if (heads <= 0 || head_dim <= 0)
      detail::fail(op, detail::tensor_name(name), " has heads ", heads, " and head_dim ", head_dim,
                   ", expected both > 0");
    qkv.validate(op, detail::sub_name(name, ".qkv"), width, 3 * inner());
    out.validate(op, detail::sub_name(name, ".out"), inner(), width);
  }

 private:
  // Returns the number of tokens, after checking x [batch*T x width] and y.
  Index check_forward(const char* op, const ConstRowsRef<S>& x, Index batch,
                      const RowsRef<S>& y) const {
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

  // ws.context [batch*T x heads*head_dim] = attention of the queries (row b*T+t
  // of q, stride q_stride) over keys/values k, v (row b*kv_rows+p, stride kv_stride)
  // at positions [0, past+T). Head h is columns [h*head_dim, (h+1)*head_dim).
  // max_keys (>= past+T) sizes the scores buffer: the cache capacity when
  // decoding, so that it does not grow with every step.
  void attend(const S* q, Index q_stride, const S* k, const S* v, Index kv_stride, Index kv_rows,
              Index batch, Index T, Index past, Index max_keys, AttentionWorkspace<S>& ws) const {
    using ConstBlock = Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>>;
    using Block = Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>>;
    const Index hd = head_dim, keys = past + T, tasks = batch * heads;
    const Index ctx_stride = ws.context.cols();
    const S scale = S(1) / std::sqrt(S(hd));
    // Causal queries go in chunks so that each reads only the keys it may see.
    const Index chunk = causal ? std::min<Index>(T, 64) : T;

    // One scores block per thread slot; the flop count decides whether threads pay off.
    const double flops = 4.0 * double(tasks) * double(T) * double(keys) * double(hd);
    const Index slots = detail::thread_slots();
    const Index slot_size = detail::aligned_slot_size<S>(chunk * std::max(keys, max_keys));
    if (ws.scores.size() < slots * slot_size) ws.scores.resize(slots * slot_size);
    S* scores = ws.scores.data();

    auto task = [&](Index i, Index slot) {
      const Index b = i / heads, h = i % heads;
      const S* qb = q + b * T * q_stride + h * hd;
      const S* kb = k + b * kv_rows * kv_stride + h * hd;
      const S* vb = v + b * kv_rows * kv_stride + h * hd;
      S* cb = ws.context.data() + b * T * ctx_stride + h * hd;
      for (Index r0 = 0; r0 < T; r0 += chunk) {
        const Index rows = std::min(chunk, T - r0);
        const Index seen = causal ? past + r0 + rows : keys;  // keys the chunk may see
        const ConstBlock Q(qb + r0 * q_stride, rows, hd, Eigen::OuterStride<>(q_stride));
        const ConstBlock K(kb, seen, hd, Eigen::OuterStride<>(kv_stride));
        const ConstBlock V(vb, seen, hd, Eigen::OuterStride<>(kv_stride));
        Eigen::Map<RowMatrix<S>> P(scores + slot * slot_size, rows, seen);
        P.noalias() = scale * (Q * K.transpose());
        for (Index r = 0; r < rows; ++r)
          detail::softmax_row_inplace(&P.coeffRef(r, 0), seen, causal ? past + r0 + r + 1 : seen);
        Block C(cb + r0 * ctx_stride, rows, hd, Eigen::OuterStride<>(ctx_stride));
        C.noalias() = P * V;
      }
    };
    detail::for_each_task(tasks, flops, task);
  }
};

}  // namespace prenorm
