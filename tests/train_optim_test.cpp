// Tests of the optimizers (include/prenorm/train/optim.hpp): SGD with
// momentum (plain and Nesterov, with L2 weight decay) and AdamW (decoupled
// weight decay, bias correction) against reference steps computed here by
// hand, element by element, in double; clipping by the global norm; binding
// to a model's tensors. Typed over float and double where the dtype matters.

#include <gtest/gtest.h>

#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace {

using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;

// A minimal model: one matrix and one vector, visited in this order.
template <class S>
struct TinyModel {
  using Scalar = S;
  RowMatrix<S> weight = RowMatrix<S>::Zero(2, 3);
  Vector<S> bias = Vector<S>::Zero(2);
  Vector<S> empty;  // skipped by the optimizers

  template <class F>
  void visit_parameters(F&& f) {
    f(std::string("weight"), weight);
    f(std::string("empty"), empty);
    f(std::string("bias"), bias);
  }
};

template <class S>
void set(TinyModel<S>& m, const std::vector<double>& values) {
  for (Index i = 0; i < 6; ++i) m.weight.data()[i] = S(values[std::size_t(i)]);
  for (Index i = 0; i < 2; ++i) m.bias[i] = S(values[std::size_t(6 + i)]);
}
template <class S>
std::vector<double> get(const TinyModel<S>& m) {
  std::vector<double> v;
  for (Index i = 0; i < 6; ++i) v.push_back(double(m.weight.data()[i]));
  for (Index i = 0; i < 2; ++i) v.push_back(double(m.bias[i]));
  return v;
}

const std::vector<double> kTheta0{0.5, -1.25, 2.0, 0.1, -0.3, 0.75, 1.5, -0.2};
// Gradients of three steps.
const std::vector<std::vector<double>> kGrads{
    {0.3, -0.1, 0.02, -0.7, 0.0, 1.2, -0.4, 0.05},
    {0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8},
    {-0.25, 0.5, 0.125, 0.0, 0.3, -0.9, 0.2, -0.1}};

template <class S>
class OptimTest : public ::testing::Test {
 protected:
  static double tolerance() { return std::is_same_v<S, float> ? 2e-6 : 1e-14; }
};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(OptimTest, Scalars);

TYPED_TEST(OptimTest, SgdMomentumMatchesReference) {
  using S = TypeParam;
  for (bool nesterov : {false, true}) {
    const double lr = 0.1, mu = 0.9, wd = 0.01;
    prenorm::Sgd<S> sgd({.lr = lr, .momentum = mu, .weight_decay = wd, .nesterov = nesterov});
    TinyModel<S> params, grads;
    set(params, kTheta0);
    // Reference, element by element (torch.optim.SGD, dampening 0).
    std::vector<double> theta = kTheta0, buf(8, 0.0);
    for (std::size_t step = 0; step < kGrads.size(); ++step) {
      set(grads, kGrads[step]);
      sgd.step(params, grads);
      for (std::size_t i = 0; i < 8; ++i) {
        const double g = kGrads[step][i] + wd * theta[i];
        buf[i] = step == 0 ? g : mu * buf[i] + g;
        theta[i] -= lr * (nesterov ? g + mu * buf[i] : buf[i]);
      }
      const std::vector<double> got = get(params);
      for (std::size_t i = 0; i < 8; ++i)
        EXPECT_NEAR(got[i], theta[i], this->tolerance()) << "step " << step << " element " << i
                                                         << (nesterov ? " (nesterov)" : "");
    }
    EXPECT_EQ(sgd.steps(), 3);
  }
}

// The first step by hand: theta1 = theta0 - lr * g.
TEST(Optim, SgdFirstStepIsPlainGradientStep) {
  prenorm::Sgd<double> sgd({.lr = 0.5, .momentum = 0.9});
  TinyModel<double> params, grads;
  set(params, kTheta0);
  set(grads, kGrads[0]);
  sgd.step(params, grads);
  const std::vector<double> got = get(params);
  for (std::size_t i = 0; i < 8; ++i) EXPECT_DOUBLE_EQ(got[i], kTheta0[i] - 0.5 * kGrads[0][i]);
}

TYPED_TEST(OptimTest, AdamWMatchesReference) {
  using S = TypeParam;
  for (bool decay_vectors : {true, false}) {
    const prenorm::AdamWOptions o{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                                  .weight_decay = 0.1, .decay_vectors = decay_vectors};
    prenorm::AdamW<S> adam(o);
    TinyModel<S> params, grads;
    set(params, kTheta0);
    std::vector<double> theta = kTheta0, m(8, 0.0), v(8, 0.0);
    for (std::size_t step = 0; step < kGrads.size(); ++step) {
      set(grads, kGrads[step]);
      adam.step(params, grads);
      const double t = double(step + 1);
      for (std::size_t i = 0; i < 8; ++i) {
        const double g = kGrads[step][i];
        const bool decay = i < 6 || decay_vectors;  // the last two are the bias vector
        theta[i] *= 1 - o.lr * (decay ? o.weight_decay : 0.0);
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
        const double m_hat = m[i] / (1 - std::pow(o.beta1, t));
        const double v_hat = v[i] / (1 - std::pow(o.beta2, t));
        theta[i] -= o.lr * m_hat / (std::sqrt(v_hat) + o.eps);
      }
      const std::vector<double> got = get(params);
      for (std::size_t i = 0; i < 8; ++i)
        EXPECT_NEAR(got[i], theta[i], this->tolerance()) << "step " << step << " element " << i;
    }
  }
}

