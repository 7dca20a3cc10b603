#pragma once
// Matrix and vector types shared by every module.
//
// Activations are row-major [tokens x width]: one token per row, so a row is
// contiguous and a row-wise reduction reads memory in order.

#include <Eigen/Core>

#include <cstddef>

namespace prenorm {

using Index = Eigen::Index;
inline constexpr int Dynamic = Eigen::Dynamic;

// [rows x Cols], row-major. Eigen forbids a row-major single column, so a
// width-1 matrix falls back to column-major (same memory layout).
template <class Scalar, int Cols = Dynamic>
using RowMatrix =
    Eigen::Matrix<Scalar, Dynamic, Cols, (Cols == 1 ? Eigen::ColMajor : Eigen::RowMajor)>;

// [N], a column vector.
template <class Scalar, int N = Dynamic>
using Vector = Eigen::Matrix<Scalar, N, 1>;

// Row-major views that accept whole matrices and blocks of larger matrices
// (any row stride, contiguous rows).
template <class Scalar, int Cols = Dynamic>
using RowsRef = Eigen::Ref<RowMatrix<Scalar, Cols>, 0, Eigen::OuterStride<>>;
template <class Scalar, int Cols = Dynamic>
using ConstRowsRef = Eigen::Ref<const RowMatrix<Scalar, Cols>, 0, Eigen::OuterStride<>>;

template <class Scalar, int N = Dynamic>
using VectorRef = Eigen::Ref<Vector<Scalar, N>>;
template <class Scalar, int N = Dynamic>
using ConstVectorRef = Eigen::Ref<const Vector<Scalar, N>>;

}  // namespace prenorm
