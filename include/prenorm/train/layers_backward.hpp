#pragma once
// Backward passes of the layers, and the forwards that save what they need
// (llm.c style: one function per operation and direction, the shapes in a
// comment at the top of each).
//
//   linear_backward          y = x W^T + b
//   embedding_backward       y = table[ids]
//   gelu_tanh_backward, gelu_erf_backward, relu_backward, quick_gelu_backward,
//   activation_backward
//   attention_forward_train / attention_backward   (causal mask included)
//   mlp_forward_train / mlp_backward
//
// Parameter gradients are written (GradWrite::Overwrite, the default: each
// parameter is used once per step, so nothing needs zeroing first) or added to
// (GradWrite::Accumulate: a tied table read twice). Every reduction over rows
// is done in row order by one thread per column range, so the results do not
// depend on the thread count.

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>  // Array::erf

#include <algorithm>
#include <cmath>
#include <span>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../layers/attention.hpp"
#include "../layers/embedding.hpp"
#include "../layers/linear.hpp"
#include "../layers/mlp.hpp"
#include "../ops/activation.hpp"
#include "../ops/norm_types.hpp"
#include "../ops/softmax.hpp"

namespace prenorm {
namespace detail {

inline constexpr Index kColumnChunk = 256;

// column_fn(begin, end) for column ranges [begin, end) of `cols`, in parallel
// when rows * cols is large. Each range is handled by one thread.
template <class Fn>
void for_each_column_chunk(Index rows, Index cols, Fn&& column_fn) {
  const Index chunks = (cols + kColumnChunk - 1) / kColumnChunk;
  for_each_row(chunks, rows * kColumnChunk,
               [&](Index c) { column_fn(c * kColumnChunk, std::min(cols, (c + 1) * kColumnChunk)); });
}

// out (n) (=, or +=) the column sums of m [rows x n], each column in row order.
template <class S>
void column_sums(const ConstRowsRef<S>& m, Vector<S>& out, GradWrite write) {
  const Index rows = m.rows(), n = m.cols();
  for_each_column_chunk(rows, n, [&](Index begin, Index end) {
    auto o = out.segment(begin, end - begin);
    if (write == GradWrite::Overwrite) o.setZero();
    for (Index r = 0; r < rows; ++r) o += m.row(r).segment(begin, end - begin).transpose();
  });
}

inline void check_rows_cols(const char* op, const char* name, Index rows, Index cols,
                            Index expected_rows, Index expected_cols, const char* why) {
  if (rows != expected_rows || cols != expected_cols)
    fail(op, name, " is ", rows, " x ", cols, ", expected ", expected_rows, " x ", expected_cols,
         " (", why, ")");
}

template <class S>
void check_linear_grad(const char* op, const Linear<S>& layer, const Linear<S>& grad) {
  check_rows_cols(op, "grad.weight", grad.weight.rows(), grad.weight.cols(), layer.weight.rows(),
                  layer.weight.cols(), "the shape of weight");
  if (grad.bias.size() != layer.bias.size())
    fail(op, "grad.bias has ", grad.bias.size(), " elements, expected ", layer.bias.size(),
         " (the size of bias)");
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

// Parameter part of the backward of y [N x out] = x [N x in] W^T + b, W (out, in):
//   grad.weight (out, in) = dy^T x,   grad.bias (out) = sum over rows of dy
// (written, or added to with GradWrite::Accumulate). No bias: grad.bias stays empty.
template <class S>
void linear_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, const Linear<S>& layer,
                     Linear<S>& grad, GradWrite param_write = GradWrite::Overwrite) {
  constexpr const char* op = "linear_backward";
  detail::check_linear_grad(op, layer, grad);
  detail::check_rows_cols(op, "dy", dy.rows(), dy.cols(), x.rows(), layer.out_features(),
                          "rows of x x output features");
  detail::check_rows_cols(op, "x", x.rows(), x.cols(), dy.rows(), layer.in_features(),
                          "rows of dy x input features");
  if (param_write == GradWrite::Overwrite) {
    if (x.rows() == 0) grad.weight.setZero();
    else grad.weight.noalias() = dy.transpose() * x;
  } else if (x.rows() != 0) {
    grad.weight.noalias() += dy.transpose() * x;
  }
  if (layer.has_bias()) detail::column_sums(dy, grad.bias, param_write);
}

// Full backward of y = x W^T + b: the parameter part above, and
//   dx [N x in] = dy W   (written, or added to with dx_write = Accumulate).
template <class S>
void linear_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, const Linear<S>& layer,
                     Linear<S>& grad, RowsRef<S> dx, GradWrite param_write = GradWrite::Overwrite,
                     GradWrite dx_write = GradWrite::Overwrite) {
  linear_backward(dy, x, layer, grad, param_write);
  detail::check_rows_cols("linear_backward", "dx", dx.rows(), dx.cols(), x.rows(), x.cols(),
                          "the shape of x");
  if (x.rows() == 0) return;
  if (dx_write == GradWrite::Overwrite) dx.noalias() = dy * layer.weight;
  else dx.noalias() += dy * layer.weight;
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

// Backward of y [ids x width] = table[ids]: dtable (rows, width) row ids[i] += dy row i.
// Always accumulates (rows repeat). Ids are checked.
template <class S>
void embedding_backward(const ConstRowsRef<S>& dy, std::span<const int> ids, RowMatrix<S>& dtable) {
  constexpr const char* op = "embedding_backward";
  detail::check_rows_cols(op, "dy", dy.rows(), dy.cols(), Index(ids.size()), dtable.cols(),
                          "ids x the width of dtable");
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= dtable.rows())
      detail::fail(op, "id ", ids[i], " at index ", i, " is out of range [0, ", dtable.rows(), ")");
  detail::for_each_column_chunk(dy.rows(), dy.cols(), [&](Index begin, Index end) {
    for (Index r = 0; r < dy.rows(); ++r)
      dtable.row(ids[r]).segment(begin, end - begin) += dy.row(r).segment(begin, end - begin);
  });
}

// ---------------------------------------------------------------------------
// GELU
// ---------------------------------------------------------------------------

namespace detail {

// dx = dy * f'(x) for an elementwise activation f, row by row (rows in
// parallel), in chunks of at most 64 on the stack: vectorized, and no heap
// temporaries. chunk(xs, dys, out) writes out = dys * f'(xs) for one chunk
// (Eigen arrays of len <= 64). dy, x, dx: [rows x n]; dx may be dy.
template <class S, class Chunk>
void activation_backward_chunks(const char* op, const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                                RowsRef<S> dx, Chunk chunk) {
  check_rows_cols(op, "dy", dy.rows(), dy.cols(), x.rows(), x.cols(), "the shape of x");
  check_rows_cols(op, "dx", dx.rows(), dx.cols(), x.rows(), x.cols(), "the shape of x");
  const Index n = x.cols();
  for_each_row(x.rows(), n, [&](Index r) {
    using Map = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;
    for (Index i = 0; i < n; i += 64) {
      const Index len = std::min<Index>(64, n - i);
      const Map xs(x.row(r).data() + i, len), dys(dy.row(r).data() + i, len);
      Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> out(dx.row(r).data() + i, len);
      chunk(xs, dys, out);
    }
  });
}

// A chunk's temporaries, at most 64 long, on the stack.
template <class S>
using ActivationChunk = Eigen::Array<S, Eigen::Dynamic, 1, Eigen::ColMajor, 64, 1>;

}  // namespace detail

// Backward of y = GELU_tanh(x) elementwise: dx = dy * GELU_tanh'(x), with
// u = k0 (x + k1 x^3), t = tanh(u):  GELU' = 0.5 (1 + t) + 0.5 x (1 - t^2) k0 (1 + 3 k1 x^2).
// 1 + t and 1 - t^2 cancel in float where t is near -1 (x near -5: 3.5e-6
// absolute error), so both come from p = exp(-2|u|) in (0, 1] instead:
//   1 + t = 2/(1 + p) (u >= 0) or 2p/(1 + p) (u < 0),   1 - t^2 = 4p/(1 + p)^2.
// dy, x, dx: [rows x n]; dx may be dy (in place).
template <class S>
void gelu_tanh_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx,
                        double k0_value = detail::kGeluTanhK0) {  // BLOOM: kGeluTanhBloomK0
  const S k0 = S(k0_value), k1 = S(0.044715);
  detail::activation_backward_chunks<S>("gelu_tanh_backward", dy, x, dx,
                                        [&](const auto& xs, const auto& dys, auto& out) {
    using Chunk = detail::ActivationChunk<S>;
    const Chunk x2 = xs.square();
    const Chunk u = k0 * (xs + k1 * xs * x2);
    const Chunk p = (S(-2) * u.abs()).exp();
    const Chunk q = S(1) / (S(1) + p);
    const Chunk half_one_plus_t = (u >= S(0)).select(q, p * q);  // 0.5 (1 + t)
    out = dys * (half_one_plus_t + S(2) * xs * p * q.square() * k0 * (S(1) + S(3) * k1 * x2));
  });
}

