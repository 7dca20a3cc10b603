#pragma once
// zero_mean_report(model): how far a Pre-RMSNorm or Pre-CRMSNorm model's
// main-branch writers are from zero-mean, a check that a model really is a
// converted one (RMSNorm equals LayerNorm only on a zero-mean branch).

#include <string>

#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "convert.hpp"
#include "transforms.hpp"

namespace prenorm {

struct ZeroMeanReport {
  double max_abs_mean = 0.0;  // largest |mean| over the main-branch axis of any writer
  double relative = 0.0;      // that mean over the rms of the same tensor's entries
  std::string tensor;         // the writer it was found in (empty when there are none)
};

namespace conversion::detail {

// Measures one writer (as stored, decompressed first for Pre-CRMSNorm).
template <Arch A>
void measure_table(ZeroMeanReport& report, const std::string& name, Matrix table) {
  if constexpr (A == Arch::PreCRMSNorm) decompress_table(table);
  const double mean = max_abs_row_mean(table);
  if (mean >= report.max_abs_mean) {
    const double rms = rms_of(table);
    report = {mean, rms > 0 ? mean / rms : 0.0, name};
  }
}
template <Arch A>
void measure_writer(ZeroMeanReport& report, const std::string& name, Matrix weight, Vec bias) {
  if constexpr (A == Arch::PreCRMSNorm) decompress_output(weight, bias);
  const double mean = max_abs_output_mean(weight, bias);
  if (mean >= report.max_abs_mean) {
    const double rms = rms_of(weight);
    report = {mean, rms > 0 ? mean / rms : 0.0, name};
  }
}

template <Arch A, class S>
void measure_blocks(ZeroMeanReport& report, const std::vector<PreNormBlock<A, S>>& blocks) {
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const std::string name = "blocks[" + std::to_string(i) + "]";
    measure_writer<A>(report, name + ".attn.out", to_double(blocks[i].attn.out.weight),
                      to_double(blocks[i].attn.out.bias));
    measure_writer<A>(report, name + ".mlp.proj", to_double(blocks[i].mlp.proj.weight),
                      to_double(blocks[i].mlp.proj.bias));
  }
}

}  // namespace conversion::detail

// Writers of a GPT: the token table (unless it is the original tied table,
// recentered per token), the position table, every attention and MLP output.
template <Arch A, class S>
ZeroMeanReport zero_mean_report(const Gpt<A, S>& model) {
  static_assert(A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm,
                "prenorm::zero_mean_report: only Pre-RMSNorm and Pre-CRMSNorm models keep a "
                "zero-mean main branch");
  using namespace conversion::detail;
  ZeroMeanReport report;
  if (!model.tied_affine())
    measure_table<A>(report, "token_embedding.table", to_double(model.token_embedding.table));
  measure_table<A>(report, "position_embedding.table", to_double(model.position_embedding.table));
  measure_blocks(report, model.blocks);
  return report;
}

// Writers of a ViT: the patch linear, the cls (and distillation) token, the
// position table, and every attention and MLP output. With a stem norm the
// embeddings feed it instead (its output is centered at run time): the blocks' only.
template <Arch A, class S>
ZeroMeanReport zero_mean_report(const Vit<A, S>& model) {
  static_assert(A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm,
                "prenorm::zero_mean_report: only Pre-RMSNorm and Pre-CRMSNorm models keep a "
                "zero-mean main branch");
  using namespace conversion::detail;
  ZeroMeanReport report;
  if (!model.config.stem_norm) {
    measure_writer<A>(report, "patch", to_double(model.patch.weight), to_double(model.patch.bias));
    measure_table<A>(report, "cls_token", conversion::Matrix(to_double(model.cls_token).transpose()));
    if (model.config.distillation_token)
      measure_table<A>(report, "distillation_token",
                       conversion::Matrix(to_double(model.distillation_token).transpose()));
    measure_table<A>(report, "position_embedding", to_double(model.position_embedding.table));
  }
  measure_blocks(report, model.blocks);
  return report;
}

}  // namespace prenorm
