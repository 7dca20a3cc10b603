#pragma once
// The options of MultiHeadAttention (layers/attention.hpp) that TransformerConfig
// (models/config.hpp) also holds: the rotary embedding, ALiBi's slopes, and
// the checks of the options, shared by both.
//
// Rotary position embedding (RoPE) as the Pre-LN families apply it to the
// query and key heads. With dims even (<= head_dim) and, for i < dims/2,
//   theta_i = base^(-2i/dims),   angle(p, i) = p * theta_i   (p: the token's position),
// each pair (a, b) of a head's first dims coordinates becomes
//   (a cos - b sin,  b cos + a sin);
// the other coordinates are left as they are (partial rotary: GPT-NeoX's
// rotary_pct, Phi's partial_rotary_factor, GPT-J's rotary_dim). The pairs:
//   RotateHalf   (i, i + dims/2)   GPT-NeoX, Phi, Llama: q cos + rotate_half(q) sin
//   Interleaved  (2i, 2i + 1)      GPT-J: q cos + rotate_every_two(q) sin
// Angles are computed in double and cos, sin rounded to the scalar type.

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace prenorm {

enum class RotaryPairing { RotateHalf, Interleaved };

constexpr std::string_view rotary_pairing_name(RotaryPairing pairing) {
  return pairing == RotaryPairing::RotateHalf ? "rotate_half" : "interleaved";
}

struct Rotary {
  Index dims = 0;  // rotated coordinates at the start of each q and k head; 0: none
  RotaryPairing pairing = RotaryPairing::RotateHalf;
  double base = 10000;  // theta_i = base^(-2i/dims)

  bool operator==(const Rotary&) const = default;
};

// BLOOM's ALiBi slope of head h of `heads` (build_alibi_tensor): with n the
// largest power of two <= heads, head h < n has 2^(-8(h+1)/n); the others,
// h = n + k, take the odd ones of 2n heads: 2^(-4(2k+1)/n).
inline double alibi_slope(Index heads, Index h) {
  Index n = 1;
  while (2 * n <= heads) n *= 2;
  return h < n ? std::exp2(-8.0 * double(h + 1) / double(n))
               : std::exp2(-4.0 * double(2 * (h - n) + 1) / double(n));
}

// The slopes of every head, [heads].
inline std::vector<double> alibi_slopes(Index heads) {
  std::vector<double> slopes(heads > 0 ? heads : 0);
  for (Index h = 0; h < Index(slopes.size()); ++h) slopes[h] = alibi_slope(heads, h);
  return slopes;
}

namespace detail {

// Throws unless the options fit `heads` heads of head_dim: kv_heads 0 or a
// divisor of heads; rotary dims even, within [0, head_dim], base finite and
// > 0; window >= 0, and > 0 only when causal; score_scale 0 or finite > 0.
// prefix() names the holder of the fields in messages ("", "blocks[3].attn."),
// built only on failure (a forward checks the options every call).
template <class Prefix>
void check_attention_options(const char* op, const Prefix& prefix, Index heads, Index head_dim,
                             Index kv_heads, const Rotary& rotary, Index window, bool causal,
                             double score_scale) {
  const auto bad = [&](auto&&... parts) { fail(op, prefix(), parts...); };
  if (kv_heads < 0 || (kv_heads > 0 && heads % kv_heads != 0))
    bad("kv_heads is ", kv_heads, ", expected 0 (one per head) or a divisor of heads ", heads);
  if (rotary.dims < 0 || rotary.dims % 2 != 0 || rotary.dims > head_dim)
    bad("rotary.dims is ", rotary.dims, ", expected an even number in [0, head_dim ", head_dim, "]");
  if (rotary.dims != 0 && !(rotary.base > 0 && std::isfinite(rotary.base)))
    bad("rotary.base is ", rotary.base, ", expected a finite number > 0");
  if (window < 0) bad("window is ", window, ", expected >= 0 (0: global attention)");
  if (window > 0 && !causal)
    bad("window is ", window, " without a causal mask, expected window 0 (local attention is causal)");
  if (!(score_scale == 0 || (score_scale > 0 && std::isfinite(score_scale))))
    bad("score_scale is ", score_scale, ", expected 0 (1/sqrt(head_dim)) or a finite number > 0");
}

// cos, sin [T x dims/2] of positions [past, past + T), reused while the
// rotary and positions stay the same (every layer of a model's forward).
template <class S>
struct RotaryTable {
  RowMatrix<S> cos, sin;
  Rotary rotary;
  Index past = -1, tokens = -1;

  void prepare(const Rotary& r, Index past_, Index T) {
    if (r == rotary && past_ == past && T == tokens) return;
    const Index half = r.dims / 2;
    cos.resize(T, half);
    sin.resize(T, half);
    for (Index i = 0; i < half; ++i) {
      const double theta = 1.0 / std::pow(r.base, double(2 * i) / double(r.dims));
      for (Index t = 0; t < T; ++t) {
        const double angle = double(past_ + t) * theta;
        cos(t, i) = S(std::cos(angle));
        sin(t, i) = S(std::sin(angle));
      }
    }
    rotary = r;
    past = past_;
    tokens = T;
  }
};

// Rotates, in place, the first r.dims coordinates of `count` heads of hd
// coordinates each, starting at x; c, s [dims/2]: the token's cos and sin.
template <class S>
void rotate_heads(const Rotary& r, S* x, Index count, Index hd, const S* c, const S* s) {
  const Index half = r.dims / 2;
  // The two coordinates of pair i are at v[i * step] and v[i * step + gap].
  const Index step = r.pairing == RotaryPairing::RotateHalf ? 1 : 2;
  const Index gap = r.pairing == RotaryPairing::RotateHalf ? half : 1;
  for (Index h = 0; h < count; ++h) {
    S* v = x + h * hd;
    for (Index i = 0; i < half; ++i) {
      const S a = v[i * step], b = v[i * step + gap];
      v[i * step] = a * c[i] - b * s[i];
      v[i * step + gap] = b * c[i] + a * s[i];
    }
  }
}

}  // namespace detail
}  // namespace prenorm
