#pragma once
// The per-tensor steps of the conversion (docs/DESIGN.md §2, §3, §5), one
// function each, in double, in place. A "table" holds one main-branch vector
// per row (embeddings, the cls token as a 1-row table); a writer linear has
// the main branch on its output axis (rows of W); a reader linear has it on
// its input axis (columns). Each is its role's function (roles.hpp) with that
// one step.

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "roles.hpp"

namespace prenorm::conversion {

using Matrix = RowMatrix<double>;
using Vec = Vector<double>;

// Reader: W' = W diag(gamma), b' = b + W beta. W (out, d); b (out) or empty
// (a bias is created when beta is given); gamma, beta (d) or empty.
inline void fold_affine(Matrix& weight, Vec& bias, const Vec& gamma, const Vec& beta) {
  if (beta.size() > 0 && bias.size() == 0) bias = Vec::Zero(weight.rows());
  reader_forward(weight, bias, gamma, beta, only(&Steps::fold_affine), weight, bias);
}

// Table: each row minus its mean, so each written vector is zero-mean. table (n, d).
inline void recenter_rows(Matrix& table) { table_forward(table, only(&Steps::recenter), table); }

// Writer: W' = W - 1 (1'W)/d, b' = b - mean(b) 1. W (d, in), b (d) or empty.
inline void recenter_output(Matrix& weight, Vec& bias) {
  ConvertWorkspace<double> ws;
  writer_forward(weight, bias, only(&Steps::recenter), weight, bias, ws);
}

namespace detail {

// A table or writer along one step that changes its width.
inline void table_step(Matrix& table, const Steps& s) {
  Matrix out(table.rows(), output_width(table.cols(), s));
  table_forward(table, s, out);
  table = std::move(out);
}
inline void writer_step(Matrix& weight, Vec& bias, const Steps& s) {
  Matrix out(output_width(weight.rows(), s), weight.cols());
  Vec out_bias(bias.size() > 0 ? output_width(bias.size(), s) : 0);
  ConvertWorkspace<double> ws;
  writer_forward(weight, bias, s, out, out_bias, ws);
  weight = std::move(out);
  bias = std::move(out_bias);
}
inline void reader_step(Matrix& weight, const Steps& s) {
  Matrix out(weight.rows(), input_width(weight.cols(), s));
  Vec no_bias;
  reader_forward(weight, Vec(), Vec(), Vec(), s, out, no_bias);
  weight = std::move(out);
}

}  // namespace detail

// Table: drop the last coordinate. (n, d) -> (n, d-1).
inline void compress_table(Matrix& table) { detail::table_step(table, only(&Steps::compress_output)); }

// Writer: drop the last output coordinate. W (d, in) -> (d-1, in), b (d) -> (d-1).
inline void compress_output(Matrix& weight, Vec& bias) {
  detail::writer_step(weight, bias, only(&Steps::compress_output));
}

// Reader: fold the dropped coordinate x_d = -1'x~ into the others:
// W'' = W[:, :d-1] - W[:, d-1] 1'. W (out, d) -> (out, d-1). The bias is unchanged.
inline void compress_input(Matrix& weight) { detail::reader_step(weight, only(&Steps::compress_input)); }

// Table: append the coordinate that makes each row zero-mean. (n, d-1) -> (n, d).
inline void decompress_table(Matrix& table) { detail::table_step(table, only(&Steps::decompress_output)); }

// Writer: append the output row that makes every column zero-mean.
// W (d-1, in) -> (d, in), b (d-1) -> (d).
inline void decompress_output(Matrix& weight, Vec& bias) {
  detail::writer_step(weight, bias, only(&Steps::decompress_output));
}

// Reader: the decompressed input's last coordinate is -1'x~, so a zero column
// reads x~ exactly as before (any column would do, with the others adjusted).
// W (out, d-1) -> (out, d).
inline void decompress_input(Matrix& weight) { detail::reader_step(weight, only(&Steps::decompress_input)); }

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
