// Tests of MultiHeadAttention's options (layers/attention.hpp): grouped-query
// and multi-query attention (kv_heads), the rotary embedding (rotate-half and
// interleaved pairs), BLOOM's ALiBi, GPT-Neo's local window and its unscaled
// scores (score_scale), each alone and combined; decoding through the KV cache;
// a whole Gpt with the options (GptConfig), its session, its conversions and
// its prenorm-layout file; the refusals of validate and of training.
//
// The reference is written here from the Hugging Face semantics with explicit
// loops in long double (repeat_kv, rotate_half / rotate_every_two on the
// duplicated cos, sin tables, BLOOM's build_alibi_tensor with slope * j,
// GPT-Neo's bias ^ tril(bias, -window) mask), not from prenorm's runtime.
// Typed over float and double: relative error <= 1e-5 (float), 1e-12 (double).

#include "support/alloc_count.hpp"  // first: before any Eigen header

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/layers.hpp>
#include <prenorm/models.hpp>
#include <prenorm/train.hpp>

#if __has_include(<nlohmann/json.hpp>)
#include <prenorm/io/hf_gpt2.hpp>
#include <prenorm/io/prenorm_layout.hpp>
#define PRENORM_TEST_IO 1
#endif

#include <cmath>
#include <string>
#include <vector>

#include "support/convert_test_util.hpp"

namespace {

using namespace prenorm_test;
using prenorm::TransformerConfig;
using prenorm::GptConfig;
using prenorm::MultiHeadAttention;
using prenorm::Rotary;
using prenorm::RotaryPairing;

using LD = long double;
using MatL = std::vector<std::vector<LD>>;

// ===========================================================================
// The reference (Hugging Face semantics, long double)
// ===========================================================================

// BLOOM's build_alibi_tensor slopes, as written there.
std::vector<LD> bloom_slopes(Index heads) {
  const Index closest = Index(1) << Index(std::floor(std::log2(LD(heads))));
  const LD base = std::pow(2.0L, -std::pow(2.0L, -(std::log2(LD(closest)) - 3)));
  std::vector<LD> slopes;
  for (Index p = 1; p <= closest; ++p) slopes.push_back(std::pow(base, LD(p)));
  if (closest != heads) {
    const LD extra_base = std::pow(2.0L, -std::pow(2.0L, -(std::log2(LD(2 * closest)) - 3)));
    const Index remaining = std::min(closest, heads - closest);
    for (Index p = 1; p < 1 + 2 * remaining; p += 2) slopes.push_back(std::pow(extra_base, LD(p)));
  }
  return slopes;
}

struct Options {
  Index heads = 4, kv_heads = 0, head_dim = 8;
  bool causal = true;
  Rotary rotary = {};
  bool alibi = false;
  Index window = 0;
  double score_scale = 0;
};

// x' = x cos + rotate(x) sin on the first dims coordinates of one head at
// position pos, with the tables and rotation of GPT-NeoX (rotate_half on
// cat(freqs, freqs)) or GPT-J (rotate_every_two on repeat_interleave(freqs, 2)).
void reference_rotary(const Rotary& r, LD pos, LD* x) {
  const Index dims = r.dims, half = dims / 2;
  if (dims == 0) return;
  std::vector<LD> freq(dims), rotated(dims);
  for (Index i = 0; i < half; ++i) {
    const LD inv_freq = 1.0L / std::pow(LD(r.base), LD(2 * i) / LD(dims));
    if (r.pairing == RotaryPairing::RotateHalf) freq[i] = freq[i + half] = pos * inv_freq;
    else freq[2 * i] = freq[2 * i + 1] = pos * inv_freq;
  }
  for (Index i = 0; i < dims; ++i) {
    if (r.pairing == RotaryPairing::RotateHalf) rotated[i] = i < half ? -x[i + half] : x[i - half];
    else rotated[i] = i % 2 == 0 ? -x[i + 1] : x[i - 1];
  }
  for (Index i = 0; i < dims; ++i) x[i] = x[i] * std::cos(freq[i]) + rotated[i] * std::sin(freq[i]);
}

template <class D>
MatL to_ld(const Eigen::MatrixBase<D>& m) {
  MatL out(m.rows(), std::vector<LD>(m.cols()));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = LD(m(r, c));
  return out;
}

// y [batch*T x width] of the attention `a` (its weights, read in long double)
// on x [batch*T x width], token t of each sequence at position t.
template <class S>
MatD reference_attention(const Options& o, const MultiHeadAttention<S>& a,
                         const RowMatrix<S>& x, Index batch) {
  const Index H = o.heads, G = o.kv_heads ? o.kv_heads : H, hd = o.head_dim;
  const Index N = x.rows(), T = N / batch, width = x.cols();
  const MatL W = to_ld(a.qkv.weight), Wo = to_ld(a.out.weight), X = to_ld(x);
  const LD scale = o.score_scale != 0 ? LD(o.score_scale) : 1.0L / std::sqrt(LD(hd));
  const std::vector<LD> slopes = bloom_slopes(H);
  MatD y(N, width);
  for (Index b = 0; b < batch; ++b) {
    // q [H][T][hd], k, v [G][T][hd]: the projection split per head.
    using Heads = std::vector<MatL>;
    Heads q(H, MatL(T, std::vector<LD>(hd))), k(G, q[0]), v(G, q[0]);
    for (Index t = 0; t < T; ++t)
      for (Index r = 0; r < Index(W.size()); ++r) {
        LD s = LD(a.qkv.bias(r));
        for (Index c = 0; c < width; ++c) s += X[b * T + t][c] * W[r][c];
        if (r < H * hd) q[r / hd][t][r % hd] = s;
        else if (r < (H + G) * hd) k[(r - H * hd) / hd][t][r % hd] = s;
        else v[(r - (H + G) * hd) / hd][t][r % hd] = s;
      }
    for (Index t = 0; t < T; ++t) {
      for (Index h = 0; h < H; ++h) reference_rotary(o.rotary, LD(t), q[h][t].data());
      for (Index g = 0; g < G; ++g) reference_rotary(o.rotary, LD(t), k[g][t].data());
    }
    // repeat_kv: query head h reads key/value head h / (H / G).
    Heads kr(H), vr(H);
    for (Index h = 0; h < H; ++h) kr[h] = k[h / (H / G)], vr[h] = v[h / (H / G)];
    MatL context(T, std::vector<LD>(H * hd, 0));
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < T; ++i) {
        std::vector<LD> s(T);
        std::vector<bool> seen(T, true);
        LD max = -INFINITY;
        for (Index j = 0; j < T; ++j) {
          // GPT-Neo: bias = tril(ones); local: bias ^ tril(bias, -window).
          const bool tril = j <= i;
          if (o.causal) seen[j] = tril;
          if (o.window > 0) seen[j] = tril && !(j <= i - o.window);
          if (!seen[j]) continue;
          LD dot = 0;
          for (Index d = 0; d < hd; ++d) dot += q[h][i][d] * kr[h][j][d];
          s[j] = scale * dot + (o.alibi ? slopes[h] * LD(j) : 0);  // BLOOM: alibi = slope * j
          max = std::max(max, s[j]);
        }
        LD sum = 0;
        for (Index j = 0; j < T; ++j)
          if (seen[j]) sum += (s[j] = std::exp(s[j] - max));
        for (Index j = 0; j < T; ++j)
          if (seen[j])
            for (Index d = 0; d < hd; ++d) context[i][h * hd + d] += s[j] / sum * vr[h][j][d];
      }
    for (Index t = 0; t < T; ++t)
      for (Index r = 0; r < width; ++r) {
        LD s = LD(a.out.bias(r));
        for (Index c = 0; c < H * hd; ++c) s += context[t][c] * Wo[r][c];
        y(b * T + t, r) = double(s);
      }
  }
  return y;
}

