#pragma once
// LayerNorm over the rows of x [rows x d]:
//   y = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta,  var the population variance.
//
// The mean is taken as x_0 + mean(x - x_0) and the variance in a second pass
// over (x - x_0) - mean(x - x_0): accurate when |mean| >> std, unlike
// E[x^2] - E[x]^2, which loses every digit there.

#include <Eigen/Core>

#include <cmath>

#include "../core/error.hpp"
#include "detail/reduce.hpp"
#include "detail/row_loops.hpp"
#include "norm_types.hpp"

namespace prenorm {
namespace detail {

// The statistics of a LayerNorm row: mean = shift + delta, with shift = x_0.
template <class S>
struct LayerNormStats {
  S shift, delta, rstd;
  S mean() const { return shift + delta; }
};

// LayerNorm rows for normalize_rows: y = ((x - shift) - delta) * rstd (* gamma + beta).
// x, y [d]; gamma, beta [d], or both null.
template <class S>
struct LayerNormKernel {
  using Scalar = S;
  using Stats = LayerNormStats<S>;
  static constexpr int kSums = 1;

  Index d;
  const S* gamma;
  const S* beta;
  S epsilon;

  auto first_pass(const S* x) const {  // sum_i (x_i - x_0)
    return [x, shift = x[0]](Index i, auto& acc) {
      using T = std::decay_t<decltype(acc[0])>;
      using namespace Eigen::internal;
      acc[0] = padd(acc[0], psub(load<T>(x + i), pset1<T>(shift)));
    };
  }
  // The variance takes a second pass over the row, now in L1.
  Stats stats(const S* x, const std::array<S, kSums>& sums) const {
    const S shift = x[0], delta = sums[0] / S(d);
    const S var = sum_sq_centered(x, d, shift, delta) / S(d);
    return {shift, delta, S(1) / std::sqrt(var + epsilon)};
  }
  auto writer(const S* x, S* y, const Stats& s) const {
    return [x, y, s, gamma = gamma, beta = beta](Index i, auto type) {
      using T = std::remove_pointer_t<decltype(type)>;
      using namespace Eigen::internal;
      const T xhat = pmul(psub(psub(load<T>(x + i), pset1<T>(s.shift)), pset1<T>(s.delta)),
                          pset1<T>(s.rstd));
      // An explicit FMA: a compiler contraction of xhat * gamma + beta could differ
      // between the pipelined and the last row of a block (it did, across OpenMP).
      store(y + i, gamma ? pmadd(xhat, load<T>(gamma + i), load<T>(beta + i)) : xhat);
    };
  }
};

// One row of the backward pass, with g = dy * gamma and xhat = ((x - x_0) - delta)
// * rstd, as the forward computed it (x - mean with the mean rounded would be
// off by up to ulp(mean)/2 in every element when |mean| >> std):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <class Scalar>
void layer_norm_backward_row(const Scalar* dy, const Scalar* x, Scalar* dx, Index d,
                             const Scalar* gamma, Scalar delta, Scalar rstd, GradWrite write) {
  using namespace Eigen::internal;
  const Scalar shift = x[0];
  const auto sums = packet_sums<Scalar, 2>(d, [&](Index i, auto& acc) {
    using T = std::decay_t<decltype(acc[0])>;
    const T xhat = pmul(psub(psub(load<T>(x + i), pset1<T>(shift)), pset1<T>(delta)), pset1<T>(rstd));
    const T g = gamma ? pmul(load<T>(dy + i), load<T>(gamma + i)) : load<T>(dy + i);
    acc[0] = padd(acc[0], g);
    acc[1] = pmadd(g, xhat, acc[1]);
  });
  const Scalar g_mean = sums[0] / Scalar(d);
  const Scalar g_xhat_mean = sums[1] / Scalar(d);

  const ConstRowArrayMap<Scalar> xs(x, d), dys(dy, d);
  RowArrayMap<Scalar> dxs(dx, d);
  if (gamma) {
    const ConstRowArrayMap<Scalar> gs(gamma, d);
    if (write == GradWrite::Accumulate)
      dxs += rstd * (dys * gs - g_mean - ((xs - shift) - delta) * (rstd * g_xhat_mean));
    else
      dxs = rstd * (dys * gs - g_mean - ((xs - shift) - delta) * (rstd * g_xhat_mean));
  } else {
    if (write == GradWrite::Accumulate)
      dxs += rstd * (dys - g_mean - ((xs - shift) - delta) * (rstd * g_xhat_mean));
    else
      dxs = rstd * (dys - g_mean - ((xs - shift) - delta) * (rstd * g_xhat_mean));
  }
}

// Throws unless every vector of saved has one element per row.
template <class S>
void check_layer_norm_saved(const char* op, const LayerNormSaved<S>& saved, Index rows) {
  check_saved(op, "saved.mean", saved.mean, rows);
  check_saved(op, "saved.rstd", saved.rstd, rows);
  check_saved(op, "saved.delta", saved.delta, rows);
}

// gamma, beta: [d] or null (absent).
template <class XD, class YD>
void layer_norm_forward_impl(const char* op, const Eigen::MatrixBase<XD>& x,
                             const typename XD::Scalar* gamma, const typename XD::Scalar* beta,
                             const Eigen::MatrixBase<YD>& y, typename XD::Scalar epsilon,
                             LayerNormSaved<typename XD::Scalar>* saved) {
  using Scalar = typename XD::Scalar;
  check_epsilon(op, epsilon);
  if (saved) check_layer_norm_saved(op, *saved, x.rows());
  forward_rows(op, x, y, LayerNormKernel<Scalar>{x.cols(), gamma, beta, epsilon},
               [&](Index r, const LayerNormStats<Scalar>& stats) {
                 if (saved) {
                   saved->mean[r] = stats.mean();
                   saved->rstd[r] = stats.rstd;
                   saved->delta[r] = stats.delta;
                 }
               });
}

template <class HD, class BrD, class YD>
void layer_norm_add_forward_impl(const char* op, const Eigen::MatrixBase<HD>& h,
                                 const Eigen::MatrixBase<BrD>& branch,
                                 const typename HD::Scalar* gamma, const typename HD::Scalar* beta,
                                 const Eigen::MatrixBase<YD>& y, typename HD::Scalar epsilon,
                                 LayerNormSaved<typename HD::Scalar>* saved) {
  using Scalar = typename HD::Scalar;
  check_epsilon(op, epsilon);
  if (saved) check_layer_norm_saved(op, *saved, h.rows());
  add_forward_rows(op, h, branch, y, LayerNormKernel<Scalar>{h.cols(), gamma, beta, epsilon},
                   [&](Index r, const LayerNormStats<Scalar>& stats) {
                     if (saved) {
                       saved->mean[r] = stats.mean();
                       saved->rstd[r] = stats.rstd;
                       saved->delta[r] = stats.delta;
                     }
                   });
}

template <class XD, class GD>
inline constexpr bool layer_norm_widths_agree =
    widths_agree<XD::ColsAtCompileTime, GD::SizeAtCompileTime>;

}  // namespace detail

// y = LayerNorm(x) without affine. x, y: [rows x d]; saved, if given: [rows] each.
template <class XD, class YD>
void layer_norm_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y,
                        typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon),
                        LayerNormSaved<typename XD::Scalar>* saved = nullptr) {
  detail::layer_norm_forward_impl("layer_norm_forward", x, nullptr, nullptr, y, epsilon, saved);
}

