#pragma once
// Reading and writing NumPy .npy files (format versions 1.0 and 2.0).
//
// Layout of a file:
//   "\x93NUMPY" major minor         8 bytes
//   header length                   u16 LE (version 1.0) or u32 LE (2.0)
//   header                          a Python dict literal, e.g.
//     {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
//                                   padded with spaces and ended by '\n' so
//                                   that the data starts at a multiple of 64
//   data                            product(shape) elements, here C order
//
// prenorm reads little-endian float32 ('<f4') and float64 ('<f8') arrays of
// any rank in C order, converting to float or double, and writes '<f4' (from
// float) or '<f8' (from double), as version 1.0 unless the header needs 2.0.
// Everything is validated: magic, version, header length, the dict (exactly
// the keys descr, fortran_order and shape), and the data size, which must
// match the shape exactly. Errors are FormatError naming the file, e.g.
//   "prenorm::npy: weights.npy: fortran_order is True; only C-order arrays
//    are supported"

#include <Eigen/Core>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "atomic_file.hpp"
#include "error.hpp"

namespace prenorm::io {

static_assert(std::endian::native == std::endian::little,
              "prenorm::io reads and writes little-endian files on little-endian hosts only");

// An array read from a .npy file: values in C order.
template <class S>
struct NpyArray {
  std::vector<std::int64_t> shape;  // [] for a 0-d array (one value)
  std::vector<S> values;            // product(shape) values
};

namespace detail {

inline constexpr char kNpyMagic[] = "\x93NUMPY";  // 6 bytes + '\0'
inline constexpr std::size_t kNpyMagicSize = 6;

template <class... Parts>
[[noreturn]] void fail_npy(const std::string& file, Parts&&... parts) {
  fail_with<FormatError>("npy", file, ": ", std::forward<Parts>(parts)...);
}

// Python's spelling of a shape tuple: "()", "(3,)", "(3, 4)".
inline std::string format_npy_shape(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

// The three entries of a parsed .npy header.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

// A parser for the small subset of Python literals that .npy headers use:
// a dict with str keys whose values are str, True/False or tuples of ints.
// Not a general Python parser: escapes in strings and nested containers
// other than the shape tuple are rejected.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, std::string file) : text_(text), file_(std::move(file)) {}

  NpyHeader parse() {
    NpyHeader header;
    bool has_descr = false, has_fortran_order = false, has_shape = false;
    skip_spaces();
    expect('{');
    skip_spaces();
    while (peek() != '}') {
      const std::string key = parse_string("dict key");
      skip_spaces();
      expect(':');
      skip_spaces();
      if (key == "descr") {
        if (has_descr) fail("'descr' appears twice in the header");
        has_descr = true;
        if (peek() != '\'' && peek() != '"')
          fail("descr must be a string such as '<f4' (structured dtypes are not supported)");
        header.descr = parse_string("descr");
      } else if (key == "fortran_order") {
        if (has_fortran_order) fail("'fortran_order' appears twice in the header");
        has_fortran_order = true;
        header.fortran_order = parse_bool("fortran_order");
      } else if (key == "shape") {
        if (has_shape) fail("'shape' appears twice in the header");
        has_shape = true;
        header.shape = parse_shape();
      } else {
        fail("unexpected key '", key, "' in the header (expected descr, fortran_order, shape)");
      }
      skip_spaces();
      if (peek() == ',') {
        ++position_;
        skip_spaces();
      } else if (peek() != '}') {
        fail_here("expected ',' or '}'");
      }
    }
    ++position_;  // '}'
    skip_spaces();
    if (position_ != text_.size()) fail_here("unexpected text after the header dict");
    if (!has_descr) fail("the header has no 'descr'");
    if (!has_fortran_order) fail("the header has no 'fortran_order'");
    if (!has_shape) fail("the header has no 'shape'");
    return header;
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    fail_npy(file_, std::forward<Parts>(parts)...);
  }
  template <class... Parts>
  [[noreturn]] void fail_here(Parts&&... parts) const {
    fail(std::forward<Parts>(parts)..., " at column ", position_ + 1, " of the header");
  }

  char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }

  void skip_spaces() {
    while (position_ < text_.size() &&
           (text_[position_] == ' ' || text_[position_] == '\n' || text_[position_] == '\t'))
      ++position_;
  }

  void expect(char expected) {
    if (peek() != expected) fail_here("expected '", expected, "'");
    ++position_;
  }

  std::string parse_string(const char* what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail_here("expected a quoted string for the ", what);
    const std::size_t start = ++position_;
    while (position_ < text_.size() && text_[position_] != quote) {
      if (text_[position_] == '\\') fail_here("escape sequences are not supported");
      ++position_;
    }
    if (position_ >= text_.size()) fail("unterminated string in the header");
    return std::string(text_.substr(start, position_++ - start));
  }

