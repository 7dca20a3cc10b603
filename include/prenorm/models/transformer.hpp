#pragma once
// Transformer: the parameters of any Pre-Norm transformer that a
// TransformerConfig describes (models/config.hpp). One class for every model:
// GPT-2, ViT and the Hugging Face families are configs, not classes.
//
//   stem   Tokens:  h = E[tok] + P[pos + offset]      (P optional: rotary, ALiBi)
//          Patches: e = [cls; (dist;) patch(patches)] + P
//                   h = e, or with stem_norm h = LN(e) stem_gamma + stem_beta
//                   (centered, and compressed for Pre-CRMSNorm: the stream must be zero-mean)
//   blocks (causal or bidirectional, config.causal)
//   head   TokenLogits: logits = head(NormF(h)) (+ head_bias) at every position
//          Pooled:      logits = head(pool(NormF(h))), one row per sequence
//
// The forward pass and its state (buffers, outputs, KV cache) are a
// Session's (session.hpp): a Transformer is read, never written, by a forward.
//
// Tied heads (config.tied, GPT-2): the head is the token table E (vocab, d).
//   PreLN (and any architecture but the two below): the lookup reads E, and
//   logits = E . NormF(h).
//   PreRMSNorm, PreCRMSNorm ("keep tied" conversion): E stays the ORIGINAL
//   (vocab, d) table, stored once. A looked-up row is recentered (minus its
//   mean over d) and, for PreCRMSNorm, loses its last coordinate; before the
//   head, the normalized main branch is decompressed (PreCRMSNorm:
//   x_d = -sum(x~)), then u = tied_gamma * x + tied_beta (the folded final
//   LayerNorm affine) and logits = E . u. This costs O(d) per token.
//
// Patches: a patch is flattened in the order (channel, ky, kx), i.e. a
// PyTorch/HF conv weight (main, C, p, p) reshaped to (main, C*p*p); patches are
// numbered row by row over the grid (py * grid + px), as HF's flatten(2).

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../layers/block.hpp"
#include "../layers/embedding.hpp"
#include "../layers/linear.hpp"
#include "../ops/arch_traits.hpp"
#include "../ops/main_branch.hpp"
#include "config.hpp"

namespace prenorm {

// A batch of equal-length token sequences: sequence b is ids[b*seq, (b+1)*seq).
struct TokenBatch {
  std::span<const int> ids;  // [batch * seq]
  Index batch = 0;
  Index seq = 0;

  TokenBatch() = default;
  TokenBatch(std::span<const int> ids_, Index batch_, Index seq_)
      : ids(ids_), batch(batch_), seq(seq_) {}
};

// Images [batch x channels x height x width], row-major (NCHW), in one flat buffer.
template <class S>
struct ImageBatch {
  std::span<const S> pixels;  // [batch * channels * height * width]
  Index batch = 0;
  Index channels = 0;
  Index height = 0;
  Index width = 0;
};

namespace detail {

// The keep-tied head's input: u [N x d] = gamma * decompress(x) + beta, for
// the normalized main branch x [N x m] (m = d - 1: x_d = -sum(x); m = d: x).
// gamma, beta (d): the final LayerNorm's affine, folded out of the blocks.
// This is the converter's head transform seen from the activations
// (branch::read_input), applied per token.
template <class S>
void tied_head_input(const ConstRowsRef<S>& x, const Vector<S>& gamma, const Vector<S>& beta,
                     RowsRef<S> u) {
  for_each_row(x.rows(), u.cols(), [&](Index r) { branch::read_input(x.row(r), gamma, beta, u.row(r)); });
}

}  // namespace detail

template <Arch A, class S>
class Transformer {
 public:
  using Scalar = S;
  using Block = PreNormBlock<A, S>;
  static constexpr Arch arch = A;
  // Called with -1 after the stem and with i after block i, on the main
  // branch h [tokens x main] (residual adds complete).
  using BlockHook = std::function<void(Index, const RowMatrix<S>&)>;