// y = gamma * LayerNorm(x) + beta. x, y: [rows x d]; gamma, beta: [d].
template <class XD, class GD, class BD, class YD>
void layer_norm_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<GD>& gamma,
                        const Eigen::MatrixBase<BD>& beta, const Eigen::MatrixBase<YD>& y,
                        typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon),
                        LayerNormSaved<typename XD::Scalar>* saved = nullptr) {
  static_assert(detail::layer_norm_widths_agree<XD, GD> && detail::layer_norm_widths_agree<XD, BD>,
                "prenorm::layer_norm_forward: gamma and beta must have the fixed width of x");
  constexpr const char* op = "layer_norm_forward";
  detail::layer_norm_forward_impl(op, x, detail::vector_data(op, "gamma", gamma, x.cols()),
                                  detail::vector_data(op, "beta", beta, x.cols()), y, epsilon,
                                  saved);
}

// In place: x = gamma * LayerNorm(x) + beta. x: [rows x d]; gamma, beta: [d].
template <class XD, class GD, class BD>
void layer_normalize(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<GD>& gamma,
                     const Eigen::MatrixBase<BD>& beta,
                     typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon)) {
  layer_norm_forward(x, gamma, beta, x, epsilon);
}

// In place, without affine: x = LayerNorm(x).
template <class XD>
void layer_normalize(const Eigen::MatrixBase<XD>& x,
                     typename XD::Scalar epsilon = typename XD::Scalar(kDefaultEpsilon)) {
  layer_norm_forward(x, x, epsilon);
}

// Fused residual add + LayerNorm, one pass over memory: h += branch; y = LN(h).
// h, branch, y: [rows x d].
template <class HD, class BrD, class YD>
void layer_norm_add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BrD>& branch,
                            const Eigen::MatrixBase<YD>& y,
                            typename HD::Scalar epsilon = typename HD::Scalar(kDefaultEpsilon),
                            LayerNormSaved<typename HD::Scalar>* saved = nullptr) {
  detail::layer_norm_add_forward_impl("layer_norm_add_forward", h, branch, nullptr, nullptr, y,
                                      epsilon, saved);
}

