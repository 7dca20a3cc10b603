#pragma once
// Weights packed once for the GEMM backend: PackedSlot, the packed copy that a
// Linear (its weight) or an Embedding (its table, as a tied head) may hold, and
// PackedWeight, the oneDNN product behind it (only with PRENORM_WITH_ONEDNN,
// which the CMake option PRENORM_USE_ONEDNN defines when oneDNN is found;
// without it a PackedSlot never holds anything).
//
// A PackedWeight holds a Linear's float weight W (out x in) reordered once
// into the blocked layout that oneDNN's matmul chooses for it, and runs
//   y [M x out] = x [M x in] W^T (+ b)
// on any number of rows M, with the bias fused into the product. Measured on
// AMD EPYC (Zen 5 class, AVX-512), one thread (bench/README.md, "GEMM
// backends"):
//   - the layout oneDNN picks for W does not depend on M (checked for M = 1
//     .. 3152 at the models' shapes), so one packed copy serves prefill,
//     batches and decoding;
//   - odd depths and widths (767, 191: Pre-CRMSNorm's d - 1) run as fast as
//     the aligned ones (no realignment, unlike Eigen's path);
//   - from M = 4 rows it is 1.4-1.7x faster than Eigen's product; for M < 4
//     (decoding one or two sequences) Eigen's GEMV on the plain weight is
//     faster (92 vs 131 us for GPT-2's 768 -> 3072), so Linear keeps that.
// A primitive per M is built on first use and kept (a few microseconds to
// build, more than a decode step's product can spare).

#include <memory>
#include <type_traits>

#include "../../core/error.hpp"
#include "../../core/types.hpp"

#ifdef PRENORM_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#endif

namespace prenorm::detail {

#ifdef PRENORM_WITH_ONEDNN

class PackedWeight {
 public:
  // Rows at or above which the packed product beats Eigen's (see above).
  static constexpr Index kMinRows = 4;

  // w: (out x in) row-major; bias: (out) or null. Both are copied.
  PackedWeight(const float* w, Index out, Index in, const float* bias)
      : out_(out), in_(in), engine_(dnnl::engine::kind::cpu, 0) {
    using dnnl::memory;
    // W (out x in) row-major is W^T (in x out) in format "ba".
    const memory::desc plain({in, out}, memory::data_type::f32, memory::format_tag::ba);
    const memory::desc any({in, out}, memory::data_type::f32, memory::format_tag::any);
    // The layout chosen for 128 rows; the same for every row count (above).
    packed_md_ = primitive_desc(128, in, out, any).weights_desc();
    weights_ = memory(packed_md_, engine_);
    memory source(plain, engine_, const_cast<float*>(w));
    dnnl::stream stream(engine_);
    dnnl::reorder(source, weights_).execute(stream, source, weights_);
    if (bias) {
      bias_md_ = memory::desc({1, out}, memory::data_type::f32, memory::format_tag::ab);
      bias_ = memory(bias_md_, engine_);
      std::copy(bias, bias + out, static_cast<float*>(bias_.get_data_handle()));
    }
    stream.wait();
  }

  PackedWeight(const PackedWeight&) = delete;
  PackedWeight& operator=(const PackedWeight&) = delete;

  Index out_features() const { return out_; }
  Index in_features() const { return in_; }
  bool has_bias() const { return bool(bias_); }

