#pragma once
// y = x W^T through Eigen's GEMM kernel, with two changes to how W is packed.
//
// Eigen computes a row-major y [N x out] = x W^T as the column-major product
// y^T = W x^T and walks W's rows in register blocks of mr = 3 packets (48
// floats with AVX-512, 24 with AVX2; 2 packets without FMA).
//
// Padded outputs. A Pre-CRMSNorm writer has out = d - 1 outputs (191, 767):
// its last block is one row short and runs in Eigen's 2-packet, half-packet
// and scalar kernels, which costs +17 % on ViT-Ti's 191-output products
// (bench/NOTES.md). Here that block is copied with zero rows after it and
// packed as a whole one, so all of W runs in the full kernel and writes the
// padded columns too, which the caller provides (y's row stride >= out
// rounded up to mr).
//
// Realigned rows. A Pre-CRMSNorm reader has depth k = d - 1, so W's rows
// start off the packet grid. On an AMD EPYC (Zen 5) host, Eigen's product
// with such rows ran up to 16 % slower than at depth d where they are long
// and many (GPT-3 Small's 2304 x 767 and 3072 x 767, a 50257 x 767 head), and
// as fast as at d with the same rows at an aligned stride; in whole forwards
// the readers of ViT-Ti and ViT-S at batch 1 (191, 383) cost time too
// (bench/NOTES.md). Here each block of W is first copied, row after row, to
// a scratch whose rows are a whole number of packets, and packed from there.
//
// Otherwise the loops are those of Eigen's sequential GEMM
// (Eigen/src/Core/products/GeneralMatrixMatrix.h), with its blocking sizes,
// packing routines and kernel: Eigen 3.4 internals, which the Debian package
// pins. With threads, each takes a disjoint block of W's rows (outputs):
// each thread then reads only its part of W, where a split of x's rows had
// every thread copy and pack all of W (a 50257 x 767 head: 154 MB per
// thread). The blocking sizes are those of the whole product whatever the
// split, so every output is summed in the same order for any thread count.

#include <Eigen/Core>

#include <algorithm>

#include "../../core/parallel.hpp"
#include "../../core/types.hpp"

namespace prenorm::detail {

template <class S>
struct PaddedProduct {
  using Traits = Eigen::internal::gebp_traits<S, S>;
  static constexpr Index kBlockRows = Traits::mr;      // W rows per register block
  static constexpr Index kPacket = Traits::LhsProgress;  // W rows per packet
  // Below this many rows of x, packing W costs more than the full kernel
  // saves (and Eigen runs a single row as a matrix-vector product).
  static constexpr Index kMinRows = 16;

  // The output count the product is padded to, or 0 where padding does not
  // pay: out a multiple of the register block already, or short of one by a
  // packet or more (Eigen's smaller kernels then do full-packet work).
  static constexpr Index padded_outputs(Index out) {
    const Index short_by = (kBlockRows - out % kBlockRows) % kBlockRows;
    return short_by > 0 && short_by < kPacket ? out + short_by : 0;
  }

  // Whether W's rows, k long, are copied to an aligned stride before packing:
  // where they start off the packet grid.
  static constexpr bool realigns(Index k) { return k % kPacket != 0; }

  // Eigen's blocking of the whole product: depth kc, W rows mc (whole
  // register blocks), x rows nc.
  struct Blocking {
    Index kc, mc, nc;
  };
  static Blocking blocking(Index rows, Index k, Index n) {
    Index kc = k, mc = rows, nc = n;
    Eigen::internal::computeProductBlockingSizes<S, S>(kc, mc, nc, Index(1));
    return {kc, std::max(kBlockRows, mc - mc % kBlockRows), nc};
  }

