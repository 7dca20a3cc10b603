#pragma once
// VitSession: the state of ViT inference, apart from the model's parameters
// (see gpt_session.hpp for the split). One model serves any number of
// sessions at once; a repeated forward of the same batch size allocates nothing.
//
//   VitSession session(model);
//   const auto& logits = session.forward(images);   // [batch x classes]

#include <Eigen/Core>

#include "vit.hpp"

namespace prenorm {

template <Arch A, class S>
class VitSession {
 public:
  using Model = Vit<A, S>;
  using BlockHook = typename Model::BlockHook;

  // The model must outlive the session and keep its shapes while it is used.
  explicit VitSession(const Model& model) : model_(&model) {}

  const Model& model() const { return *model_; }

  // Logits [batch x classes] of images [batch x C x H x W], valid until the
  // next call on this session.
  const RowMatrix<S>& forward(const ImageBatch<S>& images) {
    return forward_images("VitSession::forward", images, nullptr);
  }
  // The same, calling hook(-1, h) after the embeddings and hook(i, h) after
  // block i with the main branch h [batch*tokens x main].
  const RowMatrix<S>& forward(const ImageBatch<S>& images, const BlockHook& hook) {
    return forward_images("VitSession::forward", images, &hook);
  }
  // Logits [batch x classes] of pre-flattened patches [batch*patches x C*p*p]
  // (image b is rows [b*patches, (b+1)*patches), each row in (c, ky, kx) order).
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches) {
    return forward_patches_impl("VitSession::forward_patches", patches, nullptr);
  }
  const RowMatrix<S>& forward_patches(const ConstRowsRef<S>& patches, const BlockHook& hook) {
    return forward_patches_impl("VitSession::forward_patches", patches, &hook);
  }

  // The main branch h [batch*tokens x main] after the last forward. Without a
  // hook and with the cls pooling, the last MLP's residual add reaches the cls rows only.
  const RowMatrix<S>& main_branch() const { return h_; }
  // What the head read, pool(NormF(h)) [batch x pooled_parts*main] (h without norms):
  // the normalized cls rows, with the distillation rows or the patch means beside them.
  const RowMatrix<S>& hidden() const { return pooled_; }

 private:
  friend Model;  // Vit::forward runs a session of its own, with its own operation name

  const Model* model_;
  BlockWorkspace<S> workspace_;
  RowMatrix<S> patches_;  // [batch*tokens x C*p*p]; the prefix (cls, distillation) rows are zero
  RowMatrix<S> embed_;    // [batch*tokens x d]: the embeddings a stem norm reads
  RowMatrix<S> stem_;     // [batch*tokens x d]: the stem norm's output, before centering
  RowMatrix<S> h_, x_;    // [batch*tokens x main]
  RowMatrix<S> branch_;   // [batch*tokens x branch_width()]: a branch output in its first main columns
  RowMatrix<S> pooled_;   // [batch x pooled_parts*main]: the head's input
  RowMatrix<S> logits_;   // [batch x classes]

  const RowMatrix<S>& forward_images(const char* op, const ImageBatch<S>& images,
                                     const BlockHook* hook) {
    const Model& v = *model_;
    v.check_images(op, images);
    v.validate(op);
    const Index B = images.batch, T = v.config.tokens(), K = v.config.prefix_tokens();
    patches_.resize(B * T, v.config.patch_features());
    for (Index b = 0; b < B; ++b) patches_.middleRows(b * T, K).setZero();
    v.extract_patches(images, patches_.data(), K);
    run(B, hook);
    return logits_;
  }

  const RowMatrix<S>& forward_patches_impl(const char* op, const ConstRowsRef<S>& patches,
                                           const BlockHook* hook) {
    const Model& v = *model_;
    const Index P = v.config.patches(), F = v.config.patch_features();
    if (patches.cols() != F || patches.rows() % P != 0)
      detail::fail(op, "patches is ", patches.rows(), " x ", patches.cols(), ", expected (batch*",
                   P, ") x ", F, " (batch*patches x C*p*p)");
    v.validate(op);
    const Index B = patches.rows() / P, T = v.config.tokens(), K = v.config.prefix_tokens();
    patches_.resize(B * T, F);
    for (Index b = 0; b < B; ++b) {
      patches_.middleRows(b * T, K).setZero();
      patches_.middleRows(b * T + K, P) = patches.middleRows(b * P, P);
    }
    run(B, hook);
    return logits_;
  }

  // Strided view of the cls rows (row b*tokens) of a [batch*tokens x main] buffer.
  Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> cls_rows(RowMatrix<S>& m) const {
    const Index T = model_->config.tokens();
    return {m.data(), m.rows() / T, m.cols(), Eigen::OuterStride<>(T * m.cols())};
  }

