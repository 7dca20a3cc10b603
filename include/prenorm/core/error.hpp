#pragma once
// prenorm's error type and the checks that build its messages.
//
// Every run-time mismatch throws prenorm::Error (a std::invalid_argument) whose
// message names the operation, what was expected and what was found, e.g.
//   "prenorm::layer_norm_forward: gamma has 767 elements, expected 768 (the width of x)"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace prenorm {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(const char* op, Parts&&... parts) {
  std::ostringstream message;
  message << "prenorm::" << op << ": ";
  (message << ... << std::forward<Parts>(parts));
  throw Error(message.str());
}

// `what` has `actual` entries along `axis`; `expected` are required.
inline void check_size(const char* op, const char* what, const char* axis, long long actual,
                       long long expected, const char* why) {
  if (actual != expected)
    fail(op, what, " has ", actual, " ", axis, ", expected ", expected, " (", why, ")");
}

template <class Scalar>
void check_epsilon(const char* op, Scalar epsilon) {
  if (!(epsilon > Scalar(0)) || !std::isfinite(epsilon))
    fail(op, "epsilon must be finite and > 0, got ", epsilon);
}

}  // namespace detail
}  // namespace prenorm
