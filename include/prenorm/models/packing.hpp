#pragma once
// Weights packed once for inference (the GEMM backend's layout, see
// layers/linear.hpp and layers/detail/onednn_product.hpp):
//   pack_weights(model)    every Linear of a model packed, and a tied
//                          head's token table: the forwards of 4 tokens or
//                          more read the packed copies
//   unpack_weights(model)  back to the plain weights only (before changing them
//                          in place: training, convert_into)
// Without oneDNN, or for double, both are no-ops. Packing doubles the memory of
// the linear weights (the plain weight stays the parameter) and takes about one
// pass over them.

#include <type_traits>

namespace prenorm {

// Calls f(linear) for every Linear of a model (blocks, then the patch
// projection and the head, empty where the model has none).
template <class Model, class F>
void for_each_linear(Model& model, F&& f) {
  for (auto& block : model.blocks) {
    f(block.attn.qkv);
    f(block.attn.out);
    f(block.mlp.fc);
    f(block.mlp.proj);
  }
  f(model.patch);  // empty (0 x 0) without a patch stem: packing skips it
  f(model.head);   // empty when tied
}

// Calls f(layer) for every layer that pack_weights packs: each Linear with
// weights, and the token table when the head is tied to it.
template <class Model, class F>
void for_each_packable(Model& model, F&& f) {
  for_each_linear(model, [&](auto& linear) {
    if (linear.weight.size() != 0) f(linear);
  });
  if (model.config.tied) f(model.token_embedding);
}

template <class Model>
void pack_weights(Model& model) {
  for_each_packable(model, [](auto& layer) { layer.pack(); });
}

template <class Model>
void unpack_weights(Model& model) {
  for_each_packable(model, [](auto& layer) { layer.unpack(); });
}

// Whether any layer of the model is packed.
template <class Model>
bool has_packed_weights(const Model& model) {
  bool packed = false;
  for_each_packable(model, [&](const auto& layer) { packed = packed || layer.is_packed(); });
  return packed;
}

}  // namespace prenorm
