// prenorm-bench-ops: the normalization operators (include/prenorm/ops/), and
// the product of a linear layer at the model widths d and d - 1
// (BM_linear_forward, at the end: what a Pre-CRMSNorm main branch costs there;
// BM_linear_forward_padded: its writers and decoding readers as the blocks
// run them).
//
// Forward, backward and fused residual-add + norm of LayerNorm, RMSNorm and
// CRMSNorm, templated on the scalar type, over a shared list of sizes:
// d (the model width) x rows (tokens). CRMSNorm runs on d-1 columns; its "d"
// argument stays the model width so that rows of the table compare directly.
// Each operator also has a naive Eigen-expression forward (rowwise() reductions
// and broadcasting) as a baseline, and copy_rows (y = x) gives the memory floor.
//
// Shapes as in a converted model: LayerNorm with gamma and beta; RMSNorm and
// CRMSNorm without gamma (folded into the next linear). The RMSNorm variant
// with gamma is named rms_norm_gamma; crms_norm_forward_padded runs CRMSNorm
// on the first d-1 columns of a width-d buffer (aligned rows).
//
// Counters:
//   bytes_per_second  logical bytes moved per call (each matrix counted once;
//                     written in a comment at every benchmark), / time
//   rows/s            rows normalized per second
//   time/row          seconds per row (shown as e.g. 95.3n)
//   FLOP/s            BM_linear_forward(_padded) only (instead of the three above):
//                     2 rows out in per call, / time
//
// Sizes, chosen to keep the whole run to a few minutes: the 318 benchmarks of
// the norms take 5.3 CPU minutes (420, with double and backward on more
// sizes, took 7.3), mostly the default 0.5 s minimum time of each, the rest
// setting up the large matrices; the 52 products add about 50 s:
//   float forward and fused add+norm   every size (kWidths x kRows)
//   float backward                     kSubsetWidths x kSubsetRows
//   float gamma / padded variants,
//   naive baselines, copy, all double  kSmallWidths x kSubsetRows
//   linear forward                     ProductShapes (36)
//   linear forward, padded             WriterShapes (4), ReaderShapes (9),
//                                      DecodeReaderShapes (3)
// Run single-threaded and pinned for stable numbers:
//   OMP_NUM_THREADS=1 taskset -c 1 prenorm-bench-ops --benchmark_filter=...

#include <benchmark/benchmark.h>

#include <prenorm/layers/linear.hpp>
#include <prenorm/ops.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace {

using prenorm::Index;
using prenorm::LayerNormSaved;
using prenorm::RmsNormSaved;
using prenorm::RowMatrix;
using prenorm::Vector;

// ---------------------------------------------------------------------------
// The shared size lists
// ---------------------------------------------------------------------------

const std::vector<int64_t> kWidths = {192, 384, 768, 1024, 2048, 4096, 8192};
const std::vector<int64_t> kRows = {1, 128, 2048, 8192};
const std::vector<int64_t> kSubsetWidths = {192, 768, 4096, 8192};
const std::vector<int64_t> kSubsetRows = {1, 128, 8192};
const std::vector<int64_t> kSmallWidths = {768, 4096};

void AllSizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "rows"});
  for (const int64_t d : kWidths)
    for (const int64_t rows : kRows) b->Args({d, rows});
}

void SubsetSizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "rows"});
  for (const int64_t d : kSubsetWidths)
    for (const int64_t rows : kSubsetRows) b->Args({d, rows});
}

void SmallSizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "rows"});
  for (const int64_t d : kSmallWidths)
    for (const int64_t rows : kSubsetRows) b->Args({d, rows});
}

// ---------------------------------------------------------------------------
// Data: a cheap deterministic generator (a large matrix is 64M elements, too
// many for std::normal_distribution at every benchmark start).
// ---------------------------------------------------------------------------

struct SplitMix {
  uint64_t state;
  // Uniform in [-1, 1).
  double next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0;
  }
};

// Rows with their own offset and scale, like activations.
template <class S>
RowMatrix<S> activations(Index rows, Index cols, uint64_t seed) {
  RowMatrix<S> m(rows, cols);
  SplitMix rng{seed};
  for (Index r = 0; r < rows; ++r) {
    const double offset = 0.5 * rng.next(), scale = 1.5 + rng.next();
    S* row = m.row(r).data();
    for (Index c = 0; c < cols; ++c) row[c] = static_cast<S>(offset + scale * rng.next());
  }
  return m;
}

