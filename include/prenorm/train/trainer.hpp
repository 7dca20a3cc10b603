#pragma once
// Trainers.
//
//   Trainer<Model, Optimizer>            trains a model directly: forward,
//                                        backward, optimizer step.
//   ReparamTrainer<To, Model, Optimizer> keeps the raw Pre-LN parameters theta and
//                                        trains them through the converter
//                                        (docs/DESIGN.md §6): each step
//     1. phi = convert<To>(theta, {tied}) into preallocated storage
//     2. forward and backward in the Pre-RMSNorm / Pre-CRMSNorm model phi
//     3. grad_theta = J^T grad_phi, the converter's adjoint
//     4. the optimizer steps theta.
//   Because f_LN(x, theta) = f_To(x, convert(theta)) for every theta, the
//   gradient with respect to theta is the Pre-LN gradient, and any optimizer
//   follows the Pre-LN trajectory up to rounding.
//
//   A tied GPT (ReparamOptions::tied):
//     Keep   (default) phi keeps the one table E: the lookup recenters (and
//            compresses) each row it reads, the head applies decompression
//            and gamma_f, beta_f to its input, O(d) per token; the head's
//            gradient and the lookup's go into dE, the product rule into
//            dgamma_f, dbeta_f. Training reads E from theta, so no vocab x d
//            tensor of phi is written per step. The default because it is as
//            exact and measured faster: GPT-3 Small, B=4, T=64, one core,
//            12 to 14 ms less conversion per step (-0.8 points of the step:
//            conversion + adjoint 2.6 % instead of 3.4 % for Pre-RMSNorm);
//            gpt_w256: 3.6 to 7.2 ms less (bench/NOTES.md).
//     Untie  phi has its own head C(E diag(gamma_f)) with bias E beta_f,
//            written every step; the adjoint sums both gradients into dE.
//   Both follow the Pre-LN trajectory (the tests hold them to it).
//
//   ReparamOptions choose where 1 and 3 happen. The defaults fold them into
//   passes the step makes anyway, which matters on a memory-bound CPU where a
//   separate O(parameters) pass costs several percent of a step:
//     adjoint  InBackward  J^T applied to the factors of each weight gradient
//                          inside the backward (reparam_backward.hpp)
//              Explicit    grad_phi materialized, then convert_adjoint
//                          (model_adjoint.hpp)
//     convert  InOptimizer each block of theta's rows converted right after
//                          the optimizer updates it (reparam_step.hpp); GPT's
//                          token rows as each batch looks them up
//              Separate    convert_into at the start of each step
//   All four combinations compute the same thing (the tests hold them to it).
//
// Model is Gpt<A, S> or Vit<A, S>. Both trainers own their models, gradients
// and activations, and allocate nothing after the first step for a given
// batch shape. With `timing` on, StepTimings splits each step.

#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include "../convert/convert.hpp"
#include "../convert/model_adjoint.hpp"
#include "../core/arch.hpp"
#include "../models/gpt.hpp"
#include "../models/packing.hpp"
#include "../models/vit.hpp"
#include "gpt_train.hpp"
#include "optim.hpp"
#include "reparam_step.hpp"
#include "vit_train.hpp"

namespace prenorm {

// The training engine of a model type, and the same model in another architecture.
template <class Model>
struct TrainTraits;
template <Arch A, class S>
struct TrainTraits<Gpt<A, S>> {
  using Engine = GptTrainEngine<A, S>;
  template <Arch To>
  using WithArch = Gpt<To, S>;
  static constexpr Arch arch = A;
};
template <Arch A, class S>
struct TrainTraits<Vit<A, S>> {
  using Engine = VitTrainEngine<A, S>;
  template <Arch To>
  using WithArch = Vit<To, S>;
  static constexpr Arch arch = A;
};

// Seconds per part, summed over the steps since the last reset().
struct StepTimings {
  long steps = 0;
  double total = 0;             // whole steps, start to end: the parts below add up to at most this
  double forward_backward = 0;  // forward, loss and backward (normalization included)
  double norm = 0;              // in the normalization kernels (forward and backward)
  double convert = 0;           // phi = convert(theta)          (ReparamTrainer only)
  double adjoint = 0;           // grad_theta = J^T grad_phi     (ReparamTrainer only)
  double optimizer = 0;         // the optimizer step (clipping included)

