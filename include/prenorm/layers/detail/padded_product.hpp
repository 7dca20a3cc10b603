#pragma once
// y = x W^T with W's output rows and the product's depth padded to the blocks
// of Eigen's GEMM kernel.
//
// Eigen computes a row-major y [N x out] = x W^T as the column-major product
// y^T = W x^T. Its kernel (gebp) walks W's rows in register blocks of mr = 3
// packets (48 floats with AVX-512, 24 with AVX2; 2 packets without FMA) and
// the depth in steps of 8. A Pre-CRMSNorm block has d - 1 where Pre-LN has d,
// on both sides:
//   - its writers have out = d - 1 outputs (191, 767): their last register
//     block is one row short and runs in Eigen's 2-packet, half-packet and
//     scalar kernels (+17 % on ViT-Ti's 191-output products,
//     bench/README.md). Here that block is copied with zero rows after it and
//     packed as a whole one, so all of W runs in the full kernel and writes
//     the padded columns too, which the caller provides (y's row stride >=
//     out rounded up to mr);
//   - its readers have depth d - 1: the kernel runs the last 7 steps of its
//     8-step depth loop one at a time, for every register block of y. Here
//     both packed operands get zero depth slots, so the depth runs in whole
//     steps of 8.
// The zeros add exact zeros: y is what the unpadded product gives, to the
// rounding of the kernel's order of summation.
//
// Otherwise the loops are those of Eigen's sequential GEMM
// (Eigen/src/Core/products/GeneralMatrixMatrix.h), with its blocking sizes,
// packing routines and kernel: Eigen 3.4 internals, which the Debian package
// pins. With OpenMP, threads take disjoint blocks of rows of x and y.

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

  static constexpr Index kDepthStep = 8;  // gebp_kernel's depth peel (pk)
  static_assert(Traits::nr == 4,
                "PaddedProduct: zeroes the depth padding of x's packed panels of 4 columns "
                "(gemm_pack_rhs, Eigen 3.4); gebp_traits::nr changed");

  // The depth a block of depth k runs at: k rounded up to the kernel's depth
  // step where more than half a step would otherwise run one by one (767 ->
  // 768, 191 -> 192), else k.
  static constexpr Index padded_depth(Index k) {
    const Index short_by = (kDepthStep - k % kDepthStep) % kDepthStep;
    return short_by < kDepthStep / 2 ? k + short_by : k;
  }

  // Whether padding pays for W [out x k] into a y of y_cols columns.
  static constexpr bool pays(Index out, Index k, Index y_cols) {
    const Index padded = padded_outputs(out);
    return (padded != 0 && padded <= y_cols) || padded_depth(k) != k;
  }

  // y [n x y_cols] (row stride y_stride) += x [n x k] (row stride x_stride)
  // W^T, W [out x k] row-major and contiguous. Where y_cols >=
  // padded_outputs(out), columns [out, padded_outputs(out)) get += 0. One
  // thread.
  static void run_serial(const S* w, Index out, Index k, const S* x, Index x_stride, Index n, S* y,
                         Index y_stride, Index y_cols) {
    using namespace Eigen::internal;
    using LhsMapper = const_blas_data_mapper<S, Index, Eigen::RowMajor>;  // W
    using RhsMapper = const_blas_data_mapper<S, Index, Eigen::ColMajor>;  // x^T [k x n]
    using ResMapper = blas_data_mapper<S, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;  // y^T
    constexpr Index mr = kBlockRows;
    // W's rows [0, rows) run in whole register blocks, at the padded depth:
    // [0, last) from W, and if out is padded, [last, padded) from a copy of
    // W's last rows with zero rows after them. If it is not, the rest
    // [last, out), fewer than mr rows, runs in Eigen's smaller kernels at the
    // unpadded depth.
    const Index padded = padded_outputs(out);
    const bool pad_out = padded != 0 && padded <= y_cols;
    const Index last = out / mr * mr;
    const Index rows = pad_out ? padded : last;
    const Index total = pad_out ? padded : out;
    const LhsMapper lhs(w, k);
    const RhsMapper rhs(x, x_stride);
    const ResMapper res(y, y_stride);

    Index kc = k, mc = total, nc = n;
    computeProductBlockingSizes<S, S>(kc, mc, nc, Index(1));
    mc = std::max(mr, mc - mc % mr);  // blocks of whole register blocks

    // Packing buffers: grow-only, per thread, so that a forward allocates
    // nothing once it has seen its largest shape.
    thread_local Vector<S> block_a, block_b, short_block;
    const Index max_stride = kc + kDepthStep / 2;  // > padded_depth(depth) for depth <= kc
    if (block_a.size() < max_stride * mc) block_a.resize(max_stride * mc);
    if (block_b.size() < max_stride * nc) block_b.resize(max_stride * nc);
    if (pad_out) {
      if (short_block.size() < mr * k) short_block.resize(mr * k);
      std::copy(w + last * k, w + out * k, short_block.data());
      std::fill(short_block.data() + (out - last) * k, short_block.data() + mr * k, S(0));
    }
    const LhsMapper short_lhs(short_block.data(), k);

    // Panel mode: each packed panel has room for the padded depth.
    gemm_pack_lhs<S, Index, LhsMapper, mr, Traits::LhsProgress,
                  typename Traits::LhsPacket4Packing, Eigen::RowMajor, false, true>
        pack_lhs;
    gemm_pack_rhs<S, Index, RhsMapper, Traits::nr, Eigen::ColMajor, false, true> pack_rhs;
    gebp_kernel<S, S, Index, ResMapper, mr, Traits::nr, false, false> gebp;

    const S alpha = opaque_one();
    const bool pack_rhs_once = mc < total && kc == k && nc == n;
    for (Index i2 = 0; i2 < total; i2 += mc) {
      const Index block = std::min(i2 + mc, total) - i2;
      // Of this block: rows [i2, i2 + full) in whole register blocks, of
      // them [i2, i2 + whole) from W; the unpadded rest after them.
      const Index full = std::min(i2 + block, rows) - i2;
      const Index whole = std::min(i2 + block, last) - i2;
      const Index rest = block - full;
      for (Index k2 = 0; k2 < k; k2 += kc) {
        const Index depth = std::min(k2 + kc, k) - k2, stride = padded_depth(depth);
        S* packed = block_a.data();
        if (whole > 0) pack_lhs(packed, lhs.getSubMapper(i2, k2), depth, whole, stride);
        if (whole < full)
          pack_lhs(packed + whole * stride, short_lhs.getSubMapper(0, k2), depth, mr, stride);
        zero_depth_padding(packed, full / mr, mr, depth, stride);
        S* packed_rest = packed + full * stride;
        if (rest > 0) pack_lhs(packed_rest, lhs.getSubMapper(i2 + full, k2), depth, rest, depth);
        for (Index j2 = 0; j2 < n; j2 += nc) {
          const Index cols = std::min(j2 + nc, n) - j2;
          if (!pack_rhs_once || i2 == 0) {
            pack_rhs(block_b.data(), rhs.getSubMapper(k2, j2), depth, cols, stride);
            zero_depth_padding(block_b.data(), cols / Traits::nr, Traits::nr, depth, stride);
            zero_depth_padding(block_b.data() + cols / Traits::nr * Traits::nr * stride,
                               cols % Traits::nr, 1, depth, stride);
          }
          // Unpadded in depth, the call of Eigen's GEMM (default strides): the
          // same clone of gebp_kernel (see opaque_one).
          if (full > 0 && stride == depth)
            gebp(res.getSubMapper(i2, j2), packed, block_b.data(), full, depth, cols, alpha);
          else if (full > 0)
            gebp(res.getSubMapper(i2, j2), packed, block_b.data(), full, stride, cols, alpha,
                 stride, stride);
          if (rest > 0)
            gebp(res.getSubMapper(i2 + full, j2), packed_rest, block_b.data(), rest, depth, cols,
                 alpha, depth, stride);
        }
      }
    }
  }

  // The same, the rows of x and y split among threads when the work is large enough.
  static void run(const S* w, Index out, Index k, const S* x, Index x_stride, Index n, S* y,
                  Index y_stride, Index y_cols) {
#ifdef _OPENMP
    const double flops = 2.0 * double(n) * double(out) * double(k);
    if (n >= 2 * kMinRows && flops >= 4e6 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
      {
        const Index threads = omp_get_num_threads(), t = omp_get_thread_num();
        const Index r0 = n * t / threads, r1 = n * (t + 1) / threads;
        if (r0 < r1)
          run_serial(w, out, k, x + r0 * x_stride, x_stride, r1 - r0, y + r0 * y_stride,
                     y_stride, y_cols);
      }
      return;
    }
#endif
    run_serial(w, out, k, x, x_stride, n, y, y_stride, y_cols);
  }

 private:
  // 1, which the optimizer cannot see through. Called with a literal alpha of
  // 1, gebp_kernel gets a constant-propagated clone of its own, which GCC 12
  // compiles to more instructions than the clone that Eigen's GEMM calls with
  // its run-time alpha (+0.3 % on ViT-Ti's products under callgrind, the
  // same shapes and blocking).
  [[gnu::noipa]] static S opaque_one() { return S(1); }

  // Zeroes the depth slots [depth, stride) of `panels` packed panels of
  // `width` values per depth step, laid out one after another (stride steps
  // each), as the panel-mode packers leave them. Both operands get zeros, so
  // that a slot adds 0 * 0 and never 0 * (a stale NaN).
  static void zero_depth_padding(S* packed, Index panels, Index width, Index depth, Index stride) {
    if (stride == depth) return;
    for (Index p = 0; p < panels; ++p)
      std::fill(packed + (p * stride + depth) * width, packed + (p + 1) * stride * width, S(0));
  }
};

}  // namespace prenorm::detail