  TransformerConfig config;
  // Stem::Tokens (empty otherwise)
  Embedding<S> token_embedding;     // (vocab, main); (vocab, d) when tied_affine()
  // Tokens: (context + position_offset, main), or (0, main) without learned positions.
  // Patches: (tokens, embed); row 0 is the class token's.
  Embedding<S> position_embedding;
  // Stem::Patches (empty otherwise); e: embed_width()
  Linear<S> patch;                  // (embed, C*p*p), bias (embed)
  Vector<S> cls_token;              // (embed)
  Vector<S> distillation_token;     // (embed) with config.distillation_token, else empty
  Vector<S> stem_gamma;             // (d) with config.stem_norm, else empty (every architecture)
  Vector<S> stem_beta;              // (d) with config.stem_norm
  std::vector<Block> blocks;        // [layers]
  Vector<S> final_gamma;            // (d), PreLN only (empty otherwise)
  Vector<S> final_beta;             // (d), PreLN only
  Vector<S> tied_gamma;             // (d), tied_affine() only: the folded final norm affine
  Vector<S> tied_beta;              // (d), tied_affine() only
  // TokenLogits: (vocab, main) without bias, or (0 x 0) when tied.
  // Pooled: (classes, pooled_parts * main), bias (classes).
  Linear<S> head;
  Vector<S> head_bias;              // (vocab) when config.head_bias, else empty

  // Zero weights of the right shapes; gammas (stem, final, blocks, tied) are 1.
  explicit Transformer(const TransformerConfig& config_) : config(config_) {
    config.validate("Transformer");
    const Index d = config.width, m = main(), e = embed_width();
    if (config.stem == Stem::Tokens) {
      token_embedding = Embedding<S>(config.vocab, tied_affine() ? d : m);
      position_embedding = Embedding<S>(config.position_rows(), m);
    } else {
      patch = Linear<S>(config.patch_features(), e);
      cls_token.setZero(e);
      if (config.distillation_token) distillation_token.setZero(e);
      position_embedding = Embedding<S>(config.tokens(), e);
      if (config.stem_norm) {
        stem_gamma.setOnes(d);
        stem_beta.setZero(d);
      }
    }
    blocks.reserve(config.layers);
    for (Index i = 0; i < config.layers; ++i) blocks.push_back(make_block(i));
    if (ArchTraits<A>::affine) {
      final_gamma.setOnes(d);
      final_beta.setZero(d);
    }
    if (tied_affine()) {
      tied_gamma.setOnes(d);
      tied_beta.setZero(d);
    }
    if (config.head == Head::Pooled) head = Linear<S>(config.pooled_parts() * m, config.classes);
    else if (!config.tied) head = Linear<S>(m, config.vocab, /*with_bias=*/false);
    if (config.head_bias) head_bias.setZero(config.vocab);
  }

  // Block `layer` as the constructor makes it: zero weights, the config's
  // attention options (for that layer) and topology. A reader that holds one
  // block at a time (convert/streaming.hpp) makes its blocks with it.
  Block make_block(Index layer) const {
    Block b(config.width, config.heads, config.head_size(), config.mlp_width, config.causal,
            config.activation, S(config.epsilon));
    set_attention_options(b.attn, layer);
    b.set_topology(config.topology);
    return b;
  }

  Index width() const { return config.width; }                 // d
  Index main() const { return ArchTraits<A>::main_width(config.width); }  // d, or d-1 for PreCRMSNorm
  // Whether the tied table is the original (vocab, d) one, transformed on the fly.
  bool tied_affine() const {
    return config.tied && (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm);
  }
  // Width of a patch stem's embeddings: the main branch's, or d when a stem norm reads them.
  Index embed_width() const { return config.stem_norm ? config.width : main(); }

  // Random weights, deterministic in seed: linear weights and embeddings
  // N(0, stddev) (a token stem's positions N(0, stddev / 2)), the residual
  // output projections N(0, stddev / sqrt(2 layers)), biases 0, gammas 1,
  // betas 0. With random_affine, biases, betas and gamma - 1 are N(0, 0.1)
  // instead, so that tests exercise them.
  void init_random(std::uint64_t seed, double stddev = 0.02, bool random_affine = false) {
    std::mt19937_64 rng(seed);
    const auto fill = [&](auto& t, double scale, double offset) {
      detail::random_fill(t, rng, scale, offset);
    };
    const double proj_std = stddev / std::sqrt(2.0 * double(std::max<Index>(config.layers, 1)));
    const double affine = random_affine ? 0.1 : 0.0;
    if (config.stem == Stem::Tokens) {
      fill(token_embedding.table, stddev, 0);
      fill(position_embedding.table, stddev / 2, 0);
    } else {
      fill(patch.weight, stddev, 0);
      fill(patch.bias, affine, 0);
      fill(cls_token, stddev, 0);
      fill(distillation_token, stddev, 0);
      fill(position_embedding.table, stddev, 0);
      fill(stem_gamma, affine, 1);
      fill(stem_beta, affine, 0);
    }
    for (Block& b : blocks) detail::init_block_random(b, rng, stddev, proj_std, affine);
    fill(final_gamma, affine, 1);
    fill(final_beta, affine, 0);
    fill(tied_gamma, affine, 1);
    fill(tied_beta, affine, 0);
    fill(head.weight, stddev, 0);
    fill(head.bias, affine, 0);
    fill(head_bias, affine, 0);
  }

