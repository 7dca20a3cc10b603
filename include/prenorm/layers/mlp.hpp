#pragma once
// Position-wise MLP: y = proj(act(fc(x))).

#include <Eigen/Core>

#include <string>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/activation.hpp"
#include "linear.hpp"

namespace prenorm {

template <class S>
class Mlp {
 public:
  using Scalar = S;

  Linear<S> fc;    // (inner, width)
  Linear<S> proj;  // (width, inner)
  Activation activation = Activation::GeluTanh;

  Mlp() = default;
  // Zero weights with biases. width: the main-branch width the layer reads and writes.
  Mlp(Index width, Index inner, Activation activation_, bool bias = true)
      : fc(width, inner, bias), proj(inner, width, bias), activation(activation_) {}

  Index width() const { return fc.in_features(); }
  Index inner() const { return fc.out_features(); }

  // y [tokens x width] = MLP(x [tokens x width]); hidden: [tokens x inner] scratch.
  // A wider y gets the output in its first width columns and zeros in the
  // rest, and lets the output projection run padded (Linear::forward_padded).
  void forward(const ConstRowsRef<S>& x, RowsRef<S> y, RowMatrix<S>& hidden) const {
    if (x.cols() != width())
      detail::fail("Mlp::forward", "x has ", x.cols(), " columns, expected ", width(),
                   " (the width of fc)");
    if (y.rows() != x.rows() || y.cols() < proj.out_features())
      detail::fail("Mlp::forward", "y is ", y.rows(), " x ", y.cols(), ", expected ", x.rows(),
                   " x ", proj.out_features(), " (tokens x width, or wider)");
    if (fc.has_bias() && fc.bias.size() != inner())
      detail::fail("Mlp::forward", "fc.bias has ", fc.bias.size(), " elements, expected ", inner());
    if (x.rows() == 0) return;
    hidden.resize(x.rows(), inner());
    fc.product_padded(x, hidden);
    // Bias and activation in one pass over the hidden row, while it is in L1.
    const Index n = inner();
    detail::for_each_row(hidden.rows(), n, [&](Index r) {
      detail::ArrayMap<S> row(hidden.row(r).data(), n);
      if (fc.has_bias()) row += fc.bias.array();
      detail::activation_inplace(activation, row);
    });
    proj.forward_padded(hidden, y);
  }
  // The same with a hidden buffer of its own (allocates; for tests and one-off calls).
  void forward(const ConstRowsRef<S>& x, RowsRef<S> y) const {
    RowMatrix<S> hidden;
    forward(x, y, hidden);
  }

  // Throws unless fc is (inner, width) and proj is (width, inner).
  // name: a string or a callable returning one.
  template <class Name>
  void validate(const char* op, const Name& name, Index width_, Index inner_) const {
    fc.validate(op, detail::sub_name(name, ".fc"), width_, inner_);
    proj.validate(op, detail::sub_name(name, ".proj"), inner_, width_);
  }
};

}  // namespace prenorm
