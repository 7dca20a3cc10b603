#pragma once
// Training forward and backward of the Pre-Norm block, with the residual adds
// fused into the norms that follow them (as the models' inference forward):
//
//   forward, block l (h_l its input, x1 = Norm1(h_l) already computed):
//     h_mid = Attn(x1);  h_mid += h_l, x2 = Norm2(h_mid)     (fused add + norm)
//     h_out = Mlp(x2)    the caller fuses h_out += h_mid with the next norm
//   backward, with dh the gradient with respect to h_out on entry:
//     dx2 = Mlp'(dh);    dh += Norm2'(dx2)    (GradWrite::Accumulate: the residual
//     dx1 = Attn'(dh);   dh += Norm1'(dx1)     gradient passes through unchanged)
//   and dh is the gradient with respect to h_l on exit.
//
// Norm_A is LayerNorm (PreLN), RMSNorm (PreRMSNorm), CRMSNorm (PreCRMSNorm) or
// nothing (NoNorm: the sub-layers read h itself).

#include <Eigen/Core>

#include <chrono>
#include <type_traits>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../layers/block.hpp"
#include "../ops/crms_norm.hpp"
#include "../ops/layer_norm.hpp"
#include "../ops/rms_norm.hpp"
#include "layers_backward.hpp"

namespace prenorm {

struct NoNormSaved {
  void resize(Index) {}
};

// The statistics a norm of architecture A saves for its backward.
template <Arch A, class S>
using NormSaved = std::conditional_t<
    A == Arch::PreLN, LayerNormSaved<S>,
    std::conditional_t<A == Arch::NoNorm, NoNormSaved, RmsNormSaved<S>>>;

// Seconds spent in normalization kernels (forward and backward), when enabled.
struct NormClock {
  bool enabled = false;
  double seconds = 0;

