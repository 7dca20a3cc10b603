#pragma once
// Training forward and backward of a GPT: next-token cross-entropy.
//
//   h_0 = E[tok] + P[pos];  blocks (residual adds fused into the next norm);
//   logits = head(NormF(h_L)) (+ head_bias);  loss = mean CE(logits, targets)
//
// GptTrainEngine holds every activation the backward reuses and every
// scratch buffer: after the first step for a given shape it allocates
// nothing. The gradients go into a Gpt<A, S> of the same configuration, used
// as a container (visit_parameters zips it with the model).
//
// Tied heads: PreLN models (and others without tied_affine()) with config.tied read E twice (lookup
// and head); its gradient is the sum. A Pre-(C)RMSNorm model in the
// keep-tied layout (tied_affine(), TiedPolicy::Keep) transforms E per token,
// as Gpt's own forward does: its lookup recenters (and compresses) the row,
// its head reads u = tied_gamma * decompress(x) + tied_beta; the backward is
// that of a reader and a table through the converter (reparam_backward.hpp),
// so dE sums both parts and the product rule gives dtied_gamma, dtied_beta.
// Training through the converter (forward_backward_reparam) reads the tied
// head, E, gamma_f and beta_f, from theta: phi's copy of E need not be
// written each step.

#include <Eigen/Core>

#include <span>
#include <vector>

#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../models/gpt.hpp"
#include "block_backward.hpp"
#include "layers_backward.hpp"
#include "loss.hpp"
#include "reparam_backward.hpp"

namespace prenorm {

// Inputs and next-token targets: targets[b*seq + t] is the token that should
// follow position t of sequence b (usually ids[b*seq + t + 1]); negative
// targets are not counted.
struct GptBatch {
  TokenBatch inputs;
  std::span<const int> targets;  // [batch * seq]
};

template <Arch A, class S>
class GptTrainEngine {
 public:
  using Model = Gpt<A, S>;
  using Batch = GptBatch;

  NormClock norm_clock;  // time in the normalization kernels, when enabled
  // Time in a keep-tied model's transforms at the boundaries (the lookup,
  // embedding sum included, and the head's input u), when enabled: the part
  // of the conversion done per token.
  NormClock tied_clock;

  // Runs the forward and the backward of the mean cross-entropy; writes the
  // gradient of every parameter into grads (a model of the same config).
  // Returns the loss.
  double forward_backward(const Model& model, const GptBatch& batch, Model& grads) {
    constexpr const char* op = "GptTrainEngine::forward_backward";
    check_grads(op, model, grads);
    const TiedHead head = tied_head_of(model);
    forward(op, model, batch, head);
    Vector<S>* dbias = grads.head_bias.size() ? &grads.head_bias : nullptr;
    const double loss =
        softmax_cross_entropy_forward_backward<S>(logits_, batch.targets, ce_, model.head_bias, dbias);
    const Index N = batch.inputs.batch * batch.inputs.seq, m = model.main();
    if (N == 0) {
      zero_all(grads);
      return loss;
    }
    const bool tied = model.config.tied, keep = model.tied_affine();
    RowMatrix<S>& dweight = tied ? grads.token_embedding.table : grads.head.weight;
    dxf_.resize(N, m);
    if (keep) {
      // Keep-tied head: logits = u E^T, u = tied_gamma * decompress(x_f) + tied_beta.
      reader_backward_reparam<S>(logits_, final_input(), *head.table, *head.gamma, *head.beta, kCompress,
                                 dweight, nullptr, grads.tied_gamma, grads.tied_beta, dxf_, ws_);
    } else {
      // Head: dW = dlogits^T x_f, dx_f = dlogits W.
      const RowMatrix<S>& weight = tied ? model.token_embedding.table : model.head.weight;
      dweight.noalias() = logits_.transpose() * final_input();
      dxf_.noalias() = logits_ * weight;
    }
    backward_body(model, batch, &grads.final_gamma, &grads.final_beta,
                  [&](Index l) { return BlockGrad<A, S>{model.blocks[l], grads.blocks[l]}; });
    // Embeddings.
    grads.position_embedding.table.setZero();
    if (model.config.learned_positions)
      embedding_backward<S>(dh_, positions_, grads.position_embedding.table);
    if (!tied) clear_token_rows(grads.token_embedding.table, &grads);
    if (keep) table_backward_reparam<S>(dh_, batch.inputs.ids, kCompress, dweight, ws_);
    else embedding_backward<S>(dh_, batch.inputs.ids, grads.token_embedding.table);
    remember_rows(batch.inputs.ids, model.config.vocab);
    return loss;
  }

