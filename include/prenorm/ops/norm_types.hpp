#pragma once
// Types shared by the normalization operators: the per-row statistics a
// forward pass saves for its backward pass, and how a backward writes dx.

#include "../core/types.hpp"

namespace prenorm {

// Saved by layer_norm_forward: mean and 1/sqrt(var + eps) of each row.
template <class Scalar>
struct LayerNormSaved {
  Vector<Scalar> mean;  // [rows]
  Vector<Scalar> rstd;  // [rows]

  LayerNormSaved() = default;
  explicit LayerNormSaved(Index rows) : mean(rows), rstd(rows) {}
  void resize(Index rows) {
    mean.resize(rows);
    rstd.resize(rows);
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
