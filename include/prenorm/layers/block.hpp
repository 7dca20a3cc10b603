#pragma once
// The Pre-Norm transformer block, templated on the architecture, in one of
// three topologies (a data member, layers/topology.hpp):
//   Sequential:          h <- h + Attn(Norm1(h));   h <- h + Mlp(Norm2(h))
//   ParallelSharedNorm:  y = Norm1(h);  h <- h + Attn(y) + Mlp(y)   (Norm2 unused,
//                        its gamma and beta empty)
//   ParallelTwoNorms:    h <- h + Attn(Norm1(h)) + Mlp(Norm2(h))
// where Norm, its affine and the main branch width are ArchTraits<A>'s
// (ops/arch_traits.hpp). The attention and MLP inner widths do not depend on
// the architecture.
//
// A model runs its blocks with every residual add fused into the norm that
// follows it (one pass over the main branch instead of two):
//   y = Norm1(h)                                          first block only
//   per block:  forward_fused(h, y, branch):
//                 Sequential: branch = Attn(y); h += branch, y = Norm2(h); branch = Mlp(y)
//                 ParallelSharedNorm: branch = Attn(y) + Mlp(y)
//                 ParallelTwoNorms: branch = Attn(y); y = Norm2(h); branch += Mlp(y)
//               then h += branch, y = Norm1'(h) of the next block (add_norm1),
//               or h += branch, y = NormF(h) the final norm of the model.
// The pending branch of a parallel block is Attn + Mlp: the MLP writes to
// BlockWorkspace::parallel, then that is added to the attention's output.

#include <Eigen/Core>

#include <random>
#include <string>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/activation.hpp"
#include "../ops/arch_traits.hpp"
#include "attention.hpp"
#include "mlp.hpp"
#include "topology.hpp"

namespace prenorm {

// Scratch of one block forward, reused between calls and shared by the blocks of a model.
template <class S>
struct BlockWorkspace {
  AttentionWorkspace<S> attn;
  RowMatrix<S> hidden;  // [tokens x mlp inner]
  RowMatrix<S> parallel;  // [tokens x branch width]: Mlp's output, parallel topologies only
};

// One of the two norms of a block.
enum class BlockNorm { Norm1, Norm2 };

template <Arch A, class S, int Width = Dynamic>
class PreNormBlock {
 public:
  static_assert(Width == Dynamic || Width >= 2, "prenorm::PreNormBlock: the width must be >= 2");
  using Traits = ArchTraits<A>;
  static constexpr Arch arch = A;
  static constexpr int kWidth = Width;                                 // d, or Dynamic
  static constexpr int kMainWidth = int(Traits::main_width(Width));  // d or d-1, or Dynamic
  using Scalar = S;
  using Main = RowMatrix<S, kMainWidth>;        // [tokens x main]
  using MainRef = RowsRef<S, kMainWidth>;       // a Main, or a block of rows of one

  Index width = 0;         // d, the uncompressed model width (CRMSNorm divides by it)
  Vector<S> norm1_gamma;   // (d), PreLN only (empty otherwise)
  Vector<S> norm1_beta;    // (d), PreLN only
  Vector<S> norm2_gamma;   // (d), PreLN only
  Vector<S> norm2_beta;    // (d), PreLN only
  MultiHeadAttention<S> attn;  // qkv ((heads + 2 kv_heads) * head_dim, main), out (main, heads*head_dim)
  Mlp<S> mlp;                  // fc (mlp_width, main), proj (main, mlp_width)
  S epsilon = S(1e-5);
  // Set with set_topology, which also sizes norm2's affine (empty when shared).
  BlockTopology topology = BlockTopology::Sequential;

