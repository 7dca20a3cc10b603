#pragma once
// RMSNorm over the rows of x [rows x d]:
//   y = gamma * x / sqrt(||x||^2 / d + eps),  gamma optional.
// On a zero-mean row it equals LayerNorm without affine, eps included: the
// identity that lets a converted Pre-RMSNorm model compute what Pre-LN did.

#include <Eigen/Core>

#include <cmath>

#include "../core/error.hpp"
#include "detail/reduce.hpp"
#include "detail/row_loops.hpp"
#include "norm_types.hpp"

namespace prenorm {
namespace detail {

// RMSNorm rows for normalize_rows: y = x * rrms (* gamma), rrms = 1/sqrt(||x||^2/d + eps).
// x, y [d]; gamma [d] or null.
template <class S>
struct RmsNormKernel {
  using Scalar = S;
  using Stats = S;  // rrms
  static constexpr int kSums = 1;

  Index d;
  const S* gamma;
  S epsilon;

  auto first_pass(const S* x) const {  // sum_i x_i^2
    return [x](Index i, auto& acc) {
      using T = std::decay_t<decltype(acc[0])>;
      const T v = load<T>(x + i);
      acc[0] = Eigen::internal::pmadd(v, v, acc[0]);
    };
  }
  S stats(const S*, const std::array<S, kSums>& sums) const {
    return S(1) / std::sqrt(sums[0] / S(d) + epsilon);
  }
  auto writer(const S* x, S* y, S rrms) const {
    return [x, y, rrms, gamma = gamma](Index i, auto type) {
      using T = std::remove_pointer_t<decltype(type)>;
      using namespace Eigen::internal;
      T v = pmul(load<T>(x + i), pset1<T>(rrms));
      if (gamma) v = pmul(v, load<T>(gamma + i));
      store(y + i, v);
    };
  }
};

// One row of the backward pass, with xhat = x * rrms and g = dy * gamma:
//   dx = rrms * (g - xhat * mean(g * xhat)).
template <class Scalar>
void rms_norm_backward_row(const Scalar* dy, const Scalar* x, Scalar* dx, Index d,
                           const Scalar* gamma, Scalar rrms, GradWrite write) {
  using namespace Eigen::internal;
  const Scalar g_x_sum = packet_sums<Scalar, 1>(d, [&](Index i, auto& acc) {
    using T = std::decay_t<decltype(acc[0])>;
    const T g = gamma ? pmul(load<T>(dy + i), load<T>(gamma + i)) : load<T>(dy + i);
    acc[0] = pmadd(g, load<T>(x + i), acc[0]);
  })[0];
  const Scalar coef = rrms * rrms * g_x_sum / Scalar(d);  // mean(g * xhat) / rrms

  const ConstRowArrayMap<Scalar> xs(x, d), dys(dy, d);
  RowArrayMap<Scalar> dxs(dx, d);
  if (gamma) {
    const ConstRowArrayMap<Scalar> gs(gamma, d);
    if (write == GradWrite::Accumulate) dxs += rrms * (dys * gs - xs * coef);
    else dxs = rrms * (dys * gs - xs * coef);
  } else {
    if (write == GradWrite::Accumulate) dxs += rrms * (dys - xs * coef);
    else dxs = rrms * (dys - xs * coef);
  }
}

template <class XD, class YD>
void rms_norm_forward_impl(const char* op, const Eigen::MatrixBase<XD>& x,
                           const typename XD::Scalar* gamma, const Eigen::MatrixBase<YD>& y,
                           typename XD::Scalar epsilon, RmsNormSaved<typename XD::Scalar>* saved) {
  using Scalar = typename XD::Scalar;
  check_epsilon(op, epsilon);
  if (saved) check_saved(op, "saved.rrms", saved->rrms, x.rows());
  forward_rows(op, x, y, RmsNormKernel<Scalar>{x.cols(), gamma, epsilon}, [&](Index r, Scalar rrms) {
    if (saved) saved->rrms[r] = rrms;
  });
}

template <class HD, class BrD, class YD>
void rms_norm_add_forward_impl(const char* op, const Eigen::MatrixBase<HD>& h,
                               const Eigen::MatrixBase<BrD>& branch,
                               const typename HD::Scalar* gamma, const Eigen::MatrixBase<YD>& y,
                               typename HD::Scalar epsilon,
                               RmsNormSaved<typename HD::Scalar>* saved) {
  using Scalar = typename HD::Scalar;
  check_epsilon(op, epsilon);
  if (saved) check_saved(op, "saved.rrms", saved->rrms, h.rows());
  add_forward_rows(op, h, branch, y, RmsNormKernel<Scalar>{h.cols(), gamma, epsilon},
                   [&](Index r, Scalar rrms) {
                     if (saved) saved->rrms[r] = rrms;
                   });
}

template <class XD, class GD>
inline constexpr bool rms_norm_widths_agree =
    widths_agree<XD::ColsAtCompileTime, GD::SizeAtCompileTime>;

}  // namespace detail

// y = RMSNorm(x). x, y: [rows x d]; saved, if given: [rows].
template <class XD, class YD>
void rms_norm_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y,
                      typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon),
                      RmsNormSaved<typename XD::Scalar>* saved = nullptr) {
  detail::rms_norm_forward_impl("rms_norm_forward", x, nullptr, y, epsilon, saved);
}