  // Training through the converter, with the adjoint applied inside the
  // backward (reparam_backward.hpp): phi = convert<A>(theta, {tied}) is this
  // engine's model (A is PreRMSNorm or PreCRMSNorm); the gradient with respect
  // to theta (Pre-LN) is written into grad_theta. A keep-tied phi's lookup and
  // head read theta's E, gamma_f, beta_f (phi's copy of E may be stale).
  // Returns the loss.
  template <Arch From = Arch::PreLN>
  double forward_backward_reparam(const Model& phi, const Gpt<From, S>& theta, const GptBatch& batch,
                                  Gpt<From, S>& grad_theta, ReparamWorkspace<S>& ws) {
    static_assert(From == Arch::PreLN && (A == Arch::PreRMSNorm || A == Arch::PreCRMSNorm),
                  "prenorm: training through the converter: theta Pre-LN, phi Pre-(C)RMSNorm");
    constexpr const char* op = "GptTrainEngine::forward_backward_reparam";
    constexpr bool c = kCompress;
    theta.validate(op);
    grad_theta.validate(op);
    if (phi.blocks.size() != theta.blocks.size() || grad_theta.blocks.size() != theta.blocks.size() ||
        phi.config.vocab != theta.config.vocab || grad_theta.config.tied != theta.config.tied ||
        grad_theta.config.head_bias != theta.config.head_bias || &grad_theta == &theta ||
        phi.config.topology != theta.config.topology ||
        grad_theta.config.topology != theta.config.topology)
      detail::fail(op, "phi must be convert<To>(theta) and grad_theta have theta's layout");
    if (phi.config.tied && !theta.config.tied)
      detail::fail(op, "phi is keep-tied (TiedPolicy::Keep), expected untied (TiedPolicy::Untie): "
                       "theta is untied");
    forward(op, phi, batch, tied_head_of(phi, &theta));
    Vector<S>* dbias = theta.config.head_bias ? &grad_theta.head_bias : nullptr;
    const double loss =
        softmax_cross_entropy_forward_backward<S>(logits_, batch.targets, ce_, phi.head_bias, dbias);
    const Index N = batch.inputs.batch * batch.inputs.seq, m = phi.main();
    if (N == 0) {
      zero_all(grad_theta);
      return loss;
    }
    const bool tied = theta.config.tied;
    RowMatrix<S>& dweight = tied ? grad_theta.token_embedding.table : grad_theta.head.weight;
    const RowMatrix<S>& weight = tied ? theta.token_embedding.table : theta.head.weight;
    dxf_.resize(N, m);
    reader_backward_reparam<S>(logits_, final_input(), weight, theta.final_gamma, theta.final_beta, c,
                               dweight, nullptr, grad_theta.final_gamma, grad_theta.final_beta, dxf_,
                               ws);
    backward_body(phi, batch, nullptr, nullptr, [&](Index l) {
      return ReparamBlockGrad<A, S>{phi.blocks[l], theta.blocks[l], grad_theta.blocks[l], ws};
    });
    grad_theta.position_embedding.table.setZero();
    if (theta.config.learned_positions)
      table_backward_reparam<S>(dh_, positions_, c, grad_theta.position_embedding.table, ws);
    if (!tied) clear_token_rows(grad_theta.token_embedding.table, &grad_theta);
    table_backward_reparam<S>(dh_, batch.inputs.ids, c, grad_theta.token_embedding.table, ws);
    remember_rows(batch.inputs.ids, theta.config.vocab);
    return loss;
  }

  // The mean loss, without gradients; logits() holds the logits afterwards.
  double forward_loss(const Model& model, const GptBatch& batch) {
    forward("GptTrainEngine::forward_loss", model, batch, tied_head_of(model));
    return softmax_cross_entropy_forward<S>(logits_, batch.targets, model.head_bias);
  }

  // The same for phi = convert<A>(theta): a keep-tied phi's head read from
  // theta, as in forward_backward_reparam.
  template <Arch From = Arch::PreLN>
  double forward_loss_reparam(const Model& phi, const Gpt<From, S>& theta, const GptBatch& batch) {
    constexpr const char* op = "GptTrainEngine::forward_loss_reparam";
    theta.validate(op);
    if (phi.config.tied && !theta.config.tied)
      detail::fail(op, "phi is keep-tied (TiedPolicy::Keep), expected untied (TiedPolicy::Untie): "
                       "theta is untied");
    forward(op, phi, batch, tied_head_of(phi, &theta));
    return softmax_cross_entropy_forward<S>(logits_, batch.targets, phi.head_bias);
  }

