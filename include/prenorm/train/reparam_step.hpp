#pragma once
// The optimizer step on theta fused with the conversion phi = convert(theta)
// for the next step ("convert in the optimizer").
//
// The conversion reads every tensor of theta and writes every tensor of phi:
// as a separate pass it costs O(parameters) memory traffic, several percent
// of a step on a memory-bound CPU. Here each block of rows of a theta matrix
// is converted right after the optimizer has updated it, while it is still in
// cache, so the conversion adds little more than phi's writes:
//
//   1. the optimizer updates every vector (gammas, betas, biases) of theta;
//      then the biases of the writers are converted, K(b - mean(b));
//   2. every matrix, in blocks of rows (in parallel): the optimizer updates the
//      block, then it is converted row by row --
//        tables  (token, position) rows recentered (and compressed)
//        readers (qkv, fc, head)   rows folded: C(w * gamma), b + w . beta
//        a tied E                  both: its token rows and its head rows;
//                                  kept tied (TiedPolicy::Keep): nothing, phi's
//                                  E is theta's, read from theta in training
//                                  (its gamma_f, beta_f copied in step 1)
//        writers (attn out, mlp proj, ViT patch) the column sums of the block;
//                once the matrix is done, a second pass writes its rows minus
//                the column means.
//
// The result is convert_into(theta, phi) on the updated theta, up to the
// order of the additions in the writers' column means.

#include <Eigen/Core>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <chrono>
#include <functional>
#include <vector>

#include "../convert/model_adjoint.hpp"
#include "../core/arch.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../models/gpt.hpp"
#include "../models/vit.hpp"
#include "optim.hpp"
#include "reparam_backward.hpp"

namespace prenorm {
namespace detail {

// dst[0, n) = a[0, n), or a - b when Subtract, with non-temporal (streaming)
// stores where the target allows them: phi is written once per step and read
// by the next forward, long after it would have left the cache, so a normal
// store's read-for-ownership would double the memory traffic. Call
// stream_fence() before another thread reads dst.
template <bool Subtract, class S>
void stream_write(const S* a, const S* b, S* dst, Index n) {
  const auto value = [a, b](Index i) {
    if constexpr (Subtract) return S(a[i] - b[i]);
    else return a[i];
  };
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
#if defined(__AVX512F__)
    constexpr Index kBytes = 64;
#elif defined(__AVX__)
    constexpr Index kBytes = 32;
#else
    constexpr Index kBytes = 16;
#endif
    constexpr Index kLanes = kBytes / Index(sizeof(S));
    Index i = 0;
    while (i < n && (reinterpret_cast<std::uintptr_t>(dst + i) % kBytes) != 0) {
      dst[i] = value(i);
      ++i;
    }
    if ((reinterpret_cast<std::uintptr_t>(dst + i) % kBytes) == 0) {
      for (; i + kLanes <= n; i += kLanes) {
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<S, float>) {
          __m512 v = _mm512_loadu_ps(a + i);
          if constexpr (Subtract) v = _mm512_sub_ps(v, _mm512_loadu_ps(b + i));
          _mm512_stream_ps(dst + i, v);
        } else {
          __m512d v = _mm512_loadu_pd(a + i);
          if constexpr (Subtract) v = _mm512_sub_pd(v, _mm512_loadu_pd(b + i));
          _mm512_stream_pd(dst + i, v);
        }
#elif defined(__AVX__)
        if constexpr (std::is_same_v<S, float>) {
          __m256 v = _mm256_loadu_ps(a + i);
          if constexpr (Subtract) v = _mm256_sub_ps(v, _mm256_loadu_ps(b + i));
          _mm256_stream_ps(dst + i, v);
        } else {
          __m256d v = _mm256_loadu_pd(a + i);
          if constexpr (Subtract) v = _mm256_sub_pd(v, _mm256_loadu_pd(b + i));
          _mm256_stream_pd(dst + i, v);
        }
#else
        if constexpr (std::is_same_v<S, float>) {
          __m128 v = _mm_loadu_ps(a + i);
          if constexpr (Subtract) v = _mm_sub_ps(v, _mm_loadu_ps(b + i));
          _mm_stream_ps(dst + i, v);
        } else {
          __m128d v = _mm_loadu_pd(a + i);
          if constexpr (Subtract) v = _mm_sub_pd(v, _mm_loadu_pd(b + i));
          _mm_stream_pd(dst + i, v);
        }
#endif
      }
    }
    for (; i < n; ++i) dst[i] = value(i);
    return;
  }
#endif
  for (Index i = 0; i < n; ++i) dst[i] = value(i);
}

