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
  // block i with the main branch h [batch*(1+patches) x main].
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

  // The main branch h [batch*(1+patches) x main] after the last forward. Without
  // a hook, the last MLP's residual add reaches the cls rows only.
  const RowMatrix<S>& main_branch() const { return h_; }
  // The normalized cls rows NormF(h_cls) [batch x main] the head read (h_cls without norms).
  const RowMatrix<S>& hidden() const { return x_cls_; }

 private:
  friend Model;  // Vit::forward runs a session of its own, with its own operation name

  const Model* model_;
  BlockWorkspace<S> workspace_;
  RowMatrix<S> patches_;  // [batch*(1+patches) x C*p*p]; the cls rows are zero
  RowMatrix<S> h_, x_;    // [batch*(1+patches) x main]
  RowMatrix<S> branch_;   // [batch*(1+patches) x branch_width()]: a branch output in its first main columns
  RowMatrix<S> x_cls_;    // [batch x main]
  RowMatrix<S> logits_;   // [batch x classes]

  const RowMatrix<S>& forward_images(const char* op, const ImageBatch<S>& images,
                                     const BlockHook* hook) {
    const Model& v = *model_;
    v.check_images(op, images);
    v.validate(op);
    const Index B = images.batch, T = v.config.tokens();
    patches_.resize(B * T, v.config.patch_features());
    for (Index b = 0; b < B; ++b) patches_.row(b * T).setZero();
    v.extract_patches(images, patches_.data(), 1);
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
    const Index B = patches.rows() / P, T = v.config.tokens();
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
    const Index T = model_->config.tokens();
    return {m.data(), m.rows() / T, m.cols(), Eigen::OuterStride<>(T * m.cols())};
  }

  // From patches_ (cls rows zero) to logits_.
  void run(Index B, const BlockHook* hook) {
    const Model& v = *model_;
    const Index T = v.config.tokens(), N = B * T, m = v.main();
    h_.resize(N, m);
    x_.resize(N, m);
    // Wider than main where that lets the writers' products run padded.
    branch_.resize(N, v.blocks.empty() ? m : v.blocks[0].branch_width());
    x_cls_.resize(B, m);
    logits_.resize(B, v.config.classes);
    if (N == 0) return;

    // h = patch linear of every row (one GEMM; the zero cls rows cost 1/T),
    // then the cls token and the positions. The product goes through branch_,
    // which is wide enough for it to run padded where that pays (Pre-CRMSNorm).
    v.patch.forward_padded(patches_, branch_);
    detail::for_each_row(N, m, [&](Index r) {
      const Index t = r % T;
      if (t == 0) h_.row(r) = v.cls_token.transpose() + v.position_embedding.row(0);
      else h_.row(r) = branch_.row(r).head(m) + v.position_embedding.row(t);
    });
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
    // The head reads the cls rows only: the last add and the final norm touch only them.
    const auto h_cls = cls_rows(h_);
    const S eps = S(v.config.epsilon);
    if (L > 0 && !hook)
      ArchTraits<A>::add_forward(h_cls, cls_rows(branch_).leftCols(m), v.final_gamma, v.final_beta,
                                 x_cls_, eps);
    else
      ArchTraits<A>::forward(h_cls, v.final_gamma, v.final_beta, x_cls_, eps);
    if constexpr (!ArchTraits<A>::has_norm) x_cls_ = h_cls;  // no norm: the head reads h
    v.head.forward_padded(x_cls_, logits_);
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
