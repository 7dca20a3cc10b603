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
// Per tensor, its role's forward and adjoint (roles.hpp) with the steps of the
// plan Pre-LN -> To, each one pass:
//   reader  W'' = C(W diag(gamma)),  b' = b + W beta       C: compress_input or identity
//           dW = C^T(dW'') diag(gamma) + db' beta^T,  db = db',
//           dgamma = colsum(W .* C^T(dW'')),  dbeta = W^T db'      (the product rule)
//   writer  W'' = K(W - 1 (1^T W)/d),  b'' = K(b - mean(b))  K: compress_output or identity
//           dW = (I - 1 1^T/d) K^T(dW''),  db likewise
//   table   rows recentered (and compressed); the adjoint recenters the padded rows
// A block's mlp.fc reads the norm PreNormBlock::mlp_norm() names: norm1 for a
// ParallelSharedNorm block, whose dgamma1, dbeta1 are then the sum of the
// shares of attn.qkv and mlp.fc.
// A tied theta (one table E for the lookup and the head):
//   Untie   the token table and the head both come from E, and the adjoint
//           sums their gradients into dE.
//   Keep    phi keeps E, and the final affine as tied_gamma, tied_beta: the
//           model transforms E per token (convert.hpp), so here the map is the
//           identity, and so is its adjoint. The head's gradient and the
//           gamma_f, beta_f product rule are in phi's backward (dE, dtied_gamma,
//           dtied_beta), or in the fused one (reparam_backward.hpp).
//
// Arithmetic is in the model's scalar, the same as convert<To>'s in double.
// Reductions over rows use a fixed number of row chunks, so results do not
// depend on the thread count.

#include <Eigen/Core>

#include <algorithm>
#include <span>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../models/gpt.hpp"
#include "../models/packing.hpp"
#include "../models/vit.hpp"
#include "convert.hpp"
#include "roles.hpp"

