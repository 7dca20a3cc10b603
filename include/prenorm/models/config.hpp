#pragma once
// Model configurations and the presets of the paper (its Tables: ViT Ti..G,
// GPT-3 Small..XL), plus GPT-2 small.

#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../layers/attention_options.hpp"
#include "../layers/topology.hpp"
#include "../ops/activation.hpp"

namespace prenorm {

// A GPT-style decoder: learned positions, causal attention (with the options
// of MultiHeadAttention, layers/attention.hpp, the same in every layer but the window).
struct GptConfig {
  Index vocab = 0;
  Index context = 0;    // the longest sequence (positions)
  Index width = 0;      // d, uncompressed
  Index heads = 0;
  Index layers = 0;
  Index mlp_width = 0;  // inner width of the MLP
  double epsilon = 1e-5;
  Activation activation = Activation::GeluTanh;
  BlockTopology topology = BlockTopology::Sequential;  // of every block
  bool tied = true;        // the head is the token embedding
  bool head_bias = false;  // a (vocab) bias on the logits
  Index head_dim = 0;      // 0: width / heads. GPT-3 XL has 24 heads of 128 at width 2048.
  Index kv_heads = 0;      // key/value heads (0: heads). Grouped-query: a divisor; multi-query: 1
  Rotary rotary = {};      // rotary embedding of q and k (dims 0: none)
  bool alibi = false;      // BLOOM's ALiBi
  double score_scale = 0;  // the attention scores' factor; 0: 1/sqrt(head_dim) (GPT-Neo: 1)
  Index window = 0;        // local attention to the last `window` keys (0: global everywhere)
  Index window_period = 1; // ... in the layers i with i % window_period == window_period - 1
  bool learned_positions = true;  // a position table added to the token rows (false: rotary, ALiBi)
  Index position_offset = 0;      // position p reads row p + offset of the table (OPT: 2)

  constexpr Index head_size() const { return head_dim != 0 ? head_dim : (heads ? width / heads : 0); }
  constexpr Index attention_width() const { return heads * head_size(); }  // heads*head_dim
  // Rows of the position table: context + offset, or none.
  constexpr Index position_rows() const { return learned_positions ? context + position_offset : 0; }
  constexpr Index kv_head_count() const { return kv_heads != 0 ? kv_heads : heads; }
  constexpr Index kv_width() const { return kv_head_count() * head_size(); }  // a KV cache's columns
  // The window of layer i (0: global). GPT-Neo alternates global and local: window_period 2.
  constexpr Index layer_window(Index i) const {
    return window_period > 0 && i % window_period == window_period - 1 ? window : 0;
  }
  // GPT-2's attention: none of the options above.
  bool plain_attention() const {
    return kv_head_count() == heads && rotary.dims == 0 && !alibi && score_scale == 0 && window == 0;
  }