// ===========================================================================
// The layer under test
// ===========================================================================

constexpr Index kWidth = 12;

template <class S>
MultiHeadAttention<S> make_attention(const Options& o, std::uint64_t seed) {
  MultiHeadAttention<S> a(kWidth, o.heads, o.head_dim, o.causal, /*bias=*/true, o.kv_heads);
  a.rotary = o.rotary;
  a.alibi = o.alibi;
  a.window = o.window;
  a.score_scale = o.score_scale;
  Rng rng(seed);
  rng.fill(a.qkv.weight, 1.2 / std::sqrt(double(kWidth)));
  rng.fill(a.qkv.bias, 0.3);
  rng.fill(a.out.weight, 1.0 / std::sqrt(double(a.inner())));
  rng.fill(a.out.bias, 0.3);
  return a;
}

template <class S>
RowMatrix<S> random_input(Index rows, std::uint64_t seed) {
  RowMatrix<S> x(rows, kWidth);
  Rng rng(seed);
  rng.fill(x, 1.0, 0.2);
  return x;
}

struct Case {
  const char* name;
  Options options;
  Index T = 9;
};

Rotary rotate_half(Index dims, double base = 10000) { return {dims, RotaryPairing::RotateHalf, base}; }
Rotary interleaved(Index dims, double base = 10000) { return {dims, RotaryPairing::Interleaved, base}; }

// Each option alone, causal and not where legal, and combined.
std::vector<Case> cases() {
  std::vector<Case> list;
  for (bool causal : {true, false}) {
    list.push_back({"plain", {.causal = causal}});
    list.push_back({"grouped-query 4/2", {.kv_heads = 2, .causal = causal}});
    list.push_back({"multi-query", {.kv_heads = 1, .causal = causal}});
    list.push_back({"rotate_half 4 of 8", {.causal = causal, .rotary = rotate_half(4)}});
    list.push_back({"interleaved 8 of 8, base 500", {.causal = causal, .rotary = interleaved(8, 500)}});
    list.push_back({"alibi, 6 heads", {.heads = 6, .causal = causal, .alibi = true}});
    list.push_back({"alibi, 8 heads", {.heads = 8, .head_dim = 4, .causal = causal, .alibi = true}});
    list.push_back({"score_scale 1", {.causal = causal, .score_scale = 1.0}});
    list.push_back({"multi-query + alibi", {.heads = 6, .kv_heads = 1, .causal = causal, .alibi = true}});
  }
  list.push_back({"window 3", {.window = 3}});
  list.push_back({"window 1", {.window = 1}});
  list.push_back({"window 20, 70 tokens", {.window = 20}, 70});
  list.push_back({"window 66, 140 tokens", {.heads = 2, .window = 66}, 140});
  list.push_back({"causal, 70 tokens (two chunks)", {.rotary = rotate_half(6)}, 70});
  list.push_back({"grouped-query + rotary + window",
                  {.kv_heads = 2, .rotary = rotate_half(4), .window = 4}});
  list.push_back({"everything", {.heads = 6, .kv_heads = 3, .rotary = interleaved(6, 100),
                                 .alibi = true, .window = 5, .score_scale = 0.7}, 12});
  return list;
}