namespace prenorm {

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

// The steps of training's conversion, Pre-LN -> To, for `role`.
template <Arch To>
constexpr Steps training_steps(Role role) {
  return Plan<Arch::PreLN, To>::steps(role);
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
  const TransformerConfig&a = theta.config, &b = phi.config;
  if (a.vocab != b.vocab || a.context != b.context || a.width != b.width || a.heads != b.heads ||
      a.layers != b.layers || a.mlp_width != b.mlp_width || a.head_size() != b.head_size() ||
      a.topology != b.topology)
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
  const TransformerConfig&a = theta.config, &b = phi.config;
  if (a.image_size != b.image_size || a.patch_size != b.patch_size || a.channels != b.channels ||
      a.classes != b.classes || a.width != b.width || a.heads != b.heads || a.layers != b.layers ||
      a.mlp_width != b.mlp_width || a.head_size() != b.head_size() ||
      a.topology != b.topology)
    prenorm::detail::fail(op, "phi does not have the configuration of theta");
  if (!a.plain_patches() || !b.plain_patches())
    prenorm::detail::fail(op, "theta or phi has a stem norm, a distillation token or a pooled "
                          "head: the adjoint reads the plain ViT only");
  if (!theta.patch.has_bias() || !phi.patch.has_bias() || !theta.head.has_bias() ||
      !phi.head.has_bias())
    prenorm::detail::fail(op, "the patch and head linears must have biases");
}

// One linear of theta into phi, and its adjoint, by its role (roles.hpp):
// a reader folds gamma, beta (grad: overwrites g_gamma, g_beta); a writer
// is recentered. Compressed for Pre-CRMSNorm.
template <Arch To, class S>
void reader_into(const Linear<S>& theta, const Vector<S>& gamma, const Vector<S>& beta,
                 Linear<S>& phi) {
  reader_forward(theta.weight, theta.bias, gamma, beta, training_steps<To>(Role::QkvIn), phi.weight,
                 phi.bias);
}
template <Arch To, class S>
void writer_into(const Linear<S>& theta, Linear<S>& phi, ConvertWorkspace<S>& ws) {
  writer_forward(theta.weight, theta.bias, training_steps<To>(Role::AttnOut), phi.weight, phi.bias, ws);
}
template <Arch To, class S>
void reader_grad(const Linear<S>& theta, const Vector<S>& gamma, const Vector<S>& beta,
                 const Linear<S>& g_phi, Linear<S>& g_theta, Vector<S>& g_gamma, Vector<S>& g_beta,
                 ConvertWorkspace<S>& ws, GradWrite norm_write = GradWrite::Overwrite) {
  reader_adjoint(g_phi.weight, g_phi.bias, theta.weight, gamma, beta, training_steps<To>(Role::QkvIn),
                 g_theta.weight, theta.has_bias() ? &g_theta.bias : nullptr, g_gamma, g_beta,
                 norm_write, ws);
}
template <Arch To, class S>
void writer_grad(const Linear<S>& g_phi, Linear<S>& g_theta, ConvertWorkspace<S>& ws) {
  writer_adjoint(g_phi.weight, g_phi.bias, training_steps<To>(Role::AttnOut), g_theta.weight,
                 g_theta.bias, ws);
}

template <Arch To, class S>
void convert_block_into(const PreNormBlock<Arch::PreLN, S>& src, PreNormBlock<To, S>& dst,
                        ConvertWorkspace<S>& ws) {
  reader_into<To>(src.attn.qkv, src.norm1_gamma, src.norm1_beta, dst.attn.qkv);
  writer_into<To>(src.attn.out, dst.attn.out, ws);
  reader_into<To>(src.mlp.fc, src.norm_gamma(src.mlp_norm()), src.norm_beta(src.mlp_norm()),
                  dst.mlp.fc);
  writer_into<To>(src.mlp.proj, dst.mlp.proj, ws);
  dst.epsilon = src.epsilon;
}

template <Arch To, class S>
void block_adjoint(const PreNormBlock<Arch::PreLN, S>& theta, const PreNormBlock<To, S>& g_phi,
                   PreNormBlock<Arch::PreLN, S>& g_theta, ConvertWorkspace<S>& ws) {
  reader_grad<To>(theta.attn.qkv, theta.norm1_gamma, theta.norm1_beta, g_phi.attn.qkv,
                  g_theta.attn.qkv, g_theta.norm1_gamma, g_theta.norm1_beta, ws);
  writer_grad<To>(g_phi.attn.out, g_theta.attn.out, ws);
  // A norm read by both sub-layers (ParallelSharedNorm) gets the sum of their shares.
  const BlockNorm n = theta.mlp_norm();
  reader_grad<To>(theta.mlp.fc, theta.norm_gamma(n), theta.norm_beta(n), g_phi.mlp.fc,
                  g_theta.mlp.fc, g_theta.norm_gamma(n), g_theta.norm_beta(n), ws,
                  n == BlockNorm::Norm1 ? GradWrite::Accumulate : GradWrite::Overwrite);
  writer_grad<To>(g_phi.mlp.proj, g_theta.mlp.proj, ws);
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
  else table_forward(theta.token_embedding.table, training_steps<To>(Role::TokenEmbedding),
                     phi.token_embedding.table);
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
  unpack_weights(phi);  // its weights are rewritten in place
  using namespace conversion;
  const RowMatrix<S>& E = theta.token_embedding.table;
  convert_token_table_into(theta, phi);
  table_forward(theta.position_embedding.table, training_steps<To>(Role::PositionEmbedding),
                phi.position_embedding.table);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::convert_block_into(theta.blocks[i], phi.blocks[i], ws);
  if (phi.tied_affine()) {
    keep_tied_affine_into(theta, phi);
    return;
  }
  const RowMatrix<S>& head = theta.config.tied ? E : theta.head.weight;
  reader_forward(head, theta.head_bias, theta.final_gamma, theta.final_beta,
                 training_steps<To>(Role::Head), phi.head.weight, phi.head_bias);
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
  const bool tied = theta.config.tied;
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    conversion::detail::block_adjoint(theta.blocks[i], grad_phi.blocks[i], grad_theta.blocks[i], ws);
  table_adjoint(grad_phi.position_embedding.table, training_steps<To>(Role::PositionEmbedding),
                grad_theta.position_embedding.table, GradWrite::Overwrite);
  if (grad_phi.tied_affine()) {  // E, gamma_f, beta_f kept as they are: dense, whatever the options
    keep_tied_adjoint(grad_phi, grad_theta);
    return;
  }
  // The head (E when tied): dW, dgamma_f, dbeta_f, and the head bias.
  const RowMatrix<S>& head = tied ? theta.token_embedding.table : theta.head.weight;
  RowMatrix<S>& g_head = tied ? grad_theta.token_embedding.table : grad_theta.head.weight;
  Vector<S>* g_head_bias = theta.config.head_bias ? &grad_theta.head_bias : nullptr;
  reader_adjoint(grad_phi.head.weight, grad_phi.head_bias, head, theta.final_gamma, theta.final_beta,
                 training_steps<To>(Role::Head), g_head, g_head_bias, grad_theta.final_gamma,
                 grad_theta.final_beta, GradWrite::Overwrite, ws);
  // The token table: added to the head's part when tied.
  table_adjoint(grad_phi.token_embedding.table, training_steps<To>(Role::TokenEmbedding),
                grad_theta.token_embedding.table, tied ? GradWrite::Accumulate : GradWrite::Overwrite,
                options.token_rows, options.sparse_token_rows);
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
  unpack_weights(phi);  // its weights are rewritten in place
  using namespace conversion;
  using namespace conversion::detail;
  writer_into<To>(theta.patch, phi.patch, ws);
  table_row_forward(theta.cls_token, training_steps<To>(Role::ClsToken), phi.cls_token);
  table_forward(theta.position_embedding.table, training_steps<To>(Role::PositionEmbedding),
                phi.position_embedding.table);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    convert_block_into(theta.blocks[i], phi.blocks[i], ws);
  reader_into<To>(theta.head, theta.final_gamma, theta.final_beta, phi.head);
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
  using namespace conversion::detail;
  writer_grad<To>(grad_phi.patch, grad_theta.patch, ws);
  table_row_adjoint(grad_phi.cls_token, training_steps<To>(Role::ClsToken), grad_theta.cls_token,
                    GradWrite::Overwrite);
  table_adjoint(grad_phi.position_embedding.table, training_steps<To>(Role::PositionEmbedding),
                grad_theta.position_embedding.table, GradWrite::Overwrite);
  for (std::size_t i = 0; i < theta.blocks.size(); ++i)
    block_adjoint(theta.blocks[i], grad_phi.blocks[i], grad_theta.blocks[i], ws);
  reader_grad<To>(theta.head, theta.final_gamma, theta.final_beta, grad_phi.head, grad_theta.head,
                  grad_theta.final_gamma, grad_theta.final_beta, ws);
}

template <Arch To, class S>
void convert_adjoint(const Vit<Arch::PreLN, S>& theta, const Vit<To, S>& grad_phi,
                     Vit<Arch::PreLN, S>& grad_theta, const AdjointOptions& options = {}) {
  ConvertWorkspace<S> ws;
  convert_adjoint(theta, grad_phi, grad_theta, ws, options);
}

}  // namespace prenorm