  void reset() { *this = StepTimings{}; }
  double share(double part) const { return total > 0 ? part / total : 0; }
};

namespace detail {

class Stopwatch {
 public:
  explicit Stopwatch(bool on) : on_(on) {
    if (on_) start_ = last_ = std::chrono::steady_clock::now();
  }
  // Seconds since the last lap (0 when off).
  double lap() {
    if (!on_) return 0;
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return s;
  }
  // Seconds since the start, read now (0 when off): a step's total, measured
  // apart from its parts, so that a part counted twice shows (the parts then
  // add up to more).
  double total() const {
    if (!on_) return 0;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace detail

template <class Model, class Optimizer>
class Trainer {
 public:
  using Engine = typename TrainTraits<Model>::Engine;
  using Batch = typename Engine::Batch;
  using Scalar = typename Model::Scalar;

  bool timing = false;  // fill `timings` (adds two clock reads per norm call)
  StepTimings timings;

  // Zero gradients of the model's shapes; the optimizer binds on the first step.
  Trainer(Model model, Optimizer optimizer)
      : model_(std::move(model)), grads_(model_.config), optimizer_(std::move(optimizer)) {
    unpack_weights(model_);  // the optimizer changes the weights in place
  }
  Trainer(const Trainer&) = delete;  // the optimizer holds addresses of model and grads
  Trainer& operator=(const Trainer&) = delete;

  // One step: forward, backward, optimizer. Returns the loss before the update.
  double step(const Batch& batch) {
    detail::Stopwatch watch(timing);
    engine_.norm_clock.enabled = timing;
    engine_.norm_clock.seconds = 0;
    const double loss = engine_.forward_backward(model_, batch, grads_);
    const double fb = watch.lap();
    optimizer_.step(model_, grads_);
    const double opt = watch.lap();
    if (timing) {
      ++timings.steps;
      timings.forward_backward += fb;
      timings.norm += engine_.norm_clock.seconds;
      timings.optimizer += opt;
      timings.total += watch.total();
    }
    return loss;
  }

  // Forward and backward only: the loss, with the gradients in grads().
  double compute_gradients(const Batch& batch) { return engine_.forward_backward(model_, batch, grads_); }

  // The loss without gradients or update.
  double evaluate(const Batch& batch) { return engine_.forward_loss(model_, batch); }

  Model& model() { return model_; }
  const Model& model() const { return model_; }
  Model& grads() { return grads_; }
  Optimizer& optimizer() { return optimizer_; }
  Engine& engine() { return engine_; }

 private:
  Model model_;
  Model grads_;
  Optimizer optimizer_;
  Engine engine_;
};

// How ReparamTrainer pulls the gradient back to theta.
enum class AdjointMode {
  // The adjoint applied to the factors of each weight gradient inside the
  // backward (reparam_backward.hpp): no dL/dphi is stored, and the GEMMs write
  // dL/dtheta. O(tokens x d) extra work per linear.
  InBackward,
  // dL/dphi materialized by the plain backward of phi, then convert_adjoint
  // (model_adjoint.hpp): O(parameters) extra memory traffic per step.
  Explicit,
};

// How ReparamTrainer materializes phi = convert(theta).
enum class ConvertMode {
  // Each block of rows converted right after the optimizer updates it
  // (reparam_step.hpp): phi is ready for the next step.
  InOptimizer,
  // convert_into at the start of each step: a separate O(parameters) pass.
  Separate,
};

struct ReparamOptions {
  AdjointMode adjoint = AdjointMode::InBackward;
  ConvertMode convert = ConvertMode::InOptimizer;
  // What a tied GPT's head becomes in phi (see the top of this file). Like
  // convert's option, ignored where there is no tie (an untied GPT, a ViT).
  TiedPolicy tied = TiedPolicy::Keep;
};

template <Arch To, class Model, class Optimizer>
class ReparamTrainer {
 public:
  static_assert(TrainTraits<Model>::arch == Arch::PreLN,
                "prenorm::ReparamTrainer: theta is a Pre-LN model");
  static_assert(To == Arch::PreRMSNorm || To == Arch::PreCRMSNorm,
                "prenorm::ReparamTrainer: the target is Pre-RMSNorm or Pre-CRMSNorm");
  using Target = typename TrainTraits<Model>::template WithArch<To>;
  using Engine = typename TrainTraits<Target>::Engine;
  using Batch = typename Engine::Batch;
  using Scalar = typename Model::Scalar;
  static constexpr Arch target = To;

  bool timing = false;
  StepTimings timings;

  // Whether the optimizer can be driven range by range (ConvertMode::InOptimizer).
  static constexpr bool kDrivable = requires(Optimizer& o, Model& m, std::size_t i) {
    o.begin_step(m, m);
    o.update(i, Index(0), Index(0));
    o.end_step();
    o.bound_params();
  };
  // GPT's token table is converted lazily: the rows of each batch (see ConvertingUpdate).
  static constexpr bool kLazyRows = std::is_same_v<Batch, GptBatch>;

  // theta: the Pre-LN parameters to train. phi gets its layout from
  // convert<To>(theta, {options.tied}).
  ReparamTrainer(Model theta, Optimizer optimizer, const ReparamOptions& options = {})
      : theta_(std::move(theta)),
        grad_theta_(theta_.config),
        phi_(convert<To>(theta_, ConvertOptions{.tied = options.tied})),
        optimizer_(std::move(optimizer)),
        options_(options) {
    unpack_weights(theta_);  // the optimizer changes the weights in place
    if (options_.adjoint == AdjointMode::Explicit) grad_phi_.emplace(phi_.config);
  }
  ReparamTrainer(const ReparamTrainer&) = delete;
  ReparamTrainer& operator=(const ReparamTrainer&) = delete;

  // One step through the converter. Returns the loss before the update.
  // Timings: the parts done inside other passes (the adjoint inside the
  // backward, the conversion inside the optimizer step) are timed there and
  // moved from those passes' times to their own.
  double step(const Batch& batch) {
    detail::Stopwatch watch(timing);
    engine_.norm_clock.enabled = timing;
    engine_.norm_clock.seconds = 0;
    ws_.clock.enabled = timing;
    ws_.clock.seconds = 0;
    updater_.clock.enabled = timing;
    updater_.clock.seconds = 0;
    if constexpr (kLazyRows) {
      engine_.tied_clock.enabled = timing;
      engine_.tied_clock.seconds = 0;
    }
    refresh_phi();
    refresh_token_rows(batch);
    double conv = watch.lap();
    const double loss = gradients(batch);
    double fb = watch.lap();
    if constexpr (kLazyRows) {  // a keep-tied phi's per-token conversion
      conv += engine_.tied_clock.seconds;
      fb -= engine_.tied_clock.seconds;
    }
    pull_back();
    double adj = watch.lap();
    adj += ws_.clock.seconds;
    fb -= ws_.clock.seconds;
    update();
    double opt = watch.lap();
    conv += updater_.clock.seconds;
    opt -= updater_.clock.seconds;
    if (timing) {
      ++timings.steps;
      timings.convert += conv;
      timings.forward_backward += fb;
      timings.norm += engine_.norm_clock.seconds;
      timings.adjoint += adj;
      timings.optimizer += opt;
      timings.total += watch.total();
    }
    return loss;
  }

  // Forward, backward and adjoint only: the loss, with grad_theta() filled.
  double compute_gradients(const Batch& batch) {
    refresh_phi();
    refresh_token_rows(batch);
    const double loss = gradients(batch);
    pull_back();
    return loss;
  }

  const ReparamOptions& options() const { return options_; }

  // The loss of the current theta (computed by phi) without gradients.
  double evaluate(const Batch& batch) {
    refresh_phi();
    refresh_token_rows(batch);
    if constexpr (kLazyRows) return engine_.forward_loss_reparam(phi_, theta_, batch);
    else return engine_.forward_loss(phi_, batch);
  }

  const Model& theta() const { return theta_; }
  // Mutable theta: changing it marks phi stale.
  Model& theta_mutable() {
    phi_stale_ = true;
    return theta_;
  }
  // phi = convert(theta), up to date: the trained model in the target architecture.
  const Target& phi() {
    refresh_phi();
    if constexpr (kLazyRows) {
      if (token_table_stale_) {
        updater_.convert_token_table(theta_, phi_);
        token_table_stale_ = false;
      }
    }
    return phi_;
  }
  const Model& grad_theta() const { return grad_theta_; }
  // dL/dphi of the last step (AdjointMode::Explicit only).
  const Target& grad_phi() const {
    if (!grad_phi_) detail::fail("ReparamTrainer::grad_phi", "dL/dphi is only stored with AdjointMode::Explicit");
    return *grad_phi_;
  }
  Optimizer& optimizer() { return optimizer_; }
  Engine& engine() { return engine_; }

 private:
  Model theta_;
  Model grad_theta_;
  Target phi_;
  std::optional<Target> grad_phi_;  // AdjointMode::Explicit only
  Optimizer optimizer_;
  ReparamOptions options_;
  Engine engine_;
  ConvertingUpdate<To, Scalar> updater_;
  ConvertWorkspace<Scalar> convert_ws_;
  ReparamWorkspace<Scalar> ws_;
  bool phi_stale_ = true;
  bool token_table_stale_ = false;  // phi's token table holds only the last batches' rows
  std::vector<int> last_rows_;  // rows of grad_theta's token table written last step (untied GPT)
  bool rows_valid_ = false;

  void refresh_phi() {
    if (!phi_stale_) return;
    convert_into(theta_, phi_, convert_ws_);
    phi_stale_ = false;
    token_table_stale_ = false;
  }

  // A keep-tied phi (GPT, TiedPolicy::Keep on a tied theta).
  bool keeps_tie() const {
    if constexpr (kLazyRows) return phi_.tied_affine();
    else return false;
  }

  // GPT with the conversion in the optimizer: the token rows a batch reads.
  // (A keep-tied phi's lookup reads theta's E: nothing to convert.)
  void refresh_token_rows(const Batch& batch) {
    if constexpr (kLazyRows) {
      if (token_table_stale_ && !keeps_tie()) updater_.convert_token_rows(theta_, phi_, batch.inputs.ids);
    }
  }

  // The optimizer step, and phi for the next step when it is fused in.
  void update() {
    if constexpr (kDrivable) {
      if (options_.convert == ConvertMode::InOptimizer) {
        // Lazy token rows, except for a keep-tied phi with the explicit
        // adjoint: phi's own backward reads all of its E (for the head).
        updater_.lazy_token_rows =
            kLazyRows && !(keeps_tie() && options_.adjoint == AdjointMode::Explicit);
        updater_.step(optimizer_, theta_, grad_theta_, phi_);
        phi_stale_ = false;
        token_table_stale_ = updater_.lazy_token_rows;
        return;
      }
    }
    optimizer_.step(theta_, grad_theta_);
    phi_stale_ = true;
  }

  double gradients(const Batch& batch) {
    if (options_.adjoint == AdjointMode::InBackward)
      return engine_.forward_backward_reparam(phi_, theta_, batch, grad_theta_, ws_);
    return engine_.forward_backward(phi_, batch, *grad_phi_);
  }

  // Explicit mode: grad_theta = J^T grad_phi.
  void pull_back() {
    if (options_.adjoint == AdjointMode::InBackward) return;
    AdjointOptions options;
    if constexpr (requires { engine_.token_rows(); }) {
      options.sparse_token_rows = true;
      options.token_rows = engine_.token_rows();
      if (!theta_.config.tied) {
        // Untied: only the batch's rows are written; clear the last step's.
        auto& table = grad_theta_.token_embedding.table;
        if (!rows_valid_) table.setZero();
        else for (int r : last_rows_) table.row(r).setZero();
        last_rows_.reserve(std::size_t(theta_.config.vocab));  // once: at most one entry per row
        last_rows_.assign(options.token_rows.begin(), options.token_rows.end());
        rows_valid_ = true;
      }
    }
    convert_adjoint(theta_, *grad_phi_, grad_theta_, convert_ws_, options);
  }
};

}  // namespace prenorm