template <class S>
class AttentionVariants : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AttentionVariants, Scalars);

std::string describe(const Case& c) {
  return std::string(c.name) + (c.options.causal ? "" : " (bidirectional)");
}

// ===========================================================================
// The reference's own checks
// ===========================================================================

TEST(AttentionVariantsReference, BloomSlopes) {
  // 8 heads: 2^-1 .. 2^-8.
  const std::vector<LD> eight = bloom_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (Index h = 0; h < 8; ++h) EXPECT_EQ(eight[h], std::ldexp(1.0L, -int(h + 1))) << h;
  // 6 heads: the 4 of 4 heads (2^-2, 2^-4, 2^-6, 2^-8), then the odd ones of 8 (2^-1, 2^-3).
  const std::vector<LD> six = bloom_slopes(6);
  const std::vector<int> exponents = {2, 4, 6, 8, 1, 3};
  ASSERT_EQ(six.size(), 6u);
  for (Index h = 0; h < 6; ++h) EXPECT_EQ(six[h], std::ldexp(1.0L, -exponents[h])) << h;
  // prenorm's slopes are BLOOM's.
  for (Index heads : {1, 2, 3, 5, 6, 8, 12, 16, 20, 112}) {
    const std::vector<LD> expected = bloom_slopes(heads);
    const std::vector<double> slopes = prenorm::alibi_slopes(heads);
    ASSERT_EQ(slopes.size(), expected.size()) << heads;
    for (Index h = 0; h < heads; ++h)
      EXPECT_NEAR(slopes[h], double(expected[h]), 1e-15 * double(expected[h])) << heads << " " << h;
  }
}

// The two rotations pair different coordinates: GPT-NeoX (i, i + dims/2) and
// GPT-J (2i, 2i + 1); a rotation keeps each pair's norm.
TEST(AttentionVariantsReference, RotaryPairs) {
  std::vector<LD> a = {1, 2, 3, 4}, b = a;
  reference_rotary(rotate_half(4), 1, a.data());
  reference_rotary(interleaved(4), 1, b.data());
  EXPECT_NEAR(double(a[0] * a[0] + a[2] * a[2]), 1 + 9, 1e-15);
  EXPECT_NEAR(double(a[1] * a[1] + a[3] * a[3]), 4 + 16, 1e-15);
  EXPECT_NEAR(double(b[0] * b[0] + b[1] * b[1]), 1 + 4, 1e-15);
  EXPECT_NEAR(double(b[2] * b[2] + b[3] * b[3]), 9 + 16, 1e-15);
  // Pair 0 turns by 1 radian: (1, 3) -> (cos 1 - 3 sin 1, 3 cos 1 + sin 1).
  EXPECT_NEAR(double(a[0]), std::cos(1.0) - 3 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(double(b[0]), std::cos(1.0) - 2 * std::sin(1.0), 1e-15);
  std::vector<LD> c = {1, 2, 3, 4};
  reference_rotary(rotate_half(4), 0, c.data());  // position 0: no rotation
  EXPECT_EQ(c, (std::vector<LD>{1, 2, 3, 4}));
}

// ===========================================================================
// Forward against the reference
// ===========================================================================

TYPED_TEST(AttentionVariants, ForwardMatchesReference) {
  using S = TypeParam;
  double worst = 0;
  std::uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(describe(c));
    const auto a = make_attention<S>(c.options, ++seed);
    const Index batch = 2;
    const RowMatrix<S> x = random_input<S>(batch * c.T, ++seed);
    RowMatrix<S> y(x.rows(), kWidth);
    a.forward(x, batch, y);
    EXPECT_TRUE(close_rel(y, reference_attention(c.options, a, x, batch), tol<S>(), &worst));
  }
  report(std::string("attention variants vs reference, ") + dtype<S>(), worst);
}

// Each option changes the output (the reference checks would pass a layer
// that ignored an option only if the option did nothing).
TYPED_TEST(AttentionVariants, EachOptionMatters) {
  using S = TypeParam;
  const Options plain;
  const RowMatrix<S> x = random_input<S>(2 * 9, 7);
  const auto output = [&](const Options& o) {
    const auto a = make_attention<S>(o, 3);
    RowMatrix<S> y(x.rows(), kWidth);
    a.forward(x, 2, y);
    return y;
  };
  const RowMatrix<S> base = output(plain);
  for (const Options& o : {Options{.rotary = rotate_half(4)}, Options{.rotary = interleaved(4)},
                           Options{.alibi = true}, Options{.window = 3},
                           Options{.score_scale = 1.0}}) {
    EXPECT_GT(rel_err(output(o), base), 1e-3);
  }
  EXPECT_GT(rel_err(output({.rotary = rotate_half(4)}), output({.rotary = interleaved(4)})), 1e-3);
}

