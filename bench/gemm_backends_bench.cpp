// GEMM backends side by side, at the products of the models prenorm runs:
// Y [M x N] = X [M x K] . W^T, with W (N x K) row-major as a Linear stores it.
//
//   eigen     Eigen's product on row-major maps, as Linear::forward runs today
//   openblas  cblas_sgemm (Debian's libopenblas, pthread build)
//   blis      bli_sgemm, BLIS's typed API (Debian's libblis, OpenMP build)
//   onednn    a oneDNN matmul primitive whose weights were reordered once into
//             the layout it chose (format_tag::any): what "weights packed once"
//             would cost per call
//
// Built only when BLIS and oneDNN are installed (bench/CMakeLists.txt); not
// part of CI. Threads: the benchmark argument sets every library's count.
// Run it pinned for one thread:
//   taskset -c 1 build/release/bench/prenorm-bench-gemm --benchmark_filter=threads:1
//     --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// and unpinned for two. GFLOP/s = 2 M N K / time.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <blis.h>
#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <immintrin.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

extern "C" void openblas_set_num_threads(int);

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Shape {
  const char* name;
  int m, k, n;  // Y [m x n] = X [m x k] . W^T, W (n x k)
};

// The products of one forward: tokens x (in -> out). GPT-2 small at T = 128,
// its decode step (M = 1), ViT-Ti/16 and ViT-S/16 at batch 1 (197 tokens) and
// ViT-Ti at batch 16 (3152 tokens).
const Shape kShapes[] = {
    {"gpt2_t128_qkv", 128, 768, 2304},   {"gpt2_t128_out", 128, 768, 768},
    {"gpt2_t128_fc", 128, 768, 3072},    {"gpt2_t128_proj", 128, 3072, 768},
    {"gpt2_t128_head", 128, 768, 50257}, {"gpt2_step_fc", 1, 768, 3072},
    {"gpt2_step_head", 1, 768, 50257},   {"vit_ti_b1_qkv", 197, 192, 576},
    {"vit_ti_b1_fc", 197, 192, 768},     {"vit_ti_b1_proj", 197, 768, 192},
    {"vit_ti_b16_fc", 3152, 192, 768},   {"vit_ti_b16_proj", 3152, 768, 192},
    {"vit_s_b1_qkv", 197, 384, 1152},    {"vit_s_b1_fc", 197, 384, 1536},
    {"vit_s_b1_proj", 197, 1536, 384},
};

struct Operands {
  RowMatrix x, w, y;
  explicit Operands(const Shape& s) : x(s.m, s.k), w(s.n, s.k), y(s.m, s.n) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
  }
};

void set_threads(int threads) {
  Eigen::setNbThreads(threads);
  openblas_set_num_threads(threads);
  bli_thread_set_num_threads(threads);
  omp_set_num_threads(threads);  // oneDNN's OpenMP runtime
}

// Checks the backend's Y against Eigen's (a wrong stride would go unnoticed
// in a timing), then sets the GFLOP/s counter.
void finish(benchmark::State& state, const Shape& s, const Operands& o) {
  const RowMatrix expected = o.x * o.w.transpose();
  const float error = (o.y - expected).cwiseAbs().maxCoeff() / expected.cwiseAbs().maxCoeff();
  if (!(error < 1e-5f)) state.SkipWithError(("wrong product, relative error " + std::to_string(error)).c_str());
  const double flops = 2.0 * s.m * s.n * double(s.k);
  state.counters["GFLOPs"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Eigen(benchmark::State& state, Shape s) {
  set_threads(int(state.range(0)));
  Operands o(s);
  for (auto _ : state) {
    o.y.noalias() = o.x * o.w.transpose();
    benchmark::DoNotOptimize(o.y.data());
  }
  finish(state, s, o);
}

void BM_OpenBlas(benchmark::State& state, Shape s) {
  set_threads(int(state.range(0)));
  Operands o(s);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.n, s.k, 1.f, o.x.data(), s.k,
                o.w.data(), s.k, 0.f, o.y.data(), s.n);
    benchmark::DoNotOptimize(o.y.data());
  }
  finish(state, s, o);
}

void BM_Blis(benchmark::State& state, Shape s) {
  set_threads(int(state.range(0)));
  Operands o(s);
  float one = 1.f, zero = 0.f;
  for (auto _ : state) {
    // Row strides and column strides: X (m x k) rs k cs 1; W^T (k x n) rs 1 cs k; Y rs n cs 1.
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, s.m, s.n, s.k, &one, o.x.data(), s.k, 1,
              o.w.data(), 1, s.k, &zero, o.y.data(), s.n, 1);
    benchmark::DoNotOptimize(o.y.data());
  }
  finish(state, s, o);
}

void BM_OneDnnPacked(benchmark::State& state, Shape s) {
  set_threads(int(state.range(0)));
  Operands o(s);
  using dnnl::memory;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::dims src_dims{s.m, s.k}, wei_dims{s.k, s.n}, dst_dims{s.m, s.n};
  const memory::desc src_md(src_dims, memory::data_type::f32, memory::format_tag::ab);
  // W (n x k) row-major is W^T (k x n) with format "ba".
  const memory::desc wei_user_md(wei_dims, memory::data_type::f32, memory::format_tag::ba);
  const memory::desc wei_any_md(wei_dims, memory::data_type::f32, memory::format_tag::any);
  const memory::desc dst_md(dst_dims, memory::data_type::f32, memory::format_tag::ab);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_any_md, dst_md), engine);  // oneDNN 2.x API
  memory src(src_md, engine, o.x.data()), dst(dst_md, engine, o.y.data());
  memory wei_user(wei_user_md, engine, o.w.data());
  memory wei(pd.weights_desc(), engine);
  dnnl::reorder(wei_user, wei).execute(stream, wei_user, wei);  // once, outside the loop
  const dnnl::matmul matmul(pd);
  for (auto _ : state) {
    matmul.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    stream.wait();
    benchmark::DoNotOptimize(o.y.data());
  }
  finish(state, s, o);
}

// The single-core float FMA peak, measured: 12 independent chains of 512-bit
// FMAs (enough to cover the FMA latency on two pipes). GFLOP/s = 2 * 16 * 12
// per inner step. The products above are compared with it in bench/README.
void BM_FmaPeak(benchmark::State& state) {
#if defined(__AVX512F__)
  constexpr int kChains = 12;
  constexpr long kSteps = 1 << 16;
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(float(c));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (auto _ : state) {
    for (long i = 0; i < kSteps; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    for (int c = 0; c < kChains; ++c) benchmark::DoNotOptimize(acc[c]);
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * 16 * kChains * kSteps * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
#else
  state.SkipWithError("needs AVX-512 (build with -march=native on an AVX-512 machine)");
#endif
}
BENCHMARK(BM_FmaPeak)->Name("fma_peak/threads:1")->UseRealTime();

// Backends interleaved per shape, so that one shape's rows sit next to each other.
const bool kRegistered = [] {
  for (const Shape& s : kShapes) {
    const std::string n = s.name;
    for (const auto& [backend, fn] :
         {std::pair{"eigen", &BM_Eigen}, std::pair{"openblas", &BM_OpenBlas},
          std::pair{"blis", &BM_Blis}, std::pair{"onednn_packed", &BM_OneDnnPacked}})
      benchmark::RegisterBenchmark((n + "/" + backend).c_str(), fn, s)
          ->ArgName("threads")
          ->Arg(1)
          ->Arg(2)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  }
  return true;
}();

}  // namespace