  template <class F>
  void time(F&& f) {
    if (!enabled) {
      f();
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    f();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

// y = Norm_A(h), saving the statistics. h, y: [rows x main]; gamma, beta (d),
// PreLN only. NoNorm: nothing (the reader takes h).
template <Arch A, class S>
void norm_forward_train(const ConstRowsRef<S>& h, const Vector<S>& gamma, const Vector<S>& beta,
                        RowsRef<S> y, S epsilon, NormSaved<A, S>& saved) {
  saved.resize(h.rows());
  if constexpr (A == Arch::PreLN) layer_norm_forward(h, gamma, beta, y, epsilon, &saved);
  else if constexpr (A == Arch::PreRMSNorm) rms_norm_forward(h, y, epsilon, &saved);
  else if constexpr (A == Arch::PreCRMSNorm) crms_norm_forward(h, y, epsilon, &saved);
}

// h += branch; y = Norm_A(h) in one pass, saving the statistics.
// h, branch, y: [rows x main]. NoNorm: only the add.
template <Arch A, class S>
void norm_add_forward_train(RowsRef<S> h, const ConstRowsRef<S>& branch, const Vector<S>& gamma,
                            const Vector<S>& beta, RowsRef<S> y, S epsilon, NormSaved<A, S>& saved) {
  saved.resize(h.rows());
  if constexpr (A == Arch::PreLN) {
    layer_norm_add_forward(h, branch, gamma, beta, y, epsilon, &saved);
  } else if constexpr (A == Arch::PreRMSNorm) {
    rms_norm_add_forward(h, branch, y, epsilon, &saved);
  } else if constexpr (A == Arch::PreCRMSNorm) {
    crms_norm_add_forward(h, branch, y, epsilon, &saved);
  } else {
    detail::for_each_row(h.rows(), h.cols(), [&](Index r) { h.row(r) += branch.row(r); });
  }
}

// dh += Norm_A'(h)^T dy (dh written instead with GradWrite::Overwrite);
// dgamma, dbeta (d) are written (PreLN only: they must be given). dy, h, dh: [rows x main].
template <Arch A, class S>
void norm_backward_train(const ConstRowsRef<S>& dy, const ConstRowsRef<S>& h,
                         const Vector<S>& gamma, const NormSaved<A, S>& saved, RowsRef<S> dh,
                         Vector<S>* dgamma, Vector<S>* dbeta, GradWrite write) {
  if constexpr (A == Arch::PreLN) {
    dgamma->setZero();
    dbeta->setZero();
    layer_norm_backward(dy, h, gamma, saved, dh, *dgamma, *dbeta, write);
  } else if constexpr (A == Arch::PreRMSNorm) {
    rms_norm_backward(dy, h, saved, dh, write);
  } else if constexpr (A == Arch::PreCRMSNorm) {
    crms_norm_backward(dy, h, saved, dh, write);
  } else {
    if (write == GradWrite::Overwrite) dh = dy;
    else detail::for_each_row(dh.rows(), dh.cols(), [&](Index r) { dh.row(r) += dy.row(r); });
  }
}

// What the training forward of one block saves (its input h is the previous
// block's h_out, kept by the model).
template <Arch A, class S>
struct BlockActivations {
  RowMatrix<S> x1;     // [N x main]: Norm1(h), the attention input (NoNorm: empty)
  NormSaved<A, S> norm1;
  AttentionActivations<S> attn;
  RowMatrix<S> h_mid;  // [N x main]: h + Attn(x1)
  RowMatrix<S> x2;     // [N x main]: Norm2(h_mid), the MLP input (NoNorm: empty)
  NormSaved<A, S> norm2;
  MlpActivations<S> mlp;

  void resize(Index rows, Index main) {
    if constexpr (A != Arch::NoNorm) {
      x1.resize(rows, main);
      x2.resize(rows, main);
    }
    h_mid.resize(rows, main);
  }
  // What the attention and the MLP read: the normalized x, or h itself (NoNorm).
  const RowMatrix<S>& attn_input(const RowMatrix<S>& h) const { return A == Arch::NoNorm ? h : x1; }
  const RowMatrix<S>& mlp_input() const { return A == Arch::NoNorm ? h_mid : x2; }
};

// Scratch of block_backward.
template <class S>
struct BlockBackwardWorkspace {
  RowMatrix<S> dx;       // [N x main]: gradient at a norm's output
  RowMatrix<S> dhidden;  // [N x mlp inner]
  AttentionBackwardWorkspace<S> attn;
};

// x1 = Norm1(h) with saved statistics (block 0; later blocks fuse it with the
// previous residual add, see norm_add_forward_train).
template <Arch A, class S>
void block_norm1_forward_train(const PreNormBlock<A, S>& block, const RowMatrix<S>& h,
                               BlockActivations<A, S>& acts, NormClock& clock) {
  clock.time([&] {
    norm_forward_train<A, S>(h, block.norm1_gamma, block.norm1_beta, acts.x1, block.epsilon,
                             acts.norm1);
  });
}

// The block between its norms. On entry acts.x1 = Norm1(h) (NoNorm: h is
// read). On exit acts.h_mid = h + Attn(x1), acts.x2 = Norm2(h_mid) and
// h_out = Mlp(x2): the MLP's residual add is left for the caller to fuse with
// the next norm. h, h_out: [N x main].
template <Arch A, class S>
void block_forward_train(const PreNormBlock<A, S>& block, const RowMatrix<S>& h, Index batch,
                         BlockActivations<A, S>& acts, RowMatrix<S>& h_out, NormClock& clock) {
  acts.resize(h.rows(), h.cols());
  h_out.resize(h.rows(), h.cols());
  attention_forward_train<S>(block.attn, acts.attn_input(h), batch, acts.h_mid, acts.attn);
  clock.time([&] {
    norm_add_forward_train<A, S>(acts.h_mid, h, block.norm2_gamma, block.norm2_beta, acts.x2,
                                 block.epsilon, acts.norm2);
  });
  mlp_forward_train<S>(block.mlp, acts.mlp_input(), h_out, acts.mlp);
}

// Where block_backward_with puts the parameter gradients of a block: one
// callable per linear, (dy, x, dx) -> writes its gradients and dx = dy W, and
// the norms' dgamma, dbeta (PreLN) or null. BlockGrad writes them into a
// block of the same type.
template <Arch A, class S>
struct BlockGrad {
  const PreNormBlock<A, S>& block;
  PreNormBlock<A, S>& grad;

  LinearGrad<S> qkv() const { return {block.attn.qkv, grad.attn.qkv}; }
  LinearGrad<S> out() const { return {block.attn.out, grad.attn.out}; }
  LinearGrad<S> fc() const { return {block.mlp.fc, grad.mlp.fc}; }
  LinearGrad<S> proj() const { return {block.mlp.proj, grad.mlp.proj}; }
  Vector<S>* dgamma1() const { return &grad.norm1_gamma; }
  Vector<S>* dbeta1() const { return &grad.norm1_beta; }
  Vector<S>* dgamma2() const { return &grad.norm2_gamma; }
  Vector<S>* dbeta2() const { return &grad.norm2_beta; }
};

// Backward of one block, the parameter gradients going to `sink` (see
// BlockGrad). h: the block's input; dh [N x main]: on entry the gradient with
// respect to the block's output, on exit with respect to h.
template <Arch A, class S, class Sink>
void block_backward_with(const PreNormBlock<A, S>& block, const RowMatrix<S>& h, Index batch,
                         const BlockActivations<A, S>& acts, RowMatrix<S>& dh,
                         BlockBackwardWorkspace<S>& ws, NormClock& clock, const Sink& sink) {
  ws.dx.resize(h.rows(), h.cols());
  mlp_backward_with<S>(block.mlp, dh, acts.mlp_input(), acts.mlp, ws.dx, ws.dhidden, sink.proj(),
                       sink.fc());
  clock.time([&] {
    norm_backward_train<A, S>(ws.dx, acts.h_mid, block.norm2_gamma, acts.norm2, dh, sink.dgamma2(),
                              sink.dbeta2(), GradWrite::Accumulate);
  });
  attention_backward_with<S>(block.attn, dh, acts.attn_input(h), batch, acts.attn, ws.dx, ws.attn,
                             sink.out(), sink.qkv());
  clock.time([&] {
    norm_backward_train<A, S>(ws.dx, h, block.norm1_gamma, acts.norm1, dh, sink.dgamma1(),
                              sink.dbeta1(), GradWrite::Accumulate);
  });
}

// Backward of one block; every parameter gradient of grad is written.
template <Arch A, class S>
void block_backward(const PreNormBlock<A, S>& block, const RowMatrix<S>& h, Index batch,
                    const BlockActivations<A, S>& acts, PreNormBlock<A, S>& grad, RowMatrix<S>& dh,
                    BlockBackwardWorkspace<S>& ws, NormClock& clock) {
  block_backward_with<A, S>(block, h, batch, acts, dh, ws, clock, BlockGrad<A, S>{block, grad});
}

}  // namespace prenorm
