#pragma once
// prenorm's one parallel-for policy: the only place that decides whether a
// loop runs on threads and how it is split (Eigen's own GEMM threading aside).
//
// Two loops, both over independent items, each item computed whole by one
// thread, so that results are bitwise identical for any thread count:
//   for_each_row_block / for_each_row   contiguous blocks of rows, one per thread
//   for_each_task                       tasks taken one at a time (dynamic), with
//                                       the thread's slot for per-thread scratch
// Without OpenMP, or inside a parallel region already, they run serially on
// the calling thread; they never allocate.
//
// Cost model. A loop goes parallel when it has at least two items and its
// work, counted in flops, reaches kParallelMinFlops. Matrix products count
// 2 flops per multiply-add; element-wise row loops count kFlopsPerElement
// per element, about the time a pass over one element (a norm, an
// activation, a residual add) takes in GEMM flops, rounded up: on the host
// below, GEMM runs at 0.008 ns a flop and element-wise loops at 0.05 (an
// add) to 0.25 ns (a tanh GELU) an element.
//
// Threshold, measured on a 2-core VM shared with other jobs (GCC 12's
// libgomp; a throwaway harness, medians of 31 runs with the serial and the
// 2-thread loop interleaved, three runs). Opening and joining a parallel
// region cost 0.6, 0.6 and 5.4 us. 2-thread time / serial time:
//                                          at the threshold    at 1/8 of it
//   padded product 64x128x128 (2.1e6 flops)   0.92 0.71 0.81    32x64x64: 2.0 0.96 2.0
//   decode attention, 12 heads x 64,
//     683 keys (2.1e6 flops)                  0.72 0.92 0.75    64 keys:  1.3 0.83 1.35
//   tanh GELU, 2^15 elements                  0.76 0.59 0.63
//   residual add, 2^15 elements               1.7  1.03 0.86    (0.52 0.57 at 2^17)
// At 2^21 flops (2^15 elements) every kind gains in the median run but the
// cheapest loop (an add: about even, within 1 us); at 1/8 of it, products and
// attention lose in two runs of three. It is also where the dispatchers this
// replaced switched (2^15 elements; 2e6 flops for attention, 4e6 for the
// padded product).
//
// At the models' shapes: every forward and training step of ViT-Ti and GPT-3
// Small is far above it; a decode step at batch 1 runs its row loops and
// products serially (one row: a matrix-vector product) and its attention in
// parallel from 683 cached keys with 12 heads of 64 (from 651 before). (The
// padded product's figures above were taken when its threads split x's rows;
// they now split W's rows, layers/detail/padded_product.hpp.)

#include <algorithm>

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

// Below this much work (flops) a parallel region costs more than it saves (see above).
inline constexpr double kParallelMinFlops = double(1 << 21);
// An element-wise pass over one element, in flops (see above).
inline constexpr double kFlopsPerElement = 64;
// The element count of an element-wise loop at the threshold: 2^15.
inline constexpr Index kParallelMinElements = Index(kParallelMinFlops / kFlopsPerElement);

// The work of an element-wise loop over rows x cols elements, in flops.
inline double element_flops(Index rows, Index cols) {
  return double(rows) * double(cols) * kFlopsPerElement;
}

// The number of per-thread scratch slots a caller of for_each_task sizes its
// scratch for: a task's slot is below it. Read it just before the loop (it
// follows set_num_threads).
inline Index thread_slots() { return Index(num_threads()); }

// The size of one thread's slot in a scratch buffer of S holding n values,
// rounded up to a whole 64 bytes, so that every slot starts at the same
// alignment as slot 0. Eigen's reductions (a softmax's sum) start their
// packets at the first aligned element, so the order of a sum over a row in
// the scratch depends on its address: slots of n values each would make a
// task's result depend on which thread ran it.
template <class S>
constexpr Index aligned_slot_size(Index n) {
  constexpr Index per_line = Index(64 / sizeof(S));
  return (n + per_line - 1) / per_line * per_line;
}

// The calling thread's number in its team: the slot for_each_task passes
// when it runs on threads; 0 outside a parallel region.
inline Index thread_slot() {
#ifdef _OPENMP
  return Index(omp_get_thread_num());
#else
  return 0;
#endif
}

// The number of threads a loop over `items` items of `flops` work in all
// runs on, at most max_threads: 1 (serial, on the calling thread) below the
// threshold, for fewer than two items, with one thread, or inside a
// parallel region.
inline Index loop_threads(Index items, double flops, Index max_threads) {
#ifdef _OPENMP
  if (items < 2 || flops < kParallelMinFlops || omp_in_parallel()) return 1;
  return std::max<Index>(1, std::min({items, max_threads, Index(omp_get_max_threads())}));
#else
  (void)items, (void)flops, (void)max_threads;
  return 1;
#endif
}

// Calls body(begin, end) on contiguous blocks of rows that cover [0, rows):
// one block per thread, each of at least min_rows rows, when `flops` (the
// work of all rows) reaches the threshold; else one block serially.
// min_rows: where each block has a fixed cost of its own (a product packs
// the whole of its other operand per block).
template <class Body>
void for_each_row_block(Index rows, double flops, Index min_rows, Body&& body) {
  if (rows <= 0) return;
  [[maybe_unused]] const Index threads = loop_threads(rows, flops, rows / std::max<Index>(1, min_rows));
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(int(threads))
    {
      // The team may be smaller than asked for: split among those there are.
      const Index n = omp_get_num_threads(), t = omp_get_thread_num();
      const Index begin = rows * t / n, end = rows * (t + 1) / n;
      if (begin < end) body(begin, end);
    }
    return;
  }
#endif
  body(Index(0), rows);
}

// The same for an element-wise loop over rows of cols elements.
template <class Body>
void for_each_row_block(Index rows, Index cols, Body&& body) {
  for_each_row_block(rows, element_flops(rows, cols), 1, body);
}

// Calls body(row) for row in [0, rows) of cols elements; in parallel when the work is large enough.
template <class Body>
void for_each_row(Index rows, Index cols, Body&& body) {
  for_each_row_block(rows, cols, [&](Index begin, Index end) {
    for (Index r = begin; r < end; ++r) body(r);
  });
}

// Calls task(i, slot) for i in [0, tasks), in parallel when `flops` (the work
// of all tasks) reaches the threshold. slot < thread_slots() read before the
// call, and no two tasks run at the same time with the same slot; serially
// every task has slot 0. Tasks are handed out one at a time, so that a
// thread the OS delays (the host is shared) does not hold back the others.
template <class Task>
void for_each_task(Index tasks, double flops, Task&& task) {
  [[maybe_unused]] const Index threads = loop_threads(tasks, flops, tasks);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel for num_threads(int(threads)) schedule(dynamic, 1)
    for (Index i = 0; i < tasks; ++i) task(i, thread_slot());
    return;
  }
#endif
  for (Index i = 0; i < tasks; ++i) task(i, Index(0));
}

}  // namespace detail
}  // namespace prenorm