// Backward of y = GELU_erf(x) = 0.5 x (1 + erf(x / sqrt 2)) elementwise:
// GELU' = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi). dx may be dy.
template <class S>
void gelu_erf_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
  const S k = S(0.7071067811865476), c = S(0.3989422804014327);  // 1/sqrt(2), 1/sqrt(2 pi)
  // erf and exp vectorized (float).
  detail::activation_backward_chunks<S>("gelu_erf_backward", dy, x, dx,
                                        [&](const auto& xs, const auto& dys, auto& out) {
    out = dys * (S(0.5) * (S(1) + (k * xs).erf()) + c * xs * (S(-0.5) * xs.square()).exp());
  });
}

// Backward of y = max(x, 0) elementwise: dx = dy where x > 0, else 0 (the
// derivative at 0 taken as 0, as PyTorch). dx may be dy.
template <class S>
void relu_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
  detail::activation_backward_chunks<S>("relu_backward", dy, x, dx,
                                        [](const auto& xs, const auto& dys, auto& out) {
    out = (xs > S(0)).select(dys, S(0));
  });
}

// Backward of y = x sigmoid(k x), k = 1.702, elementwise:
// y' = s + k x s (1 - s) with s = sigmoid(k x), computed as in
// quick_gelu_inplace (exp, vectorized for float). dx may be dy.
template <class S>
void quick_gelu_backward(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
  const S k = S(1.702);
  detail::activation_backward_chunks<S>("quick_gelu_backward", dy, x, dx,
                                        [&](const auto& xs, const auto& dys, auto& out) {
    const detail::ActivationChunk<S> s = (S(1) + (-k * xs).exp()).inverse();
    out = dys * (s + k * xs * s * (S(1) - s));
  });
}

