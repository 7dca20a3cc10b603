#pragma once
// 16-bit floats as stored in files: IEEE binary16 (F16) and bfloat16 (BF16).
//
// The conversions work on bit patterns with integer arithmetic only, so they
// are exact and do not depend on the floating-point environment (rounding
// mode, flush-to-zero) or on F16C support:
//   - widening (16 -> 32 bits) is exact, subnormals included; a NaN stays a
//     NaN with its sign and payload;
//   - narrowing (32 or 64 -> 16 bits) rounds to nearest, ties to even,
//     overflows to +-Inf, rounds tiny values to +-0 or a subnormal, and
//     turns a NaN into a quiet NaN of the same sign.
//
//          sign  exponent  mantissa   bias
//   F16     1      5         10        15
//   BF16    1      8          7       127   (the top half of an F32)

#include <bit>
#include <cstdint>
#include <limits>

namespace prenorm::io {

namespace detail {

// A binary floating-point format, described by its field widths.
struct FloatFormat {
  int exponent_bits;
  int mantissa_bits;

  constexpr int bias() const { return (1 << (exponent_bits - 1)) - 1; }
  constexpr int min_exponent() const { return 1 - bias(); }  // of the normal numbers
  constexpr std::uint64_t exponent_mask() const {
    return ((std::uint64_t{1} << exponent_bits) - 1) << mantissa_bits;
  }
  constexpr std::uint64_t mantissa_mask() const { return (std::uint64_t{1} << mantissa_bits) - 1; }
  constexpr std::uint64_t sign_bit() const {
    return std::uint64_t{1} << (exponent_bits + mantissa_bits);
  }
};

inline constexpr FloatFormat kF16{5, 10};
inline constexpr FloatFormat kBF16{8, 7};
inline constexpr FloatFormat kF32{8, 23};
inline constexpr FloatFormat kF64{11, 52};

// value / 2^shift rounded to nearest, ties to even.
constexpr std::uint64_t shift_right_round_even(std::uint64_t value, int shift) {
  if (shift == 0) return value;
  if (shift >= 64) return 0;  // value < 2^64 <= half a unit: rounds to 0
  const std::uint64_t quotient = value >> shift;
  const std::uint64_t remainder = value & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1))) return quotient + 1;
  return quotient;
}

// Rounds the number with bits `bits` in format `from` to the nearest number of
// the narrower format `to` (fewer exponent and mantissa bits, or equal).
constexpr std::uint64_t narrow_bits(std::uint64_t bits, FloatFormat from, FloatFormat to) {
  const std::uint64_t sign = (bits & from.sign_bit()) ? to.sign_bit() : 0;
  const std::uint64_t biased_exponent = (bits & from.exponent_mask()) >> from.mantissa_bits;
  const std::uint64_t mantissa = bits & from.mantissa_mask();
  const std::uint64_t all_ones_exponent = (std::uint64_t{1} << from.exponent_bits) - 1;
  const int mantissa_drop = from.mantissa_bits - to.mantissa_bits;

  if (biased_exponent == all_ones_exponent) {
    if (mantissa == 0) return sign | to.exponent_mask();  // +-Inf
    // NaN: keep the top of the payload and set the quiet bit, which also
    // guarantees a non-zero mantissa (so the result cannot become Inf).
    const std::uint64_t quiet_bit = std::uint64_t{1} << (to.mantissa_bits - 1);
    return sign | to.exponent_mask() | quiet_bit | (mantissa >> mantissa_drop);
  }
  if (biased_exponent == 0 && mantissa == 0) return sign;  // +-0

  // value = significand * 2^(exponent - from.mantissa_bits), with the
  // implicit leading 1 made explicit for normal numbers.
  const bool is_normal = biased_exponent != 0;
  const std::uint64_t significand =
      is_normal ? (mantissa | (std::uint64_t{1} << from.mantissa_bits)) : mantissa;
  const int exponent =
      is_normal ? static_cast<int>(biased_exponent) - from.bias() : from.min_exponent();

  // The result's unit in the last place is 2^(e - to.mantissa_bits) with
  // e = max(exponent, to.min_exponent()): below that the result is subnormal.
  const int result_exponent = exponent > to.min_exponent() ? exponent : to.min_exponent();
  const std::uint64_t units =
      shift_right_round_even(significand, mantissa_drop + (result_exponent - exponent));

  // Encoding trick: for a normal result `units` is in [2^m, 2^(m+1)], and
  // ((e - min_exponent) << m) + units is exactly its bit pattern (a carry of
  // the rounding moves into the exponent field). For a subnormal result
  // e == min_exponent and units < 2^m is the mantissa; units == 2^m is the
  // smallest normal number, which the same sum also gives.
  const std::uint64_t magnitude =
      (static_cast<std::uint64_t>(result_exponent - to.min_exponent()) << to.mantissa_bits) + units;
  if (magnitude >= to.exponent_mask()) return sign | to.exponent_mask();  // overflow: +-Inf
  return sign | magnitude;
}

