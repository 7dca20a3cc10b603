// Must NOT compile: an Arch value outside the enum without an ArchTraits
// specialization has no norms, widths or backward the library could run, so
// Gpt<static_cast<Arch>(7), float> is rejected at compile time by the
// static_assert of the primary template ArchTraits (ops/arch_traits.hpp),
// whose message the ctest compile_fail.arch_without_traits looks for.
// With -DPRENORM_COMPILE_FAIL_CONTROL the architecture is Pre-CRMSNorm and the
// file must compile (compile_fail.arch_without_traits.control).

#include <prenorm/models.hpp>

int main() {
#ifdef PRENORM_COMPILE_FAIL_CONTROL
  constexpr prenorm::Arch arch = prenorm::Arch::PreCRMSNorm;
#else
  constexpr prenorm::Arch arch = static_cast<prenorm::Arch>(7);
#endif
  const prenorm::GptConfig config{.vocab = 8, .context = 4, .width = 4, .heads = 1, .layers = 1,
                                  .mlp_width = 8};
  const prenorm::Gpt<arch, float> model(config);
  return int(model.main()) - 3;
}
