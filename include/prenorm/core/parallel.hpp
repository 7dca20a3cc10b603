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

// Calls body(begin, end) on contiguous blocks of rows that cover [0, rows): one
// block per thread when the work is large enough, else one block serially.
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

// Calls body(row) for row in [0, rows); in parallel when the work is large enough.
template <class Body>
void for_each_row(Index rows, Index cols, Body&& body) {
  for_each_row_block(rows, cols, [&](Index begin, Index end) {
    for (Index r = begin; r < end; ++r) body(r);
  });
}

}  // namespace detail
}  // namespace prenorm
