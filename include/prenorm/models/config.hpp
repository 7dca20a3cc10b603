#pragma once
// The transformer description (TransformerConfig), GPT-2's and ViT's
// shorthands for it, and the presets of the paper (its Tables: ViT Ti..G,
// GPT-3 Small..XL), plus GPT-2 small.

#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../layers/attention_options.hpp"
#include "../layers/topology.hpp"
#include "../ops/activation.hpp"

namespace prenorm {

// What a model reads: where its residual stream starts.
enum class Stem {
  Tokens,   // token table rows, plus learned positions (optionally at an index offset)
  Patches,  // image patches through a linear (a stride = kernel convolution), a class token
            // (and a distillation token) in front, learned positions; optionally a LayerNorm
};

// What a model outputs, from the final norm's output NormF(h).
enum class Head {
  TokenLogits,  // logits over the vocab at every position: a (vocab, d) linear, or the token table (tied)
  Pooled,       // one row per sequence, pool(NormF(h)) (Pooling), through a (classes, parts*d) linear with bias
};

// The rows a Pooled head reads, from NormF(h) (each part main wide).
enum class Pooling {
  Cls,              // NormF(h_cls) (ViT, CLIP vision)
  ClsDistillation,  // [NormF(h_cls), NormF(h_dist)] (DeiT: its two heads, averaged, are one)
  ClsPatchMean,     // [NormF(h_cls), mean over the patches of NormF(h_patch)] (DINOv2)
};

constexpr std::string_view stem_name(Stem stem) {
  switch (stem) {
    case Stem::Tokens: return "tokens";
    case Stem::Patches: return "patches";
  }
  return "unknown";
}
constexpr std::string_view head_name(Head head) {
  switch (head) {
    case Head::TokenLogits: return "token_logits";
    case Head::Pooled: return "pooled";
  }
  return "unknown";
}
constexpr std::string_view pooling_name(Pooling pooling) {
  switch (pooling) {
    case Pooling::Cls: return "cls";
    case Pooling::ClsDistillation: return "cls_distillation";
    case Pooling::ClsPatchMean: return "cls_patch_mean";
  }
  return "unknown";
}

// A Pre-Norm transformer, as data: the stem, the blocks (the same in every
// layer but the attention window), the final norm and the head. Every model
// of the library is one of these, and one runtime (Transformer, Session) runs
// any of them; GPT-2, ViT and the Hugging Face families are instances
// (presets below, io/hf_*.hpp). GptConfig and VitConfig are shorthands with
// GPT-2's and ViT's defaults that convert to it.
struct TransformerConfig {
  // The stem.
  Stem stem = Stem::Tokens;
  Index vocab = 0;                // Tokens: rows of the token table
  Index context = 0;              // Tokens: the longest sequence (positions)
  bool learned_positions = true;  // Tokens: a position table added to the token rows (false: rotary, ALiBi)
  Index position_offset = 0;      // Tokens: position p reads row p + offset of the table (OPT: 2)
  Index image_size = 0;           // Patches: height = width of the input images
  Index patch_size = 0;           // Patches
  Index channels = 3;             // Patches
  bool distillation_token = false;  // Patches: DeiT's second learned token after the class token
  // Patches: CLIP's pre_layrnorm, a LayerNorm (affine, epsilon) on the embeddings
  // e = patch + cls + positions, which then stay d wide in every architecture;
  // its output starts the residual stream (centered and compressed there in
  // Pre-RMSNorm and Pre-CRMSNorm, DESIGN.md: x0 = C(LN(e) gamma + beta)).
  bool stem_norm = false;

