#pragma once
// Training forward and backward of a ViT: softmax cross-entropy over classes,
// read from the cls token.
//
//   h_0 = [cls_token; patch(patches)] + position_embedding;  blocks (bidirectional);
//   logits = head(NormF(h_L[cls rows]));  loss = mean CE(logits, labels)
//
// VitTrainEngine holds the activations and scratch (no allocation after the
// first step for a given shape); gradients go into a Vit<A, S> of the same
// configuration.

#include <Eigen/Core>

#include <span>
#include <vector>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../models/vit.hpp"
#include "block_backward.hpp"
#include "layers_backward.hpp"
#include "loss.hpp"

namespace prenorm {

// Images and their class labels [batch] (negative: not counted).
template <class S>
struct VitBatch {
  ImageBatch<S> images;
  std::span<const int> labels;
};

template <Arch A, class S>
class VitTrainEngine {
 public:
  using Model = Vit<A, S>;
  using Batch = VitBatch<S>;

  NormClock norm_clock;

  // Forward and backward of the mean cross-entropy; every parameter gradient
  // is written into grads (a model of the same config). Returns the loss.
  double forward_backward(const Model& model, const Batch& batch, Model& grads) {
    constexpr const char* op = "VitTrainEngine::forward_backward";
    check_grads(op, model, grads);
    forward(op, model, batch);
    const Index B = batch.images.batch, T = model.config.tokens(), N = B * T, P = model.config.patches();
    const Index m = model.main(), L = Index(model.blocks.size());
    const double loss = softmax_cross_entropy_forward_backward<S>(
        logits_, batch.labels, ce_, model.head.bias, grads.head.bias.size() ? &grads.head.bias : nullptr);
    // Head: the bias gradient came from the cross-entropy pass.
    grads.head.weight.noalias() = logits_.transpose() * x_cls_;
    dx_cls_.resize(B, m);
    dx_cls_.noalias() = logits_ * model.head.weight;
    // Final norm on the cls rows; the other rows of h_L get no gradient.
    dh_.setZero(N, m);
    norm_clock.time([&] {
      auto dh_cls = cls_rows(dh_, T);
      auto h_cls = cls_rows(h_[L], T);
      norm_backward_train<A, S>(dx_cls_, h_cls, model.final_gamma, final_saved_, dh_cls,
                                grads.final_gamma, grads.final_beta, GradWrite::Overwrite);
    });
    for (Index l = L - 1; l >= 0; --l)
      block_backward<A, S>(model.blocks[l], h_[l], B, acts_[l], grads.blocks[l], dh_, bws_,
                           norm_clock);
    // Embeddings: positions (every image), cls token (row 0 of each image),
    // patch linear (the patch rows).
    grads.position_embedding.setZero();
    grads.cls_token.setZero();
    dpatch_.resize(B * P, m);
    for (Index b = 0; b < B; ++b) {
      grads.position_embedding += dh_.middleRows(b * T, T);
      grads.cls_token += dh_.row(b * T).transpose();
      dpatch_.middleRows(b * P, P) = dh_.middleRows(b * T + 1, P);
    }
    linear_backward<S>(dpatch_, patches_, model.patch, grads.patch);
    return loss;
  }

  // The mean loss, without gradients; logits() holds the logits afterwards.
  double forward_loss(const Model& model, const Batch& batch) {
    forward("VitTrainEngine::forward_loss", model, batch);
    return softmax_cross_entropy_forward<S>(logits_, batch.labels, model.head.bias);
  }

  // Logits [batch x classes] without the head bias (dL/dlogits after forward_backward).
  const RowMatrix<S>& logits() const { return logits_; }

 private:
  RowMatrix<S> patches_;                      // [batch*patches x C*p*p]
  RowMatrix<S> patch_out_;                    // [batch*patches x main]
  std::vector<RowMatrix<S>> h_;               // [layers+1] of [batch*tokens x main]
  std::vector<BlockActivations<A, S>> acts_;  // [layers]
  RowMatrix<S> x_cls_;                        // [batch x main]: NormF of the cls rows of h_L
  NormSaved<A, S> final_saved_;
  RowMatrix<S> logits_;                       // [batch x classes]
  CrossEntropyWorkspace<S> ce_;
  RowMatrix<S> dx_cls_, dh_, dpatch_;
  BlockBackwardWorkspace<S> bws_;

