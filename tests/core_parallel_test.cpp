// Tests of the parallel-for policy (include/prenorm/core/parallel.hpp): the
// loops cover every row / task once, each whole on one thread; they go
// parallel exactly at the threshold, with blocks of at least min_rows rows;
// nothing runs in parallel inside a parallel region; a task's slot is its
// own while it runs. The layers' and models' results on 1 and several
// threads are compared in layers_test.cpp, models_test.cpp and
// ops_norm_backward_test.cpp.

#include <gtest/gtest.h>

#include <prenorm/core/parallel.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace {

using prenorm::Index;
namespace detail = prenorm::detail;

// Sets the thread count for the life of the object.
struct Threads {
  int before = prenorm::num_threads();
  explicit Threads(int n) { prenorm::set_num_threads(n); }
  ~Threads() { prenorm::set_num_threads(before); }
};

// The blocks for_each_row_block calls its body with, sorted, and the number
// of distinct threads that ran them.
struct Blocks {
  std::vector<std::pair<Index, Index>> ranges;
  Index threads = 0;
};

Blocks row_blocks(Index rows, double flops, Index min_rows) {
  Blocks out;
  std::mutex m;
  std::vector<std::thread::id> ids;
  detail::for_each_row_block(rows, flops, min_rows, [&](Index begin, Index end) {
    std::lock_guard<std::mutex> lock(m);
    out.ranges.emplace_back(begin, end);
    if (std::find(ids.begin(), ids.end(), std::this_thread::get_id()) == ids.end())
      ids.push_back(std::this_thread::get_id());
  });
  std::sort(out.ranges.begin(), out.ranges.end());
  out.threads = Index(ids.size());
  return out;
}

// Each block non-empty, the blocks contiguous and covering [0, rows).
void expect_cover(const Blocks& b, Index rows) {
  Index next = 0;
  for (const auto& [begin, end] : b.ranges) {
    EXPECT_EQ(begin, next) << "blocks of " << rows << " rows overlap or leave a gap";
    EXPECT_LT(begin, end) << "an empty block of " << rows << " rows";
    next = end;
  }
  EXPECT_EQ(next, rows) << "the blocks do not cover " << rows << " rows";
}

TEST(Parallel, ThresholdIsTwoToTheFifteenElements) {
  EXPECT_EQ(detail::kParallelMinElements, Index(1) << 15);
  EXPECT_EQ(detail::element_flops(detail::kParallelMinElements, 1), detail::kParallelMinFlops);
}

TEST(Parallel, RowBlocksCoverEveryRowOnce) {
  for (int threads : {1, 2, 3})
    for (Index rows : {0, 1, 2, 3, 17, 1000})
      for (double flops : {0.0, detail::kParallelMinFlops})
        for (Index min_rows : {1, 16}) {
          Threads t(threads);
          const Blocks b = row_blocks(rows, flops, min_rows);
          SCOPED_TRACE(testing::Message() << threads << " threads, " << rows << " rows, " << flops
                                          << " flops, min_rows " << min_rows);
          expect_cover(b, rows);
          EXPECT_EQ(Index(b.ranges.size()), b.threads) << "a thread ran two blocks";
          if (b.ranges.size() > 1) {
            for (const auto& [begin, end] : b.ranges) EXPECT_GE(end - begin, min_rows);
          }
        }
}