// The first AdamW step moves each parameter by about lr * sign(g) (bias correction).
TEST(Optim, AdamWFirstStepIsSignStep) {
  prenorm::AdamW<double> adam({.lr = 0.01, .weight_decay = 0});
  TinyModel<double> params, grads;
  set(params, kTheta0);
  set(grads, kGrads[0]);
  adam.step(params, grads);
  const std::vector<double> got = get(params);
  for (std::size_t i = 0; i < 8; ++i) {
    const double g = kGrads[0][i];
    EXPECT_NEAR(got[i], kTheta0[i] - 0.01 * g / (std::abs(g) + 1e-8), 1e-15);
  }
}

TEST(Optim, ClipGlobalNorm) {
  TinyModel<double> grads;
  set(grads, kGrads[0]);
  double expected = 0;
  for (double g : kGrads[0]) expected += g * g;
  expected = std::sqrt(expected);
  prenorm::ParameterList<double> list(grads);
  EXPECT_EQ(list.tensors.size(), 2u);  // the empty tensor is skipped
  EXPECT_EQ(list.total, 8);
  EXPECT_NEAR(prenorm::global_norm(list), expected, 1e-15);

  // Below the limit: unchanged.
  EXPECT_NEAR(prenorm::clip_grad_norm(grads, 10.0), expected, 1e-15);
  EXPECT_EQ(get(grads), kGrads[0]);
  // Above: scaled to the limit (up to the 1e-6 guard).
  EXPECT_NEAR(prenorm::clip_grad_norm(grads, 0.5), expected, 1e-15);
  EXPECT_NEAR(prenorm::global_norm(list), 0.5, 1e-6);
  const std::vector<double> got = get(grads);
  for (std::size_t i = 0; i < 8; ++i) EXPECT_NEAR(got[i], kGrads[0][i] * 0.5 / (expected + 1e-6), 1e-15);
  EXPECT_THROW(prenorm::clip_grad_norm(grads, 0.0), prenorm::Error);
}

// max_grad_norm clips inside the step: SGD then moves by lr * clipped gradient.
TEST(Optim, OptimizerClipsBeforeTheStep) {
  prenorm::Sgd<double> sgd({.lr = 1.0, .momentum = 0});
  sgd.max_grad_norm = 0.1;
  TinyModel<double> params, grads;
  set(params, kTheta0);
  set(grads, kGrads[0]);
  sgd.step(params, grads);
  double norm = 0;
  const std::vector<double> got = get(params);
  for (std::size_t i = 0; i < 8; ++i) norm += (got[i] - kTheta0[i]) * (got[i] - kTheta0[i]);
  EXPECT_NEAR(std::sqrt(norm), 0.1, 1e-6);
  EXPECT_GT(sgd.last_grad_norm, 1.0);
}

// The optimizer binds to the tensors once; other models rebind (and reset the state).
TEST(Optim, BindsAndRebinds) {
  prenorm::AdamW<double> adam({.lr = 0.01, .weight_decay = 0});
  TinyModel<double> a, ga, b, gb;
  set(a, kTheta0);
  set(b, kTheta0);
  set(ga, kGrads[0]);
  set(gb, kGrads[0]);
  adam.step(a, ga);
  adam.step(a, ga);
  EXPECT_EQ(adam.steps(), 2);
  adam.step(b, gb);  // new models: a first step again
  EXPECT_EQ(adam.steps(), 1);
  TinyModel<double> after_one;
  set(after_one, kTheta0);
  TinyModel<double> g1;
  set(g1, kGrads[0]);
  prenorm::AdamW<double> fresh({.lr = 0.01, .weight_decay = 0});
  fresh.step(after_one, g1);
  EXPECT_EQ(get(b), get(after_one));

  // Gradients of another shape are refused.
  prenorm::Gpt<prenorm::Arch::PreLN, double> model(
      {.vocab = 5, .context = 4, .width = 4, .heads = 2, .layers = 1, .mlp_width = 8});
  prenorm::Gpt<prenorm::Arch::PreLN, double> other(
      {.vocab = 6, .context = 4, .width = 4, .heads = 2, .layers = 1, .mlp_width = 8});
  EXPECT_THROW(adam.step(model, other), prenorm::Error);
}

// Over a model: every non-empty tensor is updated, in visit order.
TEST(Optim, StepsEveryTensorOfAModel) {
  using Gpt = prenorm::Gpt<prenorm::Arch::PreLN, double>;
  Gpt model({.vocab = 5, .context = 4, .width = 4, .heads = 2, .layers = 1, .mlp_width = 8});
  model.init_random(1);
  Gpt grads(model.config), before = model;
  grads.visit_parameters([](const std::string&, auto& t) { t.setConstant(0.5); });
  prenorm::Sgd<double> sgd({.lr = 0.1, .momentum = 0});
  sgd.step(model, grads);
  std::vector<double> deltas;
  std::vector<const double*> b;
  before.visit_parameters([&](const std::string&, auto& t) { b.push_back(t.data()); });
  std::size_t k = 0;
  model.visit_parameters([&](const std::string& name, auto& t) {
    for (Index i = 0; i < t.size(); ++i) EXPECT_NEAR(t.data()[i], b[k][i] - 0.05, 1e-15) << name;
    ++k;
  });
}

}  // namespace