// ===========================================================================
// Decoding through the KV cache
// ===========================================================================

// Prefill 4 positions, a chunk of 3, then one token at a time: every new
// output row equals the full forward's (and the reference's).
TYPED_TEST(AttentionVariants, CachedEqualsFullForward) {
  using S = TypeParam;
  double worst = 0;
  std::uint64_t seed = 500;
  const std::vector<Case> list = {
      {"rotate_half", {.rotary = rotate_half(4)}, 11},
      {"interleaved", {.rotary = interleaved(8)}, 11},
      {"window 3", {.window = 3}, 11},
      {"alibi", {.heads = 6, .alibi = true}, 11},
      {"grouped-query", {.kv_heads = 2}, 11},
      {"multi-query + alibi + score_scale", {.kv_heads = 1, .alibi = true, .score_scale = 1}, 11},
      {"grouped-query + rotary + window",
       {.heads = 6, .kv_heads = 2, .rotary = rotate_half(6, 50), .window = 4}, 11},
  };
  for (const Case& c : list) {
    SCOPED_TRACE(c.name);
    const auto a = make_attention<S>(c.options, ++seed);
    const Index batch = 2, T = c.T, capacity = T + 2;
    const RowMatrix<S> x = random_input<S>(batch * T, ++seed);
    RowMatrix<S> full(batch * T, kWidth);
    a.forward(x, batch, full);
    const MatD expected = reference_attention(c.options, a, x, batch);
    RowMatrix<S> keys(batch * capacity, a.kv_inner()), values(batch * capacity, a.kv_inner());
    prenorm::AttentionWorkspace<S> ws;
    std::vector<Index> ends = {4, 7};
    for (Index t = 8; t <= T; ++t) ends.push_back(t);
    Index past = 0;
    for (Index end : ends) {
      const Index n = end - past;
      RowMatrix<S> xs(batch * n, kWidth), want(batch * n, kWidth), ys(batch * n, kWidth);
      MatD ref(batch * n, kWidth);
      for (Index b = 0; b < batch; ++b) {
        xs.middleRows(b * n, n) = x.middleRows(b * T + past, n);
        want.middleRows(b * n, n) = full.middleRows(b * T + past, n);
        ref.middleRows(b * n, n) = expected.middleRows(b * T + past, n);
      }
      a.forward_cached(xs, batch, past, keys, values, ys, ws);
      EXPECT_TRUE(close_rel(ys, want, tol<S>(), &worst)) << "positions [" << past << ", " << end << ")";
      EXPECT_TRUE(close_rel(ys, ref, tol<S>(), &worst)) << "positions [" << past << ", " << end << ")";
      past = end;
    }
  }
  report(std::string("attention variants, cached vs full, ") + dtype<S>(), worst);
}

// ===========================================================================
// Blockwise attention: sequences and caches of several key blocks
// ===========================================================================

// Longer than a key block and not a multiple of either block size, so that
// the last query blocks read two key blocks, the online softmax rescales
// across them (ALiBi raises the maximum in every later block; random scores
// often do), and a bidirectional sequence is too long for one block.
template <class S>
constexpr Index kLongT = MultiHeadAttention<S>::kKeyBlock + 37;

std::vector<Case> long_cases(Index T) {
  const Index wide = MultiHeadAttention<float>::kKeyBlock + 20;  // a window across key blocks
  return {
      {"plain", {.heads = 2, .head_dim = 4}, T},
      {"bidirectional + alibi", {.heads = 2, .head_dim = 4, .causal = false, .alibi = true}, T},
      {"grouped-query + rotary + alibi",
       {.heads = 2, .kv_heads = 1, .head_dim = 4, .rotary = rotate_half(4), .alibi = true}, T},
      {"window 7", {.heads = 2, .head_dim = 4, .window = 7}, T},
      {"window across key blocks, score_scale 2",
       {.heads = 2, .head_dim = 4, .window = wide, .score_scale = 2.0}, T},
  };
}

TYPED_TEST(AttentionVariants, LongSequenceMatchesReference) {
  using S = TypeParam;
  double worst = 0;
  std::uint64_t seed = 900;
  for (const Case& c : long_cases(kLongT<S>)) {
    SCOPED_TRACE(describe(c));
    const auto a = make_attention<S>(c.options, ++seed);
    const RowMatrix<S> x = random_input<S>(c.T, ++seed);
    RowMatrix<S> y(x.rows(), kWidth);
    a.forward(x, 1, y);
    EXPECT_TRUE(close_rel(y, reference_attention(c.options, a, x, 1), tol<S>(), &worst));
  }
  report(std::string("attention, several key blocks, vs reference, ") + dtype<S>(), worst);
}