  bool parse_bool(const char* what) {
    for (const auto& [word, value] :
         {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}}) {
      if (text_.substr(position_, word.size()) == word) {
        position_ += word.size();
        return value;
      }
    }
    fail_here(what, " must be True or False");
  }

  // "(3, 4)", "(3,)", "()" -- a tuple of non-negative ints.
  std::vector<std::int64_t> parse_shape() {
    expect('(');
    std::vector<std::int64_t> shape;
    bool trailing_comma = false;
    skip_spaces();
    while (peek() != ')') {
      if (peek() < '0' || peek() > '9') fail_here("shape must be a tuple of non-negative integers");
      std::uint64_t dimension = 0;
      while (peek() >= '0' && peek() <= '9') {
        const auto digit = static_cast<std::uint64_t>(peek() - '0');
        if (dimension >
            (static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) - digit) / 10)
          fail_here("shape dimension is larger than 2^63 - 1");
        dimension = dimension * 10 + digit;
        ++position_;
      }
      if (peek() == 'L') ++position_;  // Python 2 long literal, as numpy accepts
      shape.push_back(static_cast<std::int64_t>(dimension));
      skip_spaces();
      trailing_comma = peek() == ',';
      if (trailing_comma) {
        ++position_;
        skip_spaces();
      } else if (peek() != ')') {
        fail_here("expected ',' or ')' in the shape");
      }
    }
    ++position_;  // ')'
    // "(3)" is the int 3 in Python, not a tuple.
    if (shape.size() == 1 && !trailing_comma) fail("shape (", shape[0], ") is not a tuple");
    return shape;
  }

  std::string_view text_;
  std::string file_;
  std::size_t position_ = 0;
};

template <class S>
constexpr std::string_view npy_descr() {
  return std::is_same_v<S, float> ? "<f4" : "<f8";
}

template <class S>
constexpr void check_npy_scalar() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "prenorm::io: .npy values are read and written as float or double");
}

inline std::vector<std::byte> read_whole_file(const std::filesystem::path& path, const char* op) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    fail_with<FileError>(op, path.string(), ": cannot open: ", errno_text(error));
  }
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail_with<FileError>(op, path.string(), ": read error");
  std::vector<std::byte> bytes(chars.size());
  if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

}  // namespace detail

// Parses a whole .npy file held in memory; `name` stands for its path in
// messages. Values are converted to S (float or double).
template <class S>
NpyArray<S> parse_npy(std::span<const std::byte> bytes, const std::string& name) {
  detail::check_npy_scalar<S>();
  const auto fail = [&name](auto&&... parts) { detail::fail_npy(name, parts...); };
  const auto byte_at = [&bytes](std::size_t i) { return std::to_integer<std::uint32_t>(bytes[i]); };

  if (bytes.size() < detail::kNpyMagicSize + 2 ||
      std::memcmp(bytes.data(), detail::kNpyMagic, detail::kNpyMagicSize) != 0)
    fail("not a .npy file (it does not start with \"\\x93NUMPY\")");
  const std::uint32_t major = byte_at(6), minor = byte_at(7);
  if ((major != 1 && major != 2) || minor != 0)
    fail("format version ", major, ".", minor, " is not supported (supported: 1.0, 2.0)");

  // The header length field: u16 in version 1.0, u32 in 2.0.
  const std::size_t length_size = major == 1 ? 2 : 4;
  const std::size_t header_start = 8 + length_size;
  if (bytes.size() < header_start)
    fail("file has ", bytes.size(), " bytes, too short for the header length field");
  std::size_t header_size = 0;
  for (std::size_t i = length_size; i-- > 0;) header_size = (header_size << 8) | byte_at(8 + i);
  if (header_size > bytes.size() - header_start)
    fail("header length ", header_size, " exceeds the ", bytes.size() - header_start,
         " bytes that follow the length field");
  const std::string_view header_text(reinterpret_cast<const char*>(bytes.data()) + header_start,
                                     header_size);
  for (char c : header_text)
    if (static_cast<unsigned char>(c) >= 0x80) fail("header contains a non-ASCII byte");

  const detail::NpyHeader header = detail::NpyHeaderParser(header_text, name).parse();
  if (header.descr != "<f4" && header.descr != "<f8")
    fail("dtype '", header.descr, "' is not supported (supported: '<f4', '<f8')");
  const std::size_t item_size = header.descr == "<f4" ? 4 : 8;
  if (header.fortran_order) fail("fortran_order is True; only C-order arrays are supported");

  std::uint64_t count = 1;
  std::uint64_t data_size = 0;
  for (std::int64_t dimension : header.shape)
    if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(dimension), &count))
      fail("shape has more than 2^64 elements");
  if (__builtin_mul_overflow(count, item_size, &data_size))
    fail("shape needs more than 2^64 bytes of data");
  const std::size_t data_start = header_start + header_size;
  if (bytes.size() - data_start != data_size)
    fail("data has ", bytes.size() - data_start, " bytes, but shape ",
         detail::format_npy_shape(header.shape), " of '", header.descr, "' needs ", data_size);

  NpyArray<S> array;
  array.shape = header.shape;
  array.values.resize(static_cast<std::size_t>(count));
  const std::byte* source = bytes.data() + data_start;
  for (std::size_t i = 0; i < array.values.size(); ++i) {
    if (item_size == 4) {
      float value;
      std::memcpy(&value, source + 4 * i, 4);
      array.values[i] = static_cast<S>(value);
    } else {
      double value;
      std::memcpy(&value, source + 8 * i, 8);
      array.values[i] = static_cast<S>(value);  // to float: round to nearest even
    }
  }
  return array;
}