// dst[0, n) = src[0, n), streamed (see stream_write).
template <class S>
void stream_copy(const S* src, S* dst, Index n) {
  stream_write<false>(src, static_cast<const S*>(nullptr), dst, n);
}

// dst[0, n) = a[0, n) - b[0, n), streamed (see stream_write).
template <class S>
void stream_difference(const S* a, const S* b, S* dst, Index n) {
  stream_write<true>(a, b, dst, n);
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace detail

template <Arch To, class S>
class ConvertingUpdate {
 public:
  static_assert(To == Arch::PreRMSNorm || To == Arch::PreCRMSNorm,
                "prenorm::ConvertingUpdate: the target is Pre-RMSNorm or Pre-CRMSNorm");
  // The steps of each role (roles.hpp): every conversion below is its role's
  // row function or vector kernel, called on the rows the optimizer has just
  // updated, instead of a separate pass of convert_into over theta.
  static constexpr conversion::Steps kTable = conversion::training_steps<To>(conversion::Role::TokenEmbedding);
  static constexpr conversion::Steps kWriter = conversion::training_steps<To>(conversion::Role::AttnOut);

  // Seconds of conversion work (inside the fused pass), when enabled. With
  // several threads: thread-seconds divided by the thread count.
  NormClock clock;

  // GPT: leave phi's token table to convert_token_rows (the rows a batch
  // looks up, before its forward) and convert_token_table (all of it, when
  // phi is wanted as a whole). A step reads only its batch's rows, so the
  // other vocab - batch rows need not be written every step. A keep-tied
  // phi's table is theta's E, which training reads from theta: with lazy
  // rows it is not written at all (convert_token_table copies it).
  bool lazy_token_rows = true;

  // phi's token-table rows `ids` from theta's (duplicates are fine).
  template <class Ids>
  void convert_token_rows(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi, const Ids& ids) {
    timed(0, [&] {
      for (int id : ids) {
        if (phi.tied_affine()) phi.token_embedding.table.row(id) = theta.token_embedding.table.row(id);
        else conversion::table_row_forward(theta.token_embedding.table.row(id), kTable,
                                           phi.token_embedding.table.row(id));
      }
    });
  }
  void convert_token_table(const Gpt<Arch::PreLN, S>& theta, Gpt<To, S>& phi) {
    conversion::convert_token_table_into(theta, phi);
  }

  // One optimizer step on theta (gradients in grad_theta), writing phi =
  // convert<To>(theta, {tied}) of the updated theta. phi must have the layout
  // of one tied policy (Untie, or Keep for a tied theta).
  template <class Optimizer, class Model, class Target>
  void step(Optimizer& optimizer, Model& theta, Model& grad_theta, Target& phi) {
    optimizer.begin_step(theta, grad_theta);
    const ParameterList<S>& list = optimizer.bound_params();
    if (&theta != bound_theta_ || &phi != bound_phi_ || list.tensors.size() != bound_count_ ||
        lazy_token_rows != bound_lazy_) {
      bound_lazy_ = lazy_token_rows;
      build(list, theta, phi);
      bound_theta_ = &theta;
      bound_phi_ = &phi;
      bound_count_ = list.tensors.size();
    }
    std::fill(thread_seconds_.begin(), thread_seconds_.end(), 0.0);
    // 1. Vectors, then the writers' biases (and ViT's cls token).
    for (std::size_t i = 0; i < list.tensors.size(); ++i)
      if (!list.tensors[i].matrix) optimizer.update(i, 0, list.tensors[i].size);
    timed(0, [&] {
      for (const auto& job : vector_jobs_) job();
    });
    // 2. Matrices, block of rows by block of rows.
    for (const MatrixJob& job : matrix_jobs_) {
      const Index rows_per = std::max<Index>(1, kBlockElements / job.cols);
      const Index blocks = (job.rows + rows_per - 1) / rows_per;
      if (job.writer) partial_.view(blocks, job.cols).setZero();
      detail::for_each_row(blocks, rows_per * job.cols, [&](Index blk) {
        const Index r0 = blk * rows_per, r1 = std::min(job.rows, r0 + rows_per);
        optimizer.update(job.index, r0 * job.cols, r1 * job.cols);
        timed(detail::thread_slot(), [&] {
          if (job.writer) {
            auto p = partial_.view(blocks, job.cols);
            for (Index r = r0; r < r1; ++r) p.row(blk) += job.writer->W->row(r);
          } else {
            job.rows_fn(r0, r1);
            detail::stream_fence();
          }
        });
      });
      if (job.writer) finish_writer(*job.writer, blocks);
    }
    optimizer.end_step();
    if (clock.enabled) {
      double sum = 0;
      for (double t : thread_seconds_) sum += t;
      clock.seconds += sum / double(std::max(1, num_threads()));
    }
  }

 private:
  static constexpr Index kBlockElements = Index(1) << 14;

  struct Writer {
    const RowMatrix<S>* W = nullptr;  // theta (d, in)
    RowMatrix<S>* out = nullptr;      // phi (m, in)
  };
  struct MatrixJob {
    std::size_t index = 0;  // in the optimizer's list
    Index rows = 0, cols = 0;
    std::function<void(Index, Index)> rows_fn;  // converts rows [r0, r1)
    const Writer* writer = nullptr;             // or a writer
  };

  std::vector<MatrixJob> matrix_jobs_;
  std::vector<std::function<void()>> vector_jobs_;
  std::vector<Writer> writers_;
  detail::GrowBuffer<S> partial_;  // [blocks x in]: a writer's column sums per block
  detail::GrowBuffer<S> mean_;     // [1 x in]
  Vector<S> scratch_;              // [threads x scratch_stride_]: one row per thread
  Index scratch_stride_ = 0;
  std::vector<double> thread_seconds_;
  const void* bound_theta_ = nullptr;
  const void* bound_phi_ = nullptr;
  std::size_t bound_count_ = 0;
  bool bound_lazy_ = true;


  template <class F>
  void timed(Index thread, F&& f) {
    if (!clock.enabled) {
      f();
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    f();
    thread_seconds_[std::size_t(thread)] +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  // The writer's column means over its d rows, then phi's rows W - mean: the
  // two passes of writer_forward (roles.hpp), split so that the column sums
  // are taken block by block while the optimizer's update is in cache, and
  // the rows are streamed out (phi is not read again before the next forward).
  void finish_writer(const Writer& w, Index blocks) {
    const Index d = w.W->rows(), in = w.W->cols(), m = w.out->rows();
    auto mean = mean_.view(1, in);
    timed(0, [&] {
      auto p = partial_.view(blocks, in);
      mean = p.row(0);
      for (Index b = 1; b < blocks; ++b) mean += p.row(b);
      mean /= S(d);
    });
    // Each thread's rows in one timed stretch (not two clock reads per row:
    // 37K a step at GPT-3 Small), streamed out as W - mean, no scratch row.
    detail::for_each_row_block(m, in, [&](Index r0, Index r1) {
      timed(detail::thread_slot(), [&] {
        for (Index r = r0; r < r1; ++r)
          detail::stream_difference(w.W->row(r).data(), mean.data(), w.out->row(r).data(), in);
        detail::stream_fence();
      });
    });
  }

  static std::size_t index_of(const ParameterList<S>& list, const S* data, const char* what) {
    for (std::size_t i = 0; i < list.tensors.size(); ++i)
      if (list.tensors[i].data == data) return i;
    detail::fail("ConvertingUpdate", what, " is not among the optimizer's tensors");
  }

  void add_rows(const ParameterList<S>& list, const RowMatrix<S>& W, const char* what,
                std::function<void(Index, Index)> fn) {
    matrix_jobs_.push_back({index_of(list, W.data(), what), W.rows(), W.cols(), std::move(fn), nullptr});
  }
  // A row of scratch for the calling thread (converted there, then streamed out).
  Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>> scratch_row(Index n) {
    return {scratch_.data() + detail::thread_slot() * scratch_stride_, n};
  }
  void table_row(const RowMatrix<S>& table, RowMatrix<S>& out, Index r) {
    auto row = scratch_row(out.cols());
    conversion::table_row_forward(table.row(r), kTable, row);
    detail::stream_copy(row.data(), out.row(r).data(), out.cols());
  }
  // reader_forward (roles.hpp) on rows [r0, r1), row by row (the bias of
  // each row a dot product, as the training conversion has always summed it).
  void reader_rows(const RowMatrix<S>& W, const Vector<S>& b, const Vector<S>& gamma,
                   const Vector<S>& beta, RowMatrix<S>& out, Vector<S>& out_bias, Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      auto row = scratch_row(out.cols());
      out_bias[r] = branch::read_bias(W.row(r), b.size() ? b[r] : S(0), beta);
      branch::read(W.row(r), gamma, row);
      detail::stream_copy(row.data(), out.row(r).data(), out.cols());
    }
  }
  void add_table(const ParameterList<S>& list, const RowMatrix<S>& table, RowMatrix<S>& out,
                 const char* what) {
    if (table.size() == 0) return;  // no position table (rotary, ALiBi): nothing to convert
    add_rows(list, table, what, [this, &table, &out](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) table_row(table, out, r);
    });
  }
  // Reader rows: out = C(W * gamma), out_bias = b + W beta (b empty: 0).
  void add_reader(const ParameterList<S>& list, const RowMatrix<S>& W, const Vector<S>& b,
                  const Vector<S>& gamma, const Vector<S>& beta, RowMatrix<S>& out,
                  Vector<S>& out_bias, const char* what) {
    add_rows(list, W, what, [this, &W, &b, &gamma, &beta, &out, &out_bias](Index r0, Index r1) {
      reader_rows(W, b, gamma, beta, out, out_bias, r0, r1);
    });
  }
  void add_writer(const ParameterList<S>& list, const RowMatrix<S>& W, const Vector<S>& b,
                  RowMatrix<S>& out, Vector<S>& out_bias, const char* what) {
    writers_.push_back({&W, &out});
    matrix_jobs_.push_back({index_of(list, W.data(), what), W.rows(), W.cols(), {}, nullptr});
    if (b.size())
      vector_jobs_.push_back([&b, &out_bias] { conversion::table_row_forward(b, kWriter, out_bias); });
  }
  void add_block(const ParameterList<S>& list, const PreNormBlock<Arch::PreLN, S>& t,
                 PreNormBlock<To, S>& p) {
    add_reader(list, t.attn.qkv.weight, t.attn.qkv.bias, t.norm1_gamma, t.norm1_beta,
               p.attn.qkv.weight, p.attn.qkv.bias, "attn.qkv.weight");
    add_writer(list, t.attn.out.weight, t.attn.out.bias, p.attn.out.weight, p.attn.out.bias,
               "attn.out.weight");
    add_reader(list, t.mlp.fc.weight, t.mlp.fc.bias, t.norm_gamma(t.mlp_norm()),
               t.norm_beta(t.mlp_norm()), p.mlp.fc.weight, p.mlp.fc.bias, "mlp.fc.weight");
    add_writer(list, t.mlp.proj.weight, t.mlp.proj.bias, p.mlp.proj.weight, p.mlp.proj.bias,
               "mlp.proj.weight");
  }
  void link_writers() {
    std::size_t w = 0;
    for (MatrixJob& job : matrix_jobs_)
      if (!job.rows_fn) job.writer = &writers_[w++];
  }
  void start(const ParameterList<S>& list) {
    matrix_jobs_.clear();
    vector_jobs_.clear();
    writers_.clear();
    writers_.reserve(list.tensors.size());
    thread_seconds_.assign(std::size_t(std::max(1, num_threads())), 0.0);
  }

  void build(const ParameterList<S>& list, Gpt<Arch::PreLN, S>& t, Gpt<To, S>& p) {
    conversion::detail::check_converted("ConvertingUpdate", t, p);
    start(list);
    const RowMatrix<S>& E = t.token_embedding.table;
    if (p.tied_affine()) {
      // Kept tied: E is phi's table as it is (copied only without lazy rows);
      // gamma_f, beta_f and the head bias are copied once updated.
      add_rows(list, E, "token_embedding.table", [this, &t, &p](Index r0, Index r1) {
        if (lazy_token_rows) return;
        for (Index r = r0; r < r1; ++r)
          detail::stream_copy(t.token_embedding.table.row(r).data(), p.token_embedding.table.row(r).data(),
                              t.token_embedding.table.cols());
      });
      vector_jobs_.push_back([&t, &p] { conversion::keep_tied_affine_into(t, p); });
    } else if (t.config.tied) {
      add_rows(list, E, "token_embedding.table", [this, &t, &p](Index r0, Index r1) {
        const RowMatrix<S>& E = t.token_embedding.table;
        if (!lazy_token_rows)
          for (Index r = r0; r < r1; ++r) table_row(E, p.token_embedding.table, r);
        reader_rows(E, t.head_bias, t.final_gamma, t.final_beta, p.head.weight, p.head_bias, r0, r1);
      });
    } else {
      if (lazy_token_rows) add_rows(list, E, "token_embedding.table", [](Index, Index) {});
      else add_table(list, E, p.token_embedding.table, "token_embedding.table");
      add_reader(list, t.head.weight, t.head_bias, t.final_gamma, t.final_beta, p.head.weight,
                 p.head_bias, "head.weight");
    }
    add_table(list, t.position_embedding.table, p.position_embedding.table, "position_embedding.table");
    for (std::size_t i = 0; i < t.blocks.size(); ++i) add_block(list, t.blocks[i], p.blocks[i]);
    finish_build(list);
  }

  void build(const ParameterList<S>& list, Vit<Arch::PreLN, S>& t, Vit<To, S>& p) {
    conversion::detail::check_converted("ConvertingUpdate", t, p);
    start(list);
    add_writer(list, t.patch.weight, t.patch.bias, p.patch.weight, p.patch.bias, "patch.weight");
    vector_jobs_.push_back(
        [&t, &p] { conversion::table_row_forward(t.cls_token, kTable, p.cls_token); });
    add_table(list, t.position_embedding.table, p.position_embedding.table, "position_embedding");
    for (std::size_t i = 0; i < t.blocks.size(); ++i) add_block(list, t.blocks[i], p.blocks[i]);
    add_reader(list, t.head.weight, t.head.bias, t.final_gamma, t.final_beta, p.head.weight,
               p.head.bias, "head.weight");
    finish_build(list);
  }

  void finish_build(const ParameterList<S>& list) {
    link_writers();
    Index widest = 0;
    for (const MatrixJob& job : matrix_jobs_) widest = std::max(widest, job.cols);
    scratch_stride_ = (widest + 15) / 16 * 16;
    scratch_.resize(scratch_stride_ * std::max(1, num_threads()));
    // Every matrix of theta must have a job: one without would not reach phi.
    std::size_t matrices = 0;
    for (const ParamTensor<S>& t : list.tensors) matrices += t.matrix ? 1 : 0;
    if (matrices != matrix_jobs_.size())
      detail::fail("ConvertingUpdate", "theta has ", matrices, " matrices, the conversion knows ",
                   matrix_jobs_.size());
  }
};

}  // namespace prenorm
