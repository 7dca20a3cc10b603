#pragma once
// Gpt<A, S>: a Transformer (transformer.hpp) with a token stem and per-token
// logits, under the name of the task it trains for (train/gpt_train.hpp:
// next-token prediction). It adds no parameters and no code path: GPT-2 and
// the decoder families (io/hf_*.hpp) are TransformerConfigs.

#include <utility>

#include "transformer.hpp"

namespace prenorm {

template <Arch A, class S>
class Gpt : public Transformer<A, S> {
 public:
  explicit Gpt(const TransformerConfig& config) : Transformer<A, S>(checked(config)) {}
  explicit Gpt(Transformer<A, S> model) : Transformer<A, S>(std::move(model)) {
    checked(this->config);
  }

 private:
  static const TransformerConfig& checked(const TransformerConfig& config) {
    config.validate("Gpt");
    if (config.stem != Stem::Tokens || config.head != Head::TokenLogits)
      detail::fail("Gpt", "the config has a ", stem_name(config.stem), " stem and a ",
                   head_name(config.head), " head, expected tokens and token_logits");
    return config;
  }
};

}  // namespace prenorm
