// example_train: training through the converter. One Pre-LN GPT is trained
// twice from the same initialization on the same batches with AdamW:
//   Trainer<Gpt<PreLN>>                  directly, in Pre-LN;
//   ReparamTrainer<PreCRMSNorm, Gpt<PreLN>>  keeping the Pre-LN parameters
//       theta but computing in phi = convert<PreCRMSNorm>(theta) (forward and
//       backward), with the gradient brought back by the converter's adjoint.
// Since the converted model computes the same function, both follow the same
// trajectory: the losses are printed side by side. Exit code 1 if they differ
// by more than double rounding, or if the loss did not go down.

#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using prenorm::Arch;
  using Model = prenorm::Gpt<Arch::PreLN, double>;
  using Optimizer = prenorm::AdamW<double>;

  const prenorm::GptConfig config{.vocab = 31, .context = 16, .width = 32, .heads = 4,
                                  .layers = 2, .mlp_width = 128};
  Model init(config);
  init.init_random(/*seed=*/5);

  // A learnable toy task: after token t comes (3t + 1) mod vocab. One batch of
  // 4 sequences of 16 tokens; inputs and targets are [batch*seq], row-major.
  const prenorm::Index batch = 4, seq = 16;
  std::vector<int> inputs, targets;
  for (int b = 0; b < batch; ++b)
    for (int t = 0, token = 2 * b + 1; t < seq; ++t) {
      inputs.push_back(token);
      token = (3 * token + 1) % int(config.vocab);
      targets.push_back(token);
    }
  const prenorm::GptBatch data{prenorm::TokenBatch(inputs, batch, seq), targets};

  const prenorm::AdamWOptions adamw{.lr = 3e-3, .weight_decay = 0.1};
  prenorm::Trainer<Model, Optimizer> ln(init, Optimizer(adamw));
  prenorm::ReparamTrainer<Arch::PreCRMSNorm, Model, Optimizer> crms(init, Optimizer(adamw));

  std::printf("step   pre_ln loss   pre_crmsnorm loss   rel. diff\n");
  double worst = 0, first = 0, last = 0;
  for (int step = 1; step <= 10; ++step) {
    const double a = ln.step(data);    // the loss before this step's update
    const double b = crms.step(data);
    worst = std::max(worst, std::abs(a - b) / a);
    if (step == 1) first = a;
    last = a;
    std::printf("%4d   %11.8f   %17.8f   %9.1e\n", step, a, b, std::abs(a - b) / a);
  }
  // crms.theta() is the trained Pre-LN model; crms.phi() the same model
  // converted, ready for inference in Pre-CRMSNorm.

  // Double: equal up to rounding (float: up to float rounding, carried along the steps).
  const bool ok = worst <= 1e-10 && last < first;
  std::printf("max rel. diff %.1e, loss %.3f -> %.3f\n%s\n", worst, first, last, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
