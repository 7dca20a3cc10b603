#pragma once
// The architecture policy in one place: ArchTraits<A> is what the blocks,
// models, sessions and training engines know of an architecture A.
//
//   arch, name         A and its snake_case name
//   has_norm           whether a norm runs before each sub-layer and at the end
//   affine             whether those norms carry gamma and beta (d)
//   main_width(d)      width of the main branch for a model of width d
//   Saved<S>           the per-row statistics a training forward saves
//   forward            y = Norm(h)
//   add_forward        h += branch; y = Norm(h), fused into one pass
//   backward           dh (+)= Norm'(h)^T dy, dgamma and dbeta written (affine)
//   input(h, y)        what the sub-layers read after a norm: y (or h without norms)
//
// The library specializes it for its three architectures:
//   PreLN        LayerNorm with gamma, beta      main width d
//   PreRMSNorm   RMSNorm without affine          main width d
//   PreCRMSNorm  CRMSNorm (d and eps of width d) main width d-1
// An architecture without a specialization (a value outside the enum) is
// refused at compile time; bench/no_norm.hpp specializes it for the
// benchmarks' baseline without normalization.
//
// Matrices are Eigen expressions of [rows x main] (row-major rows, as the ops
// take them); gamma, beta: (d), read for affine architectures only.

#include <Eigen/Core>

#include <string_view>

#include "../core/arch.hpp"
#include "../core/types.hpp"
#include "crms_norm.hpp"
#include "layer_norm.hpp"
#include "norm_types.hpp"
#include "rms_norm.hpp"

namespace prenorm {

template <Arch A>
struct ArchTraits {
  static_assert(A != A,
                "prenorm::ArchTraits: no traits for this architecture: the library's are PreLN, "
                "PreRMSNorm and PreCRMSNorm (another needs a specialization of ArchTraits)");
};

// The statistics a norm of architecture A saves for its backward.
template <Arch A, class S>
using NormSaved = typename ArchTraits<A>::template Saved<S>;

namespace detail {

// What the three architectures of the enum share: a norm whose output the
// sub-layers read; width and affine as core/arch.hpp says (the compile-time
// conversion plan reads them there too).
template <Arch A>
struct NormedArchTraits {
  static constexpr Arch arch = A;
  static constexpr std::string_view name = arch_name(A);
  static constexpr bool has_norm = true;
  static constexpr bool affine = has_norm_affine(A);
  // d, or d-1 for PreCRMSNorm; Dynamic stays Dynamic.
  static constexpr Index main_width(Index d) { return d == Dynamic ? d : main_width_of(A, d); }
  template <class T>
  static const T& input(const T& /*h*/, const T& y) { return y; }
};

// saved->resize(rows) when given: the ops check its size, the callers reuse it.
template <class Saved>
Saved* resized(Saved* saved, Index rows) {
  if (saved) saved->resize(rows);
  return saved;
}

}  // namespace detail

template <>
struct ArchTraits<Arch::PreLN> : detail::NormedArchTraits<Arch::PreLN> {
  template <class S>
  using Saved = LayerNormSaved<S>;

  // y = gamma * LayerNorm(h) + beta; saved, if given, resized to h.rows() and written.
  template <class HD, class YD, class S>
  static void forward(const Eigen::MatrixBase<HD>& h, const Vector<S>& gamma, const Vector<S>& beta,
                      const Eigen::MatrixBase<YD>& y, S epsilon, Saved<S>* saved = nullptr) {
    layer_norm_forward(h, gamma, beta, y, epsilon, detail::resized(saved, h.rows()));
  }
  // h += branch; y = gamma * LayerNorm(h) + beta.
  template <class HD, class BD, class YD, class S>
  static void add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BD>& branch,
                          const Vector<S>& gamma, const Vector<S>& beta,
                          const Eigen::MatrixBase<YD>& y, S epsilon, Saved<S>* saved = nullptr) {
    layer_norm_add_forward(h, branch, gamma, beta, y, epsilon, detail::resized(saved, h.rows()));
  }
  // dh += LN'(h)^T dy (written with GradWrite::Overwrite); *dgamma, *dbeta
  // (d, must be given) are written.
  template <class DYD, class HD, class DHD, class S>
  static void backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<HD>& h,
                       const Vector<S>& gamma, const Saved<S>& saved,
                       const Eigen::MatrixBase<DHD>& dh, Vector<S>* dgamma, Vector<S>* dbeta,
                       GradWrite write) {
    dgamma->setZero();
    dbeta->setZero();
    layer_norm_backward(dy, h, gamma, saved, dh, *dgamma, *dbeta, write);
  }
};

namespace detail {

// The row kernels of RMSNorm and CRMSNorm (the same arguments).
struct RmsNormKernels {
  static void forward(auto&&... args) { rms_norm_forward(args...); }
  static void add_forward(auto&&... args) { rms_norm_add_forward(args...); }
  static void backward(auto&&... args) { rms_norm_backward(args...); }
};
struct CrmsNormKernels {
  static void forward(auto&&... args) { crms_norm_forward(args...); }
  static void add_forward(auto&&... args) { crms_norm_add_forward(args...); }
  static void backward(auto&&... args) { crms_norm_backward(args...); }
};

// An architecture whose norms have no affine (gamma, beta ignored, no
// parameter gradients) and save 1/rms per row: Kernels' norm on the main branch.
template <Arch A, class Kernels>
struct UnitNormArchTraits : NormedArchTraits<A> {
  template <class S>
  using Saved = RmsNormSaved<S>;

  // y = Norm(h); saved, if given, resized to h.rows() and written.
  template <class HD, class YD, class S>
  static void forward(const Eigen::MatrixBase<HD>& h, const Vector<S>& /*gamma*/,
                      const Vector<S>& /*beta*/, const Eigen::MatrixBase<YD>& y, S epsilon,
                      Saved<S>* saved = nullptr) {
    Kernels::forward(h, y, epsilon, resized(saved, h.rows()));
  }
  // h += branch; y = Norm(h).
  template <class HD, class BD, class YD, class S>
  static void add_forward(const Eigen::MatrixBase<HD>& h, const Eigen::MatrixBase<BD>& branch,
                          const Vector<S>& /*gamma*/, const Vector<S>& /*beta*/,
                          const Eigen::MatrixBase<YD>& y, S epsilon, Saved<S>* saved = nullptr) {
    Kernels::add_forward(h, branch, y, epsilon, resized(saved, h.rows()));
  }
  // dh += Norm'(h)^T dy (written with GradWrite::Overwrite); no parameters.
  template <class DYD, class HD, class DHD, class S>
  static void backward(const Eigen::MatrixBase<DYD>& dy, const Eigen::MatrixBase<HD>& h,
                       const Vector<S>& /*gamma*/, const Saved<S>& saved,
                       const Eigen::MatrixBase<DHD>& dh, Vector<S>* /*dgamma*/,
                       Vector<S>* /*dbeta*/, GradWrite write) {
    Kernels::backward(dy, h, saved, dh, write);
  }
};

}  // namespace detail

// RMSNorm on a zero-mean main branch of width d.
template <>
struct ArchTraits<Arch::PreRMSNorm>
    : detail::UnitNormArchTraits<Arch::PreRMSNorm, detail::RmsNormKernels> {};

// CRMSNorm on the compressed main branch of width d-1 (d = h.cols() + 1).
template <>
struct ArchTraits<Arch::PreCRMSNorm>
    : detail::UnitNormArchTraits<Arch::PreCRMSNorm, detail::CrmsNormKernels> {};

}  // namespace prenorm
