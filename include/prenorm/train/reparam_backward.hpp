#pragma once
// The converter's adjoint applied inside the backward pass ("fused" training
// through the converter).
//
// The gradient of a linear layer of phi is a sum of outer products,
// dL/dW'' = dy^T x, and the conversion acts on one axis of W. So its adjoint
// J^T can be applied to the factors, at O(tokens x d) cost, and the GEMM that
// would have produced dL/dphi produces dL/dtheta instead:
//
//   reader  (qkv, mlp fc, head; W'' = C(W diag(gamma)), b' = b + W beta)
//           xd = decompress(x) (x itself without compression),  u = xd * gamma + beta
//           dW = dy^T u,  db = sum_t dy,  g = dy W
//           dgamma = sum_t xd * g,  dbeta = sum_t g,  dx = C(g * gamma)
//   writer  (attention out, mlp proj, ViT patch; W'' = K(W - 1 mean(W)))
//           dyc = each row of pad(dy) minus its mean
//           dW = dyc^T x,  db = sum_t dyc,  dx = dy W''  (phi's weight)
//   table   (token, position, cls rows)  rows of dyc added to the looked-up rows
//
// These are the same maps as convert_adjoint (model_adjoint.hpp) applies to
// a materialized dL/dphi; the tests hold the two against each other.

#include <Eigen/Core>

#include <span>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/main_branch.hpp"
#include "block_backward.hpp"
#include "layers_backward.hpp"

namespace prenorm {

namespace detail {

// A grow-only buffer viewed as a [rows x cols] matrix: the shapes of one step
// (the head reads fewer rows than the blocks in a ViT) never reallocate.
template <class S>
class GrowBuffer {
 public:
  Eigen::Map<RowMatrix<S>> view(Index rows, Index cols) {
    if (storage_.size() < rows * cols) storage_.resize(rows * cols);
    return {storage_.data(), rows, cols};
  }

