#pragma once
// Linear layer y = x W^T + b, with W stored (out, in) as in PyTorch.
//
// Activations are row-major [tokens x features], so the product is one GEMM
// x [tokens x in] * W^T [in x out]; Eigen packs both operands, so the strides
// of odd widths (767) cost nothing extra.
//
// With oneDNN (PRENORM_WITH_ONEDNN), pack() lays a float layer's weights out
// once in oneDNN's blocked format (detail/packed_weight.hpp); the products
// of 4 rows or more then read that copy, with the bias fused. The plain weight
// stays the parameter: training, conversion and io read it, decoding (fewer
// rows) multiplies by it. A packed layer must not have its weight changed in
// place: unpack() first (models/packing.hpp does both for a whole model).
// Copies are not packed.

#include <Eigen/Core>

#include <algorithm>
#include <string>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "detail/masked_tail_gemv.hpp"
#include "detail/packed_weight.hpp"
#include "detail/padded_product.hpp"

namespace prenorm {
namespace detail {

// A tensor name for an error message: a string, or a callable that builds one,
// so that checks which pass build (and allocate) nothing.
template <class Name>
std::string tensor_name(const Name& name) {
  if constexpr (std::is_invocable_v<const Name&>) return std::string(name());
  else return std::string(name);
}

// The name `name` + `suffix`, built only when called.
template <class Name>
auto sub_name(const Name& name, const char* suffix) {
  return [&name, suffix] { return tensor_name(name) + suffix; };
}

}  // namespace detail

template <class S>
class Linear {
 public:
  using Scalar = S;

  RowMatrix<S> weight;  // (out, in)
  Vector<S> bias;       // (out), or empty for no bias

  Linear() = default;
  // Zero weights (out, in) and, with_bias, a zero bias (out).
  Linear(Index in, Index out, bool with_bias = true)
      : weight(RowMatrix<S>::Zero(out, in)), bias(with_bias ? Vector<S>::Zero(out) : Vector<S>()) {}

  // Packs the weights for the GEMM backend (see the header comment): a no-op
  // without oneDNN or for double. Call again after changing the weights.
  void pack() {
    validate("Linear::pack", "the layer", in_features(), out_features());
    packed_.pack(weight, bias);
  }
  // Drops the packed copy: products multiply by the plain weight again.
  void unpack() { packed_.reset(); }
  bool is_packed() const { return packed_.packed(); }

  Index in_features() const { return weight.cols(); }
  Index out_features() const { return weight.rows(); }
  bool has_bias() const { return bias.size() != 0; }

  // y [tokens x out] = x [tokens x in] * weight^T + bias. y must not alias x.
  template <class XD, class YD>
  void forward(const Eigen::MatrixBase<XD>& x, const Eigen::MatrixBase<YD>& y_const) const {
    auto& y = const_cast<Eigen::MatrixBase<YD>&>(y_const).derived();
    check_forward("Linear::forward", x.rows(), x.cols(), y.rows(), y.cols());
    if (x.rows() == 0) return;
    y.noalias() = x * weight.transpose();
    add_bias(y);
  }

  // y [tokens x padded] with padded >= out: y's first out columns = x W^T + b
  // and the rest 0. Three shapes of a Pre-CRMSNorm block run in kernels of
  // their own:
  //   - out just short of the GEMM's register block (191 -> 192, 767 -> 768:
  //     its d - 1 wide writers), with y that wide and at least 16 rows of x:
  //     W is padded with zero rows (detail/padded_product.hpp);
  //   - a depth that is not a whole number of packets (d - 1: its readers),
  //     with at least 16 rows of x: W's rows are copied to an aligned stride
  //     before packing (the same file);
  //   - a single row of x (decoding) whose depth is not a whole number of
  //     packets (d - 1 = 767: its readers): each row of W ends in one masked
  //     packet instead of a scalar loop (detail/masked_tail_gemv.hpp).
  // Elsewhere it is forward's product. y must not alias x.
  void forward_padded(const ConstRowsRef<S>& x, RowsRef<S> y) const {
    padded_product("Linear::forward_padded", x, y, /*with_bias=*/true);
  }

  // The same without the bias, for a caller that adds it in a later pass of
  // its own (Mlp adds fc's bias with the activation).
  void product_padded(const ConstRowsRef<S>& x, RowsRef<S> y) const {
    padded_product("Linear::product_padded", x, y, /*with_bias=*/false);
  }

  // y [tokens x out] += bias (no-op without a bias).
  template <class YD>
  void add_bias(const Eigen::MatrixBase<YD>& y_const) const {
    if (!has_bias()) return;
    auto& y = const_cast<Eigen::MatrixBase<YD>&>(y_const).derived();
    // Row by row: each row is a contiguous, vectorized add.
    detail::for_each_row(y.rows(), y.cols(), [&](Index r) { y.row(r) += bias.transpose(); });
  }

