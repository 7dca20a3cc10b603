#pragma once
// ViT: an encoder-only Pre-Norm transformer over image patches.
//   h = [cls_token; patch(patches)] + position_embedding;  blocks (bidirectional);
//   logits = head(NormF(h_cls))
// A patch is flattened in the order (channel, ky, kx), i.e. a PyTorch/HF conv
// weight (main, C, p, p) reshaped to (main, C*p*p); patches are numbered row by
// row over the grid (py * grid + px), as HF's flatten(2).

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
  // branch h [batch*(1+patches) x main] (residual adds complete).
  using BlockHook = std::function<void(Index, const RowMatrix<S>&)>;

  VitConfig config;
  Linear<S> patch;                  // (main, C*p*p), bias (main)
  Vector<S> cls_token;              // (main)
  RowMatrix<S> position_embedding;  // (1 + patches, main); row 0 is the cls token's
  std::vector<Block> blocks;        // [layers]
  Vector<S> final_gamma;            // (d), PreLN only (empty otherwise)
  Vector<S> final_beta;             // (d), PreLN only
  Linear<S> head;                   // (classes, main), bias (classes)

  // Zero weights of the right shapes; gammas 1.
  explicit Vit(const VitConfig& config_) : config(config_) {
    config.validate("Vit");
    const Index d = config.width, m = main();
    patch = Linear<S>(config.patch_features(), m);
    cls_token.setZero(m);
    position_embedding.setZero(config.tokens(), m);
    blocks.reserve(config.layers);
    for (Index i = 0; i < config.layers; ++i)
      blocks.emplace_back(d, config.heads, config.head_size(), config.mlp_width, /*causal=*/false,
                          config.activation, S(config.epsilon));
    if (has_norm_affine(A)) {
      final_gamma.setOnes(d);
      final_beta.setZero(d);
    }
    head = Linear<S>(m, config.classes);
  }

  Index width() const { return config.width; }                 // d
  Index main() const { return main_width_of(A, config.width); }  // d, or d-1 for PreCRMSNorm

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
    fill(position_embedding, stddev, 0);
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
    const Index d = config.width, m = main();
    patch.validate(op, "patch", config.patch_features(), m);
    check_vector(op, "cls_token", cls_token, m);
    if (position_embedding.rows() != config.tokens() || position_embedding.cols() != m)
      detail::fail(op, "position_embedding is (", position_embedding.rows(), " x ",
                   position_embedding.cols(), "), expected (", config.tokens(), " x ", m, ")");
    if (Index(blocks.size()) != config.layers)
      detail::fail(op, "blocks has ", blocks.size(), " blocks, expected ", config.layers, " (layers)");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto name = [i] { return "blocks[" + std::to_string(i) + "]"; };
      const Block& b = blocks[i];
      if (b.width != d) detail::fail(op, name(), ".width is ", b.width, ", expected ", d);
      if (b.attn.causal) detail::fail(op, name(), ".attn.causal is true, expected false");
      b.validate(op, name, config.heads, config.head_size(), config.mlp_width);
    }
    check_vector(op, "final_gamma", final_gamma, has_norm_affine(A) ? d : 0);
    check_vector(op, "final_beta", final_beta, has_norm_affine(A) ? d : 0);
    head.validate(op, "head", m, config.classes);
  }

  // Logits [batch x classes] of images [batch x C x H x W], valid until the
  // next call. No allocation after the first call for a given batch size.
  const RowMatrix<S>& forward(const ImageBatch<S>& images) { return forward_images(images, nullptr); }
  const RowMatrix<S>& forward(const ImageBatch<S>& images, const BlockHook& hook) {
    return forward_images(images, &hook);
  }

  // Logits [batch x classes] of pre-flattened patches [batch*patches x C*p*p]
  // (image b is rows [b*patches, (b+1)*patches), each row in (c, ky, kx) order).
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches) {
    return forward_patches_impl(patches, nullptr);
  }
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches, const BlockHook& hook) {
    return forward_patches_impl(patches, &hook);
  }

  // patches [batch*patches x C*p*p] of images [batch x C x H x W] (checked against the config).
  void patchify(const ImageBatch<S>& images, RowMatrix<S>& patches) const {
    check_images("Vit::patchify", images);
    patches.resize(images.batch * config.patches(), config.patch_features());
    extract_patches(images, patches.data(), 0);
  }

  // The main branch h [batch*(1+patches) x main] after the last forward. Without
  // a hook, the last MLP's residual add reaches the cls rows only.
  const RowMatrix<S>& main_branch() const { return h_; }
  // The normalized cls rows NormF(h_cls) [batch x main] the head read (NoNorm: h_cls).
  const RowMatrix<S>& hidden() const { return x_cls_; }

 private:
  BlockWorkspace<S> workspace_;
  RowMatrix<S> patches_;  // [batch*(1+patches) x C*p*p]; the cls rows are zero
  RowMatrix<S> h_, x_;    // [batch*(1+patches) x main]
  RowMatrix<S> branch_;   // [batch*(1+patches) x branch_width()]: a branch output in its first main columns
  RowMatrix<S> x_cls_;    // [batch x main]
  RowMatrix<S> logits_;   // [batch x classes]

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
  }

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

  // Writes the patches of image b to rows b*stride_images + skip + i of out
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

  const RowMatrix<S>& forward_images(const ImageBatch<S>& images, const BlockHook* hook) {
    constexpr const char* op = "Vit::forward";
    check_images(op, images);
    validate(op);
    const Index B = images.batch;
    patches_.resize(B * config.tokens(), config.patch_features());
    for (Index b = 0; b < B; ++b) patches_.row(b * config.tokens()).setZero();
    extract_patches(images, patches_.data(), 1);
    run(B, hook);
    return logits_;
  }

  const RowMatrix<S>& forward_patches_impl(const ConstRowsRef<S>& patches, const BlockHook* hook) {
    constexpr const char* op = "Vit::forward_patches";
    const Index P = config.patches(), F = config.patch_features();
    if (patches.cols() != F || patches.rows() % P != 0)
      detail::fail(op, "patches is ", patches.rows(), " x ", patches.cols(),
                   ", expected (batch*", P, ") x ", F, " (batch*patches x C*p*p)");
    validate(op);
    const Index B = patches.rows() / P, T = config.tokens();
    patches_.resize(B * T, F);
    for (Index b = 0; b < B; ++b) {
      patches_.row(b * T).setZero();
      patches_.middleRows(b * T + 1, P) = patches.middleRows(b * P, P);
    }
    run(B, hook);
    return logits_;
  }

  // Strided view of the cls rows (row b*(1+patches)) of a [batch*(1+patches) x main] buffer.
  Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> cls_rows(RowMatrix<S>& m) const {
    return {m.data(), m.rows() / config.tokens(), m.cols(),
            Eigen::OuterStride<>(config.tokens() * m.cols())};
  }

  // From patches_ (cls rows zero) to logits_.
  void run(Index B, const BlockHook* hook) {
    const Index T = config.tokens(), N = B * T, m = main();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, blocks.empty() ? m : blocks[0].branch_width());
    x_cls_.resize(B, m);
    logits_.resize(B, config.classes);
    if (N == 0) return;

    // h = patch linear of every row (one GEMM; the zero cls rows cost 1/T),
    // then the cls token and the positions. The product goes through branch_,
    // which is wide enough for it to run padded where that pays (Pre-CRMSNorm).
    patch.forward_padded(patches_, branch_);
    detail::for_each_row(N, m, [&](Index r) {
      const Index t = r % T;
      if (t == 0) h_.row(r) = cls_token.transpose() + position_embedding.row(0);
      else h_.row(r) = branch_.row(r).head(m) + position_embedding.row(t);
    });
    if (hook) (*hook)(-1, h_);

    const Index L = Index(blocks.size());
    if (L > 0) blocks[0].norm1(h_, x_);
    for (Index i = 0; i < L; ++i) {
      blocks[i].forward_fused(h_, x_, branch_, B, workspace_);
      if (hook) {
        h_ += branch_.leftCols(m);
        (*hook)(i, h_);
        if (i + 1 < L) blocks[i + 1].norm1(h_, x_);
      } else if (i + 1 < L) {
        blocks[i + 1].add_norm1(h_, branch_.leftCols(m), x_);
      }
    }
    // The head reads the cls rows only: the last add and the final norm touch only them.
    const auto h_cls = cls_rows(h_);
    const S eps = S(config.epsilon);
    if (L > 0 && !hook)
      pre_norm_add_forward<A>(h_cls, cls_rows(branch_).leftCols(m), final_gamma, final_beta, x_cls_, eps);
    else
      pre_norm_forward<A>(h_cls, final_gamma, final_beta, x_cls_, eps);
    if constexpr (A == Arch::NoNorm) x_cls_ = h_cls;  // no norm: the head reads h
    head.forward_padded(x_cls_, logits_);
  }
};

}  // namespace prenorm
