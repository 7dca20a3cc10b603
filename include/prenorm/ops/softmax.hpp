#pragma once
// Numerically stable softmax over the rows of x [rows x n], optionally causal:
// row r uses its first limit(r) columns and the rest become 0 (a causal mask
// without -inf: the masked columns are never read, so they may hold anything).

#include <Eigen/Core>

#include <algorithm>

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