  // Throws prenorm::Error naming the first bad field.
  void validate(const char* op = "GptConfig") const {
    if (vocab <= 0) detail::fail(op, "vocab is ", vocab, ", expected > 0");
    if (context <= 0) detail::fail(op, "context is ", context, ", expected > 0");
    if (width < 2) detail::fail(op, "width is ", width, ", expected >= 2");
    if (heads <= 0) detail::fail(op, "heads is ", heads, ", expected > 0");
    if (head_dim < 0) detail::fail(op, "head_dim is ", head_dim, ", expected >= 0");
    if (head_dim == 0 && width % heads != 0)
      detail::fail(op, "width ", width, " is not divisible by heads ", heads,
                   " (set head_dim to decouple them)");
    if (layers < 0) detail::fail(op, "layers is ", layers, ", expected >= 0");
    if (mlp_width <= 0) detail::fail(op, "mlp_width is ", mlp_width, ", expected > 0");
    if (!(epsilon > 0)) detail::fail(op, "epsilon is ", epsilon, ", expected > 0");
    detail::check_attention_options(op, [] { return std::string(); }, heads, head_size(), kv_heads,
                                    rotary, window, /*causal=*/true, score_scale);
    if (position_offset < 0) detail::fail(op, "position_offset is ", position_offset, ", expected >= 0");
    if (!learned_positions && position_offset != 0)
      detail::fail(op, "position_offset is ", position_offset,
                   " without learned positions, expected 0");
    if (window_period < 1)
      detail::fail(op, "window_period is ", window_period, ", expected >= 1");
    if (activation_name(activation) == "unknown")
      detail::fail(op, "activation is ", int(activation), ", not an Activation");
    if (!is_valid_topology(topology))
      detail::fail(op, "topology is ", int(topology), ", not a BlockTopology");
  }
};

// What the head of a ViT reads, from the final norm's output NormF(h) (each part main wide).
enum class VitPooling {
  Cls,              // NormF(h_cls) (ViT, CLIP vision)
  ClsDistillation,  // [NormF(h_cls), NormF(h_dist)] (DeiT: its two heads, averaged, are one)
  ClsPatchMean,     // [NormF(h_cls), mean over the patches of NormF(h_patch)] (DINOv2)
};

constexpr std::string_view vit_pooling_name(VitPooling pooling) {
  switch (pooling) {
    case VitPooling::Cls: return "cls";
    case VitPooling::ClsDistillation: return "cls_distillation";
    case VitPooling::ClsPatchMean: return "cls_patch_mean";
  }
  return "unknown";
}

// A ViT encoder: square images cut into p x p patches, a cls token, learned
// positions, bidirectional attention, a classifier on the cls token. The
// encoder families are options of it: a norm on the embeddings (CLIP), a
// distillation token (DeiT), a pooled head input (DeiT, DINOv2).
struct VitConfig {
  Index image_size = 0;  // height = width of the input images
  Index patch_size = 0;
  Index channels = 3;
  Index classes = 0;
  Index width = 0;       // d, uncompressed
  Index heads = 0;
  Index layers = 0;
  Index mlp_width = 0;
  double epsilon = 1e-12;  // Hugging Face ViT's layer_norm_eps
  Activation activation = Activation::GeluErf;
  BlockTopology topology = BlockTopology::Sequential;  // of every block
  Index head_dim = 0;      // 0: width / heads
  // CLIP's pre_layrnorm: a LayerNorm (with affine, epsilon) on the embeddings
  // e = patch + cls + positions, which then stay d wide in every architecture;
  // the stem's output starts the residual stream (centered and compressed
  // there in Pre-RMSNorm and Pre-CRMSNorm, DESIGN.md: x0 = C(LN(e) gamma + beta)).
  bool stem_norm = false;
  bool distillation_token = false;  // DeiT: a second learned token after the cls token
  VitPooling pooling = VitPooling::Cls;

  constexpr Index head_size() const { return head_dim != 0 ? head_dim : (heads ? width / heads : 0); }
  constexpr Index attention_width() const { return heads * head_size(); }
  constexpr Index grid() const { return patch_size ? image_size / patch_size : 0; }  // patches per side
  constexpr Index patches() const { return grid() * grid(); }
  constexpr Index prefix_tokens() const { return distillation_token ? 2 : 1; }  // cls (+ distillation)
  constexpr Index tokens() const { return prefix_tokens() + patches(); }
  constexpr Index pooled_parts() const { return pooling == VitPooling::Cls ? 1 : 2; }  // head input / main
  constexpr Index patch_features() const { return channels * patch_size * patch_size; }  // C*p*p

