#pragma once
// The converter as training needs it (docs/DESIGN.md §6), for Pre-LN ->
// Pre-RMSNorm and Pre-LN -> Pre-CRMSNorm, GPT and ViT:
//
//   convert_into(theta, phi)      phi = convert<To>(theta, {tied}), written into
//                                 phi's existing storage, in the model's scalar,
//                                 one pass per tensor
//   convert_adjoint(theta, g_phi, g_theta)
//                                 g_theta = J^T g_phi, the transposed Jacobian of
//                                 that conversion at theta
// phi's layout says which tied policy it was made with (Untie, or Keep:
// phi.tied_affine()); a tied theta may have either, an untied theta only Untie.
//
// Per tensor (the adjoints of transforms.hpp, fused into one pass each):
//   reader  W'' = C(W diag(gamma)),  b' = b + W beta       C: compress_input or identity
//           dW = C^T(dW'') diag(gamma) + db' beta^T,  db = db',
//           dgamma = colsum(W .* C^T(dW'')),  dbeta = W^T db'      (the product rule)
//   writer  W'' = K(W - 1 (1^T W)/d),  b'' = K(b - mean(b))  K: compress_output or identity
//           dW = (I - 1 1^T/d) K^T(dW''),  db likewise
//   table   rows recentered (and compressed); the adjoint recenters the padded rows
// A tied theta (one table E for the lookup and the head):
//   Untie   the token table and the head both come from E, and the adjoint
//           sums their gradients into dE.
//   Keep    phi keeps E, and the final affine as tied_gamma, tied_beta: the
//           model transforms E per token (convert.hpp), so here the map is the
//           identity, and so is its adjoint. The head's gradient and the
//           gamma_f, beta_f product rule are in phi's backward (dE, dtied_gamma,
//           dtied_beta), or in the fused one (reparam_backward.hpp).
//
// Arithmetic is in the model's scalar. Reductions over rows use a fixed number
// of row chunks, so results do not depend on the thread count.

#include <Eigen/Core>

#include <algorithm>
#include <span>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "convert.hpp"

