#pragma once
// Row views shared by the normalization kernels, and the argument checks that
// name the operation, the argument, and the expected and actual shapes.
//
// The kernels work on raw rows: a pointer to row 0, a row stride, and
// contiguous elements within a row. Any row-major matrix, Map or block of one
// qualifies without a copy; other expressions are evaluated once.

#include <Eigen/Core>

#include <type_traits>

#include "../../core/error.hpp"
#include "../../core/types.hpp"

namespace prenorm::detail {

template <class Scalar>
struct ConstRows {
  const Scalar* data;
  Index rows, cols, stride;  // stride: elements from one row to the next
  const Scalar* row(Index r) const { return data + r * stride; }
};

template <class Scalar>
struct MutableRows {
  Scalar* data;
  Index rows, cols, stride;
  Scalar* row(Index r) const { return data + r * stride; }
};

template <class Derived>
inline constexpr bool has_direct_access =
    (int(Eigen::internal::traits<Derived>::Flags) & Eigen::DirectAccessBit) != 0;

template <class Derived>
inline constexpr bool is_writable =
    has_direct_access<Derived> && (int(Eigen::internal::traits<Derived>::Flags) & Eigen::LvalueBit) != 0;

// Whether x's elements within a row are contiguous, so it can be used in place.
template <class Derived>
bool rows_are_contiguous(const Eigen::MatrixBase<Derived>& x) {
  if constexpr (has_direct_access<Derived>) {
    return x.cols() <= 1 || x.colStride() == 1;
  } else {
    return false;
  }
}

template <class Derived>
Index row_stride(const Eigen::MatrixBase<Derived>& x) {
  return x.rowStride();  // right for row-major matrices and for single columns
}

// Calls fn(ConstRows) on x without copying when x's rows are contiguous, and on
// a row-major copy of x otherwise (an expression, or a column-major matrix).
template <class Derived, class Fn>
decltype(auto) with_const_rows(const Eigen::MatrixBase<Derived>& x, Fn&& fn) {
  using Scalar = typename Derived::Scalar;
  if constexpr (has_direct_access<Derived>) {
    if (rows_are_contiguous(x))
      return fn(ConstRows<Scalar>{x.derived().data(), x.rows(), x.cols(), row_stride(x)});
  }
  const RowMatrix<Scalar, Derived::ColsAtCompileTime> copy = x;
  return fn(ConstRows<Scalar>{copy.data(), copy.rows(), copy.cols(), copy.cols()});
}

// The writable rows of an output argument, taken as const& per Eigen's idiom
// for output parameters (so blocks and Maps bind too).
template <class Derived>
MutableRows<typename Derived::Scalar> mutable_rows(const char* op, const char* name,
                                                   const Eigen::MatrixBase<Derived>& y) {
  static_assert(is_writable<Derived>,
                "prenorm: an output must be a writable matrix, Map or block (not an expression)");
  if (!rows_are_contiguous(y))
    fail(op, name, " must be row-major with contiguous rows (got a column stride of ",
         y.colStride(), ")");
  auto& yw = const_cast<Eigen::MatrixBase<Derived>&>(y).derived();
  return {yw.data(), yw.rows(), yw.cols(), row_stride(y)};
}

// A [rows x cols] argument must have the shape of `reference`.
inline void check_shape(const char* op, const char* name, Index rows, Index cols,
                        Index expected_rows, Index expected_cols, const char* reference) {
  if (rows != expected_rows || cols != expected_cols)
    fail(op, name, " is ", rows, " x ", cols, ", expected ", expected_rows, " x ", expected_cols,
         " (", reference, ")");
}

// A vector argument (gamma, beta, saved statistics) must have `expected` elements.
template <class Derived>
void check_vector(const char* op, const char* name, const Eigen::MatrixBase<Derived>& v,
                  Index expected, const char* reference) {
  if (v.size() != expected)
    fail(op, name, " has ", v.size(), " elements, expected ", expected, " (", reference, ")");
}

// Compile-time width agreement: two fixed widths must be equal.
template <int A, int B>
inline constexpr bool widths_agree = (A == Eigen::Dynamic || B == Eigen::Dynamic || A == B);

// Contiguous coefficients of a parameter vector (gamma, beta) of `expected` elements.
template <class Derived>
const typename Derived::Scalar* vector_data(const char* op, const char* name,
                                            const Eigen::MatrixBase<Derived>& v, Index expected) {
  static_assert(has_direct_access<Derived>,
                "prenorm: gamma and beta must be vectors with direct access (not expressions)");
  static_assert(Derived::RowsAtCompileTime == 1 || Derived::ColsAtCompileTime == 1,
                "prenorm: gamma and beta must be vectors");
  check_vector(op, name, v, expected, "the width of x");
  if (v.size() > 1 && v.innerStride() != 1)
    fail(op, name, " must be contiguous (inner stride ", v.innerStride(), ")");
  return v.derived().data();
}

template <class Derived>
typename Derived::Scalar* mutable_vector_data(const char* op, const char* name,
                                              const Eigen::MatrixBase<Derived>& v, Index expected) {
  static_assert(is_writable<Derived>, "prenorm: a gradient output must be a writable vector");
  static_assert(Derived::RowsAtCompileTime == 1 || Derived::ColsAtCompileTime == 1,
                "prenorm: dgamma and dbeta must be vectors");
  check_vector(op, name, v, expected, "the width of x");
  if (v.size() > 1 && v.innerStride() != 1)
    fail(op, name, " must be contiguous (inner stride ", v.innerStride(), ")");
  return const_cast<Eigen::MatrixBase<Derived>&>(v).derived().data();
}

// Maps over one contiguous row, for the elementwise passes (Eigen vectorizes these).
template <class Scalar>
using RowArrayMap = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using ConstRowArrayMap = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

}  // namespace prenorm::detail