// dx = dy * activation'(x). dy, x, dx: [rows x n]; dx may be dy.
template <class S>
void activation_backward(Activation activation, const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                         RowsRef<S> dx) {
  switch (activation) {
    case Activation::GeluTanh: return gelu_tanh_backward<S>(dy, x, dx);
    case Activation::GeluErf: return gelu_erf_backward<S>(dy, x, dx);
    case Activation::Relu: return relu_backward<S>(dy, x, dx);
    case Activation::QuickGelu: return quick_gelu_backward<S>(dy, x, dx);
    case Activation::GeluTanhBloom: return gelu_tanh_backward<S>(dy, x, dx, detail::kGeluTanhBloomK0);
  }
  detail::fail("activation_backward", "unknown activation ", int(activation));
}

// ---------------------------------------------------------------------------
// Softmax (one row)
// ---------------------------------------------------------------------------

// Backward of p = softmax(s) over the first `limit` entries of a row (p = 0 after):
//   ds_j = scale * p_j (dp_j - sum_k dp_k p_k)  for j < limit,  0 for j in [limit, n).
// dp, p, ds: [n]; ds may be dp.
template <class S>
void softmax_backward_row(const S* dp, const S* p, S* ds, Index n, Index limit, S scale = S(1)) {
  limit = std::clamp<Index>(limit, 0, n);
  using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
  const Eigen::Map<const Arr> dps(dp, limit), ps(p, limit);
  const S dot = (dps * ps).sum();
  Eigen::Map<Arr>(ds, limit) = scale * ps * (dps - dot);
  std::fill(ds + limit, ds + n, S(0));
}