// h += branch; y = gamma * LN(h) + beta. h, branch, y: [rows x d]; gamma, beta: [d].
template <class HD, class BrD, class GD, class BD, class YD>
void layer_norm_add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BrD>& branch,
                            const Eigen::MatrixBase<GD>& gamma, const Eigen::MatrixBase<BD>& beta,
                            const Eigen::MatrixBase<YD>& y,
                            typename HD::Scalar epsilon = typename HD::Scalar(kDefaultEpsilon),
                            LayerNormSaved<typename HD::Scalar>* saved = nullptr) {
  static_assert(detail::layer_norm_widths_agree<HD, GD> && detail::layer_norm_widths_agree<HD, BD>,
                "prenorm::layer_norm_add_forward: gamma and beta must have the fixed width of h");
  constexpr const char* op = "layer_norm_add_forward";
  detail::layer_norm_add_forward_impl(op, h, branch, detail::vector_data(op, "gamma", gamma, h.cols()),
                                      detail::vector_data(op, "beta", beta, h.cols()), y, epsilon,
                                      saved);
}

// Backward of y = gamma * LN(x) + beta. dy, x, dx: [rows x d]; gamma, dgamma,
// dbeta: [d]; saved: from the forward of x. dx is written (or added to, with
// GradWrite::Accumulate); dgamma and dbeta are added to.
template <class DYD, class XD, class GD, class DXD, class DGD, class DBD>
void layer_norm_backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                         const Eigen::MatrixBase<GD>& gamma,
                         const LayerNormSaved<typename XD::Scalar>& saved,
                         const Eigen::MatrixBase<DXD>& dx, const Eigen::MatrixBase<DGD>& dgamma,
                         const Eigen::MatrixBase<DBD>& dbeta,
                         GradWrite write = GradWrite::Overwrite) {
  static_assert(detail::layer_norm_widths_agree<XD, GD> &&
                    detail::layer_norm_widths_agree<XD, DGD> &&
                    detail::layer_norm_widths_agree<XD, DBD>,
                "prenorm::layer_norm_backward: gamma, dgamma and dbeta must have the fixed width of x");
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "layer_norm_backward";
  const Index d = x.cols();
  const Scalar* g = detail::vector_data(op, "gamma", gamma, d);
  Scalar* dg = detail::mutable_vector_data(op, "dgamma", dgamma, d);
  Scalar* db = detail::mutable_vector_data(op, "dbeta", dbeta, d);
  detail::check_layer_norm_saved(op, saved, x.rows());
  detail::backward_rows(op, dy, x, dx, [&](const Scalar* dyr, const Scalar* xr, Scalar* dxr, Index r) {
    detail::layer_norm_backward_row(dyr, xr, dxr, d, g, saved.delta[r], saved.rstd[r], write);
  });
  // dgamma += sum_r dy * xhat; dbeta += sum_r dy. (xhat as in the forward.)
  detail::column_chunks(dy, x, [&](const auto& dy_rows, const auto& x_rows, Index begin, Index end) {
    const Index n = end - begin;
    detail::RowArrayMap<Scalar> dgs(dg + begin, n), dbs(db + begin, n);
    for (Index r = 0; r < x_rows.rows; ++r) {
      const detail::ConstRowArrayMap<Scalar> xs(x_rows.row(r) + begin, n), dys(dy_rows.row(r) + begin, n);
      const Scalar shift = x_rows.row(r)[0];
      dgs += dys * (((xs - shift) - saved.delta[r]) * saved.rstd[r]);
      dbs += dys;
    }
  });
}

// Backward of y = LN(x) without affine. dy, x, dx: [rows x d].
template <class DYD, class XD, class DXD>
void layer_norm_backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<XD>& x,
                         const LayerNormSaved<typename XD::Scalar>& saved,
                         const Eigen::MatrixBase<DXD>& dx, GradWrite write = GradWrite::Overwrite) {
  using Scalar = typename XD::Scalar;
  constexpr const char* op = "layer_norm_backward";
  const Index d = x.cols();
  detail::check_layer_norm_saved(op, saved, x.rows());
  detail::backward_rows(op, dy, x, dx, [&](const Scalar* dyr, const Scalar* xr, Scalar* dxr, Index r) {
    detail::layer_norm_backward_row<Scalar>(dyr, xr, dxr, d, nullptr, saved.delta[r], saved.rstd[r],
                                            write);
  });
}

}  // namespace prenorm
