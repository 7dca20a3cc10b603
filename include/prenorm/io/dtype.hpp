#pragma once
// The element types of safetensors files: the four float dtypes prenorm
// reads and writes (Dtype), the bit width of every dtype the format defines,
// and the conversion of one stored element to and from float or double.
//
// Elements are little-endian; prenorm reads and writes them on little-endian
// hosts only.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>

#include "half.hpp"

namespace prenorm::io {

static_assert(std::endian::native == std::endian::little,
              "prenorm::io reads and writes little-endian files on little-endian hosts only");

// The dtypes whose values prenorm reads and writes.
enum class Dtype { F64, F32, F16, BF16 };

constexpr std::string_view dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
      return "F64";
    case Dtype::F32:
      return "F32";
    case Dtype::F16:
      return "F16";
    case Dtype::BF16:
      return "BF16";
  }
  return "?";
}

// Bytes per element.
constexpr std::size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64:
      return 8;
    case Dtype::F32:
      return 4;
    case Dtype::F16:
      return 2;
    case Dtype::BF16:
      return 2;
  }
  return 0;
}

// The supported dtype called `name`, or nullopt for any other name.
constexpr std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (Dtype dtype : {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16})
    if (dtype_name(dtype) == name) return dtype;
  return std::nullopt;
}

inline constexpr std::string_view kSupportedDtypes = "F64, F32, F16, BF16";

// Bits per element of every dtype the safetensors format defines (supported
// or not), or nullopt for a name that is not a safetensors dtype.
constexpr std::optional<int> safetensors_dtype_bits(std::string_view name) {
  struct Entry {
    std::string_view name;
    int bits;
  };
  constexpr Entry kDtypes[] = {
      {"BOOL", 8},    {"U8", 8},   {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8},
      {"F8_E8M0", 8}, {"I16", 16}, {"U16", 16}, {"F16", 16},    {"BF16", 16},
      {"I32", 32},    {"U32", 32}, {"F32", 32}, {"I64", 64},    {"U64", 64},
      {"F64", 64},    {"C64", 64}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6},
  };
  for (const Entry& entry : kDtypes)
    if (entry.name == name) return entry.bits;
  return std::nullopt;
}

namespace detail {

// Reads one little-endian element of `dtype` at `source` (any alignment) as S.
template <class S>
S load_element(Dtype dtype, const std::byte* source) {
  switch (dtype) {
    case Dtype::F64: {
      double value;
      std::memcpy(&value, source, sizeof value);
      return static_cast<S>(value);  // to float: round to nearest even
    }
    case Dtype::F32: {
      float value;
      std::memcpy(&value, source, sizeof value);
      return static_cast<S>(value);
    }
    case Dtype::F16: {
      std::uint16_t bits;
      std::memcpy(&bits, source, sizeof bits);
      return static_cast<S>(half_bits_to_float(bits));
    }
    case Dtype::BF16: {
      std::uint16_t bits;
      std::memcpy(&bits, source, sizeof bits);
      return static_cast<S>(bfloat16_bits_to_float(bits));
    }
  }
  return S(0);
}

// Writes `value` as one little-endian element of `dtype` at `target`.
template <class S>
void store_element(Dtype dtype, S value, std::byte* target) {
  switch (dtype) {
    case Dtype::F64: {
      const auto wide = static_cast<double>(value);
      std::memcpy(target, &wide, sizeof wide);
      return;
    }
    case Dtype::F32: {
      const auto narrow = static_cast<float>(value);  // from double: round to nearest even
      std::memcpy(target, &narrow, sizeof narrow);
      return;
    }
    case Dtype::F16: {
      std::uint16_t bits;
      if constexpr (std::is_same_v<S, double>)
        bits = double_to_half_bits(value);  // one rounding, not two via float
      else
        bits = float_to_half_bits(value);
      std::memcpy(target, &bits, sizeof bits);
      return;
    }
    case Dtype::BF16: {
      std::uint16_t bits;
      if constexpr (std::is_same_v<S, double>)
        bits = double_to_bfloat16_bits(value);
      else
        bits = float_to_bfloat16_bits(value);
      std::memcpy(target, &bits, sizeof bits);
      return;
    }
  }
}

template <class S>
constexpr void check_scalar() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "prenorm::io: tensor values are read and written as float or double");
}

}  // namespace detail
}  // namespace prenorm::io