template <class S>
Vector<S> parameter(Index n, double center, uint64_t seed) {
  Vector<S> v(n);
  SplitMix rng{seed};
  for (Index i = 0; i < n; ++i) v[i] = static_cast<S>(center + 0.1 * rng.next());
  return v;
}

// Sets the counters for `bytes` moved and `rows` normalized per iteration.
void set_counters(benchmark::State& state, int64_t bytes, int64_t rows) {
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["time/row"] = benchmark::Counter(
      static_cast<double>(rows),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

constexpr double kEps = 1e-5;

// ---------------------------------------------------------------------------
// Naive Eigen-expression forwards: what one writes with rowwise() reductions
// and broadcasting, without prenorm's packet reductions or row fusion.
// ---------------------------------------------------------------------------

// y = gamma * (x - mean) / sqrt(var + eps) + beta (two-pass variance).
template <class S>
void naive_layer_norm_forward(const RowMatrix<S>& x, const Vector<S>& gamma,
                              const Vector<S>& beta, RowMatrix<S>& y, S eps) {
  const Vector<S> mean = x.rowwise().mean();
  const Vector<S> var = (x.colwise() - mean).array().square().rowwise().mean();
  const Vector<S> rstd = (var.array() + eps).rsqrt();
  y = (((x.colwise() - mean).array().colwise() * rstd.array()).rowwise() *
       gamma.transpose().array())
          .rowwise() +
      beta.transpose().array();
}

// y = x / sqrt(||x||^2 / d + eps).
template <class S>
void naive_rms_norm_forward(const RowMatrix<S>& x, RowMatrix<S>& y, S eps) {
  const Vector<S> rrms = (x.array().square().rowwise().mean() + eps).rsqrt();
  y = x.array().colwise() * rrms.array();
}

// y = x~ / sqrt((||x~||^2 + (1'x~)^2) / d + eps), d = x~.cols() + 1.
template <class S>
void naive_crms_norm_forward(const RowMatrix<S>& x, RowMatrix<S>& y, S eps) {
  const S d = static_cast<S>(x.cols() + 1);
  const Vector<S> sum = x.rowwise().sum();
  const Vector<S> sum_sq = x.rowwise().squaredNorm();
  const Vector<S> rrms = ((sum_sq.array() + sum.array().square()) / d + eps).rsqrt();
  y = x.array().colwise() * rrms.array();
}

// ---------------------------------------------------------------------------
// LayerNorm (gamma, beta)
// ---------------------------------------------------------------------------

// Reads x, writes y, reads gamma and beta: (2 rows d + 2 d) sizeof(S).
template <class S>
void BM_layer_norm_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2), beta = parameter<S>(d, 0.0, 3);
  RowMatrix<S> y(rows, d);
  LayerNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::layer_norm_forward(x, gamma, beta, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (2 * rows * d + 2 * d) * int64_t(sizeof(S)), rows);
}

// Naive: the same bytes as BM_layer_norm_forward.
template <class S>
void BM_naive_layer_norm_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2), beta = parameter<S>(d, 0.0, 3);
  RowMatrix<S> y(rows, d);
  for (auto _ : state) {
    naive_layer_norm_forward(x, gamma, beta, y, S(kEps));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (2 * rows * d + 2 * d) * int64_t(sizeof(S)), rows);
}

// h += branch; y = LN(h): reads h, branch, writes h, y, reads gamma, beta:
// (4 rows d + 2 d) sizeof(S). h grows by branch at every iteration (harmless
// for the timing: no overflow, no subnormals).
template <class S>
void BM_layer_norm_add_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  RowMatrix<S> h = activations<S>(rows, d, 1);
  const RowMatrix<S> branch = activations<S>(rows, d, 4) * S(1e-3);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2), beta = parameter<S>(d, 0.0, 3);
  RowMatrix<S> y(rows, d);
  LayerNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::layer_norm_add_forward(h, branch, gamma, beta, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (4 * rows * d + 2 * d) * int64_t(sizeof(S)), rows);
}