// ---------------------------------------------------------------------------
// Multi-head attention
// ---------------------------------------------------------------------------

// What attention_forward_train saves for attention_backward.
template <class S>
struct AttentionActivations {
  RowMatrix<S> qkv;      // [N x 3*heads*head_dim]: the QKV projection of x
  RowMatrix<S> probs;    // [batch*heads*T x T]: softmax rows of (sequence b, head h) at rows (b*heads+h)*T
  RowMatrix<S> context;  // [N x heads*head_dim]: the input of the output projection
};

// Scratch of attention_backward, reused between calls.
template <class S>
struct AttentionBackwardWorkspace {
  RowMatrix<S> dcontext;  // [N x heads*head_dim]
  RowMatrix<S> dqkv;      // [N x 3*heads*head_dim]
  Vector<S> scratch;      // grow-only: one [chunk x T] block per thread
};

namespace detail {

template <class S>
using StridedMap = Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>>;
template <class S>
using ConstStridedMap = Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>>;

// Causal queries go in chunks so that each reads only the keys it may see.
inline Index attention_chunk(bool causal, Index T) { return causal ? std::min<Index>(T, 64) : T; }

// Training supports GPT-2's attention only: the options of MultiHeadAttention
// are refused by name rather than differentiated wrongly.
template <class S>
void check_plain_attention(const char* op, const MultiHeadAttention<S>& attn) {
  const char* later = " is not supported in training yet";
  if (attn.kv_head_count() != attn.heads)
    fail(op, "grouped-query attention (kv_heads = ", attn.kv_heads, " for ", attn.heads,
         " heads)", later);
  if (attn.rotary.dims != 0)
    fail(op, "rotary embedding (rotary.dims = ", attn.rotary.dims, ")", later);
  if (attn.alibi) fail(op, "ALiBi (alibi = true)", later);
  if (attn.window != 0) fail(op, "local attention (window = ", attn.window, ")", later);
  if (attn.score_scale != 0)
    fail(op, "a score scale other than 1/sqrt(head_dim) (score_scale = ", attn.score_scale, ")",
         later);
}

template <class S>
Index check_attention(const char* op, const MultiHeadAttention<S>& attn, Index rows, Index cols,
                      Index batch) {
  check_plain_attention(op, attn);
  if (cols != attn.width())
    fail(op, "x has ", cols, " columns, expected ", attn.width(), " (the width of qkv)");
  if (rows != 0 && (batch <= 0 || rows % batch != 0))
    fail(op, "x has ", rows, " rows, not a multiple of the batch ", batch);
  return rows == 0 ? 0 : rows / batch;
}

}  // namespace detail