  // Logits [batch*seq x vocab] of the last forward_loss (without the head
  // bias); after forward_backward they hold dL/dlogits.
  const RowMatrix<S>& logits() const { return logits_; }

  // The distinct token ids of the last forward_backward: for an untied model,
  // the only rows of grads.token_embedding that may be non-zero.
  std::span<const int> token_rows() const { return token_rows_; }

 private:
  static constexpr bool kCompress = A == Arch::PreCRMSNorm;

  // What a keep-tied model's lookup and head read: E (vocab, d), gamma, beta
  // (d). All null for other models.
  struct TiedHead {
    const RowMatrix<S>* table = nullptr;
    const Vector<S>* gamma = nullptr;
    const Vector<S>* beta = nullptr;
  };
  // The model's own, or theta's (E, final_gamma, final_beta) when given.
  template <class Theta = Model>
  static TiedHead tied_head_of(const Model& model, const Theta* theta = nullptr) {
    if (!model.tied_affine()) return {};
    if (theta) return {&theta->token_embedding.table, &theta->final_gamma, &theta->final_beta};
    return {&model.token_embedding.table, &model.tied_gamma, &model.tied_beta};
  }

  std::vector<RowMatrix<S>> h_;  // [layers+1] of [N x main]: block inputs, h_[L] the last output
  std::vector<BlockActivations<A, S>> acts_;  // [layers]
  RowMatrix<S> x_f_;                          // [N x main]: NormF(h_L)
  NormSaved<A, S> final_saved_;
  RowMatrix<S> u_;                            // [N x d]: a keep-tied head's input
  RowMatrix<S> logits_;                       // [N x vocab]
  CrossEntropyWorkspace<S> ce_;
  RowMatrix<S> dxf_, dh_;                     // [N x main]
  BlockBackwardWorkspace<S> bws_;
  std::vector<int> positions_;                // [N]: position of each row
  std::vector<int> token_rows_;               // distinct ids of the last backward
  std::vector<unsigned char> seen_;           // [vocab]
  ReparamWorkspace<S> ws_;                    // a keep-tied model's head and lookup backward
  const void* last_grads_ = nullptr;  // the gradient container of the last step

  static Index layers(const Model& model) { return Index(model.blocks.size()); }
  const RowMatrix<S>& final_input() const { return ArchTraits<A>::input(h_.back(), x_f_); }

  static void check_grads(const char* op, const Model& model, const Model& grads) {
    if (&model == &grads) detail::fail(op, "grads must be a separate model");
    const TransformerConfig&a = model.config, &b = grads.config;
    if (a.vocab != b.vocab || a.context != b.context || a.width != b.width || a.heads != b.heads ||
        a.layers != b.layers || a.mlp_width != b.mlp_width || a.tied != b.tied ||
        a.head_bias != b.head_bias || a.head_size() != b.head_size() || a.topology != b.topology)
      detail::fail(op, "grads has another configuration than the model");
    grads.validate(op);
  }

  template <class Grads>
  static void zero_all(Grads& grads) {
    grads.visit_parameters([](const std::string&, auto& t) { t.setZero(); });
  }

  // From dx_f (the gradient at the final norm's output) to dh_ at the
  // embeddings: the final norm and the blocks, the gradients going to
  // block_sink(l) (see BlockGrad) and dgamma_f, dbeta_f (PreLN).
  template <class BlockSink>
  void backward_body(const Model& model, const GptBatch& batch, Vector<S>* dgamma_f,
                     Vector<S>* dbeta_f, BlockSink&& block_sink) {
    const Index N = batch.inputs.batch * batch.inputs.seq, L = layers(model);
    dh_.resize(N, model.main());
    norm_clock.time([&] {
      ArchTraits<A>::backward(dxf_, h_[L], model.final_gamma, final_saved_, dh_, dgamma_f, dbeta_f,
                              GradWrite::Overwrite);
    });
    for (Index l = L - 1; l >= 0; --l)
      block_backward_with<A, S>(model.blocks[l], h_[l], batch.inputs.batch, acts_[l], dh_, bws_,
                                norm_clock, block_sink(l));
  }

  // An untied token table's gradient is zero outside the rows of the batch:
  // clear the rows of the last step (all of it for a new container).
  void clear_token_rows(RowMatrix<S>& dE, const void* container) {
    if (container != last_grads_) dE.setZero();
    else for (int row : token_rows_) dE.row(row).setZero();
    last_grads_ = container;
  }

