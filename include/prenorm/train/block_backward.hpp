#pragma once
// Training forward and backward of the Pre-Norm block, with the residual adds
// fused into the norms that follow them (as the models' inference forward),
// for each topology (layers/topology.hpp):
//
//   forward, block l (h_l its input, x1 = Norm1(h_l) already computed):
//     Sequential:
//       h_mid = Attn(x1);  h_mid += h_l, x2 = Norm2(h_mid)     (fused add + norm)
//       h_out = Mlp(x2)
//     parallel (both branches read h_l):
//       h_mid = Attn(x1);  h_mid += h_l;  x2 = Norm2(h_l) (ParallelTwoNorms)
//       h_out = Mlp(x2), or Mlp(x1) (ParallelSharedNorm)
//     the caller fuses h_out += h_mid with the next norm.
//   backward, with dh the gradient with respect to h_out on entry:
//     Sequential:
//       dx2 = Mlp'(dh);    dh += Norm2'(dx2)    (GradWrite::Accumulate: the residual
//       dx1 = Attn'(dh);   dh += Norm1'(dx1)     gradient passes through unchanged)
//     parallel (both branches get the same dh):
//       dx2 = Mlp'(dh);  dx1 = Attn'(dh);  then
//       ParallelTwoNorms:    dh += Norm2'(dx2) + Norm1'(dx1)
//       ParallelSharedNorm:  dh += Norm1'(dx1 + dx2)   (norm1's dgamma, dbeta get both
//                                                       readers' shares)
//   and dh is the gradient with respect to h_l on exit. In every topology the
//   MLP's backward runs before the attention's (ReparamBlockGrad relies on it).
//
// Norm_A, its saved statistics and its backward are ArchTraits<A>'s
// (ops/arch_traits.hpp); an architecture without norms (has_norm false) has
// its sub-layers read h itself.

#include <Eigen/Core>

#include <chrono>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "../layers/block.hpp"
#include "../ops/arch_traits.hpp"
#include "layers_backward.hpp"

namespace prenorm {

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

// What the training forward of one block saves (its input h is the previous
// block's h_out, kept by the model).
template <Arch A, class S>
struct BlockActivations {
  RowMatrix<S> x1;     // [N x main]: Norm1(h), the attention input (empty without norms)
  NormSaved<A, S> norm1;
  AttentionActivations<S> attn;
  RowMatrix<S> h_mid;  // [N x main]: h + Attn(x1)
  RowMatrix<S> x2;     // [N x main]: Norm2(h_mid), Norm2(h) in ParallelTwoNorms (empty without norms)
  NormSaved<A, S> norm2;
  MlpActivations<S> mlp;