// Reads the .npy file at `path`.
template <class S>
NpyArray<S> read_npy(const std::filesystem::path& path) {
  const std::vector<std::byte> bytes = detail::read_whole_file(path, "npy");
  return parse_npy<S>(bytes, path.string());
}

// A .npy file holding `values` with `shape` in C order: '<f4' for float,
// '<f8' for double; version 1.0 unless the header is too long for it.
template <class S>
std::vector<std::byte> npy_bytes(std::span<const S> values,
                                 const std::vector<std::int64_t>& shape) {
  detail::check_npy_scalar<S>();
  const std::string shape_text = detail::format_npy_shape(shape);
  std::uint64_t count = 1;
  for (std::int64_t dimension : shape)
    if (dimension < 0 ||
        __builtin_mul_overflow(count, static_cast<std::uint64_t>(dimension), &count))
      detail::fail_with<Error>("npy", "shape ", shape_text, " is invalid (negative or too large)");
  if (count != values.size())
    detail::fail_with<Error>("npy", "shape ", shape_text, " has ", count, " elements, but ",
                             values.size(), " values were given");

  std::string header = "{'descr': '" + std::string(detail::npy_descr<S>()) +
                       "', 'fortran_order': False, 'shape': " + shape_text + ", }";
  // Pad with spaces and end with '\n' so that the data starts at a multiple of 64.
  const std::size_t prefix_v1 = 10, prefix_v2 = 12;
  auto padded_size = [&](std::size_t prefix) {
    const std::size_t unpadded = prefix + header.size() + 1;
    return header.size() + 1 + (64 - unpadded % 64) % 64;
  };
  const bool version1 = padded_size(prefix_v1) <= 0xffff;
  const std::size_t prefix = version1 ? prefix_v1 : prefix_v2;
  const std::size_t header_size = padded_size(prefix);
  header.append(header_size - header.size() - 1, ' ');
  header += '\n';

  std::vector<std::byte> bytes(prefix + header.size() + values.size() * sizeof(S));
  std::memcpy(bytes.data(), detail::kNpyMagic, detail::kNpyMagicSize);
  bytes[6] = std::byte{static_cast<unsigned char>(version1 ? 1 : 2)};
  bytes[7] = std::byte{0};
  for (std::size_t i = 0; i < prefix - 8; ++i)
    bytes[8 + i] = std::byte{static_cast<unsigned char>((header_size >> (8 * i)) & 0xff)};
  std::memcpy(bytes.data() + prefix, header.data(), header.size());
  if (!values.empty())
    std::memcpy(bytes.data() + prefix + header.size(), values.data(), values.size() * sizeof(S));
  return bytes;
}

// Writes `values` with `shape` to `path` atomically (write_file_atomically),
// refusing to replace any of `inputs`.
template <class S>
void write_npy(const std::filesystem::path& path, std::span<const S> values,
               const std::vector<std::int64_t>& shape,
               const std::vector<std::filesystem::path>& inputs = {}) {
  const std::vector<std::byte> bytes = npy_bytes<S>(values, shape);
  write_file_atomically(path, std::span<const std::byte>(bytes), inputs);
}
template <class S>
void write_npy(const std::filesystem::path& path, const std::vector<S>& values,
               const std::vector<std::int64_t>& shape,
               const std::vector<std::filesystem::path>& inputs = {}) {
  write_npy<S>(path, std::span<const S>(values), shape, inputs);
}

// Writes a float or double matrix (any storage order) as a [rows, cols] array.
template <class Derived>
void write_npy_matrix(const std::filesystem::path& path, const Eigen::MatrixBase<Derived>& matrix,
                      const std::vector<std::filesystem::path>& inputs = {}) {
  using S = typename Derived::Scalar;
  detail::check_npy_scalar<S>();
  std::vector<S> values;
  values.reserve(static_cast<std::size_t>(matrix.size()));
  for (Eigen::Index row = 0; row < matrix.rows(); ++row)
    for (Eigen::Index col = 0; col < matrix.cols(); ++col) values.push_back(matrix(row, col));
  write_npy<S>(path, std::span<const S>(values), {matrix.rows(), matrix.cols()}, inputs);
}

}  // namespace prenorm::io