  PreNormBlock() = default;
  // Zero linear weights and biases; PreLN gammas 1, betas 0.
  PreNormBlock(Index width_, Index heads, Index head_dim, Index mlp_width, bool causal,
               Activation activation, S epsilon_)
      : width(width_),
        attn(Traits::main_width(width_), heads, head_dim, causal),
        mlp(Traits::main_width(width_), mlp_width, activation),
        epsilon(epsilon_) {
    if (Width != Dynamic && width_ != Width)
      detail::fail("PreNormBlock", "width ", width_, " differs from the compile-time width ", Width);
    if (Traits::affine) {
      norm1_gamma.setOnes(width_);
      norm1_beta.setZero(width_);
      norm2_gamma.setOnes(width_);
      norm2_beta.setZero(width_);
    }
  }

  Index main() const { return Traits::main_width(width); }  // d, or d-1 for PreCRMSNorm

  // Sets the topology; norm2's gamma and beta become empty for
  // ParallelSharedNorm (the MLP reads norm1), gamma 1 and beta 0 (d) for the
  // others when the architecture has a norm affine.
  void set_topology(BlockTopology topology_) {
    if (!is_valid_topology(topology_))
      detail::fail("PreNormBlock::set_topology", "unknown topology ", int(topology_));
    topology = topology_;
    const Index affine = Traits::affine && topology != BlockTopology::ParallelSharedNorm ? width : 0;
    if (norm2_gamma.size() != affine) norm2_gamma.setOnes(affine);
    if (norm2_beta.size() != affine) norm2_beta.setZero(affine);
  }

  // The norm whose output the MLP reads: Norm2, or Norm1 when the two
  // sub-layers share it (ParallelSharedNorm). The converter folds that norm's
  // affine into mlp.fc, and its adjoint adds mlp.fc's share to that norm's gradient.
  BlockNorm mlp_norm() const {
    return topology == BlockTopology::ParallelSharedNorm ? BlockNorm::Norm1 : BlockNorm::Norm2;
  }
  // gamma, beta (d, PreLN only) of norm n.
  const Vector<S>& norm_gamma(BlockNorm n) const { return n == BlockNorm::Norm1 ? norm1_gamma : norm2_gamma; }
  const Vector<S>& norm_beta(BlockNorm n) const { return n == BlockNorm::Norm1 ? norm1_beta : norm2_beta; }
  Vector<S>& norm_gamma(BlockNorm n) { return n == BlockNorm::Norm1 ? norm1_gamma : norm2_gamma; }
  Vector<S>& norm_beta(BlockNorm n) { return n == BlockNorm::Norm1 ? norm1_beta : norm2_beta; }
  // The width a branch buffer should have for forward_fused: main(), or main()
  // rounded up to the GEMM's register block where that makes the writers
  // (attn.out, mlp.proj) faster, e.g. 192 for ViT-Ti's Pre-CRMSNorm main
  // branch of 191 (see Linear::forward_padded).
  // Packed writers (oneDNN) want it main() wide: their kernels need dense rows.
  Index branch_width() const {
    if (attn.out.is_packed() || mlp.proj.is_packed()) return main();
    const Index padded = detail::PaddedProduct<S>::padded_outputs(main());
    return padded != 0 ? padded : main();
  }

  // h [batch*T x main] <- h + Attn(Norm1(h)), then h <- h + Mlp(Norm2(h))
  // (or the parallel forms, see the top of this file). Sequence b is rows
  // [b*T, (b+1)*T). Unfused at the block's ends: for a single block; models
  // use the fused pieces below.
  void forward(MainRef h, Index batch, BlockWorkspace<S>& ws, Main& x, Main& branch) const {
    x.resize(h.rows(), h.cols());
    branch.resize(h.rows(), h.cols());
    norm1(h, x);
    forward_fused(h, x, branch, batch, ws);
    h += branch;
  }
  // The same with buffers of its own (allocates; for tests and one-off calls).
  void forward(MainRef h, Index batch) const {
    BlockWorkspace<S> ws;
    Main x, branch;
    forward(h, batch, ws, x, branch);
  }