 private:
  Vector<S> storage_;
};

}  // namespace detail

// Scratch of the fused adjoint, and the time it takes (its O(tokens x d) parts).
template <class S>
struct ReparamWorkspace {
  detail::GrowBuffer<S> xd;   // [N x d]: decompressed normalized input (Pre-CRMSNorm)
  detail::GrowBuffer<S> u;    // [N x d]: xd * gamma + beta, the Pre-LN norm output
  detail::GrowBuffer<S> g;    // [N x d]: dy W
  detail::GrowBuffer<S> dyc;  // [N x d]: centered, padded output gradient
  detail::GrowBuffer<S> partial_gamma, partial_beta;  // [chunks x d]
  NormClock clock;            // time in the adjoint's own work (not the GEMMs it redirects)
};

namespace detail {

// dyc [N x d] = pad(dy [N x m]) minus each row's mean; d = m + compress:
// the adjoint of a write (branch::write_adjoint) on every token.
template <class S>
void center_padded_rows(const ConstRowsRef<S>& dy, bool compress, RowsRef<S> dyc) {
  const Index N = dy.rows(), m = dy.cols(), d = compress ? m + 1 : m;
  check_rows_cols("center_padded_rows", "dyc", dyc.rows(), dyc.cols(), N, d, "rows of dy x d");
  for_each_row(N, d, [&](Index t) { branch::write_adjoint(dy.row(t), dyc.row(t)); });
}

}  // namespace detail

// Reader through the converter. dy [N x o]: gradient at the output; x [N x m]:
// phi's normalized input; W (o, d), gamma, beta (d): theta's. Writes dW (o, d),
// db (o) if non-null, and dx [N x m]; writes or adds to (norm_write: a norm
// read by two readers) dgamma, dbeta (d).
template <class S>
void reader_backward_reparam(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                             const RowMatrix<S>& W, const Vector<S>& gamma, const Vector<S>& beta,
                             bool compress, RowMatrix<S>& dW, Vector<S>* db, Vector<S>& dgamma,
                             Vector<S>& dbeta, RowsRef<S> dx, ReparamWorkspace<S>& ws,
                             GradWrite norm_write = GradWrite::Overwrite) {
  constexpr const char* op = "reader_backward_reparam";
  const Index N = x.rows(), m = x.cols(), d = W.cols();
  if (d != (compress ? m + 1 : m))
    detail::fail(op, "x has ", m, " columns, expected ", compress ? d - 1 : d, " (theta's width ", d,
                 compress ? " minus one)" : ")");
  detail::check_rows_cols(op, "dy", dy.rows(), dy.cols(), N, W.rows(), "tokens x outputs");
  detail::check_rows_cols(op, "dx", dx.rows(), dx.cols(), N, m, "the shape of x");
  detail::check_rows_cols(op, "dW", dW.rows(), dW.cols(), W.rows(), d, "the shape of W");
  auto u = ws.u.view(N, d);
  auto xd = ws.xd.view(compress ? N : 0, d);
  auto g = ws.g.view(N, d);
  ws.clock.time([&] {  // u = decompress(x) * gamma + beta (xd = decompress(x) kept)
    detail::for_each_row(N, d, [&](Index t) {
      if (compress) {
        branch::decompress_row(x.row(t), xd.row(t));
        branch::read_input(xd.row(t), gamma, beta, u.row(t));
      } else {
        branch::read_input(x.row(t), gamma, beta, u.row(t));
      }
    });
  });
  if (N == 0) dW.setZero();
  else dW.noalias() = dy.transpose() * u;
  if (db) detail::column_sums<S>(dy, *db, GradWrite::Overwrite);
  if (N != 0) g.noalias() = dy * W;
  ws.clock.time([&] {
    // One pass over the rows of g: dx = C(g * gamma), and the partial sums
    // of dgamma = sum_t xd * g and dbeta = sum_t g over a fixed number of row
    // chunks (summed in order afterwards: independent of the thread count).
    const Index chunks = std::max<Index>(1, std::min<Index>(N, 16));
    auto pg = ws.partial_gamma.view(chunks, d);
    auto pb = ws.partial_beta.view(chunks, d);
    pg.setZero();
    pb.setZero();
    detail::for_each_row(chunks, (N / chunks + 1) * d, [&](Index c) {
      for (Index t = c * N / chunks; t < (c + 1) * N / chunks; ++t) {
        if (compress) branch::read_input_adjoint(g.row(t), xd.row(t), gamma, dx.row(t), pg.row(c), pb.row(c));
        else branch::read_input_adjoint(g.row(t), x.row(t), gamma, dx.row(t), pg.row(c), pb.row(c));
      }
    });
    if (norm_write == GradWrite::Overwrite) {
      dgamma = pg.row(0).transpose();
      dbeta = pb.row(0).transpose();
    } else {
      dgamma += pg.row(0).transpose();
      dbeta += pb.row(0).transpose();
    }
    for (Index c = 1; c < chunks; ++c) {
      dgamma += pg.row(c).transpose();
      dbeta += pb.row(c).transpose();
    }
  });
}

// Writer through the converter. dy [N x m]: gradient at phi's output; x [N x in]:
// its input; Wphi (m, in): phi's weight (for dx). Writes dW (d, in), db (d)
// if non-null, and dx [N x in] if non-null.
template <class S>
void writer_backward_reparam(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x,
                             const RowMatrix<S>& Wphi, bool compress, RowMatrix<S>& dW,
                             Vector<S>* db, RowsRef<S>* dx, ReparamWorkspace<S>& ws) {
  constexpr const char* op = "writer_backward_reparam";
  const Index N = x.rows(), m = dy.cols(), d = compress ? m + 1 : m;
  detail::check_rows_cols(op, "dy", dy.rows(), dy.cols(), N, Wphi.rows(), "tokens x outputs");
  detail::check_rows_cols(op, "dW", dW.rows(), dW.cols(), d, x.cols(), "theta's (d x in)");
  auto dyc = ws.dyc.view(N, d);
  ws.clock.time([&] { detail::center_padded_rows<S>(dy, compress, dyc); });
  if (N == 0) dW.setZero();
  else dW.noalias() = dyc.transpose() * x;
  if (db) detail::column_sums<S>(dyc, *db, GradWrite::Overwrite);
  if (dx && N != 0) dx->noalias() = dy * Wphi;
}

// Embedding rows through the converter: dtable (rows, d) row ids[t] +=
// centered pad(dh row t). dh [N x m].
template <class S>
void table_backward_reparam(const ConstRowsRef<S>& dh, std::span<const int> ids, bool compress,
                            RowMatrix<S>& dtable, ReparamWorkspace<S>& ws) {
  auto dyc = ws.dyc.view(dh.rows(), compress ? dh.cols() + 1 : dh.cols());
  ws.clock.time([&] { detail::center_padded_rows<S>(dh, compress, dyc); });
  embedding_backward<S>(dyc, ids, dtable);
}

// The gradients of a phi block go to theta's block (see BlockGrad).
template <Arch To, class S>
struct ReparamBlockGrad {
  static constexpr bool compress = To == Arch::PreCRMSNorm;
  const PreNormBlock<To, S>& phi;
  const PreNormBlock<Arch::PreLN, S>& theta;
  PreNormBlock<Arch::PreLN, S>& grad;
  ReparamWorkspace<S>& ws;