  // Calls f(name, tensor) for every tensor of the model's stem and head kinds
  // (RowMatrix<S>& or Vector<S>&, empty ones included), in a fixed order;
  // names as in validate() messages.
  template <class F>
  void visit_parameters(F&& f) {
    visit_impl(*this, f);
  }
  template <class F>
  void visit_parameters(F&& f) const {
    visit_impl(*this, f);
  }

  // Throws prenorm::Error naming the first tensor whose shape does not match
  // the config and architecture, e.g. "prenorm::Transformer::validate:
  // blocks[3].attn.qkv.weight is (2304 x 768), expected (2304 x 767)".
  void validate(const char* op = "Transformer::validate") const {
    config.validate(op);
    const Index d = config.width, m = main(), e = embed_width();
    const bool tokens = config.stem == Stem::Tokens;
    token_embedding.validate(op, "token_embedding", tokens ? config.vocab : 0,
                             tokens ? (tied_affine() ? d : m) : 0);
    if (tokens) {
      position_embedding.validate(op, "position_embedding", config.position_rows(), m);
      patch.validate(op, "patch", 0, 0);
    } else {
      if (position_embedding.rows() != config.tokens() || position_embedding.width() != e)
        detail::fail(op, "position_embedding is (", position_embedding.rows(), " x ",
                     position_embedding.width(), "), expected (", config.tokens(), " x ", e, ")");
      patch.validate(op, "patch", config.patch_features(), e);
    }
    check_vector(op, "cls_token", cls_token, tokens ? 0 : e);
    check_vector(op, "distillation_token", distillation_token,
                 !tokens && config.distillation_token ? e : 0);
    check_vector(op, "stem_gamma", stem_gamma, !tokens && config.stem_norm ? d : 0);
    check_vector(op, "stem_beta", stem_beta, !tokens && config.stem_norm ? d : 0);
    if (Index(blocks.size()) != config.layers)
      detail::fail(op, "blocks has ", blocks.size(), " blocks, expected ", config.layers, " (layers)");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto name = [i] { return "blocks[" + std::to_string(i) + "]"; };
      const Block& b = blocks[i];
      if (b.width != d) detail::fail(op, name(), ".width is ", b.width, ", expected ", d);
      if (b.attn.causal != config.causal)
        detail::fail(op, name(), ".attn.causal is ", b.attn.causal ? "true" : "false",
                     ", expected ", config.causal ? "true" : "false");
      check_attention_options(op, name, b.attn, Index(i));
      if (b.topology != config.topology)
        detail::fail(op, name(), ".topology is ", topology_name(b.topology), ", expected ",
                     topology_name(config.topology), " (the config's)");
      b.validate(op, name, config.heads, config.head_size(), config.mlp_width);
    }
    check_vector(op, "final_gamma", final_gamma, ArchTraits<A>::affine ? d : 0);
    check_vector(op, "final_beta", final_beta, ArchTraits<A>::affine ? d : 0);
    check_vector(op, "tied_gamma", tied_gamma, tied_affine() ? d : 0);
    check_vector(op, "tied_beta", tied_beta, tied_affine() ? d : 0);
    if (config.head == Head::Pooled) {
      head.validate(op, "head", config.pooled_parts() * m, config.classes);
    } else if (config.tied) {
      if (head.weight.size() != 0)
        detail::fail(op, "head.weight is (", head.weight.rows(), " x ", head.weight.cols(),
                     "), expected (0 x 0): the head is tied to token_embedding");
      check_vector(op, "head.bias", head.bias, 0);
    } else {
      head.validate(op, "head", m, config.vocab);
      check_vector(op, "head.bias", head.bias, 0);
    }
    check_vector(op, "head_bias", head_bias, config.head_bias ? config.vocab : 0);
  }

  // Logits of every position, [batch*seq x vocab] (row b*seq + t is sequence
  // b, position t), of a token-stem model. A convenience that runs a Session
  // of its own (and so allocates): for repeated calls, decoding or hooks on a
  // hot path, keep a Session (models/session.hpp), which owns every buffer.
  RowMatrix<S> forward(const TokenBatch& tokens) const;
  RowMatrix<S> forward(const TokenBatch& tokens, const BlockHook& hook) const;
  // The same from a batch of sequences, which must all have the same length.
  RowMatrix<S> forward(const std::vector<std::vector<int>>& batch) const;
  RowMatrix<S> forward(const std::vector<std::vector<int>>& batch, const BlockHook& hook) const;
  // Outputs [batch x classes] of images [batch x C x H x W], of a patch-stem model.
  RowMatrix<S> forward(const ImageBatch<S>& images) const;
  RowMatrix<S> forward(const ImageBatch<S>& images, const BlockHook& hook) const;
  // The same of pre-flattened patches [batch*patches x C*p*p] (image b is rows
  // [b*patches, (b+1)*patches), each row in (c, ky, kx) order).
  RowMatrix<S> forward_patches(const ConstRowsRef<S>& patches) const;

  // Throws unless the model has the stem `stem`; op names the caller.
  void check_stem(const char* op, Stem stem) const {
    if (config.stem != stem)
      detail::fail(op, "the model's stem is ", stem_name(config.stem), ", expected ",
                   stem_name(stem), stem == Stem::Tokens ? " (a token input)" : " (an image input)");
  }

  // Checks stem, shape, length (positions [past, past+seq) within the
  // context) and ids; op names the caller in the message.
  void check_tokens(const char* op, const TokenBatch& t, Index past) const {
    check_stem(op, Stem::Tokens);
    if (t.batch < 0 || t.seq < 0 || Index(t.ids.size()) != t.batch * t.seq)
      detail::fail(op, "the token batch has ", t.ids.size(), " ids, expected batch ", t.batch,
                   " x seq ", t.seq);
    if (past + t.seq > config.context) {
      if (past == 0)
        detail::fail(op, "sequence length ", t.seq, " exceeds the context ", config.context);
      detail::fail(op, "positions [", past, ", ", past + t.seq, ") exceed the context ",
                   config.context);
    }
    for (Index i = 0; i < Index(t.ids.size()); ++i)
      if (t.ids[i] < 0 || t.ids[i] >= config.vocab)
        detail::fail(op, "token id ", t.ids[i], " at sequence ", i / t.seq, ", position ",
                     past + i % t.seq, " is out of range [0, ", config.vocab, ")");
  }

  // patches [batch*patches x C*p*p] of images [batch x C x H x W] (checked against the config).
  void patchify(const ImageBatch<S>& images, RowMatrix<S>& patches) const {
    check_images("Transformer::patchify", images);
    patches.resize(images.batch * config.patches(), config.patch_features());
    extract_patches(images, patches.data(), 0);
  }

  // Throws unless the model has a patch stem and the images fit it (channels,
  // size); op names the caller.
  void check_images(const char* op, const ImageBatch<S>& im) const {
    check_stem(op, Stem::Patches);
    const Index p = config.patch_size, n = config.image_size;
    if (im.batch < 0 || im.channels < 0 || im.height < 0 || im.width < 0 ||
        Index(im.pixels.size()) != im.batch * im.channels * im.height * im.width)
      detail::fail(op, "the image buffer has ", im.pixels.size(), " values, expected batch ",
                   im.batch, " x channels ", im.channels, " x height ", im.height, " x width ",
                   im.width);
    if (im.channels != config.channels)
      detail::fail(op, "images have ", im.channels, " channels, expected ", config.channels);
    if (im.height % p != 0 || im.width % p != 0)
      detail::fail(op, "image size ", im.height, " x ", im.width,
                   " is not divisible by the patch size ", p);
    if (im.height != n || im.width != n)
      detail::fail(op, "image size ", im.height, " x ", im.width, ", expected ", n, " x ", n,
                   " (the position embedding covers ", config.grid(), " x ", config.grid(),
                   " patches)");
  }