// Through the cache: a long prompt in one call, a block of kQueryBlock new
// tokens after it (its keys: cached positions in several key blocks), then
// single steps. (A step takes up to kQueryBlock * kKeyBlock keys in one block.)
TYPED_TEST(AttentionVariants, LongCacheMatchesReference) {
  using S = TypeParam;
  double worst = 0;
  std::uint64_t seed = 950;
  const Index T = kLongT<S>, block = MultiHeadAttention<S>::kQueryBlock, prompt = T - block - 3;
  for (const Case& c : long_cases(T)) {
    if (!c.options.causal) continue;  // decoding is causal
    SCOPED_TRACE(describe(c));
    const auto a = make_attention<S>(c.options, ++seed);
    const RowMatrix<S> x = random_input<S>(T, ++seed);
    const MatD expected = reference_attention(c.options, a, x, 1);
    RowMatrix<S> keys(T, a.kv_inner()), values(T, a.kv_inner()), y(prompt, kWidth);
    prenorm::AttentionWorkspace<S> ws;
    a.forward_cached(x.topRows(prompt), 1, 0, keys, values, y, ws);
    EXPECT_TRUE(close_rel(y, expected.topRows(prompt), tol<S>(), &worst)) << "prompt";
    RowMatrix<S> next(block, kWidth);
    a.forward_cached(x.middleRows(prompt, block), 1, prompt, keys, values, next, ws);
    EXPECT_TRUE(close_rel(next, expected.middleRows(prompt, block), tol<S>(), &worst)) << "block";
    for (Index p = prompt + block; p < T; ++p) {
      RowMatrix<S> step(1, kWidth);
      a.forward_cached(x.middleRows(p, 1), 1, p, keys, values, step, ws);
      EXPECT_TRUE(close_rel(step, expected.middleRows(p, 1), tol<S>(), &worst)) << "position " << p;
    }
  }
  report(std::string("attention, long KV cache, vs reference, ") + dtype<S>(), worst);
}

// Several key blocks on 2 and 3 threads give the bits of 1 thread (each
// (sequence, head) runs whole on one thread, its scratch slot 64-byte aligned).
TEST(AttentionBlockwise, OnThreadsBitForBit) {
  const Index T = kLongT<float>;
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    const auto a = make_attention<float>({.heads = 4, .head_dim = 4, .causal = causal, .alibi = true}, 8);
    const RowMatrix<float> x = random_input<float>(T, 9);
    RowMatrix<float> one(T, kWidth), many(T, kWidth);
    a.forward(x, 1, one);
    for (int threads : {2, 3}) {
      prenorm::set_num_threads(threads);
      a.forward(x, 1, many);
      EXPECT_EQ(many, one) << threads << " threads";
    }
    prenorm::set_num_threads(1);
  }
}

// The scores workspace holds one [query block x key block] per thread slot,
// whatever the sequence or cache length: it does not grow from 9 tokens to
// many key blocks, nor with a cache of many key blocks.
TEST(AttentionBlockwise, ScoresWorkspaceIsBounded) {
  using A = MultiHeadAttention<float>;
  const auto a = make_attention<float>({.heads = 2, .head_dim = 4}, 3);
  prenorm::AttentionWorkspace<float> ws;
  const auto forward = [&](Index T) {
    RowMatrix<float> y(T, kWidth);
    a.forward(random_input<float>(T, T), 1, y, ws);
  };
  forward(9);
  const Index bounded = ws.scores.size();
  const Index slot = std::max(A::kQueryBlock * A::kKeyBlock, A::kShortScores);
  EXPECT_LE(bounded, prenorm::detail::thread_slots() * prenorm::detail::aligned_slot_size<float>(slot));
  forward(5 * A::kKeyBlock + 3);
  EXPECT_EQ(ws.scores.size(), bounded) << "after a forward of many key blocks";
  const auto bidirectional = make_attention<float>({.heads = 2, .head_dim = 4, .causal = false}, 4);
  RowMatrix<float> wide(5 * A::kKeyBlock + 3, kWidth);
  bidirectional.forward(random_input<float>(wide.rows(), 5), 1, wide, ws);
  EXPECT_EQ(ws.scores.size(), bounded) << "after a bidirectional forward of many key blocks";
  const Index capacity = 6 * A::kKeyBlock;
  RowMatrix<float> keys = RowMatrix<float>::Zero(capacity, a.kv_inner()), values = keys, y(1, kWidth);
  a.forward_cached(random_input<float>(1, 1), 1, capacity - 1, keys, values, y, ws);
  EXPECT_EQ(ws.scores.size(), bounded) << "after a step attending to " << capacity << " positions";
}

// ===========================================================================
// A whole GPT with the options
// ===========================================================================

GptConfig gpt_config(int which) {
  GptConfig c{.vocab = 37, .context = 24, .width = 16, .heads = 4, .layers = 3, .mlp_width = 32};
  if (which == 0) {  // grouped-query + rotate-half rotary + GPT-Neo's alternating windows
    c.kv_heads = 2;
    c.rotary = rotate_half(2);
    c.window = 3;
    c.window_period = 2;
    c.learned_positions = false;  // the rotary families have no position table
  } else {  // multi-query (GPT-BigCode) + ALiBi + interleaved rotary + no scaling
    c.kv_heads = 1;
    c.alibi = true;
    c.rotary = interleaved(4, 1000);
    c.score_scale = 1.0;
    c.window = 5;
    c.position_offset = 2;  // OPT reads its table at position + 2
  }
  return c;
}

prenorm::Gpt<Arch::PreLN, double> random_gpt(const TransformerConfig& c, std::uint64_t seed) {
  prenorm::Gpt<Arch::PreLN, double> m(c);
  Rng rng(seed);
  rng.fill(m.token_embedding.table, 1.0, 0.3);
  rng.fill(m.position_embedding.table, 0.5, -0.2);
  for (auto& b : m.blocks) fill_pre_ln_block(b, rng);
  fill_gamma(m.final_gamma, rng);
  rng.fill(m.final_beta, 0.5);
  return m;
}

