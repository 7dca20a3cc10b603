#pragma once
// The architectures of a Pre-Norm transformer, and the compile-time width and
// affine helpers the conversion plan needs. What each architecture does (its
// norms, their backward, what they save) is ArchTraits, ops/arch_traits.hpp.

#include <string_view>

#include "types.hpp"

namespace prenorm {

// A fixed underlying type: a value outside the three (bench/no_norm.hpp's
// baseline without normalization) is then a valid Arch, which the library
// runs through its ArchTraits specialization.
enum class Arch : int {
  PreLN,        // LayerNorm with gamma, beta before each sub-layer and at the end
  PreRMSNorm,   // RMSNorm without affine on a zero-mean main branch (width d)
  PreCRMSNorm,  // CRMSNorm on a compressed main branch (width d-1)
};

// Whether arch is one of the three above.
constexpr bool is_public_arch(Arch arch) {
  return arch == Arch::PreLN || arch == Arch::PreRMSNorm || arch == Arch::PreCRMSNorm;
}

// Width of the main branch (the residual stream) for a model of width d.
// Dynamic stays Dynamic; a fixed d becomes d-1 for Pre-CRMSNorm.
constexpr int main_width(Arch arch, int d) {
  if (d == Dynamic) return Dynamic;
  return arch == Arch::PreCRMSNorm ? d - 1 : d;
}

// The same at run time.
constexpr Index main_width_of(Arch arch, Index d) {
  return arch == Arch::PreCRMSNorm ? d - 1 : d;
}

// Whether the norms of this architecture carry gamma and beta.
constexpr bool has_norm_affine(Arch arch) { return arch == Arch::PreLN; }

// snake_case names, as used in benchmark names and JSON keys.
constexpr std::string_view arch_name(Arch arch) {
  switch (arch) {
    case Arch::PreLN: return "pre_ln";
    case Arch::PreRMSNorm: return "pre_rmsnorm";
    case Arch::PreCRMSNorm: return "pre_crmsnorm";
  }
  return "unknown";
}

}  // namespace prenorm
