#pragma once
// Numerically stable softmax over the rows of x [rows x n], optionally causal:
// row r uses its first limit(r) columns and the rest become 0 (a causal mask
// without -inf: the masked columns are never read, so they may hold anything).

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"

namespace prenorm {
namespace detail {

// In place over one contiguous row v [n]: softmax of v[0, limit), zeros after.
// limit <= 0 gives a row of zeros (a query that may see nothing).
template <class Scalar>
void softmax_row_inplace(Scalar* v, Index n, Index limit) {
  limit = std::clamp<Index>(limit, 0, n);
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> head(v, limit);
  if (limit > 0) {
    // exp(v - max) <= 1: no overflow, and the largest term is exactly 1 so the sum is >= 1.
    const Scalar max = head.maxCoeff();
    head = (head - max).exp();
    head *= Scalar(1) / head.sum();
  }
  std::fill(v + limit, v + n, Scalar(0));
}

// One step of the online softmax (FlashAttention's recurrence) over one row
// of a block of scores v [n], of which columns [lo, hi) are seen: with max and
// sum the row's running maximum and sum of exp(score - max) over the blocks
// before (-inf and 0 before the first), it updates both, leaves
// exp(v - max) in v[lo, hi) and zeros around, and returns the factor
// exp(old max - new max) by which the output accumulated so far must be
// scaled (0 after no seen column yet; 1 when this block sees nothing).
template <class Scalar>
Scalar online_softmax_step(Scalar* v, Index n, Index lo, Index hi, Scalar& max, Scalar& sum) {
  lo = std::clamp<Index>(lo, 0, n);
  hi = std::clamp<Index>(hi, lo, n);
  std::fill(v, v + lo, Scalar(0));
  std::fill(v + hi, v + n, Scalar(0));
  if (lo == hi) return Scalar(1);
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> seen(v + lo, hi - lo);
  const Scalar new_max = std::max(max, seen.maxCoeff());
  const Scalar rescale = std::exp(max - new_max);  // exp(-inf) = 0 at the first block
  seen = (seen - new_max).exp();
  sum = sum * rescale + seen.sum();
  max = new_max;
  return rescale;
}

struct FullRows {
  Index n;
  Index operator()(Index) const { return n; }
};

}  // namespace detail

// y = softmax(x) row by row; row r covers columns [0, limit(r)) and is 0 after.
// x, y: [rows x n], y may be x (in place); limit: Index(Index row).
template <class XD, class YD, class Limit>
void softmax_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y_const,
                     Limit limit) {
  using Scalar = typename XD::Scalar;
  static_assert(std::is_same_v<Scalar, typename YD::Scalar>,
                "prenorm::softmax_forward: x and y must have the same scalar type");
  auto& y = const_cast<Eigen::MatrixBase<YD>&>(y_const).derived();
  if (y.rows() != x.rows() || y.cols() != x.cols())
    detail::fail("softmax_forward", "y is ", y.rows(), " x ", y.cols(), ", expected ", x.rows(),
                 " x ", x.cols(), " (the shape of x)");
  if (y.cols() > 1 && y.colStride() != 1)
    detail::fail("softmax_forward", "y must be row-major with contiguous rows (got a column stride of ",
                 y.colStride(), ")");
  const Index n = x.cols();
  if (n == 0) return;
  bool in_place = false;  // y is x itself: skip the copy
  if constexpr ((int(Eigen::internal::traits<XD>::Flags) & Eigen::DirectAccessBit) != 0)
    in_place = x.derived().data() == y.data() && x.rowStride() == y.rowStride();
  detail::for_each_row(x.rows(), n, [&](Index r) {
    Scalar* row = &y.coeffRef(r, 0);
    if (!in_place) Eigen::Map<RowMatrix<Scalar>>(row, 1, n) = x.row(r);
    detail::softmax_row_inplace(row, n, limit(r));
  });
}

// y = softmax(x) over whole rows. x, y: [rows x n], y may be x.
template <class XD, class YD>
void softmax_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  softmax_forward(x, y, detail::FullRows{x.cols()});
}

// In place: x = softmax(x), row r over columns [0, limit(r)).
template <class XD, class Limit>
void softmax(const Eigen::MatrixBase<XD>& x, Limit limit) {
  softmax_forward(x, x, limit);
}

template <class XD>
void softmax(const Eigen::MatrixBase<XD>& x) {
  softmax_forward(x, x);
}

}  // namespace prenorm