struct Tokens {
  std::vector<int> ids;
  Index batch, seq;
  prenorm::TokenBatch view() const { return {ids, batch, seq}; }
  // Positions [begin, end) of every sequence.
  Tokens slice(Index begin, Index end) const {
    Tokens s{{}, batch, end - begin};
    for (Index b = 0; b < batch; ++b)
      s.ids.insert(s.ids.end(), ids.begin() + b * seq + begin, ids.begin() + b * seq + end);
    return s;
  }
};

Tokens random_tokens(Index batch, Index seq, Index vocab, std::uint64_t seed) {
  Rng rng(seed);
  Tokens t{{}, batch, seq};
  for (Index i = 0; i < batch * seq; ++i) t.ids.push_back(int(rng.uniform(0, vocab - 1)));
  return t;
}

// Session prefill, extend and steps give the rows of the full forward.
template <class Model>
void expect_decoding_matches(const Model& m, const Tokens& tokens, double tolerance, double* worst) {
  const MatD full = logits(m, tokens);
  prenorm::Session session(m);
  const Index B = tokens.batch, T = tokens.seq;
  std::vector<Index> ends = {5, 8};
  for (Index t = 9; t <= T; ++t) ends.push_back(t);
  Index past = 0;
  for (Index end : ends) {
    const Tokens part = tokens.slice(past, end);
    const auto& got = past == 0 ? session.prefill(part.view()) : session.extend(part.view());
    const Index n = end - past;
    MatD want(B * n, full.cols());
    for (Index b = 0; b < B; ++b) want.middleRows(b * n, n) = full.middleRows(b * T + past, n);
    EXPECT_TRUE(close_rel(got, want, tolerance, worst)) << "positions [" << past << ", " << end << ")";
    past = end;
  }
  EXPECT_EQ(session.cache().keys[0].cols(), m.config.kv_width());
}

TEST(AttentionVariantsGpt, BlocksGetTheConfigsOptions) {
  const TransformerConfig c = gpt_config(0);
  const prenorm::Gpt<Arch::PreLN, double> m(c);
  for (Index i = 0; i < c.layers; ++i) {
    const auto& a = m.blocks[i].attn;
    EXPECT_EQ(a.kv_head_count(), 2);
    EXPECT_EQ(a.qkv.weight.rows(), (4 + 2 * 2) * 4);
    EXPECT_EQ(a.kv_inner(), 8);
    EXPECT_EQ(a.rotary, c.rotary);
    EXPECT_FALSE(a.alibi);
    EXPECT_EQ(a.score_scale, 0.0);
    EXPECT_EQ(a.window, i % 2 == 1 ? 3 : 0) << "layer " << i;
  }
  const prenorm::Gpt<Arch::PreLN, double> other(gpt_config(1));
  for (const auto& b : other.blocks) {
    EXPECT_EQ(b.attn.window, 5);  // window_period 1: every layer
    EXPECT_TRUE(b.attn.alibi);
    EXPECT_EQ(b.attn.score_scale, 1.0);
    EXPECT_EQ(b.attn.qkv.weight.rows(), (4 + 2) * 4);
  }
  // init_random still works.
  prenorm::Gpt<Arch::PreLN, double> r(c);
  r.init_random(3);
  EXPECT_NO_THROW(r.validate());
  EXPECT_NO_THROW(r.forward(random_tokens(1, 6, c.vocab, 1).view()));
}

TYPED_TEST(AttentionVariants, GptDecodingAndConversion) {
  using S = TypeParam;
  double worst_decode = 0, worst_convert = 0;
  for (int which : {0, 1}) {
    SCOPED_TRACE("config " + std::to_string(which));
    const auto ln_double = random_gpt(gpt_config(which), 40 + which);
    const auto ln = cast_model<S>(ln_double);
    const Tokens tokens = random_tokens(2, 12, ln.config.vocab, 9 + which);
    expect_decoding_matches(ln, tokens, tol<S>(), &worst_decode);
    const MatD expected = logits(ln, tokens);
    for (prenorm::TiedPolicy policy : {prenorm::TiedPolicy::Untie, prenorm::TiedPolicy::Keep}) {
      const auto rms = prenorm::convert<Arch::PreRMSNorm>(ln, {.tied = policy});
      const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln, {.tied = policy});
      EXPECT_TRUE(close_rel(logits(rms, tokens), expected, tol<S>(), &worst_convert));
      EXPECT_TRUE(close_rel(logits(crms, tokens), expected, tol<S>(), &worst_convert));
      const auto back = prenorm::convert<Arch::PreLN>(crms);
      EXPECT_TRUE(close_rel(logits(back, tokens), expected, tol<S>(), &worst_convert));
      expect_decoding_matches(crms, tokens, tol<S>(), &worst_decode);
      EXPECT_EQ(crms.blocks[1].attn.window, ln.blocks[1].attn.window);
    }
  }
  report(std::string("GPT with attention options, decoding vs forward, ") + dtype<S>(), worst_decode);
  report(std::string("GPT with attention options, converted logits, ") + dtype<S>(), worst_convert);
}

