#pragma once
// Vit<A, S>: a Transformer (transformer.hpp) with a patch stem and a pooled
// head, under the name of the task it trains for (train/vit_train.hpp: image
// classification). It adds no parameters and no code path: ViT and the
// encoder families (io/hf_*.hpp) are TransformerConfigs.

#include <utility>

#include "transformer.hpp"

namespace prenorm {

template <Arch A, class S>
class Vit : public Transformer<A, S> {
 public:
  explicit Vit(const TransformerConfig& config) : Transformer<A, S>(checked(config)) {}
  explicit Vit(Transformer<A, S> model) : Transformer<A, S>(std::move(model)) {
    checked(this->config);
  }

 private:
  static const TransformerConfig& checked(const TransformerConfig& config) {
    config.validate("Vit");
    if (config.stem != Stem::Patches || config.head != Head::Pooled)
      detail::fail("Vit", "the config has a ", stem_name(config.stem), " stem and a ",
                   head_name(config.head), " head, expected patches and pooled");
    return config;
  }
};

}  // namespace prenorm