  // The blocks.
  Index width = 0;      // d, uncompressed
  Index heads = 0;
  Index head_dim = 0;   // 0: width / heads. GPT-3 XL has 24 heads of 128 at width 2048.
  Index layers = 0;
  Index mlp_width = 0;  // inner width of the MLP
  double epsilon = 1e-5;
  Activation activation = Activation::GeluTanh;
  BlockTopology topology = BlockTopology::Sequential;
  bool causal = true;      // each position attends to itself and earlier ones only
  Index kv_heads = 0;      // key/value heads (0: heads). Grouped-query: a divisor; multi-query: 1
  Rotary rotary = {};      // rotary embedding of q and k (dims 0: none)
  bool alibi = false;      // BLOOM's ALiBi
  double score_scale = 0;  // the attention scores' factor; 0: 1/sqrt(head_dim) (GPT-Neo: 1)
  Index window = 0;        // local attention to the last `window` keys (0: global everywhere)
  Index window_period = 1; // ... in the layers i with i % window_period == window_period - 1

  // The head.
  Head head = Head::TokenLogits;
  bool tied = false;       // TokenLogits: the head is the token table
  bool head_bias = false;  // TokenLogits: a (vocab) bias on the logits
  Index classes = 0;       // Pooled: outputs per sequence
  Pooling pooling = Pooling::Cls;  // Pooled

  constexpr Index head_size() const { return head_dim != 0 ? head_dim : (heads ? width / heads : 0); }
  constexpr Index attention_width() const { return heads * head_size(); }  // heads*head_dim
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
  // Rows of the token stem's position table: context + offset, or none.
  constexpr Index position_rows() const {
    return stem == Stem::Tokens && learned_positions ? context + position_offset : 0;
  }
  constexpr Index grid() const { return patch_size ? image_size / patch_size : 0; }  // patches per side
  constexpr Index patches() const { return grid() * grid(); }
  constexpr Index prefix_tokens() const { return distillation_token ? 2 : 1; }  // cls (+ distillation)
  constexpr Index tokens() const { return prefix_tokens() + patches(); }  // Patches: per image
  constexpr Index patch_features() const { return channels * patch_size * patch_size; }  // C*p*p
  constexpr Index pooled_parts() const { return pooling == Pooling::Cls ? 1 : 2; }  // head input / main
  // The outputs per row of the head: vocab or classes.
  constexpr Index outputs() const { return head == Head::TokenLogits ? vocab : classes; }
  // A plain ViT (the paper's, Hugging Face "vit"): none of the encoder options.
  bool plain_patches() const { return !stem_norm && !distillation_token && pooling == Pooling::Cls; }

  // Throws prenorm::Error naming the first bad field.
  void validate(const char* op = "TransformerConfig") const {
    if (stem_name(stem) == "unknown") detail::fail(op, "stem is ", int(stem), ", not a Stem");
    if (head_name(head) == "unknown") detail::fail(op, "head is ", int(head), ", not a Head");
    if (stem == Stem::Tokens) {
      if (vocab <= 0) detail::fail(op, "vocab is ", vocab, ", expected > 0");
      if (context <= 0) detail::fail(op, "context is ", context, ", expected > 0");
      if (position_offset < 0)
        detail::fail(op, "position_offset is ", position_offset, ", expected >= 0");
      if (!learned_positions && position_offset != 0)
        detail::fail(op, "position_offset is ", position_offset,
                     " without learned positions, expected 0");
    } else {
      if (image_size <= 0) detail::fail(op, "image_size is ", image_size, ", expected > 0");
      if (patch_size <= 0) detail::fail(op, "patch_size is ", patch_size, ", expected > 0");
      if (image_size % patch_size != 0)
        detail::fail(op, "image_size ", image_size, " is not divisible by patch_size ", patch_size);
      if (channels <= 0) detail::fail(op, "channels is ", channels, ", expected > 0");
    }
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
                                    rotary, window, causal, score_scale);
    if (window_period < 1)
      detail::fail(op, "window_period is ", window_period, ", expected >= 1");
    if (activation_name(activation) == "unknown")
      detail::fail(op, "activation is ", int(activation), ", not an Activation");
    if (!is_valid_topology(topology))
      detail::fail(op, "topology is ", int(topology), ", not a BlockTopology");
    if (head == Head::TokenLogits) {
      if (stem != Stem::Tokens)
        detail::fail(op, "head is token_logits on a ", stem_name(stem),
                     " stem, expected a tokens stem (logits over its vocab)");
    } else {
      if (classes <= 0) detail::fail(op, "classes is ", classes, ", expected > 0");
      if (tied) detail::fail(op, "tied is true with a pooled head, expected false");
      if (head_bias) detail::fail(op, "head_bias is true with a pooled head (its linear has a bias)");
      if (pooling_name(pooling) == "unknown")
        detail::fail(op, "pooling is ", int(pooling), ", not a Pooling");
      if (stem != Stem::Patches)
        detail::fail(op, "pooling ", pooling_name(pooling), " needs a patches stem (a class token)");
      if (pooling == Pooling::ClsDistillation && !distillation_token)
        detail::fail(op, "pooling is cls_distillation without a distillation token");
    }
  }
};

