#pragma once
// The loops shared by the three normalization operators: argument checks,
// then the rows (in parallel, each row on one thread): a kernel pipelined over
// blocks of rows for the forwards, one call per row for the backwards, one call
// per column chunk for the parameter gradients.

#include <Eigen/Core>

#include <algorithm>
#include <type_traits>

#include "../../core/parallel.hpp"
#include "reduce.hpp"
#include "rows.hpp"

namespace prenorm::detail {

// A row needs at least one element to be normalized.
inline void check_width(const char* op, const char* name, Index rows, Index cols) {
  if (rows > 0 && cols < 1) fail(op, name, " has ", rows, " rows of width 0, expected a width >= 1");
}

template <class A, class B>
inline constexpr bool same_scalar = std::is_same_v<typename A::Scalar, typename B::Scalar>;

// Normalizes rows [begin, end) with a kernel that provides, for rows of width d:
//   Kernel::Scalar, Kernel::Stats, Kernel::kSums
//   first_pass(x)         packet_sums terms (kSums sums) over row x
//   stats(x, sums)        the row's statistics (after any further pass over x)
//   writer(x, y, stats)   fn(i, (T*)p) writing y[i..] from x[i..] (T a packet or the scalar)
// x_at(r) gives input row r, y_at(r) its output row, and on_stats(r, stats)
// receives the statistics.
//
// Row r is written in the same loop that takes the first pass of row r+1: the
// reduction's arithmetic then runs under the writes' memory traffic (RMSNorm
// 7 % faster at d=768, and CRMSNorm's extra sum of x almost free). The sums
// are exactly those of packet_sums over the row alone, so a row's result does
// not depend on where its block starts.
template <class Kernel, class XAt, class YAt, class OnStats>
void normalize_rows(const Kernel& kernel, Index d, Index begin, Index end, XAt x_at, YAt y_at,
                    OnStats on_stats) {
  using Scalar = typename Kernel::Scalar;
  const Scalar* x = x_at(begin);
  auto stats = kernel.stats(x, packet_sums<Scalar, Kernel::kSums>(d, kernel.first_pass(x)));
  for (Index r = begin;; ++r) {
    on_stats(r, stats);
    const auto write = kernel.writer(x, y_at(r), stats);
    if (r + 1 == end) {
      for_each_packet<Scalar>(d, write);
      return;
    }
    const Scalar* next = x_at(r + 1);
    const auto next_pass = kernel.first_pass(next);
    const auto sums = packet_sums<Scalar, Kernel::kSums>(d, [&](Index i, auto& acc) {
      write(i, &acc[0]);  // the packet type, as a pointer (see for_each_packet)
      next_pass(i, acc);
    });
    stats = kernel.stats(next, sums);
    x = next;
  }
}

// y = f(x) with a normalize_rows kernel. x, y: [rows x cols].
// y may be x itself (the in-place form): each row is read before it is written.
template <class XD, class YD, class Kernel, class OnStats>
void forward_rows(const char* op, const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y,
                  const Kernel& kernel, OnStats on_stats) {
  static_assert(same_scalar<XD, YD>, "prenorm: x and y must have the same scalar type");
  static_assert(widths_agree<XD::ColsAtCompileTime, YD::ColsAtCompileTime>,
                "prenorm: x and y have different fixed widths");
  check_shape(op, "y", y.rows(), y.cols(), x.rows(), x.cols(), "the shape of x");
  check_width(op, "x", x.rows(), x.cols());
  if (x.rows() == 0) return;
  const auto y_rows = mutable_rows(op, "y", y);
  with_const_rows(x, [&](const auto& x_rows) {
    for_each_row_block(x_rows.rows, x_rows.cols, [&](Index begin, Index end) {
      normalize_rows(
          kernel, x_rows.cols, begin, end, [&](Index r) { return x_rows.row(r); },
          [&](Index r) { return y_rows.row(r); }, on_stats);
    });
  });
}

// h += branch; y = f(h), with a normalize_rows kernel, in one pass over memory.
// h, branch, y: [rows x cols].
template <class HD, class BD, class YD, class Kernel, class OnStats>
void add_forward_rows(const char* op, const Eigen::MatrixBase<HD>& h,
                      const Eigen::MatrixBase<BD>& branch, const Eigen::MatrixBase<YD>& y,
                      const Kernel& kernel, OnStats on_stats) {
  static_assert(same_scalar<HD, BD> && same_scalar<HD, YD>,
                "prenorm: h, branch and y must have the same scalar type");
  static_assert(widths_agree<HD::ColsAtCompileTime, BD::ColsAtCompileTime> &&
                    widths_agree<HD::ColsAtCompileTime, YD::ColsAtCompileTime>,
                "prenorm: h, branch and y have different fixed widths");
  using Scalar = typename HD::Scalar;
  check_shape(op, "branch", branch.rows(), branch.cols(), h.rows(), h.cols(), "the shape of h");
  check_shape(op, "y", y.rows(), y.cols(), h.rows(), h.cols(), "the shape of h");
  check_width(op, "h", h.rows(), h.cols());
  if (h.rows() == 0) return;
  const auto h_rows = mutable_rows(op, "h", h);
  const auto y_rows = mutable_rows(op, "y", y);
  const Index d = h.cols();
  with_const_rows(branch, [&](const auto& b_rows) {
    for_each_row_block(h_rows.rows, h_rows.cols, [&](Index begin, Index end) {
      normalize_rows(
          kernel, h_rows.cols, begin, end,
          [&](Index r) {
            // The add runs as its own pass just before the row's first pass, while
            // the row is in L1. (Folding it into that pass was 30 % slower: with the
            // previous row's writes, that loop stored two streams.)
            RowArrayMap<Scalar>(h_rows.row(r), d) += ConstRowArrayMap<Scalar>(b_rows.row(r), d);
            return static_cast<const Scalar*>(h_rows.row(r));
          },
          [&](Index r) { return y_rows.row(r); }, on_stats);
    });
  });
}

// dx = f(dy, x) row by row: row_fn(dy_row, x_row, dx_row, r). dy, x, dx: [rows x cols].
template <class DYD, class XD, class DXD, class RowFn>
void backward_rows(const char* op, const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                   const Eigen::MatrixBase<DXD>& dx, RowFn row_fn) {
  static_assert(same_scalar<DYD, XD> && same_scalar<DYD, DXD>,
                "prenorm: dy, x and dx must have the same scalar type");
  static_assert(widths_agree<DYD::ColsAtCompileTime, XD::ColsAtCompileTime> &&
                    widths_agree<DXD::ColsAtCompileTime, XD::ColsAtCompileTime>,
                "prenorm: dy, x and dx have different fixed widths");
  check_shape(op, "dy", dy.rows(), dy.cols(), x.rows(), x.cols(), "the shape of x");
  check_shape(op, "dx", dx.rows(), dx.cols(), x.rows(), x.cols(), "the shape of x");
  check_width(op, "x", x.rows(), x.cols());
  if (x.rows() == 0) return;
  const auto dx_rows = mutable_rows(op, "dx", dx);
  with_const_rows(dy, [&](const auto& dy_rows) {
    with_const_rows(x, [&](const auto& x_rows) {
      for_each_row(x_rows.rows, x_rows.cols, [&](Index r) {
        row_fn(dy_rows.row(r), x_rows.row(r), dx_rows.row(r), r);
      });
    });
  });
}

// Parameter gradients summed over rows: chunk_fn(dy_rows, x_rows, begin, end)
// adds the rows' contributions to columns [begin, end), row after row. Each
// column is summed in row order by one thread, so the result does not depend
// on the thread count.
template <class DYD, class XD, class ChunkFn>
void column_chunks(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                   ChunkFn chunk_fn) {
  constexpr Index kChunk = 256;
  if (x.rows() == 0) return;
  with_const_rows(dy, [&](const auto& dy_rows) {
    with_const_rows(x, [&](const auto& x_rows) {
      const Index chunks = (x_rows.cols + kChunk - 1) / kChunk;
      for_each_row(chunks, x_rows.rows * kChunk, [&](Index c) {
        chunk_fn(dy_rows, x_rows, c * kChunk, std::min(x_rows.cols, (c + 1) * kChunk));
      });
    });
  });
}

template <class Saved>
void check_saved(const char* op, const char* name, const Saved& v, Index rows) {
  check_vector(op, name, v, rows, "one per row of x");
}

}  // namespace prenorm::detail
