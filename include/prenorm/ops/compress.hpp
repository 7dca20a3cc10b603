#pragma once
// Compression of the zero-mean main branch (Pre-CRMSNorm): a zero-mean
// x in R^d is stored as its first d-1 coordinates; decompression restores
// x_d = -1'x~.

#include <Eigen/Core>

#include "crms_norm.hpp"
#include "detail/reduce.hpp"
#include "detail/row_loops.hpp"

namespace prenorm {

// y = x[:, :d-1]. x: [rows x d] (zero-mean rows), y: [rows x (d-1)].
template <class XD, class YD>
void compress(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  constexpr const char* op = "compress";
  detail::check_compressed_width(op, x.cols() - 1);
  detail::check_shape(op, "y", y.rows(), y.cols(), x.rows(), x.cols() - 1,
                      "x has one more column");
  const_cast<Eigen::MatrixBase<YD>&>(y) = x.leftCols(x.cols() - 1);
}

// y[:, :d-1] = x~; y[:, d-1] = -sum(x~). x~: [rows x (d-1)], y: [rows x d].
template <class XD, class YD>
void decompress(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "decompress";
  detail::check_compressed_width(op, x.cols());
  detail::check_shape(op, "y", y.rows(), y.cols(), x.rows(), x.cols() + 1,
                      "one more column than x");
  if (x.rows() == 0) return;
  const auto y_rows = detail::mutable_rows(op, "y", y);
  const Index n = x.cols();
  detail::with_const_rows(x, [&](const auto& x_rows) {
    detail::for_each_row(x_rows.rows, n, [&](Index r) {
      const Scalar* xr = x_rows.row(r);
      Scalar* yr = y_rows.row(r);
      detail::RowArrayMap<Scalar>(yr, n) = detail::ConstRowArrayMap<Scalar>(xr, n);
      yr[n] = -detail::sum(xr, n);
    });
  });
}

}  // namespace prenorm