  // y [rows x out] (row stride ldy) = x [rows x in] (row stride ldx) W^T (+ b
  // when with_bias and the packed copy has one), and true; or false, computing
  // nothing, when oneDNN has no fast kernel for it: its brgemm matmul (2.6)
  // wants x and y dense (ldx = in, ldy = out) and would otherwise pick its
  // reference kernel, 1000x slower. Thread-safe.
  bool multiply(const float* x, Index ldx, Index rows, float* y, Index ldy, bool with_bias) const {
    using dnnl::memory;
    with_bias = with_bias && has_bias();
    const dnnl::matmul* product = primitive(rows, ldx, ldy, with_bias);
    if (!product) return false;
    const memory::desc x_md({rows, in_}, memory::data_type::f32, {ldx, 1});
    const memory::desc y_md({rows, out_}, memory::data_type::f32, {ldy, 1});
    memory src(x_md, engine_, const_cast<float*>(x)), dst(y_md, engine_, y);
    dnnl::stream stream(engine_);
    if (with_bias)
      product->execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights_},
                                {DNNL_ARG_BIAS, bias_}, {DNNL_ARG_DST, dst}});
    else
      product->execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights_}, {DNNL_ARG_DST, dst}});
    stream.wait();
    return true;
  }

 private:
  struct Key {
    Index rows, ldx, ldy;
    bool bias;
    bool operator<(const Key& o) const {
      if (rows != o.rows) return rows < o.rows;
      if (ldx != o.ldx) return ldx < o.ldx;
      if (ldy != o.ldy) return ldy < o.ldy;
      return bias < o.bias;
    }
  };

  // The matmul x [rows x in] (stride ldx) . weights -> y [rows x out] (stride ldy).
  dnnl::matmul::primitive_desc primitive_desc(Index rows, Index ldx, Index ldy,
                                              const dnnl::memory::desc& weights, bool bias = false) const {
    using dnnl::memory;
    const memory::desc x_md({rows, in_}, memory::data_type::f32, {ldx, 1});
    const memory::desc y_md({rows, out_}, memory::data_type::f32, {ldy, 1});
    if (bias) return {dnnl::matmul::desc(x_md, weights, bias_md_, y_md), engine_};
    return {dnnl::matmul::desc(x_md, weights, y_md), engine_};  // oneDNN 2.x API
  }

  // The primitive for these rows and strides, built on first use; null when
  // oneDNN would run it with a reference (non-JIT) kernel.
  const dnnl::matmul* primitive(Index rows, Index ldx, Index ldy, bool bias) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    const Key key{rows, ldx, ldy, bias};
    auto it = primitives_.find(key);
    if (it == primitives_.end()) {
      const dnnl::matmul::primitive_desc pd = primitive_desc(rows, ldx, ldy, packed_md_, bias);
      const bool reference = std::string_view(pd.impl_info_str()).starts_with("ref");
      it = primitives_.emplace(key, reference ? std::nullopt : std::optional(dnnl::matmul(pd))).first;
    }
    // std::map nodes do not move: the pointer stays valid.
    return it->second ? &*it->second : nullptr;
  }

  Index out_ = 0, in_ = 0;
  dnnl::engine engine_;
  dnnl::memory::desc packed_md_, bias_md_;
  dnnl::memory weights_, bias_;
  mutable std::mutex mutex_;
  mutable std::map<Key, std::optional<dnnl::matmul>> primitives_;
};

#endif  // PRENORM_WITH_ONEDNN

// The packed copy of a matrix W (out x in) and its bias, or nothing. A copy
// of a slot is empty: the copied parameters may be changed, and a packed copy
// must never go stale (moves keep it, with the parameters they move).
template <class S>
class PackedSlot {
 public:
  PackedSlot() = default;
  PackedSlot(const PackedSlot&) {}
  PackedSlot& operator=(const PackedSlot&) {
    reset();
    return *this;
  }
  PackedSlot(PackedSlot&&) noexcept = default;
  PackedSlot& operator=(PackedSlot&&) noexcept = default;

  // Packs w (out x in) and bias (out, or empty). A no-op for double or
  // without oneDNN.
  void pack(const RowMatrix<S>& w, const Vector<S>& bias) {
#ifdef PRENORM_WITH_ONEDNN
    if constexpr (std::is_same_v<S, float>)
      packed_ = std::make_shared<const PackedWeight>(w.data(), w.rows(), w.cols(),
                                                     bias.size() != 0 ? bias.data() : nullptr);
#else
    (void)w;
    (void)bias;
#endif
  }
  void reset() {
#ifdef PRENORM_WITH_ONEDNN
    packed_.reset();
#endif
  }
  bool packed() const {
#ifdef PRENORM_WITH_ONEDNN
    return packed_ != nullptr;
#else
    return false;
#endif
  }

  // y [rows x out] = x [rows x in] W^T (+ b when with_bias) from the packed
  // copy, when there is one, x has enough rows for it to pay and oneDNN has a
  // fast kernel for the strides; returns whether it ran. w, bias: the current parameters, whose shapes must still
  // be the packed ones (op names the caller in the error otherwise).
  bool multiply(const char* op, const ConstRowsRef<S>& x, RowsRef<S>& y, const RowMatrix<S>& w,
                const Vector<S>& bias, bool with_bias) const {
#ifdef PRENORM_WITH_ONEDNN
    if constexpr (std::is_same_v<S, float>) {
      if (!packed_ || x.rows() < PackedWeight::kMinRows) return false;
      const bool has_bias = bias.size() != 0;
      if (packed_->out_features() != w.rows() || packed_->in_features() != w.cols() ||
          packed_->has_bias() != has_bias)
        fail(op, "the packed weights are (", packed_->out_features(), " x ",
             packed_->in_features(), packed_->has_bias() ? ", with bias" : ", no bias",
             ") but the weight is (", w.rows(), " x ", w.cols(), has_bias ? ", with bias" : ", no bias",
             "): pack again after changing the layer");
      return packed_->multiply(x.data(), x.outerStride(), x.rows(), y.data(), y.outerStride(),
                               with_bias);
    }
#endif
    (void)op, (void)x, (void)y, (void)w, (void)bias, (void)with_bias;
    return false;
  }

 private:
#ifdef PRENORM_WITH_ONEDNN
  std::shared_ptr<const PackedWeight> packed_;  // float only; null: not packed
#endif
};

}  // namespace prenorm::detail