// Reads dy, x, writes dx, reads gamma, reads and writes dgamma, dbeta:
// (3 rows d + 5 d) sizeof(S). (dy and x are read twice in fact: once by the
// row pass for dx, once by the column pass for dgamma and dbeta.)
template <class S>
void BM_layer_norm_backward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1), dy = activations<S>(rows, d, 5);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2), beta = parameter<S>(d, 0.0, 3);
  RowMatrix<S> y(rows, d), dx(rows, d);
  LayerNormSaved<S> saved(rows);
  prenorm::layer_norm_forward(x, gamma, beta, y, S(kEps), &saved);
  Vector<S> dgamma = Vector<S>::Zero(d), dbeta = Vector<S>::Zero(d);
  for (auto _ : state) {
    prenorm::layer_norm_backward(dy, x, gamma, saved, dx, dgamma, dbeta);
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dgamma.data());
    benchmark::DoNotOptimize(dbeta.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (3 * rows * d + 5 * d) * int64_t(sizeof(S)), rows);
}

// ---------------------------------------------------------------------------
// RMSNorm (no gamma, as in a converted model; rms_norm_gamma: with gamma)
// ---------------------------------------------------------------------------

// Reads x, writes y: 2 rows d sizeof(S).
template <class S>
void BM_rms_norm_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  RowMatrix<S> y(rows, d);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::rms_norm_forward(x, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * d * int64_t(sizeof(S)), rows);
}

// Reads x, writes y, reads gamma: (2 rows d + d) sizeof(S).
template <class S>
void BM_rms_norm_gamma_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2);
  RowMatrix<S> y(rows, d);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::rms_norm_forward(x, gamma, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (2 * rows * d + d) * int64_t(sizeof(S)), rows);
}

// Naive: 2 rows d sizeof(S), as BM_rms_norm_forward.
template <class S>
void BM_naive_rms_norm_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  RowMatrix<S> y(rows, d);
  for (auto _ : state) {
    naive_rms_norm_forward(x, y, S(kEps));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * d * int64_t(sizeof(S)), rows);
}

// h += branch; y = RMSNorm(h): reads h, branch, writes h, y: 4 rows d sizeof(S).
template <class S>
void BM_rms_norm_add_forward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  RowMatrix<S> h = activations<S>(rows, d, 1);
  const RowMatrix<S> branch = activations<S>(rows, d, 4) * S(1e-3);
  RowMatrix<S> y(rows, d);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::rms_norm_add_forward(h, branch, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4 * rows * d * int64_t(sizeof(S)), rows);
}

// Reads dy, x, writes dx: 3 rows d sizeof(S).
template <class S>
void BM_rms_norm_backward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1), dy = activations<S>(rows, d, 5);
  RowMatrix<S> y(rows, d), dx(rows, d);
  RmsNormSaved<S> saved(rows);
  prenorm::rms_norm_forward(x, y, S(kEps), &saved);
  for (auto _ : state) {
    prenorm::rms_norm_backward(dy, x, saved, dx);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 3 * rows * d * int64_t(sizeof(S)), rows);
}

// Reads dy, x, writes dx, reads gamma, reads and writes dgamma:
// (3 rows d + 3 d) sizeof(S) (dy and x read twice, as for LayerNorm).
template <class S>
void BM_rms_norm_gamma_backward(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1), dy = activations<S>(rows, d, 5);
  const Vector<S> gamma = parameter<S>(d, 1.0, 2);
  RowMatrix<S> y(rows, d), dx(rows, d);
  RmsNormSaved<S> saved(rows);
  prenorm::rms_norm_forward(x, gamma, y, S(kEps), &saved);
  Vector<S> dgamma = Vector<S>::Zero(d);
  for (auto _ : state) {
    prenorm::rms_norm_backward(dy, x, gamma, saved, dx, dgamma);
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dgamma.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (3 * rows * d + 3 * d) * int64_t(sizeof(S)), rows);
}

// ---------------------------------------------------------------------------
// CRMSNorm: arg d is the model width; the kernel runs on n = d - 1 columns.
// ---------------------------------------------------------------------------

// Reads x~, writes y: 2 rows (d-1) sizeof(S).
template <class S>
void BM_crms_norm_forward(benchmark::State& state) {
  const Index n = state.range(0) - 1, rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, n, 1);
  RowMatrix<S> y(rows, n);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::crms_norm_forward(x, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * n * int64_t(sizeof(S)), rows);
}

