#pragma once
// The roles a tensor plays on the main branch (docs/DESIGN.md §7) and, per role,
// the conversion's forward transform and its adjoint on whole tensors. These
// are the only definitions of the conversion maths: convert<To> (convert.hpp,
// in double, every direction), training's convert_into and convert_adjoint
// (model_adjoint.hpp, in the model's scalar) and the one-step functions of
// transforms.hpp and adjoint.hpp all call them. They apply the vector
// kernels of ops/main_branch.hpp (K: recenter and compress, C: fold the
// dropped input coordinate), which the fused paths call directly, row by
// row: the keep-tied head (models/gpt.hpp), the optimizer-fused conversion
// (train/reparam_step.hpp) and the fused backward (train/reparam_backward.hpp).
//
//   kind    roles (plan.hpp)             forward (what Steps s says)          adjoint
//   Table   token, position, cls         rows: K(row - mean) (s.recenter,     rows: pad(g) - mean(pad(g))
//                                        s.compress_output), or (row, -sum)   (branch::write_adjoint)
//                                        (s.decompress_output) (branch::write)
//   Writer  attn out, mlp proj,          each column and the bias as a table  the same, on the columns
//           ViT patch (the stem)         row: W - 1 mean(W), K               (W's gradient) and the bias
//   Reader  qkv, mlp fc, head            rows: C(w * gamma), b + w . beta     rows: branch::read_adjoint,
//                                        (s.fold_affine, s.compress_input),   dgamma, dbeta summed over
//                                        or a zero column (s.decompress_input)  rows (the product rule)
//   Norm    gamma, beta of every norm    dropped (folded into its readers),   none of its own: its dgamma,
//                                        or 1, 0 for a Pre-LN target          dbeta come from its readers
//   Tied    E as the head, kept tied     per token at run time: branch::write on the looked-up row,
//                                        branch::read_input before the head; adjoint: read_input_adjoint
//
// Adjoints exist for the forward steps (fold, recenter, compress): training
// runs Pre-LN -> Pre-(C)RMSNorm only. Reductions over rows use a fixed number
// of row chunks, so results do not depend on the thread count. On whole
// tensors a writer's column sums and a reader's biases are Eigen's (colwise
// sums, one GEMV), which keeps convert<To>'s results bit for bit what they
// were; the fused row-by-row paths sum a reader's bias per row
// (branch::read_bias), and a writer's columns per block of rows (reparam_step).

#include <Eigen/Core>

#include <algorithm>
#include <span>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../ops/main_branch.hpp"
#include "plan.hpp"

