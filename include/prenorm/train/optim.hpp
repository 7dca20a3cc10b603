#pragma once
// Optimizers over the tensors of a model, with the gradients in a second model
// of the same type (visit_parameters zips the two):
//   Sgd    SGD with momentum (PyTorch semantics, dampening 0, optional Nesterov,
//          L2 weight decay added to the gradient)
//   AdamW  Adam with decoupled weight decay and bias correction (PyTorch semantics)
// and gradient clipping by the global norm.
//
// An optimizer binds to the tensors of (params, grads) on its first step: it
// records their addresses and sizes once (visit_parameters builds names, which
// allocates), so later steps allocate nothing. Call rebind() after replacing
// a tensor's storage (a resize, a move).
//
// step(params, grads) is begin_step, update over every element of every
// tensor, end_step. A caller may instead drive update(tensor, begin, end)
// itself, in any order and in parallel over disjoint ranges (the update of an
// element does not depend on any other), e.g. to convert each block of rows
// right after its update while it is in cache (ReparamTrainer).

#include <Eigen/Core>

#include <cmath>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"

namespace prenorm {

// One tensor of a model, flattened: data[0, size).
template <class S>
struct ParamTensor {
  S* data = nullptr;
  Index size = 0;
  bool matrix = false;  // a RowMatrix (weights, tables); false for a Vector (biases, gains)
};

// The non-empty tensors of a model, in visit_parameters order.
template <class S>
struct ParameterList {
  std::vector<ParamTensor<S>> tensors;
  std::vector<std::string> names;
  Index total = 0;  // elements over all tensors

  ParameterList() = default;
  template <class Model>
  explicit ParameterList(Model& model) {
    model.visit_parameters([&](const std::string& name, auto& t) {
      if (t.size() == 0) return;
      using T = std::decay_t<decltype(t)>;
      tensors.push_back({t.data(), Index(t.size()), T::ColsAtCompileTime != 1});
      names.push_back(name);
      total += Index(t.size());
    });
  }
};

namespace detail {

inline constexpr Index kOptimChunk = Index(1) << 14;

// body(begin, end) over [0, n) in chunks, in parallel when n is large.
template <class Body>
void for_each_chunk(Index n, Body&& body) {
  const Index chunks = (n + kOptimChunk - 1) / kOptimChunk;
  for_each_row(chunks, kOptimChunk, [&](Index c) { body(c * kOptimChunk, std::min(n, (c + 1) * kOptimChunk)); });
}

template <class S>
void check_zip(const char* op, const ParameterList<S>& params, const ParameterList<S>& grads) {
  if (params.tensors.size() != grads.tensors.size())
    fail(op, "the gradient model has ", grads.tensors.size(), " tensors, the model ",
         params.tensors.size());
  for (std::size_t i = 0; i < params.tensors.size(); ++i)
    if (params.tensors[i].size != grads.tensors[i].size || params.names[i] != grads.names[i])
      fail(op, "gradient tensor ", grads.names[i], " (", grads.tensors[i].size,
           " elements) does not match parameter ", params.names[i], " (", params.tensors[i].size,
           " elements)");
}

}  // namespace detail

// sqrt of the sum of squares of every gradient, accumulated in double in a
// fixed order (the result does not depend on the thread count).
template <class S>
double global_norm(const ParameterList<S>& grads) {
  double sum = 0;
  for (const ParamTensor<S>& t : grads.tensors)
    sum += Eigen::Map<const Vector<S>>(t.data, t.size).template cast<double>().squaredNorm();
  return std::sqrt(sum);
}

// Scales every gradient by max_norm / norm when the global norm exceeds
// max_norm (> 0). Returns the norm before clipping.
template <class S>
double clip_global_norm(ParameterList<S>& grads, double max_norm) {
  if (!(max_norm > 0)) detail::fail("clip_global_norm", "max_norm must be > 0, got ", max_norm);
  const double norm = global_norm(grads);
  if (norm > max_norm) {
    const S scale = S(max_norm / (norm + 1e-6));
    for (ParamTensor<S>& t : grads.tensors)
      detail::for_each_chunk(t.size, [&](Index b, Index e) {
        Eigen::Map<Vector<S>>(t.data + b, e - b) *= scale;
      });
  }
  return norm;
}

// The same on a whole gradient model (builds the tensor list: allocates).
template <class Model>
double clip_grad_norm(Model& grads, double max_norm) {
  ParameterList<typename Model::Scalar> list(grads);
  return clip_global_norm(list, max_norm);
}

// Base of the optimizers: the bound (params, grads) lists and clipping.
template <class S>
class OptimizerBase {
 public:
  using Scalar = S;

  double max_grad_norm = 0;  // > 0: clip the gradients to this global norm before each step
  double last_grad_norm = 0;  // the global norm of the last step's gradients (when clipping)

  // The tensors bound by the last begin_step / step, in visit order.
  const ParameterList<S>& bound_params() const { return params_; }

  // Forget the bound tensors (and the optimizer state): the next step binds again.
  void rebind() {
    params_ = {};
    grads_ = {};
    bound_params_ = bound_grads_ = nullptr;
  }
  long steps() const { return steps_; }

 protected:
  ParameterList<S> params_, grads_;
  const void* bound_params_ = nullptr;
  const void* bound_grads_ = nullptr;
  long steps_ = 0;