// The same, with x~ and y the first d-1 columns of [rows x d] buffers (row
// stride d): every row then starts on the alignment of a width-d row, as when a
// model keeps its compressed main branch in a padded buffer. Reads x~, writes
// y: 2 rows (d-1) sizeof(S).
template <class S>
void BM_crms_norm_forward_padded(benchmark::State& state) {
  const Index d = state.range(0), n = d - 1, rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  RowMatrix<S> y(rows, d);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::crms_norm_forward(x.leftCols(n), y.leftCols(n), S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * n * int64_t(sizeof(S)), rows);
}

// Naive: 2 rows (d-1) sizeof(S), as BM_crms_norm_forward.
template <class S>
void BM_naive_crms_norm_forward(benchmark::State& state) {
  const Index n = state.range(0) - 1, rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, n, 1);
  RowMatrix<S> y(rows, n);
  for (auto _ : state) {
    naive_crms_norm_forward(x, y, S(kEps));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * n * int64_t(sizeof(S)), rows);
}

// h += branch; y = CRMSNorm(h): reads h, branch, writes h, y: 4 rows (d-1) sizeof(S).
template <class S>
void BM_crms_norm_add_forward(benchmark::State& state) {
  const Index n = state.range(0) - 1, rows = state.range(1);
  RowMatrix<S> h = activations<S>(rows, n, 1);
  const RowMatrix<S> branch = activations<S>(rows, n, 4) * S(1e-3);
  RowMatrix<S> y(rows, n);
  RmsNormSaved<S> saved(rows);
  for (auto _ : state) {
    prenorm::crms_norm_add_forward(h, branch, y, S(kEps), &saved);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4 * rows * n * int64_t(sizeof(S)), rows);
}

// Reads dy, x~, writes dx: 3 rows (d-1) sizeof(S).
template <class S>
void BM_crms_norm_backward(benchmark::State& state) {
  const Index n = state.range(0) - 1, rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, n, 1), dy = activations<S>(rows, n, 5);
  RowMatrix<S> y(rows, n), dx(rows, n);
  RmsNormSaved<S> saved(rows);
  prenorm::crms_norm_forward(x, y, S(kEps), &saved);
  for (auto _ : state) {
    prenorm::crms_norm_backward(dy, x, saved, dx);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 3 * rows * n * int64_t(sizeof(S)), rows);
}

// ---------------------------------------------------------------------------
// The memory floor: y = x row by row, what any forward must at least move.
// Reads x, writes y: 2 rows d sizeof(S), as BM_rms_norm_forward.
// ---------------------------------------------------------------------------

template <class S>
void BM_copy_rows(benchmark::State& state) {
  const Index d = state.range(0), rows = state.range(1);
  const RowMatrix<S> x = activations<S>(rows, d, 1);
  RowMatrix<S> y(rows, d);
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) y.row(r) = x.row(r);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * d * int64_t(sizeof(S)), rows);
}

// ---------------------------------------------------------------------------
// The product of a linear layer (prenorm::Linear::forward without bias,
// y [rows x out] = x [rows x in] W^T) at the shapes of the writers (attention
// out, MLP proj) and readers (qkv, MLP fc) of ViT-Ti b16 (3152 rows) and
// GPT-3 Small T=128 (with its head), the readers of ViT-B, ViT-Ti and ViT-S
// at batch 1 (197 rows), and at those of a GPT-3 Small decoding step (one
// row: readers and head), each at the width d and at d - 1, the width of a
// Pre-CRMSNorm main branch. FLOP/s counts 2 rows out in per call (the real
// outputs only, so that the padded variant compares directly).
// ---------------------------------------------------------------------------