// The options add no allocation: a repeated forward and every decoding step
// after the first allocate nothing (the rotary table is refilled in place).
TYPED_TEST(AttentionVariants, RepeatedCallsDoNotAllocate) {
  using S = TypeParam;
  for (int which : {0, 1}) {
    SCOPED_TRACE("config " + std::to_string(which));
    const auto m = cast_model<S>(random_gpt(gpt_config(which), 70 + which));
    const Tokens tokens = random_tokens(2, 20, m.config.vocab, 8);
    prenorm::Session session(m);
    session.forward(tokens.view());
    auto a = alloc_count::count_allocations([&] { session.forward(tokens.view()); });
    EXPECT_EQ(a.eigen + a.news, 0) << "allocations in a repeated forward";
    session.prefill(tokens.slice(0, 3).view());
    const std::vector<int> next = {3, 4};
    session.step(next);
    a = alloc_count::count_allocations([&] {
      for (int t = 0; t < 6; ++t) session.step(next);  // past the window
    });
    EXPECT_EQ(a.eigen + a.news, 0) << "allocations in decoding steps";
  }
}

#ifdef PRENORM_TEST_IO
// The options are saved in the metadata (only where not GPT-2's) and read back.
TEST(AttentionVariantsGpt, PrenormLayoutRoundTrip) {
  namespace io = prenorm::io;
  for (int which : {0, 1}) {
    const auto ln = random_gpt(gpt_config(which), 60 + which);
    const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
    const std::vector<std::byte> bytes = io::save_prenorm(crms, io::Dtype::F64).bytes();
    const auto file = io::SafetensorsFile::from_bytes(bytes, "variants.safetensors");
    const TransformerConfig& c = crms.config;
    const TransformerConfig back = io::read_prenorm_metadata(file).gpt;
    EXPECT_EQ(back.kv_heads, c.kv_heads);
    EXPECT_EQ(back.rotary, c.rotary);
    EXPECT_EQ(back.alibi, c.alibi);
    EXPECT_EQ(back.score_scale, c.score_scale);
    EXPECT_EQ(back.window, c.window);
    EXPECT_EQ(back.window_period, c.window_period);
    EXPECT_EQ(back.learned_positions, c.learned_positions);
    EXPECT_EQ(back.position_offset, c.position_offset);
    const auto loaded = io::load_prenorm<prenorm::Gpt<Arch::PreCRMSNorm, double>>(file);
    const Tokens tokens = random_tokens(2, 7, c.vocab, 5);
    EXPECT_TRUE(logits(loaded, tokens) == logits(crms, tokens));
    // GPT-2's layout cannot hold them.
    expect_error([&] { (void)io::gpt2_config_to_json(ln.config); },
                 {"hf_gpt2", "attention has options GPT-2's does not"});
  }
  // A plain model's file has none of the keys.
  GptConfig plain = gpt_config(0);
  plain.kv_heads = 0, plain.rotary = {}, plain.window = 0, plain.learned_positions = true;
  const auto file = io::SafetensorsFile::from_bytes(
      io::save_prenorm(random_gpt(plain, 1), io::Dtype::F32).bytes(), "plain.safetensors");
  for (const char* key : {"kv_heads", "rotary_dims", "rotary_pairing", "rotary_base", "alibi",
                          "score_scale", "window", "window_period", "learned_positions",
                          "position_offset"})
    EXPECT_EQ(file.metadata().count(key), 0u) << key;
}
#endif

// ===========================================================================
// Refusals
// ===========================================================================

TEST(AttentionVariantsRefusals, Validate) {
  const auto check = [](auto&& edit, const std::vector<std::string>& needles) {
    MultiHeadAttention<double> a(kWidth, 4, 8, /*causal=*/true, true, 2);
    edit(a);
    expect_error([&] { a.validate("test", "blocks[2].attn", kWidth); }, needles);
    RowMatrix<double> x = RowMatrix<double>::Zero(3, kWidth), y(3, kWidth);
    expect_error([&] { a.forward(x, 1, y); }, {"MultiHeadAttention::forward", needles[0]});
  };
  using A = MultiHeadAttention<double>;
  check([](A& a) { a.kv_heads = 3; },
        {"kv_heads is 3, expected 0 (one per head) or a divisor of heads 4", "blocks[2].attn."});
  check([](A& a) { a.kv_heads = -1; }, {"kv_heads is -1"});
  check([](A& a) { a.kv_heads = 1; }, {"qkv"});  // rows made for 2 key/value heads
  check([](A& a) { a.rotary.dims = 3; }, {"rotary.dims is 3, expected an even number in [0, head_dim 8]"});
  check([](A& a) { a.rotary.dims = 10; }, {"rotary.dims is 10, expected an even number in [0, head_dim 8]"});
  check([](A& a) { a.rotary = {4, RotaryPairing::RotateHalf, -1.0}; },
        {"rotary.base is -1, expected a finite number > 0"});
  check([](A& a) { a.window = -2; }, {"window is -2, expected >= 0"});
  check([](A& a) { a.causal = false, a.window = 3; },
        {"window is 3 without a causal mask, expected window 0"});
  check([](A& a) { a.score_scale = -0.5; },
        {"score_scale is -0.5, expected 0 (1/sqrt(head_dim)) or a finite number > 0"});
  // The message names the qkv shape expected.
  MultiHeadAttention<double> a(kWidth, 4, 8, true, true, 2);
  a.kv_heads = 0;
  expect_error([&] { a.validate("test", "attn", kWidth); }, {"attn.qkv", "96", "64"});
  // The cache must have kv_heads*head_dim columns.
  MultiHeadAttention<double> g(kWidth, 4, 8, true, true, 2);
  RowMatrix<double> keys(8, 32), values(8, 32), x = RowMatrix<double>::Zero(1, kWidth), y(1, kWidth);
  prenorm::AttentionWorkspace<double> ws;
  expect_error([&] { g.forward_cached(x, 1, 0, keys, values, y, ws); },
               {"forward_cached", "(batch*capacity x 16)", "kv_heads*head_dim"});
}

