// Helpers shared by the converter tests: convert_test.cpp (GPT models, the
// plan, the transforms and adjoints) and convert_vit_test.cpp (ViT models).
// Tolerances and relative errors, error-message checks, the "[ max error ]"
// report, the random generator and the fillers of trained-looking Pre-LN
// blocks, the cast of a model to float, and the logits and main branch of a
// model (GPT or ViT) on a batch.
//
// Everything is in namespace prenorm_test; a test file brings it in with
// `using namespace prenorm_test;`.

#pragma once

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/models.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace prenorm_test {

using prenorm::Arch;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vector;
using MatD = RowMatrix<double>;
using VecD = Vector<double>;

// The models here are tiny, so OpenMP fork-joins (Eigen parallelises a GEMM
// above ~50k multiply-adds) cost more than the work they split, and on a loaded
// machine each one waits for a core: 60 s instead of 1.5 s was measured on two
// shared cores. Results do not depend on the thread count (layers_test checks
// it), and the converter itself is serial, so these tests run on one thread.
[[maybe_unused]] inline const bool kSingleThreaded = (prenorm::set_num_threads(1), true);

// ===========================================================================
// Tolerances, relative errors, error messages, the report
// ===========================================================================

template <class S>
constexpr double tol() {
  return std::is_same_v<S, float> ? 1e-5 : 1e-12;
}
template <class S>
const char* dtype() {
  return std::is_same_v<S, float> ? "float" : "double";
}

template <class DA, class DB>
double rel_err(const Eigen::MatrixBase<DA>& actual, const Eigen::MatrixBase<DB>& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) return INFINITY;
  const MatD a = actual.template cast<double>(), e = expected.template cast<double>();
  const double err = (a - e).norm() / e.norm();
  return std::isnan(err) ? INFINITY : err;
}

template <class DA, class DB>
::testing::AssertionResult close_rel(const Eigen::MatrixBase<DA>& actual,
                                     const Eigen::MatrixBase<DB>& expected, double tolerance,
                                     double* worst = nullptr) {
  const double err = rel_err(actual, expected);
  if (worst) *worst = std::max(*worst, err);
  if (err <= tolerance) return ::testing::AssertionSuccess();
  ::testing::AssertionResult r = ::testing::AssertionFailure();
  r << "relative error " << err << " > tolerance " << tolerance << " (" << actual.rows() << " x "
    << actual.cols() << " vs " << expected.rows() << " x " << expected.cols() << ")";
  if (actual.rows() == expected.rows() && actual.cols() == expected.cols())
    r << ", max |diff| "
      << (actual.template cast<double>() - expected.template cast<double>()).cwiseAbs().maxCoeff();
  return r;
}

template <class F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected prenorm::Error containing \"" << needles.front() << "\"";
  } catch (const prenorm::Error& e) {
    for (const std::string& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message: " << e.what() << "\nexpected to contain: " << needle;
  }
}

inline void report(const std::string& what, double err) {
  std::printf("[ max error ] %-72s %.3g\n", what.c_str(), err);
}

// ===========================================================================
// Random models
// ===========================================================================

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(std::uint64_t seed) : gen(seed) {}
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(gen); }
  Index uniform(Index lo, Index hi) { return std::uniform_int_distribution<Index>(lo, hi)(gen); }
  bool coin() { return uniform(0, 1) == 1; }
  template <class T>
  void fill(T& t, double stddev, double mean = 0.0) {
    for (Index i = 0; i < t.size(); ++i) t.data()[i] = typename T::Scalar(mean + stddev * normal());
  }
};

// gamma N(1, 0.5) with a few entries forced negative.
inline void fill_gamma(VecD& g, Rng& rng) {
  rng.fill(g, 0.5, 1.0);
  g(0) = -std::abs(g(0)) - 0.3;
  if (g.size() > 3) g(g.size() / 2) = -1.5;
}

// Pre-LN block: affine far from identity, biases != 0, writers with a
// nonzero mean over the main branch (columns and bias), which recentering removes.
template <class Block>
void fill_pre_ln_block(Block& b, Rng& rng) {
  const double d = double(b.width);
  const double inner_attn = double(b.attn.out.weight.cols());
  const double inner_mlp = double(b.mlp.fc.weight.rows());
  fill_gamma(b.norm1_gamma, rng);
  rng.fill(b.norm1_beta, 0.5);
  rng.fill(b.attn.qkv.weight, 1.0 / std::sqrt(d));
  rng.fill(b.attn.qkv.bias, 0.2);
  rng.fill(b.attn.out.weight, 0.5 / std::sqrt(inner_attn), 0.2);
  rng.fill(b.attn.out.bias, 0.5, 2.0);
  fill_gamma(b.norm2_gamma, rng);
  rng.fill(b.norm2_beta, 0.5);
  rng.fill(b.mlp.fc.weight, 1.0 / std::sqrt(d));
  rng.fill(b.mlp.fc.bias, 0.2);
  rng.fill(b.mlp.proj.weight, 0.5 / std::sqrt(inner_mlp), -0.1);
  rng.fill(b.mlp.proj.bias, 0.5, -1.0);
}