// y = x W^T through Linear::forward, or (padded) Linear::forward_padded into
// a buffer one column wider.
template <class S>
void run_linear_forward(benchmark::State& state, bool padded) {
  const Index rows = state.range(0), out = state.range(1), in = state.range(2);
  prenorm::Linear<S> linear(in, out, /*with_bias=*/false);
  linear.weight = activations<S>(out, in, 2);
  const RowMatrix<S> x = activations<S>(rows, in, 1);
  RowMatrix<S> y(rows, padded ? out + 1 : out);
  for (auto _ : state) {
    if (padded) linear.forward_padded(x, y);
    else linear.forward(x, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * double(rows) * double(out) * double(in),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

template <class S>
void BM_linear_forward(benchmark::State& state) {
  run_linear_forward<S>(state, false);
}

// The products of a Pre-CRMSNorm block as it runs them, through
// Linear::forward_padded: the d - 1 writers (out = d - 1) into a branch
// buffer of width d (the product padded to d outputs with a zero weight row),
// the readers (in = d - 1: W's rows copied to an aligned stride before
// packing), and a decoding step's readers (one row, in = d - 1: each row of W
// ends in a masked packet instead of a scalar loop).
template <class S>
void BM_linear_forward_padded(benchmark::State& state) {
  run_linear_forward<S>(state, true);
}

void WriterShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "out", "in"});
  b->Args({3152, 191, 192})->Args({3152, 191, 768});  // ViT-Ti, batch 16
  b->Args({128, 767, 768})->Args({128, 767, 3072});   // GPT-3 Small, T = 128
}

// The readers at depth d - 1 of GPT-3 Small at T = 128 (qkv, MLP fc, an
// untied head) and of ViT-B, ViT-Ti and ViT-S at batch 1 (197 rows).
void ReaderShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "out", "in"});
  b->Args({128, 2304, 767})->Args({128, 3072, 767})->Args({128, 50257, 767});
  b->Args({197, 2304, 767})->Args({197, 3072, 767});
  b->Args({197, 576, 191})->Args({197, 768, 191})->Args({197, 1152, 383})->Args({197, 1536, 383});
}

// The readers of one GPT-3 Small decoding step (a single row): qkv, MLP fc
// and the untied head, at depth d - 1.
void DecodeReaderShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "out", "in"});
  b->Args({1, 2304, 767})->Args({1, 3072, 767})->Args({1, 50257, 767});
}

void ProductShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "out", "in"});
  for (const int64_t d : {192, 191}) {  // ViT-Ti, batch 16
    b->Args({3152, d, 192})->Args({3152, d, 768})->Args({3152, 576, d})->Args({3152, 768, d});
  }
  for (const int64_t d : {768, 767}) {  // GPT-3 Small, T = 128, and its head
    b->Args({128, d, 768})->Args({128, d, 3072})->Args({128, 2304, d})->Args({128, 3072, d});
    b->Args({128, 50257, d});
  }
  for (const int64_t d : {768, 767}) {  // ViT-B b1: its readers at 197 rows
    b->Args({197, 2304, d})->Args({197, 3072, d});
  }
  for (const int64_t d : {192, 191}) b->Args({197, 576, d})->Args({197, 768, d});     // ViT-Ti b1
  for (const int64_t d : {384, 383}) b->Args({197, 1152, d})->Args({197, 1536, d});   // ViT-S b1
  for (const int64_t d : {768, 767}) {  // GPT-3 Small, a decoding step
    b->Args({1, 2304, d})->Args({1, 3072, d})->Args({1, 50257, d});
  }
}

// ---------------------------------------------------------------------------
// Registration (the sizes of each group: see the top of the file).
// ---------------------------------------------------------------------------

BENCHMARK_TEMPLATE(BM_layer_norm_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_layer_norm_add_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_add_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_add_forward, float)->Apply(AllSizes);
BENCHMARK_TEMPLATE(BM_layer_norm_backward, float)->Apply(SubsetSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_backward, float)->Apply(SubsetSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_backward, float)->Apply(SubsetSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_forward_padded, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_gamma_forward, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_gamma_backward, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_layer_norm_forward, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_rms_norm_forward, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_crms_norm_forward, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_copy_rows, float)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_linear_forward, float)->Apply(ProductShapes);
BENCHMARK_TEMPLATE(BM_linear_forward_padded, float)
    ->Apply(WriterShapes)
    ->Apply(ReaderShapes)
    ->Apply(DecodeReaderShapes);

BENCHMARK_TEMPLATE(BM_layer_norm_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_layer_norm_add_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_add_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_add_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_layer_norm_backward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_rms_norm_backward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_crms_norm_backward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_layer_norm_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_rms_norm_forward, double)->Apply(SmallSizes);
BENCHMARK_TEMPLATE(BM_naive_crms_norm_forward, double)->Apply(SmallSizes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("prenorm_threads", std::to_string(prenorm::num_threads()));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