TEST(AttentionVariantsRefusals, Config) {
  const auto check = [](auto&& edit, const std::string& needle) {
    GptConfig c = gpt_config(0);
    edit(c);
    expect_error([&] { c.validate(); }, {"GptConfig", needle});
    expect_error([&] { prenorm::Gpt<Arch::PreLN, float> m(c); }, {needle});
  };
  check([](GptConfig& c) { c.kv_heads = 3; }, "kv_heads is 3, expected 0 (one per head) or a divisor of heads 4");
  check([](GptConfig& c) { c.rotary.dims = 5; }, "rotary.dims is 5");
  check([](GptConfig& c) { c.rotary.dims = 6; }, "[0, head_dim 4]");
  check([](GptConfig& c) { c.window = -1; }, "window is -1");
  check([](GptConfig& c) { c.window_period = 0; }, "window_period is 0, expected >= 1");
  check([](GptConfig& c) { c.score_scale = std::nan(""); }, "score_scale is nan");

  // Gpt::validate: every block has the config's options for its layer.
  const auto model_check = [](auto&& edit, const std::vector<std::string>& needles) {
    prenorm::Gpt<Arch::PreLN, double> m(gpt_config(0));
    edit(m);
    expect_error([&] { m.validate(); }, needles);
    expect_error([&] { m.forward(random_tokens(1, 4, 37, 2).view()); }, needles);
  };
  using G = prenorm::Gpt<Arch::PreLN, double>;
  model_check([](G& m) { m.blocks[1].attn.window = 0; },
              {"blocks[1].attn.window is 0, expected 3 (window 3 every 2 layers)"});
  model_check([](G& m) { m.blocks[0].attn.rotary.pairing = RotaryPairing::Interleaved; },
              {"blocks[0].attn.rotary is {dims 2, interleaved, base 10000}, expected {dims 2, "
               "rotate_half, base 10000}"});
  model_check([](G& m) { m.blocks[2].attn.alibi = true; },
              {"blocks[2].attn.alibi is true, expected false"});
  model_check([](G& m) { m.blocks[2].attn.score_scale = 2; },
              {"blocks[2].attn.score_scale is 2, expected 0"});
  model_check([](G& m) { m.blocks[0].attn = MultiHeadAttention<double>(16, 4, 4, true); },
              {"blocks[0].attn.kv_heads is 4, expected 2"});
}

// Training supports the plain attention only: each option is refused by name.
TEST(AttentionVariantsRefusals, Training) {
  using A = MultiHeadAttention<double>;
  const auto check = [](auto&& edit, const std::string& needle) {
    A a(kWidth, 4, 8, true);
    edit(a);
    const RowMatrix<double> x = RowMatrix<double>::Zero(6, kWidth);
    RowMatrix<double> y(6, kWidth), dx(6, kWidth);
    prenorm::AttentionActivations<double> acts;
    expect_error([&] { prenorm::attention_forward_train<double>(a, x, 2, y, acts); },
                 {"attention_forward_train: " + needle + " is not supported in training yet"});
    A grad = a;
    prenorm::AttentionBackwardWorkspace<double> ws;
    expect_error([&] { prenorm::attention_backward<double>(a, y, x, 2, acts, grad, dx, ws); },
                 {"attention_backward: " + needle + " is not supported in training yet"});
  };
  check([](A& a) { a = A(kWidth, 4, 8, true, true, 2); },
        "grouped-query attention (kv_heads = 2 for 4 heads)");
  check([](A& a) { a.rotary.dims = 4; }, "rotary embedding (rotary.dims = 4)");
  check([](A& a) { a.alibi = true; }, "ALiBi (alibi = true)");
  check([](A& a) { a.window = 2; }, "local attention (window = 2)");
  check([](A& a) { a.score_scale = 1; }, "a score scale other than 1/sqrt(head_dim) (score_scale = 1)");

  // And so the trainers.
  prenorm::Trainer<prenorm::Gpt<Arch::PreLN, double>, prenorm::Sgd<double>> trainer(
      random_gpt(gpt_config(0), 3), prenorm::Sgd<double>());
  const Tokens tokens = random_tokens(1, 6, 37, 4);
  std::vector<int> targets(tokens.ids.begin() + 1, tokens.ids.end());
  targets.push_back(-1);
  expect_error([&] { trainer.step(prenorm::GptBatch{tokens.view(), targets}); },
               {"attention_forward_train: grouped-query attention"});
}

}  // namespace
