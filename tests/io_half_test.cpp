// Tests for include/prenorm/io/half.hpp: F16 and BF16 conversions.
//
// The fast bit-level conversions are held against a plain reference that
// works on values: the table of every finite 16-bit value as a double, and
// "pick the nearest entry, ties to the even bit pattern".

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <prenorm/io/half.hpp>
#include <random>
#include <vector>

namespace {

using prenorm::io::bfloat16_bits_to_float;
using prenorm::io::double_to_bfloat16_bits;
using prenorm::io::double_to_half_bits;
using prenorm::io::float_to_bfloat16_bits;
using prenorm::io::float_to_half_bits;
using prenorm::io::half_bits_to_float;

constexpr float kInf = std::numeric_limits<float>::infinity();

bool is_half_nan(std::uint16_t bits) { return (bits & 0x7c00) == 0x7c00 && (bits & 0x03ff) != 0; }
bool is_bfloat16_nan(std::uint16_t bits) {
  return (bits & 0x7f80) == 0x7f80 && (bits & 0x007f) != 0;
}

// The value of a 16-bit pattern computed from the definition of the format.
double reference_value(std::uint16_t bits, int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const double sign = (bits >> (exponent_bits + mantissa_bits)) ? -1.0 : 1.0;
  const int exponent = (bits >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int mantissa = bits & ((1 << mantissa_bits) - 1);
  if (exponent == (1 << exponent_bits) - 1)
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(mantissa, 1 - bias - mantissa_bits);
  return sign * std::ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits);
}

// Round-to-nearest-even by search: the non-negative finite values of a
// format in increasing order (bit patterns 0 .. max finite), plus the first
// value past the largest finite one, 2^(emax+1), standing for Inf. Under
// IEEE rounding a value overflows exactly when it would round to that one,
// and Inf's pattern (mantissa 0) is even, so ties go to it like any other.
struct ReferenceRounding {
  int exponent_bits;
  int mantissa_bits;
  std::vector<double> values;  // values[bits]

  ReferenceRounding(int exponent_bits_, int mantissa_bits_)
      : exponent_bits(exponent_bits_), mantissa_bits(mantissa_bits_) {
    const int infinity_bits = ((1 << exponent_bits) - 1) << mantissa_bits;
    for (int bits = 0; bits < infinity_bits; ++bits)
      values.push_back(
          reference_value(static_cast<std::uint16_t>(bits), exponent_bits, mantissa_bits));
    const int max_exponent = (1 << (exponent_bits - 1)) - 1;
    values.push_back(std::ldexp(1.0, max_exponent + 1));  // index infinity_bits
  }

  std::uint16_t round(double x) const {
    const auto sign =
        static_cast<std::uint16_t>(std::signbit(x) ? 1u << (exponent_bits + mantissa_bits) : 0u);
    const double magnitude = std::fabs(x);
    const auto last = static_cast<std::uint16_t>(values.size() - 1);  // Inf
    if (magnitude >= values.back()) return sign | last;
    const auto above = static_cast<std::uint16_t>(
        std::lower_bound(values.begin(), values.end(), magnitude) - values.begin());
    if (values[above] == magnitude) return sign | above;
    const auto below = static_cast<std::uint16_t>(above - 1);
    const double to_below = magnitude - values[below];
    const double to_above = values[above] - magnitude;
    if (to_below < to_above) return sign | below;
    if (to_above < to_below) return sign | above;
    return sign | ((below & 1) == 0 ? below : above);
  }
};

const ReferenceRounding& half_reference() {
  static const ReferenceRounding reference(5, 10);
  return reference;
}
const ReferenceRounding& bfloat16_reference() {
  static const ReferenceRounding reference(8, 7);
  return reference;
}

// Inputs that probe every rounding boundary of a format: each representable
// value, the midpoint to the next one, and the floats (or doubles) just
// either side of that midpoint.
template <class Real>
std::vector<Real> boundary_inputs(const ReferenceRounding& reference) {
  std::vector<Real> inputs;
  const std::vector<double>& values = reference.values;
  for (std::size_t i = 0; i + 1 < values.size(); ++i) {
    const auto midpoint = static_cast<Real>((values[i] + values[i + 1]) / 2);  // exact
    for (Real x : {static_cast<Real>(values[i]), midpoint, std::nextafter(midpoint, Real(0)),
                   std::nextafter(midpoint, Real(kInf))}) {
      inputs.push_back(x);
      inputs.push_back(-x);
    }
  }
  return inputs;
}

// --- F16 ---------------------------------------------------------------------

TEST(HalfTest, WideningMatchesTheDefinitionForAllPatterns) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto pattern = static_cast<std::uint16_t>(bits);
    const float value = half_bits_to_float(pattern);
    const double expected = reference_value(pattern, 5, 10);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(value)) << std::hex << bits;
      EXPECT_EQ(std::signbit(value), (bits & 0x8000) != 0) << std::hex << bits;
    } else {
      EXPECT_EQ(static_cast<double>(value), expected) << std::hex << bits;
      EXPECT_EQ(std::signbit(value), (bits & 0x8000) != 0) << std::hex << bits;  // -0 too
    }
  }
}