  // The cls rows (row b*tokens) of a [batch*tokens x main] matrix.
  static Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> cls_rows(RowMatrix<S>& m, Index T) {
    return {m.data(), m.rows() / T, m.cols(), Eigen::OuterStride<>(T * m.cols())};
  }

  static void check_grads(const char* op, const Model& model, const Model& grads) {
    if (&model == &grads) detail::fail(op, "grads must be a separate model");
    const VitConfig &a = model.config, &b = grads.config;
    if (a.image_size != b.image_size || a.patch_size != b.patch_size || a.channels != b.channels ||
        a.classes != b.classes || a.width != b.width || a.heads != b.heads || a.layers != b.layers ||
        a.mlp_width != b.mlp_width || a.head_size() != b.head_size())
      detail::fail(op, "grads has another configuration than the model");
    grads.validate(op);
  }

  void forward(const char* op, const Model& model, const Batch& batch) {
    model.validate(op);
    const Index B = batch.images.batch;
    if (Index(batch.labels.size()) != B)
      detail::fail(op, "labels has ", batch.labels.size(), " entries, expected ", B, " (one per image)");
    model.patchify(batch.images, patches_);
    const Index T = model.config.tokens(), P = model.config.patches(), N = B * T;
    const Index m = model.main(), L = Index(model.blocks.size());
    h_.resize(std::size_t(L + 1));
    acts_.resize(std::size_t(L));
    for (auto& h : h_) h.resize(N, m);
    x_cls_.resize(B, m);
    logits_.resize(B, model.config.classes);
    if (N == 0) return;

    patch_out_.resize(B * P, m);
    patch_out_.noalias() = patches_ * model.patch.weight.transpose();
    RowMatrix<S>& h0 = h_[0];
    detail::for_each_row(N, m, [&](Index r) {
      const Index b = r / T, t = r % T;
      if (t == 0) h0.row(r) = model.cls_token.transpose() + model.position_embedding.row(0);
      else if (model.patch.has_bias())
        h0.row(r) = patch_out_.row(b * P + t - 1) + model.patch.bias.transpose() +
                    model.position_embedding.row(t);
      else h0.row(r) = patch_out_.row(b * P + t - 1) + model.position_embedding.row(t);
    });

    if (L > 0) {
      acts_[0].resize(N, m);
      block_norm1_forward_train<A, S>(model.blocks[0], h0, acts_[0], norm_clock);
    }
    for (Index l = 0; l < L; ++l) {
      block_forward_train<A, S>(model.blocks[l], h_[l], B, acts_[l], h_[l + 1], norm_clock);
      if (l + 1 < L) {
        const auto& next = model.blocks[l + 1];
        acts_[l + 1].resize(N, m);
        norm_clock.time([&] {
          norm_add_forward_train<A, S>(h_[l + 1], acts_[l].h_mid, next.norm1_gamma, next.norm1_beta,
                                       acts_[l + 1].x1, next.epsilon, acts_[l + 1].norm1);
        });
      } else {  // the last residual add: every row (the backward reads h_L's cls rows only)
        detail::for_each_row(N, m, [&](Index r) { h_[L].row(r) += acts_[l].h_mid.row(r); });
      }
    }
    const S eps = S(model.config.epsilon);
    auto h_cls = cls_rows(h_[L], T);
    norm_clock.time([&] {
      norm_forward_train<A, S>(h_cls, model.final_gamma, model.final_beta, x_cls_, eps, final_saved_);
    });
    if constexpr (A == Arch::NoNorm) x_cls_ = h_cls;
    logits_.noalias() = x_cls_ * model.head.weight.transpose();
  }
};

}  // namespace prenorm