  void resize(Index rows, Index main) {
    if constexpr (ArchTraits<A>::has_norm) {
      x1.resize(rows, main);
      x2.resize(rows, main);
    }
    h_mid.resize(rows, main);
  }
  // What the attention and the MLP read: the normalized x, or h itself without norms.
  const RowMatrix<S>& attn_input(const RowMatrix<S>& h) const { return ArchTraits<A>::input(h, x1); }
  // h: the block's input.
  const RowMatrix<S>& mlp_input(const RowMatrix<S>& h, BlockTopology topology) const {
    switch (topology) {
      case BlockTopology::Sequential: return ArchTraits<A>::input(h_mid, x2);
      case BlockTopology::ParallelSharedNorm: return ArchTraits<A>::input(h, x1);
      case BlockTopology::ParallelTwoNorms: return ArchTraits<A>::input(h, x2);
    }
    detail::fail("BlockActivations::mlp_input", "unknown topology ", int(topology));
  }
};

// Scratch of block_backward.
template <class S>
struct BlockBackwardWorkspace {
  RowMatrix<S> dx;       // [N x main]: gradient at a norm's output
  RowMatrix<S> dx_attn;  // [N x main]: the attention's, parallel blocks only
  RowMatrix<S> dhidden;  // [N x mlp inner]
  AttentionBackwardWorkspace<S> attn;
};

// x1 = Norm1(h) with saved statistics (block 0; later blocks fuse it with the
// previous residual add, ArchTraits<A>::add_forward).
template <Arch A, class S>
void block_norm1_forward_train(const PreNormBlock<A, S>& block, const RowMatrix<S>& h,
                               BlockActivations<A, S>& acts, NormClock& clock) {
  clock.time([&] {
    ArchTraits<A>::forward(h, block.norm1_gamma, block.norm1_beta, acts.x1, block.epsilon,
                           &acts.norm1);
  });
}

// The block between its norms. On entry acts.x1 = Norm1(h) (without norms:
// h is read). On exit acts.h_mid = h + Attn(x1), acts.x2 = the MLP's norm
// (see the top of this file) and h_out = Mlp(its input): the MLP's residual
// add is left for the caller to fuse with the next norm. h, h_out: [N x main].
template <Arch A, class S>
void block_forward_train(const PreNormBlock<A, S>& block, const RowMatrix<S>& h, Index batch,
                         BlockActivations<A, S>& acts, RowMatrix<S>& h_out, NormClock& clock) {
  acts.resize(h.rows(), h.cols());
  h_out.resize(h.rows(), h.cols());
  attention_forward_train<S>(block.attn, acts.attn_input(h), batch, acts.h_mid, acts.attn);
  if (block.topology == BlockTopology::Sequential) {
    clock.time([&] {
      ArchTraits<A>::add_forward(acts.h_mid, h, block.norm2_gamma, block.norm2_beta, acts.x2,
                                 block.epsilon, &acts.norm2);
    });
  } else {
    detail::for_each_row(h.rows(), h.cols(), [&](Index r) { acts.h_mid.row(r) += h.row(r); });
    if (block.topology == BlockTopology::ParallelTwoNorms)
      clock.time([&] {
        ArchTraits<A>::forward(h, block.norm2_gamma, block.norm2_beta, acts.x2, block.epsilon,
                               &acts.norm2);
      });
  }
  mlp_forward_train<S>(block.mlp, acts.mlp_input(h, block.topology), h_out, acts.mlp);
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

namespace detail {

// The rest of a parallel block's backward, from ws.dx = the gradient at the
// MLP's input and dh = the gradient at the block's output (see the top of this file).
template <Arch A, class S, class Sink>
void parallel_block_backward_rest(const PreNormBlock<A, S>& block, const RowMatrix<S>& h,
                                  Index batch, const BlockActivations<A, S>& acts, RowMatrix<S>& dh,
                                  BlockBackwardWorkspace<S>& ws, NormClock& clock, const Sink& sink) {
  ws.dx_attn.resize(h.rows(), h.cols());
  attention_backward_with<S>(block.attn, dh, acts.attn_input(h), batch, acts.attn, ws.dx_attn,
                             ws.attn, sink.out(), sink.qkv());
  const bool shared = block.topology == BlockTopology::ParallelSharedNorm;
  if (shared) {
    // One norm read twice: its backward is linear in dy, so sum first.
    for_each_row(h.rows(), h.cols(), [&](Index r) { ws.dx.row(r) += ws.dx_attn.row(r); });
  } else {
    clock.time([&] {
      ArchTraits<A>::backward(ws.dx, h, block.norm2_gamma, acts.norm2, dh, sink.dgamma2(),
                              sink.dbeta2(), GradWrite::Accumulate);
    });
  }
  const RowMatrix<S>& dx1 = shared ? ws.dx : ws.dx_attn;  // the gradient at norm1's output
  clock.time([&] {
    ArchTraits<A>::backward(dx1, h, block.norm1_gamma, acts.norm1, dh, sink.dgamma1(),
                            sink.dbeta1(), GradWrite::Accumulate);
  });
}

}  // namespace detail

// Backward of one block, the parameter gradients going to `sink` (see
// BlockGrad). h: the block's input; dh [N x main]: on entry the gradient with
// respect to the block's output, on exit with respect to h.
template <Arch A, class S, class Sink>
void block_backward_with(const PreNormBlock<A, S>& block, const RowMatrix<S>& h, Index batch,
                         const BlockActivations<A, S>& acts, RowMatrix<S>& dh,
                         BlockBackwardWorkspace<S>& ws, NormClock& clock, const Sink& sink) {
  ws.dx.resize(h.rows(), h.cols());
  mlp_backward_with<S>(block.mlp, dh, acts.mlp_input(h, block.topology), acts.mlp, ws.dx,
                       ws.dhidden, sink.proj(), sink.fc());
  if (block.topology != BlockTopology::Sequential) {
    detail::parallel_block_backward_rest(block, h, batch, acts, dh, ws, clock, sink);
    return;
  }
  clock.time([&] {
    ArchTraits<A>::backward(ws.dx, acts.h_mid, block.norm2_gamma, acts.norm2, dh, sink.dgamma2(),
                            sink.dbeta2(), GradWrite::Accumulate);
  });
  attention_backward_with<S>(block.attn, dh, acts.attn_input(h), batch, acts.attn, ws.dx, ws.attn,
                             sink.out(), sink.qkv());
  clock.time([&] {
    ArchTraits<A>::backward(ws.dx, h, block.norm1_gamma, acts.norm1, dh, sink.dgamma1(),
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
