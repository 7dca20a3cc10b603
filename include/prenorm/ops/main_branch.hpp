#pragma once
// The conversion maths of docs/DESIGN.md §2-§6, one vector at a time, written once.
// Every tensor of a Pre-LN model either WRITES vectors into the main branch
// (a table row, a writer linear's column or bias) or READS the branch behind
// a norm with affine gamma, beta (a reader linear's row). With d the model
// width and m = d (Pre-RMSNorm) or d - 1 (Pre-CRMSNorm) the branch width:
//
//   write            v [d]  ->  K(v - mean(v)) [m]        recenter, then K drops
//                                                         the last coordinate (m < d)
//   write_adjoint    g [m]  ->  pad(g) - mean(pad(g)) [d] pad appends a zero (m < d)
//   read             w [d]  ->  C(w * gamma) [m]          C(a) = a[:m] - a[d-1]: the
//   read_bias        b + w . beta                         dropped input x_d = -sum(x~)
//   read_adjoint     the product rule of read and read_bias, one row
//   read_input       x [m]  ->  gamma * decompress(x) + beta [d]: the same map
//                    seen from the activations, W'' x + b' = W read_input(x) + b
//   read_input_adjoint   dx = C(g * gamma) (read again), dgamma += xd * g, dbeta += g
//
// The converter (convert/roles.hpp) applies them to whole tensors; a model
// keeping a tensor in its Pre-LN form applies them per token (the keep-tied
// head, models/gpt.hpp); training's fused backward applies the adjoints to
// activations (train/reparam_backward.hpp). They live in ops/ so that the
// models can use them without depending on convert/.
//
// Vectors named "row" below are row expressions (1 x n), as matrix rows are;
// gamma and beta are column vectors (d), or empty for "no affine". Outputs
// are written in place through any writable expression; the width m is the
// output's (write, read) or the input's (write_adjoint, read_input) size.

#include <Eigen/Core>

#include "../core/types.hpp"
#include "norm_types.hpp"

namespace prenorm::branch {

// write: out [m] = the first m coordinates of v - mean(v). v [d], any orientation.
template <class V, class Out>
void write(const V& v, Out&& out) {
  using S = typename V::Scalar;
  const Index m = out.size();
  const S mean = v.sum() / S(v.size());
  out = (v.head(m).array() - mean).matrix();
}

// The adjoint of write: out [d] = pad(g) - mean(pad(g)), pad appending a zero
// when d = m + 1; added to out with GradWrite::Accumulate. g [m], any orientation.
template <class G, class Out>
void write_adjoint(const G& g, Out&& out, GradWrite mode = GradWrite::Overwrite) {
  using S = typename G::Scalar;
  const Index m = g.size(), d = out.size();
  const S mean = g.sum() / S(d);
  if (mode == GradWrite::Overwrite) {
    out.head(m) = (g.array() - mean).matrix();
    if (d > m) out[d - 1] = -mean;
  } else {
    out.head(m) += (g.array() - mean).matrix();
    if (d > m) out[d - 1] -= mean;
  }
}

// Decompression of one zero-mean vector: out [d] = (x, -sum(x)) for x [d-1];
// a copy when out has x's size.
template <class X, class Out>
void decompress_row(const X& x, Out&& out) {
  const Index m = x.size();
  out.head(m) = x;
  if (out.size() > m) out[m] = -x.sum();
}

// read, the weight: out [m] = C(w * gamma), w a row [d]; gamma (d) or empty (1).
// The product is rounded before the subtraction (two passes, not one fused
// multiply-subtract), as in the step-by-step conversion (fold_affine, then
// compress_input): the converter's results do not depend on the fusion.
template <class W, class Out, class S = typename W::Scalar>
void read(const W& w, const Vector<S>& gamma, Out&& out) {
  const Index d = w.size(), m = out.size();
  if (gamma.size() == 0) {
    out = w.head(m);
    if (m < d) out.array() -= w[d - 1];
    return;
  }
  out = w.head(m).cwiseProduct(gamma.head(m).transpose());
  if (m < d) out.array() -= w[d - 1] * gamma[d - 1];
}

// read, the bias: b + w . beta; b when beta is empty. w a row [d]. (A whole
// reader's biases are one GEMV instead: conversion::reader_bias_rows.)
template <class W, class S = typename W::Scalar>
S read_bias(const W& w, S b, const Vector<S>& beta) {
  return beta.size() == 0 ? b : b + w.dot(beta.transpose());
}

// The adjoint of read and of its bias b' = b + w . beta for one row: g [m] = dL/dw'', gb = dL/db'
// (0 without a bias), w [d] the unfolded row. gw [d] = dL/dw (may be g itself
// when m = d); pg [d] += w * C^T(g) (dL/dgamma, when gamma is given), pb [d]
// += gb * w (dL/dbeta, when beta is given). C^T(g) = (g, -sum(g)).
template <class G, class W, class GW, class PG, class PB, class S = typename W::Scalar>
void read_adjoint(const G& g, S gb, const W& w, const Vector<S>& gamma, const Vector<S>& beta,
                  GW&& gw, PG&& pg, PB&& pb) {
  const Index m = g.size(), d = w.size();
  if (m < d) {  // before gw.head(m) is written: g may alias it
    gw[d - 1] = -g.sum();
    gw.head(m) = g;
  } else {
    gw = g;
  }
  if (gamma.size() > 0) pg += w.cwiseProduct(gw);
  if (beta.size() > 0) pb += gb * w;
  if (gamma.size() > 0 && beta.size() > 0) gw = gw.cwiseProduct(gamma.transpose()) + gb * beta.transpose();
  else if (gamma.size() > 0) gw = gw.cwiseProduct(gamma.transpose());
  else if (beta.size() > 0) gw += gb * beta.transpose();
}

// read_input: u [d] = gamma * decompress(x) + beta for the normalized branch
// x [m] (a row), as the unconverted reader sees it. A reader's converted
// weight and bias applied to x equal its original ones applied to u.
template <class X, class U, class S = typename X::Scalar>
void read_input(const X& x, const Vector<S>& gamma, const Vector<S>& beta, U&& u) {
  decompress_row(x, u);
  u = u.cwiseProduct(gamma.transpose()) + beta.transpose();
}

// The adjoint of read_input for one token: g [d] = dL/du, xd [d] =
// decompress(x). dx [m] = C(g * gamma); pg [d] += xd * g; pb [d] += g.
template <class G, class XD, class DX, class PG, class PB, class S = typename G::Scalar>
void read_input_adjoint(const G& g, const XD& xd, const Vector<S>& gamma, DX&& dx, PG&& pg,
                        PB&& pb) {
  pg += xd.cwiseProduct(g);
  pb += g;
  read(g, gamma, dx);
}

}  // namespace prenorm::branch
