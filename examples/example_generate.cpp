// example_generate: greedy generation with the KV cache on a small GPT
// converted to Pre-CRMSNorm. prefill runs the prompt and fills the cache; each
// step then runs one new token per sequence against the cached keys and
// values. Every step's logits are checked against a full forward over the
// whole sequence so far (its last row). Exit code 1 if they differ.

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

int main() {
  using prenorm::Arch;
  using prenorm::Index;
  using Logits = prenorm::RowMatrix<float>;  // [positions x vocab]

  const prenorm::GptConfig config{.vocab = 101, .context = 32, .width = 64, .heads = 4,
                                  .layers = 2, .mlp_width = 256};
  prenorm::Gpt<Arch::PreLN, float> ln(config);
  ln.init_random(/*seed=*/3, /*stddev=*/0.2);
  // Keep: the tied table is stored once, as in the Pre-LN model.
  auto model = prenorm::convert<Arch::PreCRMSNorm>(ln, {.tied = prenorm::TiedPolicy::Keep});

  // A session holds the state of inference (buffers, logits, KV cache); the
  // model holds only parameters. The cache holds, per layer, keys and values
  // [batch*capacity x heads*head_dim]; capacity is at most the context.
  prenorm::Session session(model);
  std::vector<int> tokens = {5, 17, 42, 8};  // the prompt: one sequence (batch 1)
  // prefill: the logits of every prompt position [prompt length x vocab]; keep the last.
  Logits next_logits =
      session.prefill(prenorm::TokenBatch(tokens, 1, Index(tokens.size())), config.context)
          .bottomRows(1);  // [1 x vocab]: after the prompt

  double worst = 0, scale = 0;
  for (int i = 0; i < 12; ++i) {
    Index next = 0;
    next_logits.row(0).maxCoeff(&next);  // greedy: the most likely token
    tokens.push_back(int(next));
    const std::vector<int> step_tokens{int(next)};       // [batch]: one token per sequence
    next_logits = session.step(step_tokens);             // [batch x vocab]
    // The check: a full forward over all tokens so far (the model's own
    // forward runs a session of its own), its last row.
    const Logits full = model.forward(prenorm::TokenBatch(tokens, 1, Index(tokens.size())));
    worst = std::max(worst, double((next_logits.row(0) - full.bottomRows(1)).cwiseAbs().maxCoeff()));
    scale = std::max(scale, double(full.cwiseAbs().maxCoeff()));
  }

  std::printf("generated:");
  for (int t : tokens) std::printf(" %d", t);
  const prenorm::KvCache<float>& cache = session.cache();
  std::printf("\n(prompt of 4, 12 greedy steps; cache length %lld of %lld)\n",
              (long long)cache.length, (long long)cache.capacity);
  std::printf("max |step logits - full forward's last row| = %.2e (max |logit| %.2f)\n", worst, scale);

  // float: the cached and the full computations round differently.
  const bool ok = worst <= 1e-4 * (1 + scale) && cache.length == Index(tokens.size());
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