#ifdef _OPENMP
TEST(Parallel, RowBlocksGoParallelAtTheThreshold) {
  Threads t(2);
  const double at = detail::kParallelMinFlops, below = at * (1 - 1e-9);
  EXPECT_EQ(row_blocks(1000, below, 1).ranges.size(), 1u);
  EXPECT_EQ(row_blocks(1000, at, 1).ranges.size(), 2u);
  EXPECT_EQ(row_blocks(1, at, 1).ranges.size(), 1u) << "one row split";
  // An element-wise loop: 2^15 elements.
  EXPECT_EQ(detail::loop_threads(64, detail::element_flops(64, 511), 64), 1);
  EXPECT_EQ(detail::loop_threads(64, detail::element_flops(64, 512), 64), 2);
  // min_rows 16: 32 rows make two blocks of 16, 31 rows one.
  EXPECT_EQ(row_blocks(31, at, 16).ranges.size(), 1u);
  const Blocks b = row_blocks(32, at, 16);
  ASSERT_EQ(b.ranges.size(), 2u);
  EXPECT_EQ(b.ranges[0], std::make_pair(Index(0), Index(16)));
  EXPECT_EQ(b.threads, 2);
  // Never more threads than set, nor than items.
  EXPECT_EQ(detail::loop_threads(1000, 1e12, 1000), 2);
  EXPECT_EQ(detail::loop_threads(3, 1e12, 1000), 2);
  Threads one(1);
  EXPECT_EQ(detail::loop_threads(1000, 1e12, 1000), 1);
}

// The decode step of GPT-3 Small at batch 1 (12 heads of 64): its attention
// goes parallel from 683 cached keys, as documented in core/parallel.hpp.
TEST(Parallel, DecodeAttentionThreshold) {
  Threads t(2);
  const auto attention_flops = [](Index keys) { return 4.0 * 12 * 1 * double(keys) * 64; };
  EXPECT_EQ(detail::loop_threads(12, attention_flops(682), 12), 1);
  EXPECT_EQ(detail::loop_threads(12, attention_flops(683), 12), 2);
}

// Inside a parallel region (a caller's own, or one of ours) the loops run
// whole on the calling thread, opening no nested region: the OpenMP level
// seen by the body is the caller's.
TEST(Parallel, NothingParallelInsideAParallelRegion) {
  Threads t(2);
  std::atomic<int> failures{0}, calls{0};
#pragma omp parallel num_threads(2)
  {
    const int level = omp_get_level();
    const std::thread::id self = std::this_thread::get_id();
    detail::for_each_row_block(1000, 1e12, 1, [&](Index begin, Index end) {
      ++calls;
      if (begin != 0 || end != 1000 || omp_get_level() != level || std::this_thread::get_id() != self)
        ++failures;
    });
    detail::for_each_task(50, 1e12, [&](Index, Index slot) {
      ++calls;
      if (slot != 0 || omp_get_level() != level || std::this_thread::get_id() != self) ++failures;
    });
  }
  EXPECT_EQ(calls.load(), omp_get_max_threads() * 51);
  EXPECT_EQ(failures.load(), 0);
}
#endif

// Every task runs once, with a slot below thread_slots() that no other
// running task holds.
TEST(Parallel, TasksRunOnceInSlotsOfTheirOwn) {
  for (int threads : {1, 2, 3})
    for (double flops : {0.0, 1e12}) {
      Threads t(threads);
      const Index tasks = 200, slots = detail::thread_slots();
      std::vector<std::atomic<int>> runs(static_cast<std::size_t>(tasks));
      std::vector<std::atomic<int>> busy(static_cast<std::size_t>(slots));
      std::atomic<int> bad_slot{0}, shared_slot{0};
      detail::for_each_task(tasks, flops, [&](Index i, Index slot) {
        ++runs[std::size_t(i)];
        if (slot < 0 || slot >= slots) {
          ++bad_slot;
          return;
        }
        if (busy[std::size_t(slot)].exchange(1) != 0) ++shared_slot;
        volatile double sink = 0;
        for (int k = 0; k < 2000; ++k) sink = sink + k;  // time for another task to collide
        busy[std::size_t(slot)] = 0;
      });
      SCOPED_TRACE(testing::Message() << threads << " threads, " << flops << " flops");
      for (Index i = 0; i < tasks; ++i) EXPECT_EQ(runs[std::size_t(i)].load(), 1) << "task " << i;
      EXPECT_EQ(bad_slot.load(), 0);
      EXPECT_EQ(shared_slot.load(), 0);
    }
}

}  // namespace