  // y = Norm1(h). h, y: [tokens x main]. Without norms: nothing (the block reads h).
  void norm1(const MainRef& h, MainRef y) const {
    Traits::forward(h, norm1_gamma, norm1_beta, y, epsilon);
  }
  // h += branch; y = Norm1(h), in one pass: the previous block's MLP add fused
  // with this block's first norm. h, branch, y: [tokens x main].
  void add_norm1(MainRef h, const MainRef& branch, MainRef y) const {
    Traits::add_forward(h, branch, norm1_gamma, norm1_beta, y, epsilon);
  }

  // The block between its norms. On entry y = Norm1(h) (without norms: y
  // unused, h is read). On exit, Sequential: h holds h + Attn(y), y = Norm2(h),
  // and branch = Mlp(y); parallel: h is unchanged, y is scratch, and branch =
  // Attn + Mlp. The last residual add is left pending, for the next norm to fuse.
  // h, y: [batch*T x main]; branch: [batch*T x main], or wider (branch_width()):
  // the output is its first main() columns, the others are set to 0.
  void forward_fused(MainRef h, MainRef y, RowsRef<S> branch, Index batch, BlockWorkspace<S>& ws) const {
    attn.forward(input(h, y), batch, branch, ws.attn);
    finish_fused(h, y, branch, ws);
  }

  // forward_fused for incremental decoding: the T new tokens per sequence sit
  // at positions [past, past+T); keys, values [batch*capacity x heads*head_dim]
  // are this layer's cache (see MultiHeadAttention::forward_cached).
  void forward_fused_cached(MainRef h, MainRef y, RowsRef<S> branch, Index batch, Index past,
                            RowMatrix<S>& keys, RowMatrix<S>& values, BlockWorkspace<S>& ws) const {
    attn.forward_cached(input(h, y), batch, past, keys, values, branch, ws.attn);
    finish_fused(h, y, branch, ws);
  }

  // Throws unless every tensor has its shape for this architecture and width.
  // name: the block's name in messages ("blocks[3]"), a string or a callable
  // returning one; op: the caller.
  template <class Name>
  void validate(const char* op, const Name& name, Index heads, Index head_dim,
                Index mlp_width) const {
    const auto fail = [&](auto&&... parts) { detail::fail(op, detail::tensor_name(name), parts...); };
    if (width < 2) fail(".width is ", width, ", expected >= 2");
    if (Width != Dynamic && width != Width)
      fail(".width is ", width, ", expected the compile-time width ", Width);
    if (!(epsilon > S(0))) fail(".epsilon is ", epsilon, ", expected > 0");
    const Index affine = Traits::affine ? width : 0;
    const char* why = Traits::affine ? "" : " (no norm affine in this architecture)";
    const auto check = [&](const char* what, const Vector<S>& v) {
      if (v.size() != affine) fail(what, " has ", v.size(), " elements, expected ", affine, why);
    };
    check(".norm1_gamma", norm1_gamma);
    check(".norm1_beta", norm1_beta);
    if (!is_valid_topology(topology)) fail(".topology is ", int(topology), ", not a BlockTopology");
    if (topology == BlockTopology::ParallelSharedNorm) {
      if (norm2_gamma.size() != 0 || norm2_beta.size() != 0)
        fail(".norm2_gamma and .norm2_beta have ", norm2_gamma.size(), " and ", norm2_beta.size(),
             " elements, expected 0 (parallel_shared_norm: the MLP reads norm1)");
    } else {
      check(".norm2_gamma", norm2_gamma);
      check(".norm2_beta", norm2_beta);
    }
    if (attn.heads != heads || attn.head_dim != head_dim)
      fail(".attn has ", attn.heads, " heads of ", attn.head_dim, ", expected ", heads,
           " heads of ", head_dim);
    attn.validate(op, detail::sub_name(name, ".attn"), main());
    mlp.validate(op, detail::sub_name(name, ".mlp"), main(), mlp_width);
  }

