#pragma once
// Row-parallel loops. With OpenMP, rows are split among threads; each row is
// reduced by exactly one thread, so results are bitwise identical for any
// thread count. Without OpenMP the loops run serially.

#include "types.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace prenorm {

// Sets the number of threads prenorm uses (OpenMP's global setting); no-op without OpenMP.
inline void set_num_threads(int threads) {
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {

// Below this many elements a parallel region costs more than it saves.
inline constexpr Index kParallelMinElements = Index(1) << 15;

// Calls body(row) for row in [0, rows); in parallel when the work is large enough.
template <class Body>
void for_each_row(Index rows, [[maybe_unused]] Index cols, Body&& body) {
#ifdef _OPENMP
  if (rows > 1 && rows * cols >= kParallelMinElements && omp_get_max_threads() > 1 &&
      !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Index r = 0; r < rows; ++r) body(r);
    return;
  }
#endif
  for (Index r = 0; r < rows; ++r) body(r);
}

// Calls body(begin, end) on contiguous blocks of rows that cover [0, rows): one
// block per thread (the rows for_each_row would give it), or one block serially.
template <class Body>
void for_each_row_block(Index rows, [[maybe_unused]] Index cols, Body&& body) {
  if (rows == 0) return;
#ifdef _OPENMP
  if (rows > 1 && rows * cols >= kParallelMinElements && omp_get_max_threads() > 1 &&
      !omp_in_parallel()) {
#pragma omp parallel
    {
      const Index threads = omp_get_num_threads(), t = omp_get_thread_num();
      const Index begin = rows * t / threads, end = rows * (t + 1) / threads;
      if (begin < end) body(begin, end);
    }
    return;
  }
#endif
  body(Index(0), rows);
}

}  // namespace detail
}  // namespace prenorm