// GPT-2's shorthand: a token stem, causal attention, per-token logits from a
// tied head by default, with GPT-2's defaults (epsilon 1e-5, gelu_tanh).
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
  Index head_dim = 0;      // 0: width / heads
  Index kv_heads = 0;      // key/value heads (0: heads)
  Rotary rotary = {};      // rotary embedding of q and k (dims 0: none)
  bool alibi = false;      // BLOOM's ALiBi
  double score_scale = 0;  // 0: 1/sqrt(head_dim) (GPT-Neo: 1)
  Index window = 0;        // local attention to the last `window` keys (0: global everywhere)
  Index window_period = 1; // ... in the layers i with i % window_period == window_period - 1
  bool learned_positions = true;  // a position table added to the token rows
  Index position_offset = 0;      // position p reads row p + offset of the table (OPT: 2)

  constexpr operator TransformerConfig() const {
    return {.stem = Stem::Tokens, .vocab = vocab, .context = context,
            .learned_positions = learned_positions, .position_offset = position_offset,
            .width = width, .heads = heads, .head_dim = head_dim, .layers = layers,
            .mlp_width = mlp_width, .epsilon = epsilon, .activation = activation,
            .topology = topology, .causal = true, .kv_heads = kv_heads, .rotary = rotary,
            .alibi = alibi, .score_scale = score_scale, .window = window,
            .window_period = window_period, .head = Head::TokenLogits, .tied = tied,
            .head_bias = head_bias};
  }
  constexpr TransformerConfig description() const { return *this; }
  void validate(const char* op = "GptConfig") const { description().validate(op); }
};

// ViT's shorthand: square images cut into p x p patches, a class token,
// learned positions, bidirectional attention, a classifier on the class
// token, with Hugging Face ViT's defaults (epsilon 1e-12, gelu_erf). The
// encoder families are options of it: a norm on the embeddings (CLIP), a
// distillation token (DeiT), a pooled head input (DeiT, DINOv2).
struct VitConfig {
  Index image_size = 0;
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
  bool stem_norm = false;           // CLIP's pre_layrnorm (TransformerConfig::stem_norm)
  bool distillation_token = false;  // DeiT
  Pooling pooling = Pooling::Cls;

  constexpr operator TransformerConfig() const {
    return {.stem = Stem::Patches, .image_size = image_size, .patch_size = patch_size,
            .channels = channels, .distillation_token = distillation_token,
            .stem_norm = stem_norm, .width = width, .heads = heads, .head_dim = head_dim,
            .layers = layers, .mlp_width = mlp_width, .epsilon = epsilon,
            .activation = activation, .topology = topology, .causal = false,
            .head = Head::Pooled, .classes = classes, .pooling = pooling};
  }
  constexpr TransformerConfig description() const { return *this; }
  void validate(const char* op = "VitConfig") const { description().validate(op); }
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
