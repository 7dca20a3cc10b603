#pragma once
// The compile-time conversion plan: for a source and a target architecture,
// what happens to every tensor role. The converter walks this plan with
// `if constexpr`; static_asserts below check that the plan is sound.
//
// Pre-LN -> Pre-RMSNorm (docs/DESIGN.md §2; the roles table is §7), in this order:
//   1. fold each norm's gamma, beta into the linear that reads it,
//   2. recenter every writer to the main branch, so it stays exactly zero-mean,
//   3. replace each LayerNorm by RMSNorm with the same eps.
// Pre-RMSNorm -> Pre-CRMSNorm: writers drop their last output coordinate,
// readers fold the dropped input coordinate in (W[:, :d-1] - W[:, d-1] 1').
// The reverse directions decompress (rebuild the dropped coordinate so writers
// stay zero-mean; readers get a zero column) and, to Pre-LN, use gamma = 1,
// beta = 0: LayerNorm equals RMSNorm on a zero-mean input.

#include <string_view>

#include "../core/arch.hpp"

namespace prenorm::conversion {

// Every kind of tensor that touches the main branch.
enum class Role {
  TokenEmbedding,     // (vocab, d): rows written to the main branch
  PositionEmbedding,  // (context, d)
  ClsToken,           // (d): ViT's class token
  PatchLinear,        // (d, C*p*p): ViT's patch projection, a writer
  QkvIn,              // (3*H*hd, d): reads norm1
  AttnOut,            // (d, H*hd): writes the main branch
  MlpIn,              // (inner, d): reads norm2
  MlpOut,             // (d, inner): writes the main branch
  Head,               // (vocab or classes, d): reads the final norm
  NormAffine,         // gamma, beta (d) of every norm
};

inline constexpr Role kAllRoles[] = {Role::TokenEmbedding, Role::PositionEmbedding, Role::ClsToken,
                                     Role::PatchLinear,    Role::QkvIn,             Role::AttnOut,
                                     Role::MlpIn,          Role::MlpOut,            Role::Head,
                                     Role::NormAffine};

constexpr std::string_view role_name(Role role) {
  switch (role) {
    case Role::TokenEmbedding: return "token embedding";
    case Role::PositionEmbedding: return "position embedding";
    case Role::ClsToken: return "cls token";
    case Role::PatchLinear: return "patch linear";
    case Role::QkvIn: return "qkv projection";
    case Role::AttnOut: return "attention output projection";
    case Role::MlpIn: return "mlp input projection";
    case Role::MlpOut: return "mlp output projection";
    case Role::Head: return "head";
    case Role::NormAffine: return "norm affine";
  }
  return "unknown";
}

// Writers put vectors onto the main branch; readers take its normalized value.
constexpr bool is_writer(Role role) {
  return role == Role::TokenEmbedding || role == Role::PositionEmbedding ||
         role == Role::ClsToken || role == Role::PatchLinear || role == Role::AttnOut ||
         role == Role::MlpOut;
}
constexpr bool is_reader(Role role) {
  return role == Role::QkvIn || role == Role::MlpIn || role == Role::Head;
}
// Tables hold one main-branch vector per row (or are one vector); the other
// writers are linears whose output axis is the main branch.
constexpr bool is_table(Role role) {
  return role == Role::TokenEmbedding || role == Role::PositionEmbedding || role == Role::ClsToken;
}

// What happens to one tensor role, in the order the fields are listed.
struct Steps {
  bool fold_affine = false;        // reader: W' = W diag(gamma), b' = b + W beta
  bool recenter = false;           // writer: rows of a table, or the output axis of a linear
  bool compress_output = false;    // writer: drop the last main-branch coordinate
  bool compress_input = false;     // reader: W'' = W[:, :d-1] - W[:, d-1] 1'
  bool decompress_output = false;  // writer: append the coordinate -sum(others)
  bool decompress_input = false;   // reader: append a zero column
  bool drop_affine = false;        // norm: the target norm has no gamma, beta
  bool unit_affine = false;        // norm: the target LayerNorm gets gamma = 1, beta = 0