  // A reader of theta's norm (gamma, beta), its gradients into grad's
  // (gamma's and beta's written or added to, norm_write).
  auto reader(const Linear<S>& lin, const Vector<S>& gamma, const Vector<S>& beta,
              Linear<S>& g_lin, Vector<S>& g_gamma, Vector<S>& g_beta, GradWrite norm_write) const {
    return [this, &lin, &gamma, &beta, &g_lin, &g_gamma, &g_beta, norm_write](
               const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
      reader_backward_reparam<S>(dy, x, lin.weight, gamma, beta, compress, g_lin.weight,
                                 lin.has_bias() ? &g_lin.bias : nullptr, g_gamma, g_beta, dx, ws,
                                 norm_write);
    };
  }
  // block_backward_with calls fc() before qkv(): fc writes its norm's
  // dgamma, dbeta; qkv adds to them when that norm is norm1 (ParallelSharedNorm).
  auto qkv() const {
    const bool shared = theta.mlp_norm() == BlockNorm::Norm1;
    return reader(theta.attn.qkv, theta.norm1_gamma, theta.norm1_beta, grad.attn.qkv,
                  grad.norm1_gamma, grad.norm1_beta,
                  shared ? GradWrite::Accumulate : GradWrite::Overwrite);
  }
  auto fc() const {  // reads the norm PreNormBlock::mlp_norm() names
    const BlockNorm n = theta.mlp_norm();
    return reader(theta.mlp.fc, theta.norm_gamma(n), theta.norm_beta(n), grad.mlp.fc,
                  grad.norm_gamma(n), grad.norm_beta(n), GradWrite::Overwrite);
  }
  auto out() const {
    return [this](const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
      writer_backward_reparam<S>(dy, x, phi.attn.out.weight, compress, grad.attn.out.weight,
                                 theta.attn.out.has_bias() ? &grad.attn.out.bias : nullptr, &dx, ws);
    };
  }
  auto proj() const {
    return [this](const ConstRowsRef<S>& dy, const ConstRowsRef<S>& x, RowsRef<S> dx) {
      writer_backward_reparam<S>(dy, x, phi.mlp.proj.weight, compress, grad.mlp.proj.weight,
                                 theta.mlp.proj.has_bias() ? &grad.mlp.proj.bias : nullptr, &dx, ws);
    };
  }
  // The target's norms have no parameters; theta's come from the readers.
  Vector<S>* dgamma1() const { return nullptr; }
  Vector<S>* dbeta1() const { return nullptr; }
  Vector<S>* dgamma2() const { return nullptr; }
  Vector<S>* dbeta2() const { return nullptr; }
};

}  // namespace prenorm