 private:
  // What the sub-layers read: the normalized y, or h itself without norms.
  static const MainRef& input(const MainRef& h, const MainRef& y) { return Traits::input(h, y); }

  // From branch = Attn(y) to the pending branch of forward_fused.
  void finish_fused(MainRef& h, MainRef& y, RowsRef<S>& branch, BlockWorkspace<S>& ws) const {
    switch (topology) {
      case BlockTopology::Sequential:
        Traits::add_forward(h, branch.leftCols(main()), norm2_gamma, norm2_beta, y, epsilon);
        mlp.forward(input(h, y), branch, ws.hidden);
        return;
      case BlockTopology::ParallelTwoNorms:
        Traits::forward(h, norm2_gamma, norm2_beta, y, epsilon);  // the attention is done with y
        [[fallthrough]];
      case BlockTopology::ParallelSharedNorm: {
        // branch += Mlp(y), the MLP written beside (its padded columns are 0 too).
        RowMatrix<S>& mlp_out = ws.parallel;
        mlp_out.resize(branch.rows(), branch.cols());
        mlp.forward(input(h, y), mlp_out, ws.hidden);
        detail::for_each_row(branch.rows(), branch.cols(),
                             [&](Index r) { branch.row(r) += mlp_out.row(r); });
        return;
      }
    }
  }
};

namespace detail {

// Sets every element of t (a matrix or vector) to offset + scale * N(0, 1).
template <class Tensor, class Rng>
void random_fill(Tensor& t, Rng& rng, double scale, double offset) {
  std::normal_distribution<double> normal(0.0, 1.0);
  using S = typename Tensor::Scalar;
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = S(offset + scale * normal(rng));
}

// GPT-2-style block init: input weights N(0, stddev), residual output weights
// N(0, proj_std), biases and betas N(0, affine), gammas 1 + N(0, affine).
template <class Block, class Rng>
void init_block_random(Block& b, Rng& rng, double stddev, double proj_std, double affine) {
  random_fill(b.norm1_gamma, rng, affine, 1);
  random_fill(b.norm1_beta, rng, affine, 0);
  random_fill(b.attn.qkv.weight, rng, stddev, 0);
  random_fill(b.attn.qkv.bias, rng, affine, 0);
  random_fill(b.attn.out.weight, rng, proj_std, 0);
  random_fill(b.attn.out.bias, rng, affine, 0);
  random_fill(b.norm2_gamma, rng, affine, 1);
  random_fill(b.norm2_beta, rng, affine, 0);
  random_fill(b.mlp.fc.weight, rng, stddev, 0);
  random_fill(b.mlp.fc.bias, rng, affine, 0);
  random_fill(b.mlp.proj.weight, rng, proj_std, 0);
  random_fill(b.mlp.proj.bias, rng, affine, 0);
}

}  // namespace detail

// Calls f(prefix + name, tensor) for every tensor of a block (RowMatrix<S>& or
// Vector<S>&, empty ones included), in a fixed order.
template <class Block, class F>
void visit_block_parameters(const std::string& prefix, Block& b, F& f) {
  f(prefix + "norm1_gamma", b.norm1_gamma);
  f(prefix + "norm1_beta", b.norm1_beta);
  f(prefix + "attn.qkv.weight", b.attn.qkv.weight);
  f(prefix + "attn.qkv.bias", b.attn.qkv.bias);
  f(prefix + "attn.out.weight", b.attn.out.weight);
  f(prefix + "attn.out.bias", b.attn.out.bias);
  f(prefix + "norm2_gamma", b.norm2_gamma);
  f(prefix + "norm2_beta", b.norm2_beta);
  f(prefix + "mlp.fc.weight", b.mlp.fc.weight);
  f(prefix + "mlp.fc.bias", b.mlp.fc.bias);
  f(prefix + "mlp.proj.weight", b.mlp.proj.weight);
  f(prefix + "mlp.proj.bias", b.mlp.proj.bias);
}

}  // namespace prenorm