// y = gamma * RMSNorm(x). x, y: [rows x d]; gamma: [d].
template <class XD, class GD, class YD>
void rms_norm_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<GD>& gamma,
                      const Eigen::MatrixBase<YD>& y,
                      typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon),
                      RmsNormSaved<typename XD::Scalar>* saved = nullptr) {
  static_assert(detail::rms_norm_widths_agree<XD, GD>,
                "prenorm::rms_norm_forward: gamma must have the fixed width of x");
  constexpr const char* op = "rms_norm_forward";
  detail::rms_norm_forward_impl(op, x, detail::vector_data(op, "gamma", gamma, x.cols()), y,
                                epsilon, saved);
}

// In place: x = RMSNorm(x).
template <class XD>
void rms_normalize(const Eigen::MatrixBase<XD>& x,
                   typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon)) {
  rms_norm_forward(x, x, epsilon);
}

// In place: x = gamma * RMSNorm(x). gamma: [d].
template <class XD, class GD>
void rms_normalize(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<GD>& gamma,
                   typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon)) {
  rms_norm_forward(x, gamma, x, epsilon);
}

// Fused residual add + RMSNorm, one pass over memory: h += branch; y = RMSNorm(h).
// h, branch, y: [rows x d].
template <class HD, class BrD, class YD>
void rms_norm_add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BrD>& branch,
                          const Eigen::MatrixBase<YD>& y,
                          typename HD::Scalar epsilon = typename HD::Scalar(kDefaultEpsilon),
                          RmsNormSaved<typename HD::Scalar>* saved = nullptr) {
  detail::rms_norm_add_forward_impl("rms_norm_add_forward", h, branch, nullptr, y, epsilon, saved);
}

// h += branch; y = gamma * RMSNorm(h). gamma: [d].
template <class HD, class BrD, class GD, class YD>
void rms_norm_add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BrD>& branch,
                          const Eigen::MatrixBase<GD>& gamma, const Eigen::MatrixBase<YD>& y,
                          typename HD::Scalar epsilon = typename HD::Scalar(kDefaultEpsilon),
                          RmsNormSaved<typename HD::Scalar>* saved = nullptr) {
  static_assert(detail::rms_norm_widths_agree<HD, GD>,
                "prenorm::rms_norm_add_forward: gamma must have the fixed width of h");
  constexpr const char* op = "rms_norm_add_forward";
  detail::rms_norm_add_forward_impl(op, h, branch, detail::vector_data(op, "gamma", gamma, h.cols()),
                                    y, epsilon, saved);
}

// Backward of y = gamma * RMSNorm(x). dy, x, dx: [rows x d]; gamma, dgamma: [d].
// dx is written (or added to, with GradWrite::Accumulate); dgamma is added to.
template <class DYD, class XD, class GD, class DXD, class DGD>
void rms_norm_backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                       const Eigen::MatrixBase<GD>& gamma,
                       const RmsNormSaved<typename XD::Scalar>& saved,
                       const Eigen::MatrixBase<DXD>& dx, const Eigen::MatrixBase<DGD>& dgamma,
                       GradWrite write = GradWrite::Overwrite) {
  static_assert(detail::rms_norm_widths_agree<XD, GD> && detail::rms_norm_widths_agree<XD, DGD>,
                "prenorm::rms_norm_backward: gamma and dgamma must have the fixed width of x");
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "rms_norm_backward";
  const Index d = x.cols();
  const Scalar* g = detail::vector_data(op, "gamma", gamma, d);
  Scalar* dg = detail::mutable_vector_data(op, "dgamma", dgamma, d);
  detail::check_saved(op, "saved.rrms", saved.rrms, x.rows());
  detail::backward_rows(op, dy, x, dx, [&](const Scalar* dyr, const Scalar* xr, Scalar* dxr, Index r) {
    detail::rms_norm_backward_row(dyr, xr, dxr, d, g, saved.rrms[r], write);
  });
  // dgamma += sum_r dy * x * rrms.
  detail::column_chunks(dy, x, [&](const auto& dy_rows, const auto& x_rows, Index begin, Index end) {
    const Index n = end - begin;
    detail::RowArrayMap<Scalar> dgs(dg + begin, n);
    for (Index r = 0; r < x_rows.rows; ++r)
      dgs += detail::ConstRowArrayMap<Scalar>(dy_rows.row(r) + begin, n) *
             detail::ConstRowArrayMap<Scalar>(x_rows.row(r) + begin, n) * saved.rrms[r];
  });
}

// Backward of y = RMSNorm(x) without gamma. dy, x, dx: [rows x d].
template <class DYD, class XD, class DXD>
void rms_norm_backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                       const RmsNormSaved<typename XD::Scalar>& saved,
                       const Eigen::MatrixBase<DXD>& dx, GradWrite write = GradWrite::Overwrite) {
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "rms_norm_backward";
  const Index d = x.cols();
  detail::check_saved(op, "saved.rrms", saved.rrms, x.rows());
  detail::backward_rows(op, dy, x, dx, [&](const Scalar* dyr, const Scalar* xr, Scalar* dxr, Index r) {
    detail::rms_norm_backward_row<Scalar>(dyr, xr, dxr, d, nullptr, saved.rrms[r], write);
  });
}

}  // namespace prenorm