  void validate(const char* op = "VitConfig") const {
    if (image_size <= 0) detail::fail(op, "image_size is ", image_size, ", expected > 0");
    if (patch_size <= 0) detail::fail(op, "patch_size is ", patch_size, ", expected > 0");
    if (image_size % patch_size != 0)
      detail::fail(op, "image_size ", image_size, " is not divisible by patch_size ", patch_size);
    if (channels <= 0) detail::fail(op, "channels is ", channels, ", expected > 0");
    if (classes <= 0) detail::fail(op, "classes is ", classes, ", expected > 0");
    if (width < 2) detail::fail(op, "width is ", width, ", expected >= 2");
    if (heads <= 0) detail::fail(op, "heads is ", heads, ", expected > 0");
    if (head_dim < 0) detail::fail(op, "head_dim is ", head_dim, ", expected >= 0");
    if (head_dim == 0 && width % heads != 0)
      detail::fail(op, "width ", width, " is not divisible by heads ", heads,
                   " (set head_dim to decouple them)");
    if (layers < 0) detail::fail(op, "layers is ", layers, ", expected >= 0");
    if (mlp_width <= 0) detail::fail(op, "mlp_width is ", mlp_width, ", expected > 0");
    if (!(epsilon > 0)) detail::fail(op, "epsilon is ", epsilon, ", expected > 0");
    if (activation_name(activation) == "unknown")
      detail::fail(op, "activation is ", int(activation), ", not an Activation");
    if (!is_valid_topology(topology))
      detail::fail(op, "topology is ", int(topology), ", not a BlockTopology");
    if (vit_pooling_name(pooling) == "unknown")
      detail::fail(op, "pooling is ", int(pooling), ", not a VitPooling");
    if (pooling == VitPooling::ClsDistillation && !distillation_token)
      detail::fail(op, "pooling is cls_distillation without a distillation token");
  }
  // The fields a plain ViT (the paper's, Hugging Face "vit") has.
  bool plain() const { return !stem_norm && !distillation_token && pooling == VitPooling::Cls; }
};

namespace presets {

// ViT, 224 x 224 images, 1000 classes (the paper's ViT table).
inline constexpr VitConfig vit_ti16{.image_size = 224, .patch_size = 16, .channels = 3, .classes = 1000,
                                    .width = 192, .heads = 3, .layers = 12, .mlp_width = 768};
inline constexpr VitConfig vit_s16{.image_size = 224, .patch_size = 16, .channels = 3, .classes = 1000,
                                   .width = 384, .heads = 6, .layers = 12, .mlp_width = 1536};
inline constexpr VitConfig vit_b16{.image_size = 224, .patch_size = 16, .channels = 3, .classes = 1000,
                                   .width = 768, .heads = 12, .layers = 12, .mlp_width = 3072};
inline constexpr VitConfig vit_l16{.image_size = 224, .patch_size = 16, .channels = 3, .classes = 1000,
                                   .width = 1024, .heads = 16, .layers = 24, .mlp_width = 4096};
inline constexpr VitConfig vit_h14{.image_size = 224, .patch_size = 14, .channels = 3, .classes = 1000,
                                   .width = 1280, .heads = 16, .layers = 32, .mlp_width = 5120};
inline constexpr VitConfig vit_g14{.image_size = 224, .patch_size = 14, .channels = 3, .classes = 1000,
                                   .width = 1664, .heads = 16, .layers = 48, .mlp_width = 8192};

// GPT-3 (Brown et al. 2020, Table 2.1), vocab 50257, context 2048.
inline constexpr GptConfig gpt3_small{.vocab = 50257, .context = 2048, .width = 768, .heads = 12,
                                      .layers = 12, .mlp_width = 3072};
inline constexpr GptConfig gpt3_medium{.vocab = 50257, .context = 2048, .width = 1024, .heads = 16,
                                       .layers = 24, .mlp_width = 4096};
inline constexpr GptConfig gpt3_large{.vocab = 50257, .context = 2048, .width = 1536, .heads = 16,
                                      .layers = 24, .mlp_width = 6144};
// 24 heads of 128: the attention is 3072 wide while d = 2048.
inline constexpr GptConfig gpt3_xl{.vocab = 50257, .context = 2048, .width = 2048, .heads = 24,
                                   .layers = 24, .mlp_width = 8192, .head_dim = 128};

// GPT-2 small (124M): Hugging Face "gpt2".
inline constexpr GptConfig gpt2_small{.vocab = 50257, .context = 1024, .width = 768, .heads = 12,
                                      .layers = 12, .mlp_width = 3072};

}  // namespace presets
}  // namespace prenorm
