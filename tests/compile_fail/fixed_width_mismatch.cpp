// Must NOT compile: a width mismatch known at compile time is a static_assert
// ("prenorm: x and y have different fixed widths", in detail/row_loops.hpp),
// not a run-time error. The ctest compile_fail.fixed_width_mismatch runs the
// compiler with -fsyntax-only on this file and looks for that message.
//
// With -DPRENORM_COMPILE_FAIL_CONTROL the widths match and the file must
// compile (compile_fail.fixed_width_mismatch.control): the failure is the
// static_assert, not a broken include or a typo.

#include <prenorm/ops.hpp>

#ifdef PRENORM_COMPILE_FAIL_CONTROL
inline constexpr int kOutputWidth = 768;
#else
inline constexpr int kOutputWidth = 767;
#endif

int main() {
  const prenorm::RowMatrix<float, 768> x = prenorm::RowMatrix<float, 768>::Zero(4, 768);
  prenorm::RowMatrix<float, kOutputWidth> y(4, kOutputWidth);
  prenorm::rms_norm_forward(x, y, 1e-5f);
  return 0;
}