  void remember_rows(std::span<const int> ids, Index vocab) {
    seen_.assign(std::size_t(vocab), 0);  // no allocation once sized
    token_rows_.reserve(ids.size());      // at most one row per id
    token_rows_.clear();
    for (int id : ids)
      if (!seen_[std::size_t(id)]) {
        seen_[std::size_t(id)] = 1;
        token_rows_.push_back(id);
      }
  }

  // tied: what a keep-tied model's lookup and head read (see tied_head_of).
  void forward(const char* op, const Model& model, const GptBatch& batch, const TiedHead& tied) {
    const TokenBatch& t = batch.inputs;
    model.validate(op);
    if (t.batch < 0 || t.seq < 0 || Index(t.ids.size()) != t.batch * t.seq)
      detail::fail(op, "the token batch has ", t.ids.size(), " ids, expected batch ", t.batch,
                   " x seq ", t.seq);
    if (t.seq > model.config.context)
      detail::fail(op, "sequence length ", t.seq, " exceeds the context ", model.config.context);
    if (batch.targets.size() != t.ids.size())
      detail::fail(op, "targets has ", batch.targets.size(), " entries, expected ", t.ids.size(),
                   " (one per input token)");
    model.token_embedding.check_ids(t.ids, op);
    const Index B = t.batch, T = t.seq, N = B * T, m = model.main(), L = layers(model);
    h_.resize(std::size_t(L + 1));
    acts_.resize(std::size_t(L));
    for (auto& h : h_) h.resize(N, m);
    x_f_.resize(ArchTraits<A>::has_norm ? N : 0, m);
    logits_.resize(N, model.config.vocab);
    positions_.resize(std::size_t(N));
    const Index offset = model.config.position_offset;  // position p is row p + offset
    for (Index r = 0; r < N; ++r) positions_[std::size_t(r)] = int(r % T + offset);
    if (N == 0) return;

    const bool keep = tied.table != nullptr;
    const auto& E = keep ? *tied.table : model.token_embedding.table;
    const auto& P = model.position_embedding.table;
    RowMatrix<S>& h0 = h_[0];
    const bool positions = model.config.learned_positions;
    if (keep)
      tied_clock.time([&] {
        detail::for_each_row(N, m, [&](Index r) { branch::write(E.row(t.ids[r]), h0.row(r)); });
      });
    else detail::for_each_row(N, m, [&](Index r) { h0.row(r) = E.row(t.ids[r]); });
    if (positions)
      detail::for_each_row(N, m, [&](Index r) { h0.row(r) += P.row(positions_[std::size_t(r)]); });

    const S eps = S(model.config.epsilon);
    if (L == 0) {
      norm_clock.time([&] {
        ArchTraits<A>::forward(h0, model.final_gamma, model.final_beta, x_f_, eps, &final_saved_);
      });
    } else {
      acts_[0].resize(N, m);
      block_norm1_forward_train<A, S>(model.blocks[0], h0, acts_[0], norm_clock);
    }
    for (Index l = 0; l < L; ++l) {
      block_forward_train<A, S>(model.blocks[l], h_[l], B, acts_[l], h_[l + 1], norm_clock);
      if (l + 1 < L) {  // h_{l+1} = Mlp(x2) + h_mid, fused with the next block's norm1
        const auto& next = model.blocks[l + 1];
        acts_[l + 1].resize(N, m);
        norm_clock.time([&] {
          ArchTraits<A>::add_forward(h_[l + 1], acts_[l].h_mid, next.norm1_gamma, next.norm1_beta,
                                     acts_[l + 1].x1, next.epsilon, &acts_[l + 1].norm1);
        });
      } else {  // the last add, fused with the final norm
        norm_clock.time([&] {
          ArchTraits<A>::add_forward(h_[L], acts_[l].h_mid, model.final_gamma, model.final_beta,
                                     x_f_, eps, &final_saved_);
        });
      }
    }
    if (keep) {
      u_.resize(N, model.width());
      tied_clock.time([&] { detail::tied_head_input<S>(final_input(), *tied.gamma, *tied.beta, u_); });
      logits_.noalias() = u_ * E.transpose();
      return;
    }
    const RowMatrix<S>& weight = model.config.tied ? E : model.head.weight;
    logits_.noalias() = final_input() * weight.transpose();
  }
};

}  // namespace prenorm
