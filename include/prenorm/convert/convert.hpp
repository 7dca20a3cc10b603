#pragma once
// prenorm::convert<To>(model): the exact conversion between Pre-LN, Pre-RMSNorm and
// Pre-CRMSNorm models (docs/DESIGN.md §2-§5). The steps for each tensor
// come from the compile-time Plan<From, To>; `if constexpr` selects the code.
// Arithmetic is in double whatever the model's scalar, rounded once at the
// end; the model's epsilon is kept.

#include <cmath>
#include <string>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "plan.hpp"
#include "roles.hpp"
#include "transforms.hpp"

namespace prenorm {

// What a tied head (GPT-2: head = token embedding) becomes in a Pre-RMSNorm or
// Pre-CRMSNorm model.
enum class TiedPolicy {
  Untie,  // a separate folded head E diag(gamma_f) with bias E beta_f: fastest, +vocab x d memory
  Keep,   // E stored once; recentering, compression and gamma_f, beta_f applied per token
};

struct ConvertOptions {
  TiedPolicy tied = TiedPolicy::Untie;
  // A Pre-RMSNorm source must have zero-mean writers (it is a converted model)
  // to become Pre-LN or Pre-CRMSNorm. With recenter, writers that are not are
  // recentered instead of refused (this changes what the model computes).
  bool recenter = false;
  // A writer counts as zero-mean when |mean| <= tolerance * rms of its entries.
  double zero_mean_tolerance = 1e-4;
};

namespace conversion::detail {

template <class S>
Matrix to_double(const RowMatrix<S>& m) {
  return m.template cast<double>();
}
template <class S>
Vec to_double(const Vector<S>& v) {
  return v.template cast<double>();
}

// Checks that a writer of a Pre-RMSNorm source is zero-mean along the main
// branch (or recenters it when asked). `mean` and `scale` measure the tensor.
inline bool writer_needs_recentering(const char* op, const std::string& name, double mean,
                                     double scale, const ConvertOptions& options) {
  if (!(mean <= options.zero_mean_tolerance * scale) && !(mean == 0.0)) {
    if (options.recenter) return true;
    prenorm::detail::fail(op, name, " is not zero-mean over the main branch (|mean| ", mean,
                          " > ", options.zero_mean_tolerance, " x rms ", scale,
                          "): the source is not a converted Pre-RMSNorm model; pass "
                          "ConvertOptions::recenter to recenter it (this changes the model)");
  }
  return false;
}

inline double rms_of(const Matrix& m) {
  return m.size() == 0 ? 0.0 : std::sqrt(m.squaredNorm() / double(m.size()));
}

// A table (rows are main-branch vectors) along the plan: its role's forward
// (roles.hpp). table (n, main_from) -> (n, main_to).
template <Arch From, Arch To>
void convert_table(Matrix& table, conversion::Role role, const std::string& name,
                   const ConvertOptions& options, const char* op) {
  conversion::Steps s = conversion::Plan<From, To>::steps(role);
  if constexpr (From == Arch::PreRMSNorm)
    if (s.compress_output || To == Arch::PreLN)
      s.recenter = writer_needs_recentering(op, name, conversion::max_abs_row_mean(table),
                                            rms_of(table), options);
  Matrix out(table.rows(), conversion::output_width(table.cols(), s));
  conversion::table_forward(table, s, out);
  table = std::move(out);
}

// A writer linear along the plan: its role's forward. weight (main_from, in)
// -> (main_to, in). name: the layer ("blocks[0].attn.out").
template <Arch From, Arch To>
void convert_writer(Matrix& weight, Vec& bias, conversion::Role role, const std::string& name,
                    const ConvertOptions& options, const char* op) {
  conversion::Steps s = conversion::Plan<From, To>::steps(role);
  if constexpr (From == Arch::PreRMSNorm)
    if (s.compress_output || To == Arch::PreLN) {
      // Weight and bias each on their own, so that a refusal names the one at fault.
      const double scale = rms_of(weight);
      const bool weight_off = writer_needs_recentering(
          op, name + ".weight", conversion::max_abs_output_mean(weight, Vec()), scale, options);
      const bool bias_off = writer_needs_recentering(
          op, name + ".bias", bias.size() == 0 ? 0.0 : std::abs(bias.mean()), scale, options);
      s.recenter = weight_off || bias_off;
    }
  Matrix out(conversion::output_width(weight.rows(), s), weight.cols());
  Vec out_bias(bias.size() > 0 ? conversion::output_width(bias.size(), s) : 0);
  ConvertWorkspace<double> ws;
  conversion::writer_forward(weight, bias, s, out, out_bias, ws);
  weight = std::move(out);
  bias = std::move(out_bias);
}

// A reader linear along the steps (its role's forward), gamma and beta (d) of
// the norm it reads (empty when the source norm has no affine). weight (out,
// main_from) -> (out, main_to); a bias is created when a beta is folded.
inline void convert_reader(Matrix& weight, Vec& bias, const conversion::Steps& s, const Vec& gamma,
                           const Vec& beta) {
  Matrix out(weight.rows(), conversion::input_width(weight.cols(), s));
  Vec out_bias = bias;
  if (s.fold_affine && beta.size() > 0 && bias.size() == 0) out_bias = Vec::Zero(weight.rows());
  conversion::reader_forward(weight, bias, gamma, beta, s, out, out_bias);
  weight = std::move(out);
  bias = std::move(out_bias);
}
template <Arch From, Arch To>
void convert_reader(Matrix& weight, Vec& bias, conversion::Role role, const Vec& gamma,
                    const Vec& beta) {
  convert_reader(weight, bias, conversion::Plan<From, To>::steps(role), gamma, beta);
}

template <class S>
void assign(RowMatrix<S>& dst, const Matrix& src) {
  dst = src.cast<S>();
}
template <class S>
void assign(Vector<S>& dst, const Vec& src) {
  dst = src.cast<S>();
}

// One block: norms, attention, MLP.
template <Arch From, Arch To, class S>
void convert_block(const PreNormBlock<From, S>& src, PreNormBlock<To, S>& dst,
                   const std::string& name, const ConvertOptions& options, const char* op) {
  using conversion::Role;
  if (dst.topology != src.topology)
    prenorm::detail::fail(op, name, ".topology is ", topology_name(dst.topology), " in the target, ",
                          topology_name(src.topology), " in the source");
  // The affine each reader folds: its norm's (the MLP may read norm1, see
  // PreNormBlock::mlp_norm); empty unless the source is Pre-LN.
  Vec gamma1, beta1, gamma2, beta2;
  if constexpr (From == Arch::PreLN) {
    const BlockNorm mlp_norm = src.mlp_norm();
    gamma1 = to_double(src.norm1_gamma), beta1 = to_double(src.norm1_beta);
    gamma2 = to_double(src.norm_gamma(mlp_norm)), beta2 = to_double(src.norm_beta(mlp_norm));
  }
  const auto reader = [&](const Linear<S>& in, Linear<S>& out, Role role, const Vec& gamma,
                          const Vec& beta) {
    Matrix w = to_double(in.weight);
    Vec b = to_double(in.bias);
    convert_reader<From, To>(w, b, role, gamma, beta);
    assign(out.weight, w);
    assign(out.bias, b);
  };
  const auto writer = [&](const Linear<S>& in, Linear<S>& out, Role role, const char* what) {
    Matrix w = to_double(in.weight);
    Vec b = to_double(in.bias);
    convert_writer<From, To>(w, b, role, name + what, options, op);
    assign(out.weight, w);
    assign(out.bias, b);
  };
  reader(src.attn.qkv, dst.attn.qkv, Role::QkvIn, gamma1, beta1);
  writer(src.attn.out, dst.attn.out, Role::AttnOut, ".attn.out");
  reader(src.mlp.fc, dst.mlp.fc, Role::MlpIn, gamma2, beta2);
  writer(src.mlp.proj, dst.mlp.proj, Role::MlpOut, ".mlp.proj");
  // Norms: the target's constructor already made them (none, or gamma 1, beta 0
  // for a Pre-LN target: LayerNorm equals RMSNorm on the zero-mean branch).
  static_assert(conversion::Plan<From, To>::steps(Role::NormAffine).drop_affine ||
                    conversion::Plan<From, To>::steps(Role::NormAffine).unit_affine ||
                    !has_norm_affine(From),
                "prenorm::convert: a source norm affine would be lost");
  dst.epsilon = src.epsilon;
}

// A token stem's tables, and the head config the target needs: a tied source
// keeps its tie (TiedPolicy::Keep, or a Pre-LN target) or is untied, which
// folds beta_f into a head bias.
template <Arch From, Arch To, class S>
TransformerConfig target_config(const Transformer<From, S>& src, const ConvertOptions& options) {
  TransformerConfig config = src.config;
  if (config.head != Head::TokenLogits) return config;
  const bool tied = src.config.tied;
  const bool keep = tied && (To == Arch::PreLN || options.tied == TiedPolicy::Keep);
  config.tied = keep;
  const bool has_final_beta = From == Arch::PreLN || src.tied_affine();
  if (tied && !keep && has_final_beta) config.head_bias = true;
  if (!tied && conversion::Plan<From, To>::steps(Role::Head).fold_affine && has_final_beta)
    config.head_bias = true;
  return config;
}

// The token stem: the token table (as the head policy needs it) and the positions.
template <Arch From, Arch To, class S>
void convert_token_stem(const Transformer<From, S>& src, Transformer<To, S>& dst,
                        const ConvertOptions& options, const char* op) {
  const Index d = src.config.width;
  const Matrix E = to_double(src.token_embedding.table);  // (vocab, main_from), or (vocab, d)
  if (dst.config.tied) {
    // The original table stays; the target applies the boundary transforms per token.
    // Pre-LN -> Pre-(C)RMSNorm keeps E as it is; (C)RMSNorm -> PreLN too (LN
    // ignores the row mean that the lookup no longer removes).
    assign(dst.token_embedding.table, E);
  } else if (src.tied_affine()) {
    // The lookup's recentering (and compression) becomes part of the table:
    // E is in its Pre-LN form, so it takes the Pre-LN source's steps.
    Matrix table(E.rows(), main_width_of(To, d));
    conversion::table_forward(E, conversion::plan_for(Arch::PreLN, To, Role::TokenEmbedding), table);
    assign(dst.token_embedding.table, table);
  } else {
    Matrix table = E;
    convert_table<From, To>(table, Role::TokenEmbedding, "token_embedding.table", options, op);
    assign(dst.token_embedding.table, table);
  }
  Matrix table = to_double(src.position_embedding.table);
  convert_table<From, To>(table, Role::PositionEmbedding, "position_embedding.table", options, op);
  assign(dst.position_embedding.table, table);
}

// The patch stem: the patch linear writes the stream, the class (and
// distillation) token and the positions are tables; behind a stem norm they
// all carry over.
template <Arch From, Arch To, class S>
void convert_patch_stem(const Transformer<From, S>& src, Transformer<To, S>& dst,
                        const ConvertOptions& options, const char* op) {
  if (src.config.stem_norm) {
    // The embeddings feed the stem's LayerNorm, d wide in every architecture:
    // they and its affine carry over; the runtime centers (and compresses) the
    // stream the stem starts (DESIGN.md: x0 = C(LN(e) gamma + beta)).
    dst.patch.weight = src.patch.weight;
    dst.patch.bias = src.patch.bias;
    dst.cls_token = src.cls_token;
    dst.distillation_token = src.distillation_token;
    dst.position_embedding.table = src.position_embedding.table;
    dst.stem_gamma = src.stem_gamma;
    dst.stem_beta = src.stem_beta;
    return;
  }
  const auto token = [&](const Vector<S>& in, Vector<S>& out, const char* name) {
    Matrix row = to_double(in).transpose();  // a 1-row table
    convert_table<From, To>(row, Role::ClsToken, name, options, op);
    assign(out, Vec(row.transpose()));
  };
  Matrix w = to_double(src.patch.weight);
  Vec b = to_double(src.patch.bias);
  convert_writer<From, To>(w, b, Role::PatchLinear, "patch", options, op);
  assign(dst.patch.weight, w);
  assign(dst.patch.bias, b);
  token(src.cls_token, dst.cls_token, "cls_token");
  if (src.config.distillation_token)
    token(src.distillation_token, dst.distillation_token, "distillation_token");
  Matrix pos = to_double(src.position_embedding.table);
  convert_table<From, To>(pos, Role::PositionEmbedding, "position_embedding", options, op);
  assign(dst.position_embedding.table, pos);
}

// A TokenLogits head and the final norm (tied heads: docs/DESIGN.md §4).
template <Arch From, Arch To, class S>
void convert_token_head(const Transformer<From, S>& src, Transformer<To, S>& dst) {
  const Index d = src.config.width;
  const bool keep = dst.config.tied;
  // The affine applied before the head, (d) or empty.
  Vec final_gamma, final_beta;
  if constexpr (From == Arch::PreLN) {
    final_gamma = to_double(src.final_gamma);
    final_beta = to_double(src.final_beta);
  } else if (src.tied_affine()) {
    final_gamma = to_double(src.tied_gamma);
    final_beta = to_double(src.tied_beta);
  }
  Vec head_bias = to_double(src.head_bias);
  if (keep) {
    if constexpr (To == Arch::PreLN) {
      if (src.tied_affine()) {  // the tied affine becomes the final LayerNorm's
        assign(dst.final_gamma, final_gamma);
        assign(dst.final_beta, final_beta);
      }
    } else {
      assign(dst.tied_gamma, final_gamma.size() ? final_gamma : Vec::Ones(d));
      assign(dst.tied_beta, final_beta.size() ? final_beta : Vec::Zero(d));
    }
  } else {
    Matrix w;
    if (src.config.tied) {
      // Untie: the head reads the decompressed main branch of width d.
      // E is in its Pre-LN form: the Pre-LN source's steps for a head.
      w = to_double(src.token_embedding.table);
      if (final_gamma.size() == 0) final_gamma = Vec::Ones(d);
      if (final_beta.size() == 0) final_beta = Vec::Zero(d);
      convert_reader(w, head_bias, conversion::plan_for(Arch::PreLN, To, Role::Head), final_gamma,
                     final_beta);
    } else {
      w = to_double(src.head.weight);
      convert_reader<From, To>(w, head_bias, Role::Head, final_gamma, final_beta);
    }
    assign(dst.head.weight, w);
  }
  if (dst.config.head_bias)
    assign(dst.head_bias, head_bias.size() ? head_bias : Vec::Zero(dst.config.vocab));
}

// A Pooled head: it reads pooled_parts normalized main-branch vectors side by
// side (a patch mean is one too: the fold is linear): each part of its
// columns is a reader of the final norm; the folded betas add up in the one bias.
template <Arch From, Arch To, class S>
void convert_pooled_head(const Transformer<From, S>& src, Transformer<To, S>& dst) {
  const Index from_main = src.main(), to_main = dst.main();
  const Matrix w = to_double(src.head.weight);
  Matrix out(w.rows(), src.config.pooled_parts() * to_main);
  Vec bias = Vec::Zero(w.rows());
  Vec gamma, beta;
  if constexpr (From == Arch::PreLN) gamma = to_double(src.final_gamma), beta = to_double(src.final_beta);
  for (Index k = 0; k < src.config.pooled_parts(); ++k) {
    Matrix part = w.middleCols(k * from_main, from_main);
    Vec part_bias = k == 0 && src.head.has_bias() ? to_double(src.head.bias) : Vec::Zero(w.rows());
    convert_reader<From, To>(part, part_bias, Role::Head, gamma, beta);
    out.middleCols(k * to_main, to_main) = part;
    bias += part_bias;
  }
  assign(dst.head.weight, out);
  assign(dst.head.bias, bias);
}

}  // namespace conversion::detail

// Converts a model between architectures (docs/DESIGN.md §2-§5; tied heads §4),
// whatever its stem and head. Supported: PreLN -> PreRMSNorm / PreCRMSNorm,
// PreRMSNorm -> PreCRMSNorm / PreLN, PreCRMSNorm -> PreRMSNorm / PreLN.
template <Arch To, Arch From, class S>
Transformer<To, S> convert(const Transformer<From, S>& src, const ConvertOptions& options = {}) {
  using namespace conversion::detail;
  [[maybe_unused]] conversion::Plan<From, To> plan;  // static_asserts the direction
  constexpr const char* op = "convert";
  src.validate(op);
  Transformer<To, S> dst(target_config<From, To>(src, options));
  if (src.config.stem == Stem::Tokens) convert_token_stem(src, dst, options, op);
  else convert_patch_stem(src, dst, options, op);
  for (std::size_t i = 0; i < src.blocks.size(); ++i)
    convert_block<From, To>(src.blocks[i], dst.blocks[i], "blocks[" + std::to_string(i) + "]",
                            options, op);
  if (src.config.head == Head::TokenLogits) convert_token_head(src, dst);
  else convert_pooled_head(src, dst);
  dst.validate(op);
  return dst;
}

// The same for a Gpt or a Vit, which stays one.
template <Arch To, Arch From, class S>
Gpt<To, S> convert(const Gpt<From, S>& src, const ConvertOptions& options = {}) {
  return Gpt<To, S>(convert<To>(static_cast<const Transformer<From, S>&>(src), options));
}
template <Arch To, Arch From, class S>
Vit<To, S> convert(const Vit<From, S>& src, const ConvertOptions& options = {}) {
  return Vit<To, S>(convert<To>(static_cast<const Transformer<From, S>&>(src), options));
}

}  // namespace prenorm