// The same model (Gpt or Vit) with every tensor rounded to To.
template <class To, template <Arch, class> class Model, Arch A>
Model<A, To> cast_model(const Model<A, double>& src) {
  std::vector<MatD> mats;
  std::vector<VecD> vecs;
  src.visit_parameters([&](const std::string&, const auto& t) {
    if constexpr (std::decay_t<decltype(t)>::ColsAtCompileTime == 1) vecs.push_back(t);
    else mats.push_back(t);
  });
  Model<A, To> dst(src.config);
  std::size_t mi = 0, vi = 0;
  dst.visit_parameters([&](const std::string&, auto& t) {
    if constexpr (std::decay_t<decltype(t)>::ColsAtCompileTime == 1) t = vecs[vi++].template cast<To>();
    else t = mats[mi++].template cast<To>();
  });
  dst.validate();
  return dst;
}

// ===========================================================================
// Logits and the main branch
// ===========================================================================

// The logits of a batch, in double. Batch: anything with a view() that the
// model's forward takes (the tests' Tokens, Images).
template <class Model, class Batch>
MatD logits(Model& m, const Batch& batch) {
  return m.forward(batch.view()).template cast<double>();
}

// The main branch after every block (and the embeddings), recorded by the hook.
template <class Model, class Batch>
std::vector<MatD> branches(Model& m, const Batch& batch, MatD* out_logits = nullptr) {
  std::vector<MatD> hs;
  const MatD l = m.forward(batch.view(), [&](Index, const RowMatrix<typename Model::Scalar>& h) {
                   hs.push_back(h.template cast<double>());
                 }).template cast<double>();
  if (out_logits) *out_logits = l;
  return hs;
}

// max over rows of |mean(row)| / rms(row).
inline double max_relative_row_mean(const MatD& h) {
  double worst = 0;
  for (Index r = 0; r < h.rows(); ++r) {
    const double rms = std::sqrt(h.row(r).squaredNorm() / double(h.cols()));
    worst = std::max(worst, std::abs(h.row(r).mean()) / rms);
  }
  return worst;
}

// ===========================================================================
// Random conversion chains (the property tests)
// ===========================================================================

// Converts src `steps` times, each time to one of the two other architectures
// picked by rng, with convert_to.template operator()<To>(model); every model's
// logits_of(model) must stay within tol<S>() (relative) of src's, and in double
// a Pre-(C)RMSNorm model's main branch must be zero-mean. path grows with the
// architectures visited (for the failure message); returns the worst relative
// difference.
template <class S, class Model, class Convert, class Logits>
double random_conversion_chain(Model& src, int steps, Rng& rng, const Convert& convert_to,
                               const Logits& logits_of, std::string& path) {
  const MatD ref = logits_of(src);
  double worst = 0;
  const auto step_from = [&](auto& model, auto&& self, int left) -> void {
    constexpr Arch From = std::decay_t<decltype(model)>::arch;
    if (left == 0) return;
    const bool pick = rng.coin();
    const auto go = [&]<Arch To>() {
      path += std::string(" -> ") + std::string(prenorm::arch_name(To));
      auto next = convert_to.template operator()<To>(model);
      EXPECT_TRUE(close_rel(logits_of(next), ref, tol<S>(), &worst)) << path;
      if constexpr (To != Arch::PreLN && std::is_same_v<S, double>) {
        EXPECT_LE(prenorm::zero_mean_report(next).relative, 1e-12) << path;
      }
      self(next, self, left - 1);
    };
    if constexpr (From == Arch::PreLN) {
      if (pick) go.template operator()<Arch::PreRMSNorm>();
      else go.template operator()<Arch::PreCRMSNorm>();
    } else if constexpr (From == Arch::PreRMSNorm) {
      if (pick) go.template operator()<Arch::PreLN>();
      else go.template operator()<Arch::PreCRMSNorm>();
    } else {
      if (pick) go.template operator()<Arch::PreLN>();
      else go.template operator()<Arch::PreRMSNorm>();
    }
  };
  step_from(src, step_from, steps);
  return worst;
}

}  // namespace prenorm_test
