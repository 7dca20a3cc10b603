#pragma once
// Embedding table: row lookup by integer id, and the product with the table
// that a tied head computes (logits = x table^T), which pack() can run on the
// GEMM backend's packed copy as Linear's (layers/linear.hpp).

#include <Eigen/Core>

#include <span>
#include <string>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "linear.hpp"

namespace prenorm {

template <class S>
class Embedding {
 public:
  using Scalar = S;

  RowMatrix<S> table;  // (rows, width): one row per id

  Embedding() = default;
  Embedding(Index rows, Index width) : table(RowMatrix<S>::Zero(rows, width)) {}

  Index rows() const { return table.rows(); }
  Index width() const { return table.cols(); }

  // Packs the table for multiply_transposed (a no-op without oneDNN or for
  // double); unpack() before changing it in place. Copies are not packed.
  void pack() { packed_.pack(table, Vector<S>()); }
  void unpack() { packed_.reset(); }
  bool is_packed() const { return packed_.packed(); }

  // y [N x rows] = x [N x width] table^T: a tied head's logits.
  void multiply_transposed(const ConstRowsRef<S>& x, RowsRef<S> y) const {
    constexpr const char* op = "Embedding::multiply_transposed";
    if (x.cols() != table.cols() || y.rows() != x.rows() || y.cols() != table.rows())
      detail::fail(op, "x is ", x.rows(), " x ", x.cols(), " and y ", y.rows(), " x ", y.cols(),
                   ", expected N x ", table.cols(), " and N x ", table.rows(), " (the table is ",
                   table.rows(), " x ", table.cols(), ")");
    if (x.rows() == 0 || packed_.multiply(op, x, y, table, Vector<S>(), false)) return;
    y.noalias() = x * table.transpose();
  }

  // Throws unless every id is in [0, rows); `op` names the caller in the message.
  void check_ids(std::span<const int> ids, const char* op = "Embedding::forward") const {
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || ids[i] >= table.rows())
        detail::fail(op, "id ", ids[i], " at index ", i, " is out of range [0, ", table.rows(), ")");
  }

  // y [ids x width] = table[ids]. Ids are checked first.
  template <class YD>
  void forward(std::span<const int> ids, const Eigen::MatrixBase<YD>& y_const) const {
    auto& y = const_cast<Eigen::MatrixBase<YD>&>(y_const).derived();
    if (y.rows() != Index(ids.size()) || y.cols() != table.cols())
      detail::fail("Embedding::forward", "y is ", y.rows(), " x ", y.cols(), ", expected ",
                   ids.size(), " x ", table.cols(), " (ids x width)");
    check_ids(ids);
    detail::for_each_row(y.rows(), y.cols(), [&](Index r) { y.row(r) = table.row(ids[r]); });
  }

  // Throws unless table is (rows, width). name: a string or a callable returning one.
  template <class Name>
  void validate(const char* op, const Name& name, Index rows, Index width) const {
    if (table.rows() != rows || table.cols() != width)
      detail::fail(op, detail::tensor_name(name), ".table is (", table.rows(), " x ", table.cols(),
                   "), expected (", rows, " x ", width, ")");
  }

 private:
  detail::PackedSlot<S> packed_;
};

}  // namespace prenorm