// Exact conversion of the 16-bit pattern `bits` in format `from` to an F32
// pattern (F16 and BF16 values are all representable in F32).
constexpr std::uint32_t widen_to_f32_bits(std::uint16_t bits, FloatFormat from) {
  const std::uint32_t sign = (bits & from.sign_bit()) ? 0x8000'0000u : 0u;
  const auto biased_exponent =
      static_cast<std::uint32_t>((bits & from.exponent_mask()) >> from.mantissa_bits);
  auto mantissa = static_cast<std::uint32_t>(bits & from.mantissa_mask());
  const std::uint32_t all_ones_exponent = (1u << from.exponent_bits) - 1;
  const int mantissa_shift = kF32.mantissa_bits - from.mantissa_bits;

  if (biased_exponent == all_ones_exponent)  // Inf, or NaN with its payload
    return sign | 0x7f80'0000u | (mantissa << mantissa_shift);
  if (biased_exponent == 0) {
    if (mantissa == 0) return sign;  // +-0
    // Subnormal: normalize, i.e. shift the leading 1 into the implicit position.
    int exponent = from.min_exponent();
    while ((mantissa & (1u << from.mantissa_bits)) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    mantissa &= (1u << from.mantissa_bits) - 1;
    return sign | (static_cast<std::uint32_t>(exponent + kF32.bias()) << kF32.mantissa_bits) |
           (mantissa << mantissa_shift);
  }
  const int exponent = static_cast<int>(biased_exponent) - from.bias();
  return sign | (static_cast<std::uint32_t>(exponent + kF32.bias()) << kF32.mantissa_bits) |
         (mantissa << mantissa_shift);
}

}  // namespace detail

// --- IEEE binary16 ---------------------------------------------------------

constexpr float half_bits_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(detail::widen_to_f32_bits(bits, detail::kF16));
}

constexpr std::uint16_t float_to_half_bits(float value) {
  return static_cast<std::uint16_t>(
      detail::narrow_bits(std::bit_cast<std::uint32_t>(value), detail::kF32, detail::kF16));
}

// Rounds once from double (going through float would round twice, which can
// miss the nearest half on values just off a tie).
constexpr std::uint16_t double_to_half_bits(double value) {
  return static_cast<std::uint16_t>(
      detail::narrow_bits(std::bit_cast<std::uint64_t>(value), detail::kF64, detail::kF16));
}

// --- bfloat16 --------------------------------------------------------------

constexpr float bfloat16_bits_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

constexpr std::uint16_t float_to_bfloat16_bits(float value) {
  return static_cast<std::uint16_t>(
      detail::narrow_bits(std::bit_cast<std::uint32_t>(value), detail::kF32, detail::kBF16));
}

constexpr std::uint16_t double_to_bfloat16_bits(double value) {
  return static_cast<std::uint16_t>(
      detail::narrow_bits(std::bit_cast<std::uint64_t>(value), detail::kF64, detail::kBF16));
}

}  // namespace prenorm::io