namespace prenorm {

// Scratch of convert_into and convert_adjoint, reused between calls.
template <class S>
struct ConvertWorkspace {
  Vector<S> mean;              // grow-only; head(cols): column means of a writer
  RowMatrix<S> partial_gamma;  // [chunks x d]
  RowMatrix<S> partial_beta;   // [chunks x d]
};

// Which rows of the gradient of phi's token table may be non-zero.
struct AdjointOptions {
  // false: all rows. true: only token_rows (distinct ids); the other rows of
  // grad_phi's token table must be zero. For an untied theta, only those rows
  // of grad_theta's token table are then written, and the caller keeps the
  // others zero; for a tied theta the head's part is written densely anyway.
  bool sparse_token_rows = false;
  std::span<const int> token_rows;
};

namespace conversion {

inline constexpr Index kReduceChunks = 16;

// Column means of m [rows x cols] into mean (cols): the mean over the rows of
// each column, summed in row order. `divisor` is the row count to divide by
// (d for a compressed writer's gradient, whose dropped row is zero).
template <class S>
void column_means(const RowMatrix<S>& m, Index divisor, Vector<S>& mean) {
  const Index rows = m.rows(), cols = m.cols();
  if (mean.size() < cols) mean.resize(cols);  // grow-only: the first `cols` are used
  const Index chunk = 256, chunks = (cols + chunk - 1) / chunk;
  prenorm::detail::for_each_row(chunks, rows * chunk, [&](Index c) {
    const Index begin = c * chunk, n = std::min(cols, begin + chunk) - begin;
    auto s = mean.segment(begin, n);
    s.setZero();
    for (Index r = 0; r < rows; ++r) s += m.row(r).segment(begin, n).transpose();
    s /= S(divisor);
  });
}

// Reader, forward, one row: out [m] = C(w * gamma), returns b + w . beta.
// w, gamma, beta [d]; compress: m = d - 1.
template <class S, class W, class Out>
S fold_reader_row(const W& w, S b, const Vector<S>& gamma, const Vector<S>& beta, bool compress,
                  Out&& out) {
  const Index d = w.size(), m = compress ? d - 1 : d;
  if (compress) {
    const S last = w[d - 1] * gamma[d - 1];
    out = (w.head(m).array() * gamma.head(m).transpose().array() - last).matrix();
  } else {
    out = w.cwiseProduct(gamma.transpose());
  }
  return b + w.dot(beta.transpose());
}

// Table, forward, one row: out [m] = K(row - mean(row)).
template <class S, class Row, class Out>
void recenter_table_row(const Row& row, bool compress, Out&& out) {
  const Index d = row.size(), m = compress ? d - 1 : d;
  out = (row.head(m).array() - row.mean()).matrix();
}

// Reader, forward: out (o, m) = C(W diag(gamma)), out_bias (o) = b + W beta.
// W (o, d); b (o) or empty; gamma, beta (d); compress: m = d - 1.
template <class S>
void fold_reader_into(const RowMatrix<S>& W, const Vector<S>& b, const Vector<S>& gamma,
                      const Vector<S>& beta, bool compress, RowMatrix<S>& out, Vector<S>& out_bias) {
  const Index o = W.rows(), d = W.cols();
  if (out_bias.size() != o)
    prenorm::detail::fail("fold_reader_into", "the converted bias has ", out_bias.size(),
                          " elements, expected ", o, " (folding beta needs a bias)");
  prenorm::detail::for_each_row(o, d, [&](Index i) {
    out_bias[i] = fold_reader_row<S>(W.row(i), b.size() ? b[i] : S(0), gamma, beta, compress, out.row(i));
  });
}

// Writer, forward: out (m, in) = K(W - 1 mean), out_bias = K(b - mean(b)).
// W (d, in); b (d) or empty.
template <class S>
void recenter_writer_into(const RowMatrix<S>& W, const Vector<S>& b, bool compress,
                          RowMatrix<S>& out, Vector<S>& out_bias, ConvertWorkspace<S>& ws) {
  const Index d = W.rows(), m = compress ? d - 1 : d;
  column_means(W, d, ws.mean);
  const auto mean = ws.mean.head(W.cols());
  prenorm::detail::for_each_row(m, W.cols(), [&](Index i) { out.row(i) = W.row(i) - mean.transpose(); });
  if (b.size()) out_bias = (b.head(m).array() - b.mean()).matrix();
}

// Table, forward: out (n, m) row r = K(row r - its mean). table (n, d).
template <class S>
void recenter_table_into(const RowMatrix<S>& table, bool compress, RowMatrix<S>& out) {
  prenorm::detail::for_each_row(table.rows(), table.cols(), [&](Index r) {
    recenter_table_row<S>(table.row(r), compress, out.row(r));
  });
}

// Reader, adjoint. g_out (o, m), g_out_bias (o): the gradient of the
// converted tensors. W (o, d), gamma, beta (d): theta's. Writes g_W (o, d),
// g_b (o, if non-null), g_gamma and g_beta (d).
template <class S>
void fold_reader_adjoint(const RowMatrix<S>& g_out, const Vector<S>& g_out_bias,
                         const RowMatrix<S>& W, const Vector<S>& gamma, const Vector<S>& beta,
                         bool compress, RowMatrix<S>& g_W, Vector<S>* g_b, Vector<S>& g_gamma,
                         Vector<S>& g_beta, ConvertWorkspace<S>& ws) {
  const Index o = W.rows(), d = W.cols(), m = compress ? d - 1 : d;
  const Index chunks = std::max<Index>(1, std::min(o, kReduceChunks));
  ws.partial_gamma.setZero(kReduceChunks, d);  // always this shape: no reallocation
  ws.partial_beta.setZero(kReduceChunks, d);
  prenorm::detail::for_each_row(chunks, (o / chunks + 1) * d, [&](Index c) {
    auto pg = ws.partial_gamma.row(c);
    auto pb = ws.partial_beta.row(c);
    for (Index i = c * o / chunks; i < (c + 1) * o / chunks; ++i) {
      auto g = g_W.row(i);
      g.head(m) = g_out.row(i);  // C^T: the dropped column gets -(row sum)
      if (compress) g[d - 1] = -g_out.row(i).sum();
      const S gb = g_out_bias.size() ? g_out_bias[i] : S(0);
      pg += W.row(i).cwiseProduct(g);
      pb += gb * W.row(i);
      g = g.cwiseProduct(gamma.transpose()) + gb * beta.transpose();
    }
  });
  g_gamma = ws.partial_gamma.row(0).transpose();
  g_beta = ws.partial_beta.row(0).transpose();
  for (Index c = 1; c < chunks; ++c) {
    g_gamma += ws.partial_gamma.row(c).transpose();
    g_beta += ws.partial_beta.row(c).transpose();
  }
  if (g_b) {
    if (g_out_bias.size()) *g_b = g_out_bias;
    else g_b->setZero();
  }
}

// Writer, adjoint. g_out (m, in), g_out_bias (m) or empty -> g_W (d, in), g_b (d).
template <class S>
void recenter_writer_adjoint(const RowMatrix<S>& g_out, const Vector<S>& g_out_bias, bool compress,
                             RowMatrix<S>& g_W, Vector<S>& g_b, ConvertWorkspace<S>& ws) {
  const Index m = g_out.rows(), d = compress ? m + 1 : m;
  column_means(g_out, d, ws.mean);
  const auto mean = ws.mean.head(g_out.cols());
  prenorm::detail::for_each_row(m, g_out.cols(), [&](Index i) { g_W.row(i) = g_out.row(i) - mean.transpose(); });
  if (compress) g_W.row(d - 1) = -mean.transpose();
  if (g_out_bias.size()) {
    const S mean = g_out_bias.sum() / S(d);
    g_b.head(m) = (g_out_bias.array() - mean).matrix();
    if (compress) g_b[d - 1] = -mean;
  }
}

// Table, adjoint of one row: out [d] = pad(g [m]) - mean(pad(g)).
template <class S, class G, class Out>
void recenter_row_adjoint(const G& g, bool compress, Out&& out, GradWrite write) {
  const Index m = g.size(), d = compress ? m + 1 : m;
  const S mean = g.sum() / S(d);
  if (write == GradWrite::Overwrite) {
    out.head(m) = (g.array() - mean).matrix();
    if (compress) out[d - 1] = -mean;
  } else {
    out.head(m) += (g.array() - mean).matrix();
    if (compress) out[d - 1] -= mean;
  }
}

// Table, adjoint: g_table (n, d) rows (all, or `rows`) from g_out (n, m).
template <class S>
void recenter_table_adjoint(const RowMatrix<S>& g_out, bool compress, RowMatrix<S>& g_table,
                            GradWrite write, const AdjointOptions* sparse = nullptr) {
  if (sparse && sparse->sparse_token_rows) {
    const auto rows = sparse->token_rows;
    prenorm::detail::for_each_row(Index(rows.size()), g_out.cols(), [&](Index k) {
      const Index r = rows[std::size_t(k)];
      recenter_row_adjoint<S>(g_out.row(r), compress, g_table.row(r), write);
    });
    return;
  }
  prenorm::detail::for_each_row(g_out.rows(), g_out.cols(), [&](Index r) {
    recenter_row_adjoint<S>(g_out.row(r), compress, g_table.row(r), write);
  });
}

namespace detail {

template <Arch To>
constexpr void check_training_direction() {
  static_assert(To == Arch::PreRMSNorm || To == Arch::PreCRMSNorm,
                "prenorm: training through the converter goes from Pre-LN to Pre-RMSNorm or "
                "Pre-CRMSNorm");
}

template <class S>
void expect_shape(const char* op, const char* name, Index rows, Index cols, Index er, Index ec) {
  if (rows != er || cols != ec)
    prenorm::detail::fail(op, name, " is (", rows, " x ", cols, "), expected (", er, " x ", ec,
                          ") (the shape convert<To>(theta, {TiedPolicy::Untie}) gives)");
}

// phi has the layout convert<To>(theta, {Untie}) produces, or, for a tied
// theta, convert<To>(theta, {Keep}).
template <Arch To, class S>
void check_converted(const char* op, const Gpt<Arch::PreLN, S>& theta, const Gpt<To, S>& phi) {
  theta.validate(op);
  phi.validate(op);
  const GptConfig &a = theta.config, &b = phi.config;
  if (a.vocab != b.vocab || a.context != b.context || a.width != b.width || a.heads != b.heads ||
      a.layers != b.layers || a.mlp_width != b.mlp_width || a.head_size() != b.head_size())
    prenorm::detail::fail(op, "phi does not have the configuration of theta");
  if (b.tied && !a.tied)
    prenorm::detail::fail(op, "phi is keep-tied (the layout of convert<To>(theta, {TiedPolicy::Keep})), "
                              "expected untied with a head bias (convert<To>(theta, "
                              "{TiedPolicy::Untie})): theta is untied");
  if (b.tied && b.head_bias != a.head_bias)
    prenorm::detail::fail(op, "phi is keep-tied ", b.head_bias ? "with" : "without",
                          " a head bias, expected ", a.head_bias ? "with" : "without",
                          " one, as theta");
  if (!b.tied && !b.head_bias)
    prenorm::detail::fail(op, "phi is untied without a head bias, expected the layout of "
                              "convert<To>(theta, {TiedPolicy::Untie}) (untied, with a head bias)",
                          a.tied ? " or of convert<To>(theta, {TiedPolicy::Keep}) (tied)" : "");
}

template <Arch To, class S>
void check_converted(const char* op, const Vit<Arch::PreLN, S>& theta, const Vit<To, S>& phi) {
  theta.validate(op);
  phi.validate(op);
  const VitConfig &a = theta.config, &b = phi.config;
  if (a.image_size != b.image_size || a.patch_size != b.patch_size || a.channels != b.channels ||
      a.classes != b.classes || a.width != b.width || a.heads != b.heads || a.layers != b.layers ||
      a.mlp_width != b.mlp_width || a.head_size() != b.head_size())
    prenorm::detail::fail(op, "phi does not have the configuration of theta");
  if (!theta.patch.has_bias() || !phi.patch.has_bias() || !theta.head.has_bias() ||
      !phi.head.has_bias())
    prenorm::detail::fail(op, "the patch and head linears must have biases");
}

template <Arch To, class S>
void convert_block_into(const PreNormBlock<Arch::PreLN, S>& src, PreNormBlock<To, S>& dst,
                        ConvertWorkspace<S>& ws) {
  constexpr bool c = To == Arch::PreCRMSNorm;
  fold_reader_into(src.attn.qkv.weight, src.attn.qkv.bias, src.norm1_gamma, src.norm1_beta, c,
                   dst.attn.qkv.weight, dst.attn.qkv.bias);
  recenter_writer_into(src.attn.out.weight, src.attn.out.bias, c, dst.attn.out.weight,
                       dst.attn.out.bias, ws);
  fold_reader_into(src.mlp.fc.weight, src.mlp.fc.bias, src.norm2_gamma, src.norm2_beta, c,
                   dst.mlp.fc.weight, dst.mlp.fc.bias);
  recenter_writer_into(src.mlp.proj.weight, src.mlp.proj.bias, c, dst.mlp.proj.weight,
                       dst.mlp.proj.bias, ws);
  dst.epsilon = src.epsilon;
}

template <Arch To, class S>
void block_adjoint(const PreNormBlock<Arch::PreLN, S>& theta, const PreNormBlock<To, S>& g_phi,
                   PreNormBlock<Arch::PreLN, S>& g_theta, ConvertWorkspace<S>& ws) {
  constexpr bool c = To == Arch::PreCRMSNorm;
  Vector<S>* qkv_bias = theta.attn.qkv.has_bias() ? &g_theta.attn.qkv.bias : nullptr;
  fold_reader_adjoint(g_phi.attn.qkv.weight, g_phi.attn.qkv.bias, theta.attn.qkv.weight,
                      theta.norm1_gamma, theta.norm1_beta, c, g_theta.attn.qkv.weight, qkv_bias,
                      g_theta.norm1_gamma, g_theta.norm1_beta, ws);
  recenter_writer_adjoint(g_phi.attn.out.weight, g_phi.attn.out.bias, c, g_theta.attn.out.weight,
                          g_theta.attn.out.bias, ws);
  Vector<S>* fc_bias = theta.mlp.fc.has_bias() ? &g_theta.mlp.fc.bias : nullptr;
  fold_reader_adjoint(g_phi.mlp.fc.weight, g_phi.mlp.fc.bias, theta.mlp.fc.weight,
                      theta.norm2_gamma, theta.norm2_beta, c, g_theta.mlp.fc.weight, fc_bias,
                      g_theta.norm2_gamma, g_theta.norm2_beta, ws);
  recenter_writer_adjoint(g_phi.mlp.proj.weight, g_phi.mlp.proj.bias, c, g_theta.mlp.proj.weight,
                          g_theta.mlp.proj.bias, ws);
}

}  // namespace detail

// Keep-tied (TiedPolicy::Keep), forward: phi's tied_gamma, tied_beta (d) =
// theta's final_gamma, final_beta, and its head bias = theta's (vocab) if any.
// (phi's table is theta's E: see convert_token_table_into.)
template <Arch To, class S>
void keep_tied_affine_into(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi) {
  phi.tied_gamma = theta.final_gamma;
  phi.tied_beta = theta.final_beta;
  if (phi.head_bias.size()) phi.head_bias = theta.head_bias;
}

// Keep-tied, adjoint: the identity. grad_phi's dE (vocab, d), dtied_gamma,
// dtied_beta (d) and head bias are theta's dE, dgamma_f, dbeta_f, head bias.
template <Arch To, class S>
void keep_tied_adjoint(const Gpt<To, S>& grad_phi, Gpt<Arch::PreLN, S>& grad_theta) {
  grad_theta.token_embedding.table = grad_phi.token_embedding.table;
  grad_theta.final_gamma = grad_phi.tied_gamma;
  grad_theta.final_beta = grad_phi.tied_beta;
  if (grad_theta.head_bias.size()) grad_theta.head_bias = grad_phi.head_bias;
}

// phi's token table from theta's E (vocab, d): rows recentered (and
// compressed) for an untied phi; E itself for a keep-tied one.
template <Arch To, class S>
void convert_token_table_into(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi) {
  if (phi.tied_affine()) phi.token_embedding.table = theta.token_embedding.table;
  else recenter_table_into(theta.token_embedding.table, To == Arch::PreCRMSNorm, phi.token_embedding.table);
}

}  // namespace conversion

// phi = convert<To>(theta, {tied}), written into phi's storage:
// phi must already have the layout of convert<To>(theta, {tied}) for one
// tied policy (make it once with convert<To>). Nothing is allocated after the
// first call.
template <Arch To, class S>
void convert_into(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi, ConvertWorkspace<S>& ws) {
  conversion::detail::check_training_direction<To>();
  conversion::detail::check_converted("convert_into(Gpt)", theta, phi);
  using namespace conversion;
  constexpr bool c = To == Arch::PreCRMSNorm;
  const RowMatrix<S>& E = theta.token_embedding.table;
  convert_token_table_into(theta, phi);
  recenter_table_into(theta.position_embedding.table, c, phi.position_embedding.table);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::convert_block_into(theta.blocks[i], phi.blocks[i], ws);
  if (phi.tied_affine()) {
    keep_tied_affine_into(theta, phi);
    return;
  }
  const RowMatrix<S>& head = theta.config.tied ? E : theta.head.weight;
  fold_reader_into(head, theta.head_bias, theta.final_gamma, theta.final_beta, c, phi.head.weight,
                   phi.head_bias);
}

template <Arch To, class S>
void convert_into(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi) {
  ConvertWorkspace<S> ws;
  convert_into(theta, phi, ws);
}

// grad_theta = J^T grad_phi, J the Jacobian of phi = convert<To>(theta,
// {tied}) at theta, the tied policy read from grad_phi's layout. grad_phi has
// phi's layout, grad_theta theta's. Every tensor of grad_theta is written (see
// AdjointOptions for the token table).
template <Arch To, class S>
void convert_adjoint(const Gpt<Arch::PreLN, S>& theta, const Gpt<To, S>& grad_phi,
                     Gpt<Arch::PreLN, S>& grad_theta, ConvertWorkspace<S>& ws,
                     const AdjointOptions& options = {}) {
  constexpr const char* op = "convert_adjoint(Gpt)";
  conversion::detail::check_training_direction<To>();
  conversion::detail::check_converted(op, theta, grad_phi);
  grad_theta.validate(op);
  if (grad_theta.config.tied != theta.config.tied ||
      grad_theta.config.head_bias != theta.config.head_bias ||
      grad_theta.blocks.size() != theta.blocks.size())
    prenorm::detail::fail(op, "grad_theta does not have theta's configuration");
  using namespace conversion;
  constexpr bool c = To == Arch::PreCRMSNorm;
  const bool tied = theta.config.tied;
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::block_adjoint(theta.blocks[i], grad_phi.blocks[i], grad_theta.blocks[i], ws);
  recenter_table_adjoint(grad_phi.position_embedding.table, c, grad_theta.position_embedding.table,
                         GradWrite::Overwrite);
  if (grad_phi.tied_affine()) {  // E, gamma_f, beta_f kept as they are: dense, whatever the options
    keep_tied_adjoint(grad_phi, grad_theta);
    return;
  }
  // The head (E when tied): dW, dgamma_f, dbeta_f, and the head bias.
  const RowMatrix<S>& head = tied ? theta.token_embedding.table : theta.head.weight;
  RowMatrix<S>& g_head = tied ? grad_theta.token_embedding.table : grad_theta.head.weight;
  Vector<S>* g_head_bias = theta.config.head_bias ? &grad_theta.head_bias : nullptr;
  fold_reader_adjoint(grad_phi.head.weight, grad_phi.head_bias, head, theta.final_gamma,
                      theta.final_beta, c, g_head, g_head_bias, grad_theta.final_gamma,
                      grad_theta.final_beta, ws);
  // The token table: added to the head's part when tied.
  recenter_table_adjoint(grad_phi.token_embedding.table, c, grad_theta.token_embedding.table,
                         tied ? GradWrite::Accumulate : GradWrite::Overwrite, &options);
}

template <Arch To, class S>
void convert_adjoint(const Gpt<Arch::PreLN, S>& theta, const Gpt<To, S>& grad_phi,
                     Gpt<Arch::PreLN, S>& grad_theta, const AdjointOptions& options = {}) {
  ConvertWorkspace<S> ws;
  convert_adjoint(theta, grad_phi, grad_theta, ws, options);
}

// ViT: phi = convert<To>(theta) into phi's storage.
template <Arch To, class S>
void convert_into(const Vit<Arch::PreLN, S>& theta, Vit<To, S>& phi, ConvertWorkspace<S>& ws) {
  conversion::detail::check_training_direction<To>();
  conversion::detail::check_converted("convert_into(Vit)", theta, phi);
  using namespace conversion;
  constexpr bool c = To == Arch::PreCRMSNorm;
  recenter_writer_into(theta.patch.weight, theta.patch.bias, c, phi.patch.weight, phi.patch.bias, ws);
  {
    const Index m = phi.main();
    phi.cls_token = (theta.cls_token.head(m).array() - theta.cls_token.mean()).matrix();
  }
  recenter_table_into(theta.position_embedding, c, phi.position_embedding);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::convert_block_into(theta.blocks[i], phi.blocks[i], ws);
  fold_reader_into(theta.head.weight, theta.head.bias, theta.final_gamma, theta.final_beta, c,
                   phi.head.weight, phi.head.bias);
}

template <Arch To, class S>
void convert_into(const Vit<Arch::PreLN, S>& theta, Vit<To, S>& phi) {
  ConvertWorkspace<S> ws;
  convert_into(theta, phi, ws);
}

// ViT: grad_theta = J^T grad_phi.
template <Arch To, class S>
void convert_adjoint(const Vit<Arch::PreLN, S>& theta, const Vit<To, S>& grad_phi,
                     Vit<Arch::PreLN, S>& grad_theta, ConvertWorkspace<S>& ws,
                     const AdjointOptions& = {}) {
  constexpr const char* op = "convert_adjoint(Vit)";
  conversion::detail::check_training_direction<To>();
  conversion::detail::check_converted(op, theta, grad_phi);
  grad_theta.validate(op);
  using namespace conversion;
  constexpr bool c = To == Arch::PreCRMSNorm;
  recenter_writer_adjoint(grad_phi.patch.weight, grad_phi.patch.bias, c, grad_theta.patch.weight,
                          grad_theta.patch.bias, ws);
  recenter_row_adjoint<S>(grad_phi.cls_token, c, grad_theta.cls_token, GradWrite::Overwrite);
  recenter_table_adjoint(grad_phi.position_embedding, c, grad_theta.position_embedding,
                         GradWrite::Overwrite);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::block_adjoint(theta.blocks[i], grad_phi.blocks[i], grad_theta.blocks[i], ws);
  fold_reader_adjoint(grad_phi.head.weight, grad_phi.head.bias, theta.head.weight, theta.final_gamma,
                      theta.final_beta, c, grad_theta.head.weight, &grad_theta.head.bias,
                      grad_theta.final_gamma, grad_theta.final_beta, ws);
}

template <Arch To, class S>
void convert_adjoint(const Vit<Arch::PreLN, S>& theta, const Vit<To, S>& grad_phi,
                     Vit<Arch::PreLN, S>& grad_theta, const AdjointOptions& options = {}) {
  ConvertWorkspace<S> ws;
  convert_adjoint(theta, grad_phi, grad_theta, ws, options);
}

}  // namespace prenorm
