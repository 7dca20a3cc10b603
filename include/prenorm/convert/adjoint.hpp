#pragma once
// Adjoints (transposed Jacobians) of the conversion steps in transforms.hpp,
// for training through the converter (docs/DESIGN.md §6): given the
// gradient with respect to a step's output, each returns the gradient with
// respect to its input. Every step is linear in its tensor except the
// gamma/beta folding, where the product rule applies.
// Applied in the reverse order of the forward steps.

#include <Eigen/Core>

#include "transforms.hpp"

namespace prenorm::conversion {

// Adjoint of fold_affine: W' = W diag(gamma), b' = b + W beta.
// In: grad_weight = dL/dW' (out, d), grad_bias = dL/db' (out) or empty; the
// unfolded weight W (out, d); gamma, beta (d), or empty where fold_affine had
// none. Out: grad_weight becomes dL/dW; grad_bias stays dL/db; dL/dgamma and
// dL/dbeta are added to grad_gamma, grad_beta (d) where gamma, beta exist.
//   dL/dW     = dL/dW' diag(gamma) + dL/db' beta^T
//   dL/dgamma = sum over rows of (W .* dL/dW')
//   dL/dbeta  = W^T dL/db'
inline void fold_affine_adjoint(Matrix& grad_weight, const Vec& grad_bias, const Matrix& weight,
                                const Vec& gamma, const Vec& beta, Vec& grad_gamma,
                                Vec& grad_beta) {
  if (gamma.size() > 0)
    grad_gamma.noalias() +=
        (weight.array() * grad_weight.array()).colwise().sum().matrix().transpose();
  const bool beta_folded = beta.size() > 0 && grad_bias.size() > 0;
  if (beta_folded) grad_beta.noalias() += weight.transpose() * grad_bias;
  if (gamma.size() > 0) grad_weight = grad_weight * gamma.asDiagonal();
  if (beta_folded) grad_weight.noalias() += grad_bias * beta.transpose();
}

// Adjoint of recenter_rows: centering is symmetric, so center the gradient's rows.
inline void recenter_rows_adjoint(Matrix& grad_table) { recenter_rows(grad_table); }

// Adjoint of recenter_output: center the gradient's columns (and bias).
inline void recenter_output_adjoint(Matrix& grad_weight, Vec& grad_bias) {
  recenter_output(grad_weight, grad_bias);
}

// Adjoint of compress_table: the dropped column gets zero gradient. (n, d-1) -> (n, d).
inline void compress_table_adjoint(Matrix& grad_table) {
  Matrix full = Matrix::Zero(grad_table.rows(), grad_table.cols() + 1);
  full.leftCols(grad_table.cols()) = grad_table;
  grad_table = std::move(full);
}

// Adjoint of compress_output: the dropped row (and bias element) get zero gradient.
inline void compress_output_adjoint(Matrix& grad_weight, Vec& grad_bias) {
  Matrix full = Matrix::Zero(grad_weight.rows() + 1, grad_weight.cols());
  full.topRows(grad_weight.rows()) = grad_weight;
  grad_weight = std::move(full);
  if (grad_bias.size() > 0) {
    Vec full_bias = Vec::Zero(grad_bias.size() + 1);
    full_bias.head(grad_bias.size()) = grad_bias;
    grad_bias = std::move(full_bias);
  }
}

// Adjoint of compress_input: W'' = W[:, :d-1] - W[:, d-1] 1', so
// dL/dW[:, :d-1] = G and dL/dW[:, d-1] = -G 1. (out, d-1) -> (out, d).
inline void compress_input_adjoint(Matrix& grad_weight) {
  Matrix full(grad_weight.rows(), grad_weight.cols() + 1);
  full.leftCols(grad_weight.cols()) = grad_weight;
  full.col(grad_weight.cols()) = -grad_weight.rowwise().sum();
  grad_weight = std::move(full);
}

}  // namespace prenorm::conversion