  // y [n x rows] (row stride y_stride) += x [n x k] (row stride x_stride) W^T,
  // W [out x k] row-major and contiguous; rows is out or padded_outputs(out),
  // and columns [out, rows) get += 0. One thread, with the given blocking.
  static void run_serial(const S* w, Index out, Index rows, Index k, const S* x, Index x_stride,
                         Index n, S* y, Index y_stride, Blocking sizes) {
    using namespace Eigen::internal;
    using LhsMapper = const_blas_data_mapper<S, Index, Eigen::RowMajor>;  // W
    using RhsMapper = const_blas_data_mapper<S, Index, Eigen::ColMajor>;  // x^T [k x n]
    using ResMapper = blas_data_mapper<S, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;  // y^T
    constexpr Index mr = kBlockRows;
    const LhsMapper lhs(w, k);
    const RhsMapper rhs(x, x_stride);
    const ResMapper res(y, y_stride);

    const Index kc = sizes.kc, mc = sizes.mc, nc = sizes.nc;

    // Packing buffers and W's copies: grow-only, per thread, so that a
    // forward allocates nothing once it has seen its largest shape.
    thread_local Vector<S> block_a, block_b, short_block, aligned_block;
    if (block_a.size() < kc * mc) block_a.resize(kc * mc);
    if (block_b.size() < kc * nc) block_b.resize(kc * nc);

    const bool realign = realigns(k);
    // Realigned: a block of W [mc x kc] at a row stride of whole packets
    // (Vector's storage is aligned to the largest packet).
    const Index aligned_stride = (kc + kPacket - 1) / kPacket * kPacket;
    if (realign && aligned_block.size() < mc * aligned_stride) aligned_block.resize(mc * aligned_stride);
    // Padded, not realigned: the last, short register block of W, rows
    // [last, out), copied with zero rows after them, so that Eigen's
    // vectorized packing takes it as a whole block: short_block [mr x k].
    const Index last = rows == out ? out : out / mr * mr;
    if (!realign && last < rows) {
      if (short_block.size() < mr * k) short_block.resize(mr * k);
      std::copy(w + last * k, w + out * k, short_block.data());
      std::fill(short_block.data() + (out - last) * k, short_block.data() + mr * k, S(0));
    }
    const LhsMapper short_lhs(short_block.data(), k);
    const LhsMapper aligned_lhs(aligned_block.data(), aligned_stride);

    gemm_pack_lhs<S, Index, LhsMapper, mr, Traits::LhsProgress,
                  typename Traits::LhsPacket4Packing, Eigen::RowMajor>
        pack_lhs;
    gemm_pack_rhs<S, Index, RhsMapper, Traits::nr, Eigen::ColMajor> pack_rhs;
    gebp_kernel<S, S, Index, ResMapper, mr, Traits::nr, false, false> gebp;

    const S alpha = opaque_one();
    const bool pack_rhs_once = mc != rows && kc == k && nc == n;
    for (Index i2 = 0; i2 < rows; i2 += mc) {
      const Index block = std::min(i2 + mc, rows) - i2;
      // W rows [i2, i2 + whole) are W's own, the rest zero rows up to block.
      const Index whole = std::min(i2 + block, realign ? out : last) - i2;
      for (Index k2 = 0; k2 < k; k2 += kc) {
        const Index depth = std::min(k2 + kc, k) - k2;
        S* packed = block_a.data();
        if (realign) {
          S* copy = aligned_block.data();
          for (Index r = 0; r < whole; ++r)
            std::copy_n(w + (i2 + r) * k + k2, depth, copy + r * aligned_stride);
          for (Index r = whole; r < block; ++r) std::fill_n(copy + r * aligned_stride, depth, S(0));
          pack_lhs(packed, aligned_lhs, depth, block);
        } else {
          if (whole > 0) pack_lhs(packed, lhs.getSubMapper(i2, k2), depth, whole);
          if (whole < block)
            pack_lhs(packed + whole * depth, short_lhs.getSubMapper(0, k2), depth, mr);
        }
        for (Index j2 = 0; j2 < n; j2 += nc) {
          const Index cols = std::min(j2 + nc, n) - j2;
          if (!pack_rhs_once || i2 == 0) pack_rhs(block_b.data(), rhs.getSubMapper(k2, j2), depth, cols);
          gebp(res.getSubMapper(i2, j2), packed, block_b.data(), block, depth, cols, alpha);
        }
      }
    }
  }

  // The same, W's rows split among threads in whole register blocks when the
  // work is large enough (core/parallel.hpp). A thread's block [o0, o1) runs
  // as a product of its own; the last one holds the padding rows, if any
  // (padded_outputs of its real rows is its row count, since o0 is a
  // multiple of mr).
  static void run(const S* w, Index out, Index rows, Index k, const S* x, Index x_stride, Index n,
                  S* y, Index y_stride) {
    const double flops = 2.0 * double(n) * double(out) * double(k);
    const Blocking sizes = blocking(rows, k, n);
    const Index units = (rows + kBlockRows - 1) / kBlockRows;  // register blocks of W
    for_each_row_block(units, flops, 1, [&](Index u0, Index u1) {
      const Index o0 = u0 * kBlockRows, o1 = std::min(u1 * kBlockRows, rows);
      run_serial(w + o0 * k, std::min(o1, out) - o0, o1 - o0, k, x, x_stride, n, y + o0, y_stride,
                 sizes);
    });
  }

 private:
  // 1, which the optimizer cannot see through. Called with a literal alpha of
  // 1, gebp_kernel gets a constant-propagated clone of its own, which GCC 12
  // compiles to more instructions than the clone that Eigen's GEMM calls with
  // its run-time alpha (+0.3 % on ViT-Ti's products under callgrind, the
  // same shapes and blocking).
  [[gnu::noipa]] static S opaque_one() { return S(1); }
};

}  // namespace prenorm::detail
