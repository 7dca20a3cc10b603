#pragma once
// The benchmarks' baseline without normalization: a Pre-Norm transformer whose
// norms are the identity, the lower bound that "the norm share" of a forward
// (1 - no_norm/pre_ln) is measured against. It is not one of the library's
// architectures (it has no equivalent model: prenorm::convert and the io
// refuse it); the library runs it purely through this ArchTraits
// specialization, e.g. prenorm::Gpt<prenorm_bench::kNoNorm, float>.
//
// Include it before anything instantiates a model of kNoNorm.

#include <prenorm/ops/arch_traits.hpp>

#include <string_view>

#include <Eigen/Core>

#include <prenorm/core/arch.hpp>
#include <prenorm/core/parallel.hpp>
#include <prenorm/core/types.hpp>
#include <prenorm/ops/norm_types.hpp>

namespace prenorm_bench {

// Outside the three enumerators of prenorm::Arch (its underlying type is int).
inline constexpr prenorm::Arch kNoNorm = static_cast<prenorm::Arch>(3);
static_assert(!prenorm::is_public_arch(kNoNorm));

// What a norm of the baseline saves: nothing.
struct NoNormSaved {
  void resize(prenorm::Index) {}
};

}  // namespace prenorm_bench

// Identity instead of normalization: the sub-layers read h itself (input(h, y)
// is h, y is never written), no affine, main width d.
template <>
struct prenorm::ArchTraits<prenorm_bench::kNoNorm> {
  static constexpr Arch arch = prenorm_bench::kNoNorm;
  static constexpr std::string_view name = "no_norm";
  static constexpr bool has_norm = false;
  static constexpr bool affine = false;
  static constexpr Index main_width(Index d) { return d; }
  template <class T>
  static const T& input(const T& h, const T& /*y*/) { return h; }

  template <class S>
  using Saved = prenorm_bench::NoNormSaved;

  // Nothing: the readers take h.
  template <class HD, class YD, class S>
  static void forward(const Eigen::MatrixBase<HD>&, const Vector<S>&, const Vector<S>&,
                      const Eigen::MatrixBase<YD>&, S, Saved<S>* = nullptr) {}
  // Only the residual add: h += branch.
  template <class HD, class BD, class YD, class S>
  static void add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BD>& branch,
                          const Vector<S>&, const Vector<S>&, const Eigen::MatrixBase<YD>&, S,
                          Saved<S>* = nullptr) {
    auto& hw = const_cast<Eigen::MatrixBase<HD>&>(h);
    detail::for_each_row(h.rows(), h.cols(), [&](Index r) { hw.row(r) += branch.row(r); });
  }
  // The identity's backward: dh += dy (dh = dy with GradWrite::Overwrite).
  template <class DYD, class HD, class DHD, class S>
  static void backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<HD>&,
                       const Vector<S>&, const Saved<S>&, const Eigen::MatrixBase<DHD>& dh,
                       Vector<S>*, Vector<S>*, GradWrite write) {
    auto& dhw = const_cast<Eigen::MatrixBase<DHD>&>(dh);
    if (write == GradWrite::Overwrite) dhw = dy;
    else detail::for_each_row(dh.rows(), dh.cols(), [&](Index r) { dhw.row(r) += dy.row(r); });
  }
};
