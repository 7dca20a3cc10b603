#pragma once
// The per-tensor steps of the conversion (docs/DESIGN.md §2, §3, §5), one function each,
// in double. A "table" holds one main-branch vector per row (embeddings, the
// cls token as a 1-row table); a writer linear has the main branch on its
// output axis (rows of W); a reader linear has it on its input axis (columns).

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace prenorm::conversion {

using Matrix = RowMatrix<double>;
using Vec = Vector<double>;

// Reader: W' = W diag(gamma), b' = b + W beta. W (out, d); b (out) or empty
// (a bias is created when beta is given); gamma, beta (d) or empty.
inline void fold_affine(Matrix& weight, Vec& bias, const Vec& gamma, const Vec& beta) {
  if (beta.size() > 0) {
    if (bias.size() == 0) bias = Vec::Zero(weight.rows());
    bias.noalias() += weight * beta;  // uses W before gamma is folded in
  }
  if (gamma.size() > 0) weight = weight * gamma.asDiagonal();
}

// Table: each row minus its mean, so each written vector is zero-mean. table (n, d).
inline void recenter_rows(Matrix& table) {
  table.colwise() -= table.rowwise().mean();
}

// Writer: W' = W - 1 (1'W)/d, b' = b - mean(b) 1. W (d, in), b (d) or empty.
inline void recenter_output(Matrix& weight, Vec& bias) {
  weight.rowwise() -= weight.colwise().mean();
  if (bias.size() > 0) bias.array() -= bias.mean();
}

// Table: drop the last coordinate. (n, d) -> (n, d-1).
inline void compress_table(Matrix& table) {
  table = Matrix(table.leftCols(table.cols() - 1));
}

// Writer: drop the last output coordinate. W (d, in) -> (d-1, in), b (d) -> (d-1).
inline void compress_output(Matrix& weight, Vec& bias) {
  weight = Matrix(weight.topRows(weight.rows() - 1));
  if (bias.size() > 0) bias = Vec(bias.head(bias.size() - 1));
}

// Reader: fold the dropped coordinate x_d = -1'x~ into the others:
// W'' = W[:, :d-1] - W[:, d-1] 1'. W (out, d) -> (out, d-1). The bias is unchanged.
inline void compress_input(Matrix& weight) {
  const Index n = weight.cols() - 1;
  Matrix compressed = weight.leftCols(n);
  compressed.colwise() -= weight.col(n);
  weight = std::move(compressed);
}

// Table: append the coordinate that makes each row zero-mean. (n, d-1) -> (n, d).
inline void decompress_table(Matrix& table) {
  Matrix full(table.rows(), table.cols() + 1);
  full.leftCols(table.cols()) = table;
  full.col(table.cols()) = -table.rowwise().sum();
  table = std::move(full);
}

// Writer: append the output row that makes every column zero-mean.
// W (d-1, in) -> (d, in), b (d-1) -> (d).
inline void decompress_output(Matrix& weight, Vec& bias) {
  Matrix full(weight.rows() + 1, weight.cols());
  full.topRows(weight.rows()) = weight;
  full.row(weight.rows()) = -weight.colwise().sum();
  weight = std::move(full);
  if (bias.size() > 0) {
    Vec full_bias(bias.size() + 1);
    full_bias.head(bias.size()) = bias;
    full_bias(bias.size()) = -bias.sum();
    bias = std::move(full_bias);
  }
}

// Reader: the decompressed input's last coordinate is -1'x~, so a zero column
// reads x~ exactly as before (any column would do, with the others adjusted).
// W (out, d-1) -> (out, d).
inline void decompress_input(Matrix& weight) {
  Matrix full = Matrix::Zero(weight.rows(), weight.cols() + 1);
  full.leftCols(weight.cols()) = weight;
  weight = std::move(full);
}

// Largest |mean| over the main-branch axis: of each row of a table, of each
// column (and the bias) of a writer linear.
inline double max_abs_row_mean(const Matrix& table) {
  return table.rows() == 0 ? 0.0 : table.rowwise().mean().cwiseAbs().maxCoeff();
}
inline double max_abs_output_mean(const Matrix& weight, const Vec& bias) {
  double worst = weight.rows() == 0 ? 0.0 : weight.colwise().mean().cwiseAbs().maxCoeff();
  if (bias.size() > 0) worst = std::max(worst, std::abs(bias.mean()));
  return worst;
}

}  // namespace prenorm::conversion