// y [N x width] = Attn(x [N x width]), N = batch*T, saving qkv, the attention
// probabilities and the context in acts. The same arithmetic as
// MultiHeadAttention::forward, with the causal mask; the attention options
// (kv_heads, rotary, alibi, window, score_scale) throw, as in attention_backward.
template <class S>
void attention_forward_train(const MultiHeadAttention<S>& attn, const ConstRowsRef<S>& x, Index batch,
                             RowsRef<S> y, AttentionActivations<S>& acts) {
  constexpr const char* op = "attention_forward_train";
  const Index T = detail::check_attention(op, attn, x.rows(), x.cols(), batch);
  detail::check_rows_cols(op, "y", y.rows(), y.cols(), x.rows(), attn.out.out_features(),
                          "tokens x width");
  const Index N = x.rows(), I = attn.inner(), H = attn.heads, hd = attn.head_dim;
  acts.qkv.resize(N, 3 * I);
  acts.context.resize(N, I);
  acts.probs.resize(N == 0 ? 0 : batch * H * T, T);
  if (N == 0) return;
  attn.qkv.forward(x, acts.qkv);
  const S scale = S(1) / std::sqrt(S(hd));
  const Index chunk = detail::attention_chunk(attn.causal, T);
  const double flops = 4.0 * double(batch * H) * double(T) * double(T) * double(hd);
  detail::for_each_task(batch * H, flops, [&](Index i, Index) {
    const Index b = i / H, h = i % H;
    const S* base = acts.qkv.data() + b * T * 3 * I + h * hd;
    const detail::ConstStridedMap<S> Q(base, T, hd, Eigen::OuterStride<>(3 * I));
    const detail::ConstStridedMap<S> K(base + I, T, hd, Eigen::OuterStride<>(3 * I));
    const detail::ConstStridedMap<S> V(base + 2 * I, T, hd, Eigen::OuterStride<>(3 * I));
    detail::StridedMap<S> C(acts.context.data() + b * T * I + h * hd, T, hd, Eigen::OuterStride<>(I));
    auto P = acts.probs.middleRows(i * T, T);
    for (Index r0 = 0; r0 < T; r0 += chunk) {
      const Index rows = std::min(chunk, T - r0);
      const Index seen = attn.causal ? r0 + rows : T;
      P.block(r0, 0, rows, seen).noalias() =
          scale * (Q.middleRows(r0, rows) * K.topRows(seen).transpose());
      for (Index r = 0; r < rows; ++r)
        detail::softmax_row_inplace(&P.coeffRef(r0 + r, 0), T, attn.causal ? r0 + r + 1 : T);
      C.middleRows(r0, rows).noalias() = P.block(r0, 0, rows, seen) * V.topRows(seen);
    }
  });
  attn.out.forward(acts.context, y);
}

// The gradients of one linear layer inside a larger backward: called with
// (dy, x, dx), it writes the layer's parameter gradients and dx = dy W.
// attention_backward_with and mlp_backward_with take one per linear, so that
// training through the converter can put theta's gradients there directly.
template <class S>
struct LinearGrad {
  const Linear<S>& layer;
  Linear<S>& grad;
  GradWrite param_write = GradWrite::Overwrite;

  void operator()(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) const {
    linear_backward<S>(dy, x, layer, grad, dx, param_write);
  }
};

