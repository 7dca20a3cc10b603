#pragma once
// Types shared by the normalization operators: the per-row statistics a
// forward pass saves for its backward pass, and how a backward writes dx.

#include "../core/types.hpp"

namespace prenorm {

// Saved by layer_norm_forward: mean, 1/sqrt(var + eps) and mean - x_0 of each row.
template <class Scalar>
struct LayerNormSaved {
  Vector<Scalar> mean;   // [rows]
  Vector<Scalar> rstd;   // [rows]
  Vector<Scalar> delta;  // [rows]: mean - x_0, the mean of x - x_0 (x_0 the row's first
                         // element), from which the backward rebuilds the forward's xhat

  LayerNormSaved() = default;
  explicit LayerNormSaved(Index rows) : mean(rows), rstd(rows), delta(rows) {}
  void resize(Index rows) {
    mean.resize(rows);
    rstd.resize(rows);
    delta.resize(rows);
  }
};

// Saved by rms_norm_forward and crms_norm_forward: 1/sqrt(ms + eps) of each row.
template <class Scalar>
struct RmsNormSaved {
  Vector<Scalar> rrms;  // [rows]

  RmsNormSaved() = default;
  explicit RmsNormSaved(Index rows) : rrms(rows) {}
  void resize(Index rows) { rrms.resize(rows); }
};

// How a backward pass writes dx. Accumulate adds into dx, which is what a
// Pre-Norm block needs: the norm's input gradient joins the residual gradient.
// Parameter gradients (dgamma, dbeta) are always accumulated.
enum class GradWrite { Overwrite, Accumulate };

inline constexpr double kDefaultEpsilon = 1e-5;

}  // namespace prenorm
