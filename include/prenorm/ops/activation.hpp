#pragma once
// Elementwise activations of the MLP:
//   GeluTanh:  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   GPT-2 "gelu_new"
//   GeluErf:   0.5 x (1 + erf(x / sqrt(2)))                       exact GELU, ViT "gelu"
//   Relu:      max(x, 0)                                          OPT "relu"
//   QuickGelu: x sigmoid(1.702 x)                                 CLIP "quick_gelu"
//   GeluTanhBloom: GeluTanh with sqrt(2/pi) rounded to 0.79788456, as BLOOM's
//              bloom_gelu_forward has it (1e-10 relative from GeluTanh: above
//              a double tolerance, so BLOOM gets its own)

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>  // Array::erf (part of Eigen 3.4)

#include <cmath>
#include <string_view>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"

namespace prenorm {

enum class Activation {
  GeluTanh,  // the tanh approximation (GPT-2, Hugging Face "gelu_new")
  GeluErf,   // the exact GELU (ViT, Hugging Face "gelu")
  Relu,      // max(x, 0) (OPT, Hugging Face "relu")
  QuickGelu, // x sigmoid(1.702 x) (CLIP, Hugging Face "quick_gelu")
  GeluTanhBloom,  // GeluTanh with BLOOM's constant 0.79788456 for sqrt(2/pi)
};

// snake_case names, as used in benchmark names and JSON keys.
constexpr std::string_view activation_name(Activation activation) {
  switch (activation) {
    case Activation::GeluTanh: return "gelu_tanh";
    case Activation::GeluErf: return "gelu_erf";
    case Activation::Relu: return "relu";
    case Activation::QuickGelu: return "quick_gelu";
    case Activation::GeluTanhBloom: return "gelu_tanh_bloom";
  }
  return "unknown";
}

// The activation whose activation_name is `name`, or false if none is.
constexpr bool activation_from_name(std::string_view name, Activation& activation) {
  for (Activation a : {Activation::GeluTanh, Activation::GeluErf, Activation::Relu,
                       Activation::QuickGelu, Activation::GeluTanhBloom})
    if (activation_name(a) == name) {
      activation = a;
      return true;
    }
  return false;
}

namespace detail {

template <class Scalar>
using ArrayMap = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

// In place over one contiguous run v [n]. Eigen vectorizes tanh (float), so
// the whole row is one array expression.
// sqrt(2/pi), and BLOOM's rounding of it.
inline constexpr double kGeluTanhK0 = 0.7978845608028654;
inline constexpr double kGeluTanhBloomK0 = 0.79788456;

template <class Scalar>
void gelu_tanh_inplace(ArrayMap<Scalar> v, double k0_value = kGeluTanhK0) {
  const Scalar k0 = Scalar(k0_value);
  const Scalar k1 = Scalar(0.044715);
  v = Scalar(0.5) * v * (Scalar(1) + (k0 * (v + k1 * v.cube())).tanh());
}

// In place over v [n]. Eigen's erf (unsupported/SpecialFunctions, shipped
// with Eigen 3.4) is vectorized for float: a rational approximation within a
// few ulp, clamped to +-1 beyond |x| = 4 where float's erf is +-1 anyway;
// for double it calls std::erf. std::erf per element took 17 % of a ViT-Ti
// forward.
template <class Scalar>
void gelu_erf_inplace(ArrayMap<Scalar> v) {
  const Scalar k = Scalar(0.7071067811865476);  // 1/sqrt(2)
  v = Scalar(0.5) * v * (Scalar(1) + (k * v).erf());
}

// In place over v [n]; max vectorizes.
template <class Scalar>
void relu_inplace(ArrayMap<Scalar> v) {
  v = v.max(Scalar(0));
}

// In place over v [n], as x / (1 + exp(-1.702 x)): exp is vectorized (float)
// and within a few ulp, where Eigen's float logistic() is 4e-5 off
// (relative) near sigmoid(-10). exp overflowing to inf gives -0, the limit.
template <class Scalar>
void quick_gelu_inplace(ArrayMap<Scalar> v) {
  v = v / (Scalar(1) + (Scalar(-1.702) * v).exp());
}

template <class Scalar>
void activation_inplace(Activation activation, ArrayMap<Scalar> v) {
  switch (activation) {
    case Activation::GeluTanh: return gelu_tanh_inplace(v);
    case Activation::GeluErf: return gelu_erf_inplace(v);
    case Activation::Relu: return relu_inplace(v);
    case Activation::QuickGelu: return quick_gelu_inplace(v);
    case Activation::GeluTanhBloom: return gelu_tanh_inplace(v, kGeluTanhBloomK0);
  }
  fail("activation_inplace", "unknown activation ", int(activation));
}

// y = f(x) row by row; x, y [rows x n] (y may be x). Rows in parallel.
template <class XD, class YD, class RowFn>
void elementwise_rows(const char* op, const Eigen::MatrixBase<XD>& x,
                      const Eigen::MatrixBase<YD>& y_const, RowFn row_fn) {
  using Scalar = typename XD::Scalar;
  static_assert(std::is_same_v<Scalar, typename YD::Scalar>,
                "prenorm: x and y must have the same scalar type");
  auto& y = const_cast<Eigen::MatrixBase<YD>&>(y_const).derived();
  if (y.rows() != x.rows() || y.cols() != x.cols())
    fail(op, "y is ", y.rows(), " x ", y.cols(), ", expected ", x.rows(), " x ", x.cols(),
         " (the shape of x)");
  if (y.cols() > 1 && y.colStride() != 1)
    fail(op, "y must be row-major with contiguous rows (got a column stride of ", y.colStride(), ")");
  const Index n = x.cols();
  if (n == 0) return;
  bool in_place = false;  // y is x itself: skip the copy
  if constexpr ((int(Eigen::internal::traits<XD>::Flags) & Eigen::DirectAccessBit) != 0)
    in_place = x.derived().data() == y.data() && x.rowStride() == y.rowStride();
  for_each_row(x.rows(), n, [&](Index r) {
    ArrayMap<Scalar> row(&y.coeffRef(r, 0), n);
    if (!in_place) row = x.row(r).transpose().array();
    row_fn(row);
  });
}

}  // namespace detail

// y = GELU_tanh(x), elementwise. x, y: [rows x n]; y may be x.
template <class XD, class YD>
void gelu_tanh_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  detail::elementwise_rows("gelu_tanh_forward", x, y,
                           [](auto row) { detail::gelu_tanh_inplace(row); });
}

// y = GELU_erf(x), elementwise. x, y: [rows x n]; y may be x.
template <class XD, class YD>
void gelu_erf_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  detail::elementwise_rows("gelu_erf_forward", x, y,
                           [](auto row) { detail::gelu_erf_inplace(row); });
}

// y = max(x, 0), elementwise. x, y: [rows x n]; y may be x.
template <class XD, class YD>
void relu_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  detail::elementwise_rows("relu_forward", x, y, [](auto row) { detail::relu_inplace(row); });
}

// y = x sigmoid(1.702 x), elementwise. x, y: [rows x n]; y may be x.
template <class XD, class YD>
void quick_gelu_forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y) {
  detail::elementwise_rows("quick_gelu_forward", x, y,
                           [](auto row) { detail::quick_gelu_inplace(row); });
}

// y = activation(x), elementwise. x, y: [rows x n]; y may be x.
template <class XD, class YD>
void activation_forward(Activation activation, const Eigen::MatrixBase<XD>& x,
                        const Eigen::MatrixBase<YD>& y) {
  detail::elementwise_rows("activation_forward", x, y,
                           [activation](auto row) { detail::activation_inplace(activation, row); });
}

}  // namespace prenorm