// Backward of y = Attn(x) with the two linears' gradients delegated:
//   out_grad(dy, context, dcontext), then the attention core, then
//   qkv_grad(dqkv, x, dx). dy [N x width]; x and acts from the forward;
//   dx [N x width] is written (by qkv_grad).
//   per (sequence, head): dP = dC V^T, dV = P^T dC, dS = softmax'(dP) / sqrt(hd),
//                         dQ = dS K, dK = dS^T Q.
template <class S, class OutGrad, class QkvGrad>
void attention_backward_with(const MultiHeadAttention<S>& attn, const ConstRowsRef<S>& dy,
                             const ConstRowsRef<S>& x, Index batch,
                             const AttentionActivations<S>& acts, RowsRef<S> dx,
                             AttentionBackwardWorkspace<S>& ws, OutGrad&& out_grad,
                             QkvGrad&& qkv_grad) {
  constexpr const char* op = "attention_backward";
  const Index T = detail::check_attention(op, attn, x.rows(), x.cols(), batch);
  const Index N = x.rows(), I = attn.inner(), H = attn.heads, hd = attn.head_dim;
  detail::check_rows_cols(op, "acts.qkv", acts.qkv.rows(), acts.qkv.cols(), N, 3 * I,
                          "saved by the forward of x");
  detail::check_rows_cols(op, "acts.context", acts.context.rows(), acts.context.cols(), N, I,
                          "saved by the forward of x");
  detail::check_rows_cols(op, "dy", dy.rows(), dy.cols(), N, attn.out.out_features(),
                          "tokens x width");
  ws.dcontext.resize(N, I);
  ws.dqkv.resize(N, 3 * I);
  out_grad(dy, acts.context, ws.dcontext);
  if (N != 0) {
    const S scale = S(1) / std::sqrt(S(hd));
    const Index chunk = detail::attention_chunk(attn.causal, T);
    const Index slot = detail::aligned_slot_size<S>(chunk * T);
    const Index slots = detail::thread_slots();
    if (ws.scratch.size() < slots * slot) ws.scratch.resize(slots * slot);
    const double flops = 8.0 * double(batch * H) * double(T) * double(T) * double(hd);
    detail::for_each_task(batch * H, flops, [&](Index i, Index thread) {
      const Index b = i / H, h = i % H;
      const Index off = b * T * 3 * I + h * hd;
      const detail::ConstStridedMap<S> Q(acts.qkv.data() + off, T, hd, Eigen::OuterStride<>(3 * I));
      const detail::ConstStridedMap<S> K(acts.qkv.data() + off + I, T, hd, Eigen::OuterStride<>(3 * I));
      const detail::ConstStridedMap<S> V(acts.qkv.data() + off + 2 * I, T, hd,
                                         Eigen::OuterStride<>(3 * I));
      detail::StridedMap<S> dQ(ws.dqkv.data() + off, T, hd, Eigen::OuterStride<>(3 * I));
      detail::StridedMap<S> dK(ws.dqkv.data() + off + I, T, hd, Eigen::OuterStride<>(3 * I));
      detail::StridedMap<S> dV(ws.dqkv.data() + off + 2 * I, T, hd, Eigen::OuterStride<>(3 * I));
      const detail::ConstStridedMap<S> dC(ws.dcontext.data() + b * T * I + h * hd, T, hd,
                                          Eigen::OuterStride<>(I));
      const S* P = acts.probs.data() + i * T * T;  // [T x T]
      dK.setZero();
      dV.setZero();
      for (Index r0 = 0; r0 < T; r0 += chunk) {
        const Index rows = std::min(chunk, T - r0);
        const Index seen = attn.causal ? r0 + rows : T;
        Eigen::Map<RowMatrix<S>> dS(ws.scratch.data() + thread * slot, rows, seen);
        const detail::ConstStridedMap<S> Pc(P + r0 * T, rows, seen, Eigen::OuterStride<>(T));
        dS.noalias() = dC.middleRows(r0, rows) * V.topRows(seen).transpose();  // dP
        dV.topRows(seen).noalias() += Pc.transpose() * dC.middleRows(r0, rows);
        for (Index r = 0; r < rows; ++r)
          softmax_backward_row(&dS.coeffRef(r, 0), P + (r0 + r) * T, &dS.coeffRef(r, 0), seen,
                               attn.causal ? r0 + r + 1 : T, scale);
        dQ.middleRows(r0, rows).noalias() = dS * K.topRows(seen);
        dK.topRows(seen).noalias() += dS.transpose() * Q.middleRows(r0, rows);
      }
    });
  }
  qkv_grad(ws.dqkv, x, dx);
}

