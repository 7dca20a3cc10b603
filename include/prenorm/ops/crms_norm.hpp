#pragma once
// CRMSNorm over the rows of a compressed x~ [rows x (d-1)]:
//   y = x~ / sqrt((||x~||^2 + (1'x~)^2) / d + eps),
// with d and eps those of the uncompressed width. The result is exactly the
// first d-1 coordinates of RMSNorm(decompress(x~)), where decompress appends
// x_d = -1'x~: a zero-mean vector loses nothing when its last coordinate is
// dropped. No affine: a converted model has gamma and beta folded away.

#include <Eigen/Core>

#include <cmath>

#include "../core/error.hpp"
#include "detail/reduce.hpp"
#include "detail/row_loops.hpp"
#include "norm_types.hpp"

namespace prenorm {
namespace detail {

// CRMSNorm rows for normalize_rows: y = x~ * rrms, rrms = 1/sqrt((||x~||^2 + (1'x~)^2)/d + eps).
// x~, y [d-1]; d the uncompressed width.
template <class S>
struct CrmsNormKernel {
  using Scalar = S;
  using Stats = S;  // rrms
  static constexpr int kSums = 2;

  Index d;
  S epsilon;

  auto first_pass(const S* x) const {  // {sum_i x_i, sum_i x_i^2}
    return [x](Index i, auto& acc) {
      using T = std::decay_t<decltype(acc[0])>;
      using namespace Eigen::internal;
      const T v = load<T>(x + i);
      acc[0] = padd(acc[0], v);
      acc[1] = pmadd(v, v, acc[1]);
    };
  }
  S stats(const S*, const std::array<S, kSums>& sums) const {
    // pmadd: an explicit FMA where the target has one, so that no compiler
    // contraction makes a row's result depend on the code path it took.
    return S(1) / std::sqrt(Eigen::internal::pmadd(sums[0], sums[0], sums[1]) / S(d) + epsilon);
  }
  auto writer(const S* x, S* y, S rrms) const {
    return [x, y, rrms](Index i, auto type) {
      using T = std::remove_pointer_t<decltype(type)>;
      store(y + i, Eigen::internal::pmul(load<T>(x + i), Eigen::internal::pset1<T>(rrms)));
    };
  }
};

// One row of the backward pass, with yhat = x~ * rrms, S = rrms * 1'x~:
//   dx = rrms * (dy - (ydot / d) * (yhat + S)),  ydot = dy . yhat.
// (The extra S term is the derivative of the decompressed coordinate.)
template <class Scalar>
void crms_norm_backward_row(const Scalar* dy, const Scalar* x, Scalar* dx, Index d, Scalar rrms,
                            GradWrite write) {
  using namespace Eigen::internal;
  const auto sums = packet_sums<Scalar, 2>(d - 1, [&](Index i, auto& acc) {
    using T = std::decay_t<decltype(acc[0])>;
    const T v = load<T>(x + i);
    acc[0] = padd(acc[0], v);
    acc[1] = pmadd(load<T>(dy + i), v, acc[1]);
  });
  const Scalar shift = rrms * sums[0];                      // S
  const Scalar coef = rrms * sums[1] / Scalar(d);           // ydot / d
  const ConstRowArrayMap<Scalar> xs(x, d - 1), dys(dy, d - 1);
  RowArrayMap<Scalar> dxs(dx, d - 1);
  if (write == GradWrite::Accumulate) dxs += rrms * (dys - coef * (xs * rrms + shift));
  else dxs = rrms * (dys - coef * (xs * rrms + shift));
}

// CRMSNorm needs d >= 2: at least one coordinate remains after compression.
inline void check_compressed_width(const char* op, Index compressed_width) {
  if (compressed_width < 1)
    fail(op, "the uncompressed width d = x.cols() + 1 must be >= 2, got d = ",
         compressed_width + 1);
}

}  // namespace detail

// y = CRMSNorm(x). x, y: [rows x (d-1)], d = x.cols() + 1; saved, if given: [rows].
// epsilon is that of the uncompressed width-d RMSNorm.
template <class XD, class YD>
void crms_norm_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y,
                       typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon),
                       RmsNormSaved<typename XD::Scalar>* saved = nullptr) {
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "crms_norm_forward";
  detail::check_epsilon(op, epsilon);
  detail::check_compressed_width(op, x.cols());
  if (saved) detail::check_saved(op, "saved.rrms", saved->rrms, x.rows());
  detail::forward_rows(op, x, y, detail::CrmsNormKernel<Scalar>{x.cols() + 1, epsilon},
                       [&](Index r, Scalar rrms) {
                         if (saved) saved->rrms[r] = rrms;
                       });
}

// In place: x = CRMSNorm(x). x: [rows x (d-1)].
template <class XD>
void crms_normalize(const Eigen::MatrixBase<XD>& x,
                    typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon)) {
  crms_norm_forward(x, x, epsilon);
}

// Fused residual add + CRMSNorm, one pass over memory: h += branch; y = CRMSNorm(h).
// h, branch, y: [rows x (d-1)].
template <class HD, class BrD, class YD>
void crms_norm_add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BrD>& branch,
                           const Eigen::MatrixBase<YD>& y,
                           typename HD::Scalar epsilon = typename HD::Scalar(kDefaultEpsilon),
                           RmsNormSaved<typename HD::Scalar>* saved = nullptr) {
  using Scalar = typename HD::Scalar;
  constexpr const char* op = "crms_norm_add_forward";
  detail::check_epsilon(op, epsilon);
  detail::check_compressed_width(op, h.cols());
  if (saved) detail::check_saved(op, "saved.rrms", saved->rrms, h.rows());
  detail::add_forward_rows(op, h, branch, y, detail::CrmsNormKernel<Scalar>{h.cols() + 1, epsilon},
                           [&](Index r, Scalar rrms) {
                             if (saved) saved->rrms[r] = rrms;
                           });
}

// Backward of y = CRMSNorm(x). dy, x, dx: [rows x (d-1)]. dx is written (or
// added to, with GradWrite::Accumulate).
template <class DYD, class XD, class DXD>
void crms_norm_backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                        const RmsNormSaved<typename XD::Scalar>& saved,
                        const Eigen::MatrixBase<DXD>& dx, GradWrite write = GradWrite::Overwrite) {
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "crms_norm_backward";
  detail::check_compressed_width(op, x.cols());
  detail::check_saved(op, "saved.rrms", saved.rrms, x.rows());
  const Index d = x.cols() + 1;
  detail::backward_rows(op, dy, x, dx, [&](const Scalar* dyr, const Scalar* xr, Scalar* dxr, Index r) {
    detail::crms_norm_backward_row(dyr, xr, dxr, d, saved.rrms[r], write);
  });
}

}  // namespace prenorm