  // From patches_ (prefix rows zero) to logits_.
  void run(Index B, const BlockHook* hook) {
    const Model& v = *model_;
    const VitConfig& c = v.config;
    const Index T = c.tokens(), N = B * T, m = v.main(), e = v.embed_width();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, v.blocks.empty() ? m : v.blocks[0].branch_width());
    pooled_.resize(B, c.pooled_parts() * m);
    logits_.resize(B, c.classes);
    if (N == 0) return;
    const S eps = S(c.epsilon);

    // e = patch linear of every row (one GEMM; the zero prefix rows cost
    // little), then the cls (and distillation) token and the positions. Without
    // a stem norm e is h, and the product goes through branch_, which is wide
    // enough for it to run padded where that pays (Pre-CRMSNorm).
    RowMatrix<S>& product = c.stem_norm ? embed_ : branch_;
    RowMatrix<S>& embeddings = c.stem_norm ? embed_ : h_;
    if (c.stem_norm) embed_.resize(N, e);
    v.patch.forward_padded(patches_, product);
    detail::for_each_row(N, e, [&](Index r) {
      const Index t = r % T;
      if (t == 0) embeddings.row(r) = v.cls_token.transpose() + v.position_embedding.row(0);
      else if (t == 1 && c.distillation_token)
        embeddings.row(r) = v.distillation_token.transpose() + v.position_embedding.row(1);
      else embeddings.row(r) = product.row(r).head(e) + v.position_embedding.row(t);
    });
    if (c.stem_norm) {
      // h = LN(e) gamma + beta starts the stream; a norm without centering
      // needs it zero-mean (and compressed to its first main coordinates).
      if constexpr (A == Arch::PreLN) {
        layer_norm_forward(embed_, v.stem_gamma, v.stem_beta, h_, eps);
      } else {
        stem_.resize(N, e);
        layer_norm_forward(embed_, v.stem_gamma, v.stem_beta, stem_, eps);
        detail::for_each_row(N, e, [&](Index r) {
          h_.row(r) = stem_.row(r).head(m).array() - stem_.row(r).mean();
        });
      }
    }
    if (hook) (*hook)(-1, h_);

    const Index L = Index(v.blocks.size());
    if (L > 0) v.blocks[0].norm1(h_, x_);
    for (Index i = 0; i < L; ++i) {
      v.blocks[i].forward_fused(h_, x_, branch_, B, workspace_);
      if (hook) {
        h_ += branch_.leftCols(m);
        (*hook)(i, h_);
        if (i + 1 < L) v.blocks[i + 1].norm1(h_, x_);
      } else if (i + 1 < L) {
        v.blocks[i + 1].add_norm1(h_, branch_.leftCols(m), x_);
      }
    }
    if (c.pooling == VitPooling::Cls) {
      // The head reads the cls rows only: the last add and the final norm touch only them.
      const auto h_cls = cls_rows(h_);
      if (L > 0 && !hook)
        ArchTraits<A>::add_forward(h_cls, cls_rows(branch_).leftCols(m), v.final_gamma,
                                   v.final_beta, pooled_, eps);
      else
        ArchTraits<A>::forward(h_cls, v.final_gamma, v.final_beta, pooled_, eps);
      if constexpr (!ArchTraits<A>::has_norm) pooled_ = h_cls;  // no norm: the head reads h
    } else {
      // The head reads more rows than the cls one: every row is finished and normalized.
      if (L > 0 && !hook) h_ += branch_.leftCols(m);
      ArchTraits<A>::forward(h_, v.final_gamma, v.final_beta, x_, eps);
      if constexpr (!ArchTraits<A>::has_norm) x_ = h_;
      const Index K = c.prefix_tokens(), P = c.patches();
      for (Index b = 0; b < B; ++b) {
        pooled_.row(b).head(m) = x_.row(b * T);
        if (c.pooling == VitPooling::ClsDistillation)
          pooled_.row(b).tail(m) = x_.row(b * T + 1);
        else  // ClsPatchMean
          pooled_.row(b).tail(m) = x_.middleRows(b * T + K, P).colwise().mean();
      }
    }
    v.head.forward_padded(pooled_, logits_);
  }
};

template <Arch A, class S>
VitSession(const Vit<A, S>&) -> VitSession<A, S>;

// Vit's convenience forwards: a session of their own, their own operation name.
template <Arch A, class S>
RowMatrix<S> Vit<A, S>::forward(const ImageBatch<S>& images) const {
  VitSession<A, S> session(*this);
  return session.forward_images("Vit::forward", images, nullptr);
}
template <Arch A, class S>
RowMatrix<S> Vit<A, S>::forward(const ImageBatch<S>& images, const BlockHook& hook) const {
  VitSession<A, S> session(*this);
  return session.forward_images("Vit::forward", images, &hook);
}
template <Arch A, class S>
RowMatrix<S> Vit<A, S>::forward_patches(const ConstRowsRef<S>& patches) const {
  VitSession<A, S> session(*this);
  return session.forward_patches_impl("Vit::forward_patches", patches, nullptr);
}

}  // namespace prenorm