  // Throws unless weight is (out, in) and bias is (out) or empty. name: the
  // layer's name in the message ("blocks[3].attn.qkv"), a string or a callable
  // returning one; op: the caller.
  template <class Name>
  void validate(const char* op, const Name& name, Index in, Index out) const {
    if (weight.rows() != out || weight.cols() != in)
      detail::fail(op, detail::tensor_name(name), ".weight is (", weight.rows(), " x ",
                   weight.cols(), "), expected (", out, " x ", in, ")");
    if (bias.size() != out && bias.size() != 0)
      detail::fail(op, detail::tensor_name(name), ".bias has ", bias.size(), " elements, expected ",
                   out, " (or none)");
  }

 private:
  void padded_product(const char* op, const ConstRowsRef<S>& x, RowsRef<S> y,
                      bool with_bias) const {
    const Index out = out_features();
    if (y.cols() < out)
      detail::fail(op, "y has ", y.cols(), " columns, expected at least ", out,
                   " (the output features of weight (", weight.rows(), " x ", weight.cols(), "))");
    if (y.rows() != x.rows())
      detail::fail(op, "y has ", y.rows(), " rows, expected ", x.rows(), " (the rows of x)");
    check_forward(op, x.rows(), x.cols(), y.rows(), out);
    if (x.rows() == 0) return;
    with_bias = with_bias && has_bias();
    if (packed_.multiply(op, x, y, weight, bias, with_bias)) {
      zero_tail(y, out);
      return;
    }
#ifndef EIGEN_USE_BLAS  // with BLAS, Eigen hands the product to sgemm/dgemm
    using Product = detail::PaddedProduct<S>;
    using Gemv = detail::MaskedTailGemv<S>;
    const Index padded_out = Product::padded_outputs(out);
    const bool padded = padded_out != 0 && padded_out <= y.cols();
    const bool gemm = x.rows() >= Product::kMinRows && (padded || Product::realigns(in_features()));
    const bool gemv = x.rows() == 1 && Gemv::applies(in_features());
    if (gemm || gemv) {
      // y = [b 0], then y += x W^T.
      const S* b = with_bias ? bias.data() : nullptr;
      detail::for_each_row(y.rows(), y.cols(), [&](Index r) {
        fill_row(y.data() + r * y.outerStride(), b, out, y.cols());
      });
      if (gemv) Gemv::run(weight.data(), out, in_features(), x.data(), y.data());
      else
        Product::run(weight.data(), out, padded ? padded_out : out, in_features(), x.data(),
                     x.outerStride(), x.rows(), y.data(), y.outerStride());
      return;
    }
#endif
    y.leftCols(out).noalias() = x * weight.transpose();
    if (with_bias) add_bias(y.leftCols(out));
    zero_tail(y, out);
  }

  // y's columns from out on = 0 (a padded output; nothing when y is out wide).
  static void zero_tail(RowsRef<S>& y, Index out) {
    if (y.cols() > out)
      detail::for_each_row(y.rows(), y.cols() - out,
                           [&](Index r) { y.row(r).tail(y.cols() - out).setZero(); });
  }

  // A shape change after pack() is caught there; a change of values cannot be
  // without reading them all: the rule is unpack() before changing them.
  detail::PackedSlot<S> packed_;

  // row [cols] = [b 0], b [out] (zeros where b is null). In unaligned packets,
  // the last of b's ending at out, over the one before when out is not a whole
  // number of packets (d - 1): Eigen's row assignment would align them with up
  // to P - 1 scalar steps at each end of every row (0.5 M instructions of a
  // ViT-Ti forward, 0.1 %).
  static void fill_row(S* row, const S* b, Index out, Index cols) {
    using namespace Eigen::internal;
    using Packet = typename packet_traits<S>::type;
    constexpr Index kPacket = packet_traits<S>::size;
    Index i = 0;
    if (kPacket > 1 && out >= kPacket) {
      for (; i + kPacket <= out; i += kPacket)
        pstoreu(row + i, b ? ploadu<Packet>(b + i) : pset1<Packet>(S(0)));
      const Index last = out - kPacket;
      if (i < out) pstoreu(row + last, b ? ploadu<Packet>(b + last) : pset1<Packet>(S(0)));
      i = out;
    }
    for (; i < out; ++i) row[i] = b ? b[i] : S(0);
    std::fill(row + out, row + cols, S(0));
  }

  void check_forward(const char* op, Index x_rows, Index x_cols, Index y_rows, Index y_cols) const {
    if (bias.size() != 0 && bias.size() != weight.rows())
      detail::fail(op, "bias has ", bias.size(), " elements, expected ",
                   weight.rows(), " (the rows of weight)");
    if (x_cols != weight.cols())
      detail::fail(op, "x has ", x_cols, " columns, expected ", weight.cols(),
                   " (the input features of weight (", weight.rows(), " x ", weight.cols(), "))");
    if (y_rows != x_rows || y_cols != weight.rows())
      detail::fail(op, "y is ", y_rows, " x ", y_cols, ", expected ", x_rows, " x ",
                   weight.rows(), " (tokens x output features)");
  }
};

}  // namespace prenorm
