#pragma once
// Softmax cross-entropy over the rows of a logits matrix: next tokens for a
// GPT (one row per position), classes for a ViT (one row per image).
//
//   loss = mean over counted rows r of  lse(z_r) - z_r[target_r],  z_r = logits_r + bias
//
// Rows whose target is negative are not counted (an ignore index). The
// forward-backward pass turns the logits into dL/dlogits in place
// ((softmax(z_r) - onehot) / count), with a head bias added in the same pass
// and its gradient (the column sums) gathered there too, so that the large
// [tokens x vocab] matrix is read and written once.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <span>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"

namespace prenorm {

// Scratch of the cross-entropy, reused between calls.
template <class S>
struct CrossEntropyWorkspace {
  Vector<double> row_loss;  // [rows]
  RowMatrix<S> partial;     // [chunks x classes]: per row-chunk column sums for dbias
};

namespace detail {

// Row r's loss lse(z) - z[target], with z = x + bias (bias may be null). x: [n].
template <class S>
S row_cross_entropy(const S* x, const S* bias, Index n, int target, S* max_out = nullptr,
                    S* sum_out = nullptr) {
  using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
  const Eigen::Map<const Arr> xs(x, n);
  S max, sum;
  if (bias) {
    const Eigen::Map<const Arr> bs(bias, n);
    max = (xs + bs).maxCoeff();
    sum = (xs + bs - max).exp().sum();
  } else {
    max = xs.maxCoeff();
    sum = (xs - max).exp().sum();
  }
  if (max_out) *max_out = max;
  if (sum_out) *sum_out = sum;
  const S z_target = x[target] + (bias ? bias[target] : S(0));
  return std::log(sum) + max - z_target;
}

template <class S>
Index check_cross_entropy(const char* op, Index rows, Index cols, std::span<const int> targets,
                          const Vector<S>& bias) {
  if (Index(targets.size()) != rows)
    fail(op, "targets has ", targets.size(), " entries, expected ", rows, " (one per row of logits)");
  if (bias.size() != 0 && bias.size() != cols)
    fail(op, "bias has ", bias.size(), " elements, expected ", cols, " (the columns of logits) or none");
  Index count = 0;
  for (std::size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] >= cols)
      fail(op, "target ", targets[r], " at row ", r, " is out of range [0, ", cols, ")");
    if (targets[r] >= 0) ++count;
  }
  return count;
}

}  // namespace detail

// Mean loss of logits [rows x classes] (+ bias (classes), or none) against
// targets [rows] (negative: not counted). 0 when no row counts.
template <class S>
double softmax_cross_entropy_forward(const ConstRowsRef<S>& logits, std::span<const int> targets,
                                     const Vector<S>& bias = Vector<S>()) {
  const Index count = detail::check_cross_entropy("softmax_cross_entropy_forward", logits.rows(),
                                                  logits.cols(), targets, bias);
  double total = 0;
  for (Index r = 0; r < logits.rows(); ++r)
    if (targets[r] >= 0)
      total += double(detail::row_cross_entropy(logits.row(r).data(), bias.size() ? bias.data() : nullptr,
                                                logits.cols(), targets[r]));
  return count ? total / double(count) : 0.0;
}

// The forward and backward in one pass. logits [rows x classes] becomes
// dL/dlogits of the mean loss; bias (classes) or empty is added first; dbias,
// if non-null, is written with dL/dbias (the column sums of dL/dlogits).
// Returns the mean loss. Rows whose target is negative get zero gradient.
template <class S>
double softmax_cross_entropy_forward_backward(RowsRef<S> logits, std::span<const int> targets,
                                              CrossEntropyWorkspace<S>& ws,
                                              const Vector<S>& bias = Vector<S>(),
                                              Vector<S>* dbias = nullptr) {
  constexpr const char* op = "softmax_cross_entropy_forward_backward";
  const Index rows = logits.rows(), n = logits.cols();
  const Index count = detail::check_cross_entropy(op, rows, n, targets, bias);
  if (dbias && dbias->size() != n)
    detail::fail(op, "dbias has ", dbias->size(), " elements, expected ", n);
  ws.row_loss.resize(rows);
  const S inv_count = count ? S(1) / S(count) : S(0);
  const S* b = bias.size() ? bias.data() : nullptr;
  using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
  // Rows go in fixed chunks (independent of the thread count); chunk c sums
  // its rows of dlogits into partial row c, in row order.
  const Index chunks = std::min<Index>(rows, 16);
  if (dbias) ws.partial.resize(chunks, n);
  const auto row_pass = [&](Index r) {
    S* z = logits.row(r).data();
    Eigen::Map<Arr> zs(z, n);
    if (targets[r] < 0) {
      ws.row_loss[r] = 0;
      zs.setZero();
      return;
    }
    S max, sum;
    ws.row_loss[r] = double(detail::row_cross_entropy<S>(z, b, n, targets[r], &max, &sum));
    const S scale = inv_count / sum;
    if (b) zs = ((zs + Eigen::Map<const Arr>(b, n)) - max).exp() * scale;
    else zs = (zs - max).exp() * scale;
    z[targets[r]] -= inv_count;
  };
  if (rows > 0) {
    detail::for_each_row(chunks, (rows / chunks + 1) * n, [&](Index c) {
      const Index begin = c * rows / chunks, end = (c + 1) * rows / chunks;
      for (Index r = begin; r < end; ++r) {
        row_pass(r);
        if (dbias) {
          if (r == begin) ws.partial.row(c) = logits.row(r);
          else ws.partial.row(c) += logits.row(r);
        }
      }
    });
  }
  if (dbias) {
    dbias->setZero();
    for (Index c = 0; c < chunks; ++c) *dbias += ws.partial.row(c).transpose();
  }
  double total = 0;
  for (Index r = 0; r < rows; ++r) total += ws.row_loss[r];
  return count ? total / double(count) : 0.0;
}

}  // namespace prenorm