// Backward of y = Attn(x). dy [N x width]; x and acts from the forward;
// grad.qkv, grad.out written (or added to, param_write); dx [N x width]
// written (or added to, dx_write).
template <class S>
void attention_backward(const MultiHeadAttention<S>& attn, const ConstRowsRef<S>& dy,
                        const ConstRowsRef<S>& x, Index batch, const AttentionActivations<S>& acts,
                        MultiHeadAttention<S>& grad, RowsRef<S> dx,
                        AttentionBackwardWorkspace<S>& ws,
                        GradWrite param_write = GradWrite::Overwrite,
                        GradWrite dx_write = GradWrite::Overwrite) {
  attention_backward_with<S>(
      attn, dy, x, batch, acts, dx, ws, LinearGrad<S>{attn.out, grad.out, param_write},
      [&](const ConstRowsRef<S>& dqkv, const ConstRowsRef<S>& xin, RowsRef<S> dxout) {
        linear_backward<S>(dqkv, xin, attn.qkv, grad.qkv, dxout, param_write, dx_write);
      });
}

// ---------------------------------------------------------------------------
// MLP
// ---------------------------------------------------------------------------

// What mlp_forward_train saves for mlp_backward.
template <class S>
struct MlpActivations {
  RowMatrix<S> pre;  // [N x inner]: fc(x), before the activation
  RowMatrix<S> act;  // [N x inner]: activation(pre), the input of proj
};

// y [N x width] = proj(act(fc(x))), x [N x width]; saves pre and act.
template <class S>
void mlp_forward_train(const Mlp<S>& mlp, const ConstRowsRef<S>& x, RowsRef<S> y,
                       MlpActivations<S>& acts) {
  constexpr const char* op = "mlp_forward_train";
  if (x.cols() != mlp.width())
    detail::fail(op, "x has ", x.cols(), " columns, expected ", mlp.width(), " (the width of fc)");
  detail::check_rows_cols(op, "y", y.rows(), y.cols(), x.rows(), mlp.proj.out_features(),
                          "tokens x width");
  acts.pre.resize(x.rows(), mlp.inner());
  acts.act.resize(x.rows(), mlp.inner());
  if (x.rows() == 0) return;
  mlp.fc.forward(x, acts.pre);
  activation_forward(mlp.activation, acts.pre, acts.act);
  mlp.proj.forward(acts.act, y);
}

// Backward of y = Mlp(x) with the two linears' gradients delegated:
// proj_grad(dy, act, dhidden), the activation's backward, fc_grad(dhidden, x, dx).
// dhidden: scratch [N x inner]; dx [N x width] is written (by fc_grad).
template <class S, class ProjGrad, class FcGrad>
void mlp_backward_with(const Mlp<S>& mlp, const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                       const MlpActivations<S>& acts, RowsRef<S> dx, RowMatrix<S>& dhidden,
                       ProjGrad&& proj_grad, FcGrad&& fc_grad) {
  constexpr const char* op = "mlp_backward";
  detail::check_rows_cols(op, "acts.pre", acts.pre.rows(), acts.pre.cols(), x.rows(), mlp.inner(),
                          "saved by the forward of x");
  dhidden.resize(x.rows(), mlp.inner());
  proj_grad(dy, acts.act, dhidden);
  activation_backward<S>(mlp.activation, dhidden, acts.pre, dhidden);
  fc_grad(dhidden, x, dx);
}

// Backward of y = Mlp(x). dy [N x width]; grad.fc, grad.proj written (or
// added to); dx [N x width] written (or added to, dx_write). dhidden: scratch.
template <class S>
void mlp_backward(const Mlp<S>& mlp, const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                  const MlpActivations<S>& acts, Mlp<S>& grad, RowsRef<S> dx,
                  RowMatrix<S>& dhidden, GradWrite param_write = GradWrite::Overwrite,
                  GradWrite dx_write = GradWrite::Overwrite) {
  mlp_backward_with<S>(
      mlp, dy, x, acts, dx, dhidden, LinearGrad<S>{mlp.proj, grad.proj, param_write},
      [&](const ConstRowsRef<S>& dh, const ConstRowsRef<S>& xin, RowsRef<S> dxout) {
        linear_backward<S>(dh, xin, mlp.fc, grad.fc, dxout, param_write, dx_write);
      });
}

}  // namespace prenorm
