// Must NOT compile: the benchmarks' baseline without normalization
// (bench/no_norm.hpp, an Arch value outside the enum that the library runs
// through its ArchTraits) has no equivalent model, so
// convert<Arch::PreLN>(Gpt<kNoNorm, float>) is rejected at compile time by the
// static_assert in prenorm::conversion::Plan (plan.hpp), whose message the
// ctest compile_fail.convert_no_norm looks for.
// With -DPRENORM_COMPILE_FAIL_CONTROL the source is a Pre-LN model instead and
// the file must compile (compile_fail.convert_no_norm.control): the failure is
// the static_assert, not a broken include or a typo (the model of the
// baseline itself compiles: the bench header gives its traits).

#include <prenorm/convert.hpp>

#include "../../bench/no_norm.hpp"

int main() {
#ifdef PRENORM_COMPILE_FAIL_CONTROL
  constexpr prenorm::Arch source = prenorm::Arch::PreLN;
#else
  constexpr prenorm::Arch source = prenorm_bench::kNoNorm;
#endif
  const prenorm::GptConfig config{.vocab = 8, .context = 4, .width = 4, .heads = 1, .layers = 1,
                                  .mlp_width = 8};
  const prenorm::Gpt<source, float> model(config);
  const auto converted = prenorm::convert<prenorm::Arch::PreLN == source ? prenorm::Arch::PreRMSNorm
                                                                        : prenorm::Arch::PreLN>(model);
  return int(converted.config.width) - 4;
}