  // Binds on the first call, or when other models are passed. Returns true
  // when it (re)bound, so that the caller resets its state.
  template <class Model>
  bool bind(const char* op, Model& params, Model& grads) {
    if (&params == bound_params_ && &grads == bound_grads_) return false;
    params_ = ParameterList<S>(params);
    grads_ = ParameterList<S>(grads);
    detail::check_zip(op, params_, grads_);
    bound_params_ = &params;
    bound_grads_ = &grads;
    return true;
  }

  void clip() {
    if (max_grad_norm > 0) last_grad_norm = clip_global_norm(grads_, max_grad_norm);
  }
};

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.9;
  double weight_decay = 0;  // L2, added to the gradient (coupled), as torch.optim.SGD
  bool nesterov = false;
};

// SGD with momentum, torch.optim.SGD semantics (dampening 0):
//   g += wd * theta;  buf = g (first step) or mu * buf + g;
//   theta -= lr * (nesterov ? g + mu * buf : buf)
template <class S>
class Sgd : public OptimizerBase<S> {
 public:
  SgdOptions options;

  explicit Sgd(const SgdOptions& options_ = {}) : options(options_) {}

  template <class Model>
  void step(Model& params, Model& grads) {
    begin_step(params, grads);
    for (std::size_t i = 0; i < this->params_.tensors.size(); ++i)
      detail::for_each_chunk(this->params_.tensors[i].size, [&](Index b, Index e) { update(i, b, e); });
    end_step();
  }

  // Binds (first call), clips; then update() the elements, then end_step().
  template <class Model>
  void begin_step(Model& params, Model& grads) {
    if (this->bind("Sgd::step", params, grads)) {
      momentum_.setZero(this->params_.total);
      offsets_.clear();
      Index offset = 0;
      for (const ParamTensor<S>& t : this->params_.tensors) {
        offsets_.push_back(offset);
        offset += t.size;
      }
      this->steps_ = 0;
    }
    this->clip();
  }

  // Updates elements [begin, end) of bound tensor i.
  void update(std::size_t i, Index begin, Index end) {
    const S lr = S(options.lr), mu = S(options.momentum), wd = S(options.weight_decay);
    const bool first = this->steps_ == 0;
    S* p = this->params_.tensors[i].data;
    const S* g = this->grads_.tensors[i].data;
    S* buf = momentum_.data() + offsets_[i];
    for (Index k = begin; k < end; ++k) {
      S d = g[k];
      if (wd != S(0)) d += wd * p[k];
      if (mu != S(0)) {
        buf[k] = first ? d : mu * buf[k] + d;
        d = options.nesterov ? d + mu * buf[k] : buf[k];
      }
      p[k] -= lr * d;
    }
  }

  void end_step() { ++this->steps_; }

 private:
  Vector<S> momentum_;          // [total]
  std::vector<Index> offsets_;  // of each tensor in momentum_
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled: theta -= lr * wd * theta
  bool decay_vectors = true;   // false: biases and gains (vectors) are not decayed
};

// AdamW, torch.optim.AdamW semantics:
//   theta *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   theta -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
template <class S>
class AdamW : public OptimizerBase<S> {
 public:
  AdamWOptions options;

  explicit AdamW(const AdamWOptions& options_ = {}) : options(options_) {}

  template <class Model>
  void step(Model& params, Model& grads) {
    begin_step(params, grads);
    for (std::size_t i = 0; i < this->params_.tensors.size(); ++i)
      detail::for_each_chunk(this->params_.tensors[i].size, [&](Index b, Index e) { update(i, b, e); });
    end_step();
  }

  // Binds (first call), clips, counts the step; then update() the elements,
  // then end_step().
  template <class Model>
  void begin_step(Model& params, Model& grads) {
    if (this->bind("AdamW::step", params, grads)) {
      m_.setZero(this->params_.total);
      v_.setZero(this->params_.total);
      offsets_.clear();
      Index offset = 0;
      for (const ParamTensor<S>& t : this->params_.tensors) {
        offsets_.push_back(offset);
        offset += t.size;
      }
      this->steps_ = 0;
    }
    this->clip();
    const long t = ++this->steps_;
    const double bc1 = 1 - std::pow(options.beta1, double(t));
    const double bc2 = 1 - std::pow(options.beta2, double(t));
    step_size_ = S(options.lr / bc1);
    bc2_sqrt_ = S(std::sqrt(bc2));
  }

  // Updates elements [begin, end) of bound tensor i.
  void update(std::size_t i, Index begin, Index end) {
    const ParamTensor<S>& tensor = this->params_.tensors[i];
    const bool decay = tensor.matrix || options.decay_vectors;
    const S keep = S(1 - options.lr * (decay ? options.weight_decay : 0.0));
    const S b1 = S(options.beta1), b2 = S(options.beta2), eps = S(options.eps);
    using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
    const Index n = end - begin, off = offsets_[i] + begin;
    Eigen::Map<Arr> ps(tensor.data + begin, n), ms(m_.data() + off, n), vs(v_.data() + off, n);
    const Eigen::Map<const Arr> gs(this->grads_.tensors[i].data + begin, n);
    ms = b1 * ms + (S(1) - b1) * gs;
    vs = b2 * vs + (S(1) - b2) * gs.square();
    if (keep != S(1)) ps *= keep;
    ps -= step_size_ * ms / (vs.sqrt() / bc2_sqrt_ + eps);
  }

  void end_step() {}

  const Vector<S>& first_moment() const { return m_; }   // [total], in visit order
  const Vector<S>& second_moment() const { return v_; }  // [total]

 private:
  Vector<S> m_, v_;
  std::vector<Index> offsets_;  // of each tensor in m_, v_
  S step_size_ = 0, bc2_sqrt_ = 1;
};

}  // namespace prenorm