TEST(HalfTest, AllPatternsRoundTripThroughFloatAndDouble) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto pattern = static_cast<std::uint16_t>(bits);
    const float value = half_bits_to_float(pattern);
    const std::uint16_t from_float = float_to_half_bits(value);
    const std::uint16_t from_double = double_to_half_bits(static_cast<double>(value));
    if (is_half_nan(pattern)) {
      EXPECT_TRUE(is_half_nan(from_float)) << std::hex << bits << " -> " << from_float;
      EXPECT_TRUE(is_half_nan(from_double)) << std::hex << bits << " -> " << from_double;
      EXPECT_EQ(from_float & 0x8000, pattern & 0x8000);
      // A quiet NaN keeps its payload exactly.
      if (pattern & 0x0200) {
        EXPECT_EQ(from_float, pattern) << std::hex << bits;
      }
    } else {
      EXPECT_EQ(from_float, pattern) << std::hex << bits;
      EXPECT_EQ(from_double, pattern) << std::hex << bits;
    }
  }
}

TEST(HalfTest, NarrowingMatchesReferenceAtEveryBoundary) {
  const ReferenceRounding& reference = half_reference();
  for (float x : boundary_inputs<float>(reference))
    ASSERT_EQ(float_to_half_bits(x), reference.round(x)) << x;
  for (double x : boundary_inputs<double>(reference))
    ASSERT_EQ(double_to_half_bits(x), reference.round(x)) << x;
}

TEST(HalfTest, NarrowingMatchesReferenceOnRandomFloats) {
  const ReferenceRounding& reference = half_reference();
  std::mt19937 random(42);
  for (int i = 0; i < 1'000'000; ++i) {
    const float x = std::bit_cast<float>(static_cast<std::uint32_t>(random()));
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_half_bits(x), reference.round(x)) << x;
  }
  // Values in the interesting range, where the bit patterns above are sparse.
  std::uniform_real_distribution<double> range(-70000.0, 70000.0);
  std::uniform_int_distribution<int> scale(-30, 0);
  for (int i = 0; i < 1'000'000; ++i) {
    const double x = std::ldexp(range(random), scale(random));
    ASSERT_EQ(double_to_half_bits(x), reference.round(x)) << x;
    ASSERT_EQ(float_to_half_bits(static_cast<float>(x)), reference.round(static_cast<float>(x)))
        << x;
  }
}

TEST(HalfTest, TiesRoundToEven) {
  // 1 + 2^-11 lies halfway between 1 (0x3c00, even) and 1 + 2^-10 (0x3c01).
  EXPECT_EQ(float_to_half_bits(1.0f + 0x1p-11f), 0x3c00);
  // 1 + 3 * 2^-11 lies halfway between 0x3c01 and 0x3c02 (even).
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * 0x1p-11f), 0x3c02);
  // Just off a tie, the nearest value wins.
  EXPECT_EQ(float_to_half_bits(std::nextafter(1.0f + 0x1p-11f, 2.0f)), 0x3c01);
  EXPECT_EQ(float_to_half_bits(std::nextafter(1.0f + 3 * 0x1p-11f, 0.0f)), 0x3c01);
  EXPECT_EQ(float_to_half_bits(-(1.0f + 0x1p-11f)), 0xbc00);
  // 2049 is a tie between 2048 (even) and 2050.
  EXPECT_EQ(float_to_half_bits(2049.0f), float_to_half_bits(2048.0f));
  EXPECT_EQ(float_to_half_bits(2051.0f), float_to_half_bits(2052.0f));
}