namespace prenorm {

// Scratch of the role functions (and of convert_into, convert_adjoint),
// reused between calls: nothing is allocated once the shapes are known.
template <class S>
struct ConvertWorkspace {
  Vector<S> mean;              // grow-only; head(cols): column means of a writer
  RowMatrix<S> partial_gamma;  // [chunks x d]
  RowMatrix<S> partial_beta;   // [chunks x d]
};

namespace conversion {

enum class RoleKind { Table, Writer, Reader, Norm };

constexpr RoleKind kind_of(Role role) {
  if (role == Role::NormAffine) return RoleKind::Norm;
  if (is_reader(role)) return RoleKind::Reader;
  return is_table(role) ? RoleKind::Table : RoleKind::Writer;
}

inline constexpr Index kReduceChunks = 16;

// Steps with only `step` set: the one-step functions of transforms.hpp.
inline Steps only(bool Steps::*step) {
  Steps s;
  s.*step = true;
  return s;
}

// Main-branch width after the steps: of a table or writer (output axis), or
// of a reader (input axis), from width d.
inline Index output_width(Index d, const Steps& s) {
  return d - (s.compress_output ? 1 : 0) + (s.decompress_output ? 1 : 0);
}
inline Index input_width(Index d, const Steps& s) {
  return d - (s.compress_input ? 1 : 0) + (s.decompress_input ? 1 : 0);
}

namespace detail {

template <class S>
const Vector<S>& no_affine() {
  static const Vector<S> none;
  return none;
}

inline void check_shape(const char* op, const char* what, Index rows, Index cols, Index er,
                        Index ec) {
  if (rows != er || cols != ec)
    prenorm::detail::fail(op, what, " is (", rows, " x ", cols, "), expected (", er, " x ", ec, ")");
}

inline void check_forward_steps(const char* op, const Steps& s) {
  if (s.decompress_output || s.decompress_input)
    prenorm::detail::fail(op, "has no adjoint for decompression (training converts from Pre-LN)");
}

}  // namespace detail

// Column means of m [rows x cols] into mean (cols): each column's sum over
// `divisor` (d for a compressed writer's gradient, whose dropped row is zero;
// 1 for sums). Eigen's column sums, on blocks of 256 columns in parallel (a
// multiple of every packet size: the sums are those of the whole matrix).
template <class S>
void column_means(const RowMatrix<S>& m, Index divisor, Vector<S>& mean) {
  const Index rows = m.rows(), cols = m.cols();
  if (mean.size() < cols) mean.resize(cols);  // grow-only: the first `cols` are used
  const Index chunk = 256, chunks = (cols + chunk - 1) / chunk;
  prenorm::detail::for_each_row(chunks, rows * chunk, [&](Index c) {
    const Index begin = c * chunk, n = std::min(cols, begin + chunk) - begin;
    mean.segment(begin, n).transpose() = m.middleCols(begin, n).colwise().sum() / S(divisor);
  });
}

// --- Table ------------------------------------------------------------------

// One vector written into the branch: out [output_width] from v [d].
template <class V, class Out>
void table_row_forward(const V& v, const Steps& s, Out&& out) {
  if (s.decompress_output) branch::decompress_row(v, out);
  else if (s.recenter) branch::write(v, out);
  else out = v.head(out.size());
}

// The adjoint of table_row_forward: out [d] from g [m]; dropped coordinates
// get zero gradient (then the recentering's adjoint centers the whole).
template <class G, class Out>
void table_row_adjoint(const G& g, const Steps& s, Out&& out, GradWrite mode) {
  if (s.recenter) return branch::write_adjoint(g, out, mode);
  const Index m = g.size();
  if (mode == GradWrite::Overwrite) {
    out.head(m) = g;
    out.tail(out.size() - m).setZero();
  } else {
    out.head(m) += g;
  }
}

// table (n, d) -> out (n, output_width(d, s)); out may be table when the
// width does not change.
template <class S>
void table_forward(const RowMatrix<S>& table, const Steps& s, RowMatrix<S>& out) {
  detail::check_shape("table_forward", "the converted table", out.rows(), out.cols(), table.rows(),
                      output_width(table.cols(), s));
  prenorm::detail::for_each_row(table.rows(), table.cols(), [&](Index r) {
    table_row_forward(table.row(r), s, out.row(r));
  });
}

// g_out (n, m) -> g_table (n, d): every row, or only `rows` (the other rows
// of g_out are zero and those of g_table are left as they are).
template <class S>
void table_adjoint(const RowMatrix<S>& g_out, const Steps& s, RowMatrix<S>& g_table,
                   GradWrite mode, std::span<const int> rows = {}, bool sparse = false) {
  detail::check_forward_steps("table_adjoint", s);
  if (sparse) {
    prenorm::detail::for_each_row(Index(rows.size()), g_out.cols(), [&](Index k) {
      const Index r = rows[std::size_t(k)];
      table_row_adjoint(g_out.row(r), s, g_table.row(r), mode);
    });
    return;
  }
  prenorm::detail::for_each_row(g_out.rows(), g_out.cols(), [&](Index r) {
    table_row_adjoint(g_out.row(r), s, g_table.row(r), mode);
  });
}

// --- Writer -----------------------------------------------------------------

// W (d, in), b (d) or empty -> out (output_width(d, s), in), out_bias: each
// column of W and the bias are table rows. Row-major, so the column means
// come first and the rows are written minus them. out may be W (and out_bias
// b) when the width does not change.
template <class S>
void writer_forward(const RowMatrix<S>& W, const Vector<S>& b, const Steps& s, RowMatrix<S>& out,
                    Vector<S>& out_bias, ConvertWorkspace<S>& ws) {
  const Index d = W.rows(), in = W.cols(), m = output_width(d, s);
  detail::check_shape("writer_forward", "the converted weight", out.rows(), out.cols(), m, in);
  if (s.decompress_output) {  // the appended row makes every column sum to zero
    prenorm::detail::for_each_row(d, in, [&](Index i) { out.row(i) = W.row(i); });
    out.row(d) = -W.colwise().sum();
  } else if (s.recenter) {
    column_means(W, d, ws.mean);
    const auto mean = ws.mean.head(in);
    prenorm::detail::for_each_row(m, in, [&](Index i) { out.row(i) = W.row(i) - mean.transpose(); });
  } else {
    prenorm::detail::for_each_row(m, in, [&](Index i) { out.row(i) = W.row(i); });
  }
  if (b.size() > 0) table_row_forward(b.transpose(), s, out_bias.transpose());
}

// The adjoint: g_out (m, in), g_out_bias (m) or empty -> g_W (d, in), g_b (d).
// g_W may be g_out (and g_b g_out_bias) when the width does not change.
template <class S>
void writer_adjoint(const RowMatrix<S>& g_out, const Vector<S>& g_out_bias, const Steps& s,
                    RowMatrix<S>& g_W, Vector<S>& g_b, ConvertWorkspace<S>& ws) {
  detail::check_forward_steps("writer_adjoint", s);
  const Index m = g_out.rows(), in = g_out.cols(), d = g_W.rows();
  detail::check_shape("writer_adjoint", "the weight's gradient", d, g_W.cols(),
                      m + (s.compress_output ? 1 : 0), in);
  if (s.recenter) {
    column_means(g_out, d, ws.mean);  // of pad(g_out): the padded row is zero
    const auto mean = ws.mean.head(in);
    prenorm::detail::for_each_row(m, in, [&](Index i) { g_W.row(i) = g_out.row(i) - mean.transpose(); });
    if (d > m) g_W.row(d - 1) = -mean.transpose();
  } else {
    prenorm::detail::for_each_row(m, in, [&](Index i) { g_W.row(i) = g_out.row(i); });
    if (d > m) g_W.row(d - 1).setZero();
  }
  if (g_out_bias.size() > 0)
    table_row_adjoint(g_out_bias.transpose(), s, g_b.transpose(), GradWrite::Overwrite);
}

// --- Reader -----------------------------------------------------------------

// A reader's converted bias, rows [r0, r1): out_bias = b + W beta (b empty:
// 0; beta empty: b). One GEMV, the same for any split of the rows.
template <class S>
void reader_bias_rows(const RowMatrix<S>& W, const Vector<S>& b, const Vector<S>& beta, Index r0,
                      Index r1, Vector<S>& out_bias) {
  auto out = out_bias.segment(r0, r1 - r0);
  if (b.size() > 0) out = b.segment(r0, r1 - r0);
  else out.setZero();
  if (beta.size() > 0) out.noalias() += W.middleRows(r0, r1 - r0) * beta;
}

// W (o, d), b (o) or empty; gamma, beta (d) or empty, folded when
// s.fold_affine -> out (o, input_width(d, s)); out_bias (o) = b + W beta,
// written when it has o elements (it must, to fold a beta). out may be W
// (and out_bias b) when the width does not change.
template <class S>
void reader_forward(const RowMatrix<S>& W, const Vector<S>& b, const Vector<S>& gamma,
                    const Vector<S>& beta, const Steps& s, RowMatrix<S>& out, Vector<S>& out_bias) {
  constexpr const char* op = "reader_forward";
  const Index o = W.rows(), d = W.cols();
  detail::check_shape(op, "the converted weight", out.rows(), out.cols(), o, input_width(d, s));
  const Vector<S>& g = s.fold_affine ? gamma : detail::no_affine<S>();
  const Vector<S>& be = s.fold_affine ? beta : detail::no_affine<S>();
  if (be.size() > 0 && out_bias.size() != o)
    prenorm::detail::fail(op, "the converted bias has ", out_bias.size(), " elements, expected ", o,
                          " (folding beta needs a bias)");
  if (out_bias.size() == o && o > 0) {
    if (b.size() != 0 && b.size() != o)
      prenorm::detail::fail(op, "the bias has ", b.size(), " elements, expected ", o);
    reader_bias_rows(W, b, be, 0, o, out_bias);  // before out (which may be W) is written
  }
  prenorm::detail::for_each_row(o, d, [&](Index i) {
    if (s.decompress_input) {  // the decompressed input's last coordinate is read by a zero
      out.row(i).head(d) = W.row(i);
      out(i, d) = S(0);
    } else {
      branch::read(W.row(i), g, out.row(i));
    }
  });
}

// The adjoint: g_out (o, m), g_out_bias (o) or empty: the gradients of the
// converted weight and bias; W (o, d), gamma, beta: as given to
// reader_forward. Writes g_W (o, d) (may be g_out when m = d), g_b (o) if
// non-null (= g_out_bias, or 0), and, when s.fold_affine, g_gamma and g_beta
// (d) where gamma, beta exist (overwritten or added to, by `mode`).
template <class S>
void reader_adjoint(const RowMatrix<S>& g_out, const Vector<S>& g_out_bias, const RowMatrix<S>& W,
                    const Vector<S>& gamma, const Vector<S>& beta, const Steps& s,
                    RowMatrix<S>& g_W, std::type_identity_t<Vector<S>>* g_b, Vector<S>& g_gamma,
                    Vector<S>& g_beta,
                    GradWrite mode, ConvertWorkspace<S>& ws) {
  detail::check_forward_steps("reader_adjoint", s);
  const Index o = W.rows(), d = W.cols();
  detail::check_shape("reader_adjoint", "the weight's gradient", g_W.rows(), g_W.cols(), o, d);
  const Vector<S>& g = s.fold_affine ? gamma : detail::no_affine<S>();
  // beta reaches only the bias: without the bias's gradient it has none.
  const Vector<S>& be = s.fold_affine && g_out_bias.size() ? beta : detail::no_affine<S>();
  const Index chunks = std::max<Index>(1, std::min(o, kReduceChunks));
  ws.partial_gamma.setZero(kReduceChunks, d);  // always this shape: no reallocation
  ws.partial_beta.setZero(kReduceChunks, d);
  prenorm::detail::for_each_row(chunks, (o / chunks + 1) * d, [&](Index c) {
    for (Index i = c * o / chunks; i < (c + 1) * o / chunks; ++i)
      branch::read_adjoint(g_out.row(i), g_out_bias.size() ? g_out_bias[i] : S(0), W.row(i), g, be,
                           g_W.row(i), ws.partial_gamma.row(c), ws.partial_beta.row(c));
  });
  const auto reduce = [&](RowMatrix<S>& partial, Vector<S>& total) {  // in chunk order
    for (Index c = 1; c < chunks; ++c) partial.row(0) += partial.row(c);
    if (mode == GradWrite::Overwrite) total = partial.row(0).transpose();
    else total += partial.row(0).transpose();
  };
  if (g.size() > 0) reduce(ws.partial_gamma, g_gamma);
  if (be.size() > 0) reduce(ws.partial_beta, g_beta);
  else if (s.fold_affine && beta.size() > 0 && mode == GradWrite::Overwrite) g_beta.setZero();
  if (g_b) {
    if (g_out_bias.size()) *g_b = g_out_bias;
    else g_b->setZero();
  }
}

}  // namespace conversion
}  // namespace prenorm
