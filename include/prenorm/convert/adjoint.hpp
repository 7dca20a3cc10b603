#pragma once
// Adjoints (transposed Jacobians) of the conversion steps in transforms.hpp,
// each its role's adjoint (roles.hpp) with that one step, for training
// through the converter (docs/DESIGN.md §6): given the gradient with respect
// to a step's output, each returns the gradient with respect to its input.
// Every step is linear in its tensor except the gamma/beta folding, where the
// product rule applies.
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
  ConvertWorkspace<double> ws;
  reader_adjoint(grad_weight, grad_bias, weight, gamma, beta, only(&Steps::fold_affine), grad_weight,
                 nullptr, grad_gamma, grad_beta, GradWrite::Accumulate, ws);
}

// Adjoint of recenter_rows: centering is symmetric, so center the gradient's rows.
inline void recenter_rows_adjoint(Matrix& grad_table) {
  table_adjoint(grad_table, only(&Steps::recenter), grad_table, GradWrite::Overwrite);
}

// Adjoint of recenter_output: center the gradient's columns (and bias).
inline void recenter_output_adjoint(Matrix& grad_weight, Vec& grad_bias) {
  ConvertWorkspace<double> ws;
  writer_adjoint(grad_weight, grad_bias, only(&Steps::recenter), grad_weight, grad_bias, ws);
}

// Adjoint of compress_table: the dropped column gets zero gradient. (n, d-1) -> (n, d).
inline void compress_table_adjoint(Matrix& grad_table) {
  Matrix full(grad_table.rows(), grad_table.cols() + 1);
  table_adjoint(grad_table, only(&Steps::compress_output), full, GradWrite::Overwrite);
  grad_table = std::move(full);
}

// Adjoint of compress_output: the dropped row (and bias element) get zero gradient.
inline void compress_output_adjoint(Matrix& grad_weight, Vec& grad_bias) {
  Matrix full(grad_weight.rows() + 1, grad_weight.cols());
  Vec full_bias(grad_bias.size() > 0 ? grad_bias.size() + 1 : 0);
  ConvertWorkspace<double> ws;
  writer_adjoint(grad_weight, grad_bias, only(&Steps::compress_output), full, full_bias, ws);
  grad_weight = std::move(full);
  grad_bias = std::move(full_bias);
}

// Adjoint of compress_input: W'' = W[:, :d-1] - W[:, d-1] 1', so
// dL/dW[:, :d-1] = G and dL/dW[:, d-1] = -G 1. (out, d-1) -> (out, d).
inline void compress_input_adjoint(Matrix& grad_weight) {
  Matrix full(grad_weight.rows(), grad_weight.cols() + 1);
  Vec none;
  ConvertWorkspace<double> ws;
  // Only the shape of W matters without a fold: full stands in for it.
  reader_adjoint(grad_weight, none, full, none, none, only(&Steps::compress_input), full, nullptr,
                 none, none, GradWrite::Overwrite, ws);
  grad_weight = std::move(full);
}

}  // namespace prenorm::conversion
