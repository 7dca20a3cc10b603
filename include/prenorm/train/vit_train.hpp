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
#include "reparam_backward.hpp"

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
    const double loss = softmax_cross_entropy_forward_backward<S>(
        logits_, batch.labels, ce_, model.head.bias, grads.head.bias.size() ? &grads.head.bias : nullptr);
    // Head: the bias gradient came from the cross-entropy pass.
    grads.head.weight.noalias() = logits_.transpose() * x_cls_;
    dx_cls_.resize(logits_.rows(), model.main());
    dx_cls_.noalias() = logits_ * model.head.weight;
    backward_body(model, &grads.final_gamma, &grads.final_beta,
                  [&](Index l) { return BlockGrad<A, S>{model.blocks[l], grads.blocks[l]}; });
    // Embeddings: positions (every image), cls token (row 0 of each image),
    // patch linear (the patch rows).
    const Index B = logits_.rows(), T = model.config.tokens(), P = model.config.patches();
    grads.position_embedding.table.setZero();
    grads.cls_token.setZero();
    dpatch_.resize(B * P, model.main());
    for (Index b = 0; b < B; ++b) {
      grads.position_embedding.table += dh_.middleRows(b * T, T);
      grads.cls_token += dh_.row(b * T).transpose();
      dpatch_.middleRows(b * P, P) = dh_.middleRows(b * T + 1, P);
    }
    linear_backward<S>(dpatch_, patches_, model.patch, grads.patch);
    return loss;
  }

  // Training through the converter with the adjoint inside the backward (see
  // GptTrainEngine::forward_backward_reparam): phi = convert<A>(theta);
  // grad_theta (Pre-LN) is written. Returns the loss.
  template <Arch From = Arch::PreLN>
  double forward_backward_reparam(const Model& phi, const Vit<From, S>& theta, const Batch& batch,
                                  Vit<From, S>& grad_theta, ReparamWorkspace<S>& ws) {
    static_assert(From == Arch::PreLN && (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm),
                  "prenorm: training through the converter: theta Pre-LN, phi Pre-(C)RMSNorm");
    constexpr const char* op = "VitTrainEngine::forward_backward_reparam";
    constexpr bool c = A == Arch::PreCRMSNorm;
    theta.validate(op);
    grad_theta.validate(op);
    if (phi.blocks.size() != theta.blocks.size() || grad_theta.blocks.size() != theta.blocks.size() ||
        phi.config.classes != theta.config.classes || &grad_theta == &theta ||
        phi.config.topology != theta.config.topology ||
        grad_theta.config.topology != theta.config.topology)
      detail::fail(op, "phi must be convert<To>(theta) and grad_theta have theta's layout");
    forward(op, phi, batch);
    const double loss = softmax_cross_entropy_forward_backward<S>(
        logits_, batch.labels, ce_, phi.head.bias, &grad_theta.head.bias);
    dx_cls_.resize(logits_.rows(), phi.main());
    reader_backward_reparam<S>(logits_, x_cls_, theta.head.weight, theta.final_gamma, theta.final_beta,
                               c, grad_theta.head.weight, nullptr, grad_theta.final_gamma,
                               grad_theta.final_beta, dx_cls_, ws);
    backward_body(phi, nullptr, nullptr, [&](Index l) {
      return ReparamBlockGrad<A, S>{phi.blocks[l], theta.blocks[l], grad_theta.blocks[l], ws};
    });
    // Embeddings, from the centered, padded rows of dh.
    const Index B = logits_.rows(), T = phi.config.tokens(), P = phi.config.patches();
    dhc_.resize(dh_.rows(), c ? dh_.cols() + 1 : dh_.cols());
    ws.clock.time([&] { detail::center_padded_rows<S>(dh_, c, dhc_); });
    grad_theta.position_embedding.table.setZero();
    grad_theta.cls_token.setZero();
    dpatch_.resize(B * P, dhc_.cols());
    for (Index b = 0; b < B; ++b) {
      grad_theta.position_embedding.table += dhc_.middleRows(b * T, T);
      grad_theta.cls_token += dhc_.row(b * T).transpose();
      dpatch_.middleRows(b * P, P) = dhc_.middleRows(b * T + 1, P);
    }
    linear_backward<S>(dpatch_, patches_, theta.patch, grad_theta.patch);
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
  RowMatrix<S> dhc_;  // [batch*tokens x d]: centered, padded dh (through the converter)
  BlockBackwardWorkspace<S> bws_;

  // The cls rows (row b*tokens) of a [batch*tokens x main] matrix.
  static Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> cls_rows(RowMatrix<S>& m, Index T) {
    return {m.data(), m.rows() / T, m.cols(), Eigen::OuterStride<>(T * m.cols())};
  }

  // From dx_cls_ to dh_ at the embeddings: the final norm (cls rows) and the
  // blocks, the gradients going to block_sink(l) and dgamma_f, dbeta_f (PreLN).
  template <class BlockSink>
  void backward_body(const Model& model, Vector<S>* dgamma_f, Vector<S>* dbeta_f,
                     BlockSink&& block_sink) {
    const Index B = logits_.rows(), T = model.config.tokens(), L = Index(model.blocks.size());
    dh_.setZero(B * T, model.main());
    norm_clock.time([&] {
      auto dh_cls = cls_rows(dh_, T);
      auto h_cls = cls_rows(h_[L], T);
      ArchTraits<A>::backward(dx_cls_, h_cls, model.final_gamma, final_saved_, dh_cls, dgamma_f,
                              dbeta_f, GradWrite::Overwrite);
    });
    for (Index l = L - 1; l >= 0; --l)
      block_backward_with<A, S>(model.blocks[l], h_[l], B, acts_[l], dh_, bws_, norm_clock,
                                block_sink(l));
  }

  static void check_grads(const char* op, const Model& model, const Model& grads) {
    if (&model == &grads) detail::fail(op, "grads must be a separate model");
    const TransformerConfig&a = model.config, &b = grads.config;
    if (a.image_size != b.image_size || a.patch_size != b.patch_size || a.channels != b.channels ||
        a.classes != b.classes || a.width != b.width || a.heads != b.heads || a.layers != b.layers ||
        a.mlp_width != b.mlp_width || a.head_size() != b.head_size() || a.topology != b.topology)
      detail::fail(op, "grads has another configuration than the model");
    grads.validate(op);
  }

  void forward(const char* op, const Model& model, const Batch& batch) {
    model.validate(op);
    if (!model.config.plain_patches())
      detail::fail(op, "the model has a stem norm, a distillation token or a pooled head (",
                   pooling_name(model.config.pooling),
                   "): training reads the plain ViT only (stem_norm false, no distillation "
                   "token, cls pooling)");
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
      if (t == 0) h0.row(r) = model.cls_token.transpose() + model.position_embedding.table.row(0);
      else if (model.patch.has_bias())
        h0.row(r) = patch_out_.row(b * P + t - 1) + model.patch.bias.transpose() +
                    model.position_embedding.table.row(t);
      else h0.row(r) = patch_out_.row(b * P + t - 1) + model.position_embedding.table.row(t);
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
          ArchTraits<A>::add_forward(h_[l + 1], acts_[l].h_mid, next.norm1_gamma, next.norm1_beta,
                                     acts_[l + 1].x1, next.epsilon, &acts_[l + 1].norm1);
        });
      } else {  // the last residual add: every row (the backward reads h_L's cls rows only)
        detail::for_each_row(N, m, [&](Index r) { h_[L].row(r) += acts_[l].h_mid.row(r); });
      }
    }
    const S eps = S(model.config.epsilon);
    auto h_cls = cls_rows(h_[L], T);
    norm_clock.time([&] {
      ArchTraits<A>::forward(h_cls, model.final_gamma, model.final_beta, x_cls_, eps, &final_saved_);
    });
    if constexpr (!ArchTraits<A>::has_norm) x_cls_ = h_cls;  // no norm: the head reads h
    logits_.noalias() = x_cls_ * model.head.weight.transpose();
  }
};

}  // namespace prenorm