TEST(HalfTest, DoubleRoundsOnceNotTwice) {
  // Just above a tie by less than half a float ulp: float rounding lands on
  // the tie and then goes to even; rounding the double directly goes up.
  const double x = 1.0 + 0x1p-11 + 0x1p-40;
  EXPECT_EQ(double_to_half_bits(x), 0x3c01);
  EXPECT_EQ(float_to_half_bits(static_cast<float>(x)), 0x3c00);
  EXPECT_EQ(double_to_bfloat16_bits(1.0 + 0x1p-8 + 0x1p-40), 0x3f81);
  EXPECT_EQ(float_to_bfloat16_bits(static_cast<float>(1.0 + 0x1p-8 + 0x1p-40)), 0x3f80);
}

TEST(HalfTest, OverflowGoesToInfinity) {
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(float_to_half_bits(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // tie between 65504 and 2^16: even is Inf
  EXPECT_EQ(float_to_half_bits(-65520.0f), 0xfc00);
  EXPECT_EQ(float_to_half_bits(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(double_to_half_bits(1e300), 0x7c00);
  EXPECT_EQ(float_to_half_bits(kInf), 0x7c00);
  EXPECT_EQ(float_to_half_bits(-kInf), 0xfc00);
  EXPECT_EQ(half_bits_to_float(0x7c00), kInf);
  EXPECT_EQ(half_bits_to_float(0xfc00), -kInf);
}

TEST(HalfTest, SubnormalsAndZeros) {
  EXPECT_EQ(float_to_half_bits(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(half_bits_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(float_to_half_bits(0x1p-25f), 0x0000);  // tie with 0: even is 0
  EXPECT_EQ(float_to_half_bits(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(float_to_half_bits(3 * 0x1p-25f), 0x0002);        // tie between 1 and 2 units
  EXPECT_EQ(float_to_half_bits(1023 * 0x1p-24f), 0x03ff);     // largest subnormal
  EXPECT_EQ(float_to_half_bits(1023.5f * 0x1p-24f), 0x0400);  // tie: up to the smallest normal
  EXPECT_EQ(float_to_half_bits(0x1p-14f), 0x0400);
  EXPECT_EQ(float_to_half_bits(-0x1p-24f), 0x8001);
  EXPECT_EQ(float_to_half_bits(1e-30f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-1e-30f), 0x8000);  // keeps the sign
  EXPECT_EQ(float_to_half_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(double_to_half_bits(std::numeric_limits<double>::denorm_min()), 0x0000);
  EXPECT_TRUE(std::signbit(half_bits_to_float(0x8000)));
}

TEST(HalfTest, NanStaysNan) {
  const float quiet = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(is_half_nan(float_to_half_bits(quiet)));
  EXPECT_TRUE(is_half_nan(float_to_half_bits(-quiet)));
  EXPECT_EQ(float_to_half_bits(-quiet) & 0x8000, 0x8000);
  // A signalling NaN whose payload lies below the F16 mantissa would become
  // Inf if truncated; the quiet bit keeps it a NaN.
  EXPECT_TRUE(is_half_nan(float_to_half_bits(std::bit_cast<float>(0x7f800001u))));
  EXPECT_TRUE(is_half_nan(double_to_half_bits(std::bit_cast<double>(0x7ff0000000000001ull))));
  EXPECT_TRUE(std::isnan(half_bits_to_float(0x7c01)));
  EXPECT_TRUE(std::isnan(half_bits_to_float(0xfe00)));
}

TEST(HalfTest, IsConstexpr) {
  static_assert(float_to_half_bits(1.0f) == 0x3c00);
  static_assert(half_bits_to_float(0xc000) == -2.0f);
  static_assert(float_to_bfloat16_bits(1.0f) == 0x3f80);
  SUCCEED();
}

// --- BF16 --------------------------------------------------------------------

TEST(BFloat16Test, WideningMatchesTheDefinitionForAllPatterns) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto pattern = static_cast<std::uint16_t>(bits);
    const float value = bfloat16_bits_to_float(pattern);
    const double expected = reference_value(pattern, 8, 7);
    if (std::isnan(expected))
      EXPECT_TRUE(std::isnan(value)) << std::hex << bits;
    else
      EXPECT_EQ(static_cast<double>(value), expected) << std::hex << bits;
  }
}

TEST(BFloat16Test, AllPatternsRoundTripThroughFloatAndDouble) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto pattern = static_cast<std::uint16_t>(bits);
    const float value = bfloat16_bits_to_float(pattern);
    const std::uint16_t from_float = float_to_bfloat16_bits(value);
    const std::uint16_t from_double = double_to_bfloat16_bits(static_cast<double>(value));
    if (is_bfloat16_nan(pattern)) {
      EXPECT_TRUE(is_bfloat16_nan(from_float)) << std::hex << bits;
      EXPECT_TRUE(is_bfloat16_nan(from_double)) << std::hex << bits;
      EXPECT_EQ(from_float & 0x8000, pattern & 0x8000);
      if (pattern & 0x0040) {
        EXPECT_EQ(from_float, pattern) << std::hex << bits;
      }
    } else {
      EXPECT_EQ(from_float, pattern) << std::hex << bits;
      EXPECT_EQ(from_double, pattern) << std::hex << bits;
    }
  }
}

TEST(BFloat16Test, NarrowingMatchesReferenceAtEveryBoundary) {
  const ReferenceRounding& reference = bfloat16_reference();
  for (float x : boundary_inputs<float>(reference))
    ASSERT_EQ(float_to_bfloat16_bits(x), reference.round(x)) << x;
  for (double x : boundary_inputs<double>(reference))
    ASSERT_EQ(double_to_bfloat16_bits(x), reference.round(x)) << x;
}

TEST(BFloat16Test, NarrowingMatchesReferenceOnRandomFloats) {
  const ReferenceRounding& reference = bfloat16_reference();
  std::mt19937 random(7);
  for (int i = 0; i < 1'000'000; ++i) {
    const float x = std::bit_cast<float>(static_cast<std::uint32_t>(random()));
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_bfloat16_bits(x), reference.round(x)) << x;
  }
}

TEST(BFloat16Test, RoundingCases) {
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + 0x1p-8f), 0x3f80);      // tie: down to even
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie: up to even
  EXPECT_EQ(float_to_bfloat16_bits(std::nextafter(1.0f + 0x1p-8f, 2.0f)), 0x3f81);
  // FLT_MAX lies above the midpoint between the largest BF16 and 2^128.
  EXPECT_EQ(float_to_bfloat16_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(float_to_bfloat16_bits(bfloat16_bits_to_float(0x7f7f)), 0x7f7f);
  EXPECT_EQ(float_to_bfloat16_bits(-kInf), 0xff80);
  EXPECT_EQ(double_to_bfloat16_bits(1e300), 0x7f80);
  // Subnormals: the low 16 bits of the float decide.
  EXPECT_EQ(float_to_bfloat16_bits(std::bit_cast<float>(0x00010000u)), 0x0001);
  EXPECT_EQ(float_to_bfloat16_bits(std::bit_cast<float>(0x00008000u)), 0x0000);  // tie
  EXPECT_EQ(float_to_bfloat16_bits(std::bit_cast<float>(0x00018000u)), 0x0002);  // tie
  EXPECT_EQ(float_to_bfloat16_bits(-0.0f), 0x8000);
  EXPECT_TRUE(is_bfloat16_nan(float_to_bfloat16_bits(std::bit_cast<float>(0x7f800001u))));
  EXPECT_TRUE(is_bfloat16_nan(float_to_bfloat16_bits(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace
