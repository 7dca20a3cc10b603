#pragma once
// ViT: an encoder-only Pre-Norm transformer over image patches.
//   e = [cls_token; (distillation_token;) patch(patches)] + position_embedding
//   h = e, or with config.stem_norm h = Stem(e) = LN(e) stem_gamma + stem_beta
//       (centered, and compressed for Pre-CRMSNorm: the stream must be zero-mean);
//   blocks (bidirectional);  logits = head(pool(NormF(h)))
// pool (config.pooling): the cls row; the cls and distillation rows side by
// side; the cls row beside the mean of the patch rows.
// A patch is flattened in the order (channel, ky, kx), i.e. a PyTorch/HF conv
// weight (main, C, p, p) reshaped to (main, C*p*p); patches are numbered row by
// row over the grid (py * grid + px), as HF's flatten(2).
// Vit holds the parameters; the forward pass and its state are a
// VitSession's (vit_session.hpp).

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
#include "../layers/linear.hpp"
#include "../ops/arch_traits.hpp"
#include "config.hpp"

namespace prenorm {

// Images [batch x channels x height x width], row-major (NCHW), in one flat buffer.
template <class S>
struct ImageBatch {
  std::span<const S> pixels;  // [batch * channels * height * width]
  Index batch = 0;
  Index channels = 0;
  Index height = 0;
  Index width = 0;
};

template <Arch A, class S>
class Vit {
 public:
  using Scalar = S;
  using Block = PreNormBlock<A, S>;
  static constexpr Arch arch = A;
  // Called with -1 after the embeddings and with i after block i, on the main
  // branch h [batch*tokens x main] (residual adds complete).
  using BlockHook = std::function<void(Index, const RowMatrix<S>&)>;

  VitConfig config;
  // e: the embeddings, embed = main, or d with a stem norm (which they feed).
  Linear<S> patch;                  // (embed, C*p*p), bias (embed)
  Vector<S> cls_token;              // (embed)
  Vector<S> distillation_token;     // (embed) with config.distillation_token, else empty
  RowMatrix<S> position_embedding;  // (tokens, embed); row 0 is the cls token's
  Vector<S> stem_gamma;             // (d) with config.stem_norm, else empty (every architecture)
  Vector<S> stem_beta;              // (d) with config.stem_norm
  std::vector<Block> blocks;        // [layers]
  Vector<S> final_gamma;            // (d), PreLN only (empty otherwise)
  Vector<S> final_beta;             // (d), PreLN only
  Linear<S> head;                   // (classes, pooled_parts * main), bias (classes)

  // Zero weights of the right shapes; gammas 1.
  explicit Vit(const VitConfig& config_) : config(config_) {
    config.validate("Vit");
    const Index d = config.width, e = embed_width();
    patch = Linear<S>(config.patch_features(), e);
    cls_token.setZero(e);
    if (config.distillation_token) distillation_token.setZero(e);
    position_embedding.setZero(config.tokens(), e);
    if (config.stem_norm) {
      stem_gamma.setOnes(d);
      stem_beta.setZero(d);
    }
    blocks.reserve(config.layers);
    for (Index i = 0; i < config.layers; ++i) {
      blocks.emplace_back(d, config.heads, config.head_size(), config.mlp_width, /*causal=*/false,
                          config.activation, S(config.epsilon));
      blocks.back().set_topology(config.topology);
    }
    if (ArchTraits<A>::affine) {
      final_gamma.setOnes(d);
      final_beta.setZero(d);
    }
    head = Linear<S>(config.pooled_parts() * main(), config.classes);
  }

  Index width() const { return config.width; }                 // d
  Index main() const { return ArchTraits<A>::main_width(config.width); }  // d, or d-1 for PreCRMSNorm
  // Width of the embeddings: the main branch's, or d when a stem norm reads them.
  Index embed_width() const { return config.stem_norm ? config.width : main(); }

  // Random weights, deterministic in seed: weights and embeddings N(0, stddev),
  // residual output projections N(0, stddev / sqrt(2 layers)), biases 0,
  // gammas 1, betas 0; with random_affine, biases, betas, gamma - 1 N(0, 0.1).
  void init_random(std::uint64_t seed, double stddev = 0.02, bool random_affine = false) {
    std::mt19937_64 rng(seed);
    const auto fill = [&](auto& t, double scale, double offset) {
      detail::random_fill(t, rng, scale, offset);
    };
    const double proj_std = stddev / std::sqrt(2.0 * double(std::max<Index>(config.layers, 1)));
    const double affine = random_affine ? 0.1 : 0.0;
    fill(patch.weight, stddev, 0);
    fill(patch.bias, affine, 0);
    fill(cls_token, stddev, 0);
    fill(distillation_token, stddev, 0);
    fill(position_embedding, stddev, 0);
    fill(stem_gamma, affine, 1);
    fill(stem_beta, affine, 0);
    for (Block& b : blocks) detail::init_block_random(b, rng, stddev, proj_std, affine);
    fill(final_gamma, affine, 1);
    fill(final_beta, affine, 0);
    fill(head.weight, stddev, 0);
    fill(head.bias, affine, 0);
  }

  // Calls f(name, tensor) for every tensor (RowMatrix<S>& or Vector<S>&, empty
  // ones included), in a fixed order; names as in validate() messages.
  template <class F>
  void visit_parameters(F&& f) {
    visit_impl(*this, f);
  }
  template <class F>
  void visit_parameters(F&& f) const {
    visit_impl(*this, f);
  }

  // Throws prenorm::Error naming the first tensor whose shape does not match
  // the config and architecture.
  void validate(const char* op = "Vit::validate") const {
    config.validate(op);
    const Index d = config.width, m = main(), e = embed_width();
    patch.validate(op, "patch", config.patch_features(), e);
    check_vector(op, "cls_token", cls_token, e);
    check_vector(op, "distillation_token", distillation_token, config.distillation_token ? e : 0);
    if (position_embedding.rows() != config.tokens() || position_embedding.cols() != e)
      detail::fail(op, "position_embedding is (", position_embedding.rows(), " x ",
                   position_embedding.cols(), "), expected (", config.tokens(), " x ", e, ")");
    check_vector(op, "stem_gamma", stem_gamma, config.stem_norm ? d : 0);
    check_vector(op, "stem_beta", stem_beta, config.stem_norm ? d : 0);
    if (Index(blocks.size()) != config.layers)
      detail::fail(op, "blocks has ", blocks.size(), " blocks, expected ", config.layers, " (layers)");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto name = [i] { return "blocks[" + std::to_string(i) + "]"; };
      const Block& b = blocks[i];
      if (b.width != d) detail::fail(op, name(), ".width is ", b.width, ", expected ", d);
      if (b.attn.causal) detail::fail(op, name(), ".attn.causal is true, expected false");
      if (b.topology != config.topology)
        detail::fail(op, name(), ".topology is ", topology_name(b.topology), ", expected ",
                     topology_name(config.topology), " (the config's)");
      b.validate(op, name, config.heads, config.head_size(), config.mlp_width);
    }
    check_vector(op, "final_gamma", final_gamma, ArchTraits<A>::affine ? d : 0);
    check_vector(op, "final_beta", final_beta, ArchTraits<A>::affine ? d : 0);
    head.validate(op, "head", config.pooled_parts() * m, config.classes);
  }

  // Logits [batch x classes] of images [batch x C x H x W]. A convenience
  // that runs a VitSession of its own (and so allocates): for repeated calls
  // keep a VitSession (models/vit_session.hpp), which owns every buffer.
  RowMatrix<S> forward(const ImageBatch<S>& images) const;
  RowMatrix<S> forward(const ImageBatch<S>& images, const BlockHook& hook) const;
  // Logits [batch x classes] of pre-flattened patches [batch*patches x C*p*p]
  // (image b is rows [b*patches, (b+1)*patches), each row in (c, ky, kx) order).
  RowMatrix<S> forward_patches(const ConstRowsRef<S>& patches) const;

  // patches [batch*patches x C*p*p] of images [batch x C x H x W] (checked against the config).
  void patchify(const ImageBatch<S>& images, RowMatrix<S>& patches) const {
    check_images("Vit::patchify", images);
    patches.resize(images.batch * config.patches(), config.patch_features());
    extract_patches(images, patches.data(), 0);
  }

  // Throws unless the images fit the config (channels, size); op names the caller.
  void check_images(const char* op, const ImageBatch<S>& im) const {
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
  static void check_vector(const char* op, const char* name, const Vector<S>& v, Index expected) {
    if (v.size() != expected)
      detail::fail(op, name, " has ", v.size(), " elements, expected ", expected);
  }

  template <class Self, class F>
  static void visit_impl(Self& self, F& f) {
    f(std::string("patch.weight"), self.patch.weight);
    f(std::string("patch.bias"), self.patch.bias);
    f(std::string("cls_token"), self.cls_token);
    f(std::string("position_embedding"), self.position_embedding);
    for (std::size_t i = 0; i < self.blocks.size(); ++i)
      visit_block_parameters("blocks[" + std::to_string(i) + "].", self.blocks[i], f);
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
};

}  // namespace prenorm

// The forward pass lives with the state it needs, in the session.
#include "vit_session.hpp"