  // Writes the patches of image b to rows b*(patches + skip) + skip + i of out
  // (row length C*p*p), for i the patch index.
  void extract_patches(const ImageBatch<S>& im, S* out, Index skip) const {
    const Index p = config.patch_size, C = im.channels, H = im.height, W = im.width;
    const Index G = config.grid(), P = config.patches(), F = config.patch_features();
    const Index per_image = P + skip;
    detail::for_each_row(im.batch * P, F, [&](Index r) {
      const Index b = r / P, i = r % P, py = i / G, px = i % G;
      S* dst = out + (b * per_image + skip + i) * F;
      for (Index c = 0; c < C; ++c)
        for (Index ky = 0; ky < p; ++ky) {
          const S* src = im.pixels.data() + ((b * C + c) * H + py * p + ky) * W + px * p;
          std::copy(src, src + p, dst + (c * p + ky) * p);
        }
    });
  }

 private:
  // Gives attn (plain, from the block's constructor) the config's options for layer i.
  void set_attention_options(MultiHeadAttention<S>& attn, Index layer) const {
    if (config.kv_head_count() != config.heads)  // fewer key/value rows in qkv
      attn = MultiHeadAttention<S>(attn.width(), config.heads, config.head_size(), config.causal,
                                   /*bias=*/true, config.kv_heads);
    attn.rotary = config.rotary;
    attn.alibi = config.alibi;
    attn.score_scale = config.score_scale;
    attn.window = config.layer_window(layer);
  }

  // Throws unless block i's attention has the config's options for layer i.
  template <class Name>
  void check_attention_options(const char* op, const Name& name, const MultiHeadAttention<S>& a,
                               Index i) const {
    const Rotary& r = a.rotary;
    const Rotary& e = config.rotary;
    const auto fail = [&](auto&&... parts) { detail::fail(op, name(), ".attn.", parts...); };
    if (a.kv_head_count() != config.kv_head_count())
      fail("kv_heads is ", a.kv_head_count(), ", expected ", config.kv_head_count(), " (kv_heads)");
    if (!(r == e))
      fail("rotary is {dims ", r.dims, ", ", rotary_pairing_name(r.pairing), ", base ", r.base,
           "}, expected {dims ", e.dims, ", ", rotary_pairing_name(e.pairing), ", base ", e.base,
           "} (rotary)");
    if (a.alibi != config.alibi)
      fail("alibi is ", a.alibi ? "true" : "false", ", expected ", config.alibi ? "true" : "false",
           " (alibi)");
    if (a.score_scale != config.score_scale)
      fail("score_scale is ", a.score_scale, ", expected ", config.score_scale, " (score_scale)");
    if (a.window != config.layer_window(i))
      fail("window is ", a.window, ", expected ", config.layer_window(i), " (window ",
           config.window, " every ", config.window_period, " layers)");
  }

  static void check_vector(const char* op, const char* name, const Vector<S>& v, Index expected) {
    if (v.size() != expected)
      detail::fail(op, name, " has ", v.size(), " elements, expected ", expected);
  }

  // The order (and the names) are those the prenorm layout saves: a token
  // model's as GPT's always were, a patch model's as ViT's.
  template <class Self, class F>
  static void visit_impl(Self& self, F& f) {
    const auto blocks = [&] {
      for (std::size_t i = 0; i < self.blocks.size(); ++i)
        visit_block_parameters("blocks[" + std::to_string(i) + "].", self.blocks[i], f);
    };
    if (self.config.stem == Stem::Tokens) {
      f(std::string("token_embedding.table"), self.token_embedding.table);
      f(std::string("position_embedding.table"), self.position_embedding.table);
      blocks();
      f(std::string("final_gamma"), self.final_gamma);
      f(std::string("final_beta"), self.final_beta);
      f(std::string("tied_gamma"), self.tied_gamma);
      f(std::string("tied_beta"), self.tied_beta);
      f(std::string("head.weight"), self.head.weight);
      f(std::string("head_bias"), self.head_bias);
    } else {
      f(std::string("patch.weight"), self.patch.weight);
      f(std::string("patch.bias"), self.patch.bias);
      f(std::string("cls_token"), self.cls_token);
      f(std::string("position_embedding"), self.position_embedding.table);
      blocks();
      f(std::string("final_gamma"), self.final_gamma);
      f(std::string("final_beta"), self.final_beta);
      f(std::string("head.weight"), self.head.weight);
      f(std::string("head.bias"), self.head.bias);
      // The encoder options' tensors last, so that a plain ViT (where they are
      // empty) visits, and saves, its tensors in the order it always had.
      f(std::string("distillation_token"), self.distillation_token);
      f(std::string("stem_gamma"), self.stem_gamma);
      f(std::string("stem_beta"), self.stem_beta);
    }
  }
};

}  // namespace prenorm

// The forward pass lives with the state it needs, in the session.
#include "session.hpp"