  constexpr bool identity() const {
    return !(fold_affine || recenter || compress_output || compress_input || decompress_output ||
             decompress_input || drop_affine || unit_affine);
  }
};

// The directions the converter supports.
constexpr bool is_supported(Arch from, Arch to) {
  if (!is_public_arch(from) || !is_public_arch(to)) return false;  // e.g. a benchmark baseline
  return from != to;
}

// The steps for `role` when converting `from` -> `to`.
constexpr Steps plan_for(Arch from, Arch to, Role role) {
  Steps s;
  if (!is_supported(from, to)) return s;
  const bool leaves_ln = from == Arch::PreLN;
  const bool compresses = to == Arch::PreCRMSNorm;
  const bool decompresses = from == Arch::PreCRMSNorm;
  if (role == Role::NormAffine) {
    s.drop_affine = leaves_ln;
    s.unit_affine = to == Arch::PreLN;
    return s;
  }
  if (is_reader(role)) {
    s.fold_affine = leaves_ln;
    s.compress_input = compresses;
    s.decompress_input = decompresses;
  } else {
    s.recenter = leaves_ln;
    s.compress_output = compresses;
    s.decompress_output = decompresses;
  }
  return s;
}

// --- Soundness of the plan, checked at compile time for every direction. ---

// Each writer's output is zero-mean before it is compressed: it is recentered
// in this conversion, or the source architecture already keeps it zero-mean.
constexpr bool writers_recentered_before_compression(Arch from, Arch to) {
  for (Role role : kAllRoles) {
    const Steps s = plan_for(from, to, role);
    if (is_writer(role) && s.compress_output && !(s.recenter || from != Arch::PreLN)) return false;
  }
  return true;
}

// Nothing reads the main branch through a norm without affine unless the
// affine was folded into it (or there was none to fold).
constexpr bool readers_fold_dropped_affine(Arch from, Arch to) {
  const bool affine_dropped = plan_for(from, to, Role::NormAffine).drop_affine;
  for (Role role : kAllRoles)
    if (is_reader(role) && affine_dropped && !plan_for(from, to, role).fold_affine) return false;
  return true;
}

// Writers change only where the main branch changes: leaving Pre-LN (recenter)
// or changing the compression.
constexpr bool main_branch_consistent(Arch from, Arch to) {
  const bool width_changes = main_width_of(from, 8) != main_width_of(to, 8);
  for (Role role : kAllRoles) {
    const Steps s = plan_for(from, to, role);
    if (s.compress_output && s.decompress_output) return false;
    if (s.compress_input && s.decompress_input) return false;
    if (width_changes != (s.compress_output || s.decompress_output || s.compress_input ||
                          s.decompress_input) &&
        role != Role::NormAffine)
      return false;
  }
  return true;
}

constexpr bool plan_is_sound(Arch from, Arch to) {
  return writers_recentered_before_compression(from, to) && readers_fold_dropped_affine(from, to) &&
         main_branch_consistent(from, to);
}

template <Arch From, Arch To>
struct Plan {
  static_assert(is_public_arch(From) && is_public_arch(To),
                "prenorm::convert: both architectures must be PreLN, PreRMSNorm or PreCRMSNorm "
                "(a benchmark baseline has no equivalent model)");
  static_assert(From != To, "prenorm::convert: source and target architectures are the same");
  static_assert(plan_is_sound(From, To), "prenorm::convert: the conversion plan is unsound");

  static constexpr Steps steps(Role role) { return plan_for(From, To, role); }
  // Main-branch width of the target for a source model width d (compile time when fixed).
  static constexpr int target_main_width(int d) { return main_width(To, d); }
};

}  // namespace prenorm::conversion
