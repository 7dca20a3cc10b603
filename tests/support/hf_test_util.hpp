#pragma once
// What the Hugging Face family tests (tests/io_hf_*_test.cpp) share: the
// tolerance of a dtype, the relative error of an output against a long-double
// reference of hf_reference.hpp (or another output), and the message a call throws.

#include <gtest/gtest.h>

#include <prenorm/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "hf_reference.hpp"

namespace prenorm_test::hf {

// Outputs within 1e-5 (float) and 1e-12 (double) of the reference, relative to its largest entry.
template <class S>
constexpr double tolerance() {
  return std::is_same_v<S, float> ? 1e-5 : 1e-12;
}

// max |actual - reference| / max |reference|; infinite when the shapes differ.
template <class M>
double max_relative_error(const M& actual, const Mat& reference) {
  if (int(actual.rows()) != reference.rows || int(actual.cols()) != reference.cols) return INFINITY;
  long double diff = 0, scale = 0;
  for (int r = 0; r < reference.rows; ++r)
    for (int c = 0; c < reference.cols; ++c) {
      diff = std::max(diff, std::abs((long double)actual(r, c) - reference(r, c)));
      scale = std::max(scale, std::abs(reference(r, c)));
    }
  return double(diff / scale);
}

// The same between two Eigen matrices, in double.
template <class A, class B>
double max_relative_error(const A& actual, const B& expected) {
  const prenorm::RowMatrix<double> a = actual.template cast<double>(), e = expected.template cast<double>();
  if (a.rows() != e.rows() || a.cols() != e.cols()) return INFINITY;
  return (a - e).cwiseAbs().maxCoeff() / e.cwiseAbs().maxCoeff();
}

// The message of what `f` throws ("" when it does not throw).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "";
}

// f throws, with every one of `parts` in its message.
inline void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  const std::string message = error_of(f);
  EXPECT_FALSE(message.empty()) << "no exception";
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
}

}  // namespace prenorm_test::hf
