// example_convert: the exact converter. A small Pre-LN GPT with random weights
// is converted to Pre-RMSNorm and Pre-CRMSNorm; the three models compute the
// same logits. Exit code 1 if they differ by more than double rounding.
//
// Shapes, d = width: the Pre-LN and Pre-RMSNorm main branch is [tokens x d],
// the Pre-CRMSNorm one [tokens x (d-1)] (compressed: its rows are zero-mean,
// the last coordinate is minus the sum of the others). Logits are
// [batch*seq x vocab] in all three, row b*seq + t for sequence b, position t.

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>

#include <cstdio>
#include <vector>

int main() {
  using prenorm::Arch;
  using Logits = prenorm::RowMatrix<double>;  // [batch*seq x vocab]

  // GPT-2-like and tiny: tied head, GELU (tanh), epsilon 1e-5.
  const prenorm::GptConfig config{.vocab = 101, .context = 32, .width = 64, .heads = 4,
                                  .layers = 2, .mlp_width = 256};
  prenorm::Gpt<Arch::PreLN, double> ln(config);
  ln.init_random(/*seed=*/7, /*stddev=*/0.02, /*random_affine=*/true);  // gammas, betas not 1, 0

  // The conversion: Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm. Every gamma and beta
  // is folded into the linear layers; the tied head becomes a separate head
  // (TiedPolicy::Untie, the default; TiedPolicy::Keep keeps one table).
  auto rms = prenorm::convert<Arch::PreRMSNorm>(ln);
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
  std::printf("blocks[0].mlp.fc.weight: pre_ln %lldx%lld, pre_crmsnorm %lldx%lld (reads d-1)\n",
              (long long)ln.blocks[0].mlp.fc.weight.rows(), (long long)ln.blocks[0].mlp.fc.weight.cols(),
              (long long)crms.blocks[0].mlp.fc.weight.rows(), (long long)crms.blocks[0].mlp.fc.weight.cols());

  // Two sequences of 16 tokens: ids[b*16 + t].
  std::vector<int> ids;
  for (int i = 0; i < 2 * 16; ++i) ids.push_back((i * 37 + 11) % int(config.vocab));
  const prenorm::TokenBatch tokens(ids, /*batch=*/2, /*seq=*/16);

  // A model's own forward runs a session of its own and returns the logits
  // [batch*seq x vocab] by value; Session keeps the buffers for repeated calls.
  const Logits ln_logits = ln.forward(tokens);
  const Logits rms_logits = rms.forward(tokens);
  const Logits crms_logits = crms.forward(tokens);

  const double rms_diff = (rms_logits - ln_logits).cwiseAbs().maxCoeff();
  const double crms_diff = (crms_logits - ln_logits).cwiseAbs().maxCoeff();
  const double scale = ln_logits.cwiseAbs().maxCoeff();
  std::printf("logits %lldx%lld, max |logit| %.3f\n", (long long)ln_logits.rows(),
              (long long)ln_logits.cols(), scale);
  std::printf("max |pre_rmsnorm - pre_ln|  = %.2e\n", rms_diff);
  std::printf("max |pre_crmsnorm - pre_ln| = %.2e\n", crms_diff);

  // The same function: equal up to double rounding (float: up to float rounding).
  const bool ok = rms_diff <= 1e-12 * (1 + scale) && crms_diff <= 1e-12 * (1 + scale);
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
