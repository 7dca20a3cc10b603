#pragma once
// The header of a safetensors file (https://github.com/huggingface/safetensors):
// its layout, and its parsing and validation.
//
// Layout of a file:
//   [8 bytes]  n, the header length, little-endian u64
//   [n bytes]  header: a UTF-8 JSON object, padded with trailing spaces
//              { "__metadata__": {"key": "value", ...},               (optional)
//                "<tensor name>": {"dtype": "F32", "shape": [rows, cols],
//                                  "data_offsets": [begin, end]}, ... }
//   [rest]     data section: every tensor's bytes, little-endian, C order,
//              at [begin, end) relative to the start of the data section
//
// parse_safetensors_header validates the whole header, as strictly as the
// reference implementation (plus: the header must start with '{' and
// duplicate keys are errors), so that every read afterwards works on a layout
// known to be sound: the tensors tile the data section exactly, without
// overlap or hole, and each one's byte size is product(shape) * dtype size.
// A violation throws FormatError naming the file, the tensor and the rule:
//   "prenorm::safetensors: model.safetensors: tensor 'wte': data_offsets
//    [0, 12) overlap tensor 'wpe' [8, 20)"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "dtype.hpp"
#include "error.hpp"
#include "utf8.hpp"

namespace prenorm::io {

// The longest header a file may have, in bytes (as the reference).
inline constexpr std::uint64_t kMaxSafetensorsHeaderSize = 100'000'000;

// What the header says about one tensor.
struct TensorInfo {
  std::string dtype_name;           // as written in the file: "F32", "I64", ...
  std::optional<Dtype> dtype;       // empty when prenorm cannot read the values
  std::vector<std::int64_t> shape;  // [] for a scalar
  std::uint64_t begin = 0;          // byte range [begin, end) in the data section
  std::uint64_t end = 0;

  // product(shape): 1 for a scalar, 0 when a dimension is 0.
  std::int64_t element_count() const {
    // Validation bounds the product of a non-empty tensor by 2^62, but not
    // the partial products before a 0 (e.g. [2^62, 2, 0]).
    if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
    std::int64_t count = 1;
    for (std::int64_t dimension : shape) count *= dimension;
    return count;
  }
};

// The validated header of a file: what parse_safetensors_header returns.
struct SafetensorsHeader {
  std::size_t data_start = 0;                              // 8 + header length
  std::vector<std::string> names;                          // in order of data offsets
  std::vector<TensorInfo> infos;                           // parallel to names
  std::map<std::string, std::size_t, std::less<>> index;   // name -> position in names
  std::map<std::string, std::string> metadata;             // "__metadata__" (empty if absent)
};

namespace detail {

inline std::string format_shape(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

// 'x' for a printable character, else its code: "byte 0x0a".
inline std::string describe_byte(char byte) {
  const auto code = static_cast<unsigned char>(byte);
  if (code >= 0x20 && code < 0x7f) return std::string("'") + byte + "'";
  constexpr char kHex[] = "0123456789abcdef";
  return std::string("byte 0x") + kHex[code >> 4] + kHex[code & 0xf];
}

inline std::string format_range(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}
// A SAX handler for a first pass over the header, which checks what
// nlohmann's DOM parser does not report:
//  - duplicate keys (the DOM keeps the last one silently), at any depth;
//  - the top-level keys in file order (nlohmann::json sorts them).
// Parse errors are recorded too. (A DOM parser callback could do the same in
// one pass, but nlohmann's callback parser rescans the parent object at
// every object end, which is quadratic in the number of tensors.)
template <class Json>
class HeaderKeyTracker {
 public:
  using number_integer_t = typename Json::number_integer_t;
  using number_unsigned_t = typename Json::number_unsigned_t;
  using number_float_t = typename Json::number_float_t;
  using string_t = typename Json::string_t;
  using binary_t = typename Json::binary_t;

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(number_integer_t) { return true; }
  bool number_unsigned(number_unsigned_t) { return true; }
  bool number_float(number_float_t, const string_t&) { return true; }
  bool string(string_t&) { return true; }
  bool binary(binary_t&) { return true; }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool start_object(std::size_t) {
    frames_.emplace_back();
    return true;
  }
  bool end_object() {
    frames_.pop_back();
    return true;
  }
  bool key(string_t& key) {
    Frame& frame = frames_.back();
    if (!frame.keys.insert(key).second) {
      if (!duplicate_) describe_duplicate(key);
    } else if (frames_.size() == 1) {
      top_level_keys_.push_back(key);
    }
    frame.last_key = key;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const typename Json::exception& error) {
    syntax_error_ = error.what();
    return false;
  }

  // nlohmann's description of the first syntax error, if any.
  const std::optional<std::string>& syntax_error() const { return syntax_error_; }
  // Describes the first duplicate key, if there was one.
  const std::optional<std::string>& duplicate() const { return duplicate_; }
  // The keys of the outermost object, in file order, each once.
  const std::vector<std::string>& top_level_keys() const { return top_level_keys_; }

 private:
  struct Frame {
    std::unordered_set<std::string> keys;
    std::string last_key;
  };

  void describe_duplicate(const std::string& key) {
    if (frames_.size() == 1) {
      duplicate_ = key == "__metadata__" ? std::string("'__metadata__' appears twice")
                                         : "duplicate tensor name '" + key + "'";
    } else if (frames_.size() == 2) {
      const std::string& parent = frames_.front().last_key;
      duplicate_ =
          (parent == "__metadata__" ? std::string("__metadata__") : "tensor '" + parent + "'") +
          ": duplicate key '" + key + "'";
    } else {
      duplicate_ = "duplicate key '" + key + "'";
    }
  }

  std::vector<Frame> frames_;
  std::optional<std::string> syntax_error_;
  std::optional<std::string> duplicate_;
  std::vector<std::string> top_level_keys_;
};

// Parses and validates the header of one file (parse_safetensors_header).
class SafetensorsHeaderParser {
 public:
  // `file`: the whole file; `name` stands for its path in messages.
  SafetensorsHeaderParser(std::span<const std::byte> file, std::string name)
      : file_(file), name_(std::move(name)) {}

  // The header, validated; called once.
  SafetensorsHeader parse() {
    using Json = nlohmann::json;
    if (file_.size() < 8)
      fail_format("file has ", file_.size(), " bytes, fewer than the 8 of the header length field");

    // Header length, then the header's bytes.
    std::uint64_t header_size = 0;
    for (std::size_t i = 8; i-- > 0;)
      header_size = (header_size << 8) | std::to_integer<std::uint64_t>(file_[i]);
    if (header_size > kMaxSafetensorsHeaderSize)
      fail_format("header length ", header_size, " exceeds the limit of ",
                  kMaxSafetensorsHeaderSize, " bytes");
    if (header_size > file_.size() - 8)
      fail_format("header length ", header_size, " exceeds the ", file_.size() - 8,
                  " bytes that follow the length field");
    const std::string_view header(reinterpret_cast<const char*>(file_.data()) + 8,
                                  static_cast<std::size_t>(header_size));
    header_.data_start = 8 + static_cast<std::size_t>(header_size);
    const std::uint64_t data_size = file_.size() - header_.data_start;

    if (const std::size_t bad = find_invalid_utf8(header); bad != std::string_view::npos)
      fail_format("header is not valid UTF-8 (byte ", bad, " of the header)");
    if (header.empty()) fail_format("header is empty, expected a JSON object");
    if (header.front() != '{')
      fail_format("header must start with '{', found ", describe_byte(header.front()));

    // nlohmann's lexer takes a NUL byte for the end of input, which would
    // accept "{}\0<anything>"; valid JSON never has a raw NUL.
    if (const std::size_t nul = header.find('\0'); nul != std::string_view::npos)
      fail_format("header is not valid JSON: NUL byte at byte ", nul, " of the header");

    HeaderKeyTracker<Json> keys;
    if (!Json::sax_parse(header.begin(), header.end(), &keys)) {
      // A parse_error, or out_of_range for a number beyond double ("1e400",
      // which serde rejects too). Drop nlohmann's "[json.exception.x.y] " tag.
      const std::string error = keys.syntax_error().value_or("syntax error");
      std::string_view reason = error;
      if (const auto tag_end = reason.find("] "); tag_end != std::string_view::npos)
        reason.remove_prefix(tag_end + 2);
      // The "last read" part quotes the header; keep messages short.
      constexpr std::size_t kMaxReason = 300;
      fail_format("header is not valid JSON: ", reason.substr(0, kMaxReason),
                  reason.size() > kMaxReason ? "..." : "");
    }
    if (keys.duplicate()) fail_format(*keys.duplicate());
    // Second pass: the same text parses again, now into a DOM.
    const Json root = Json::parse(header.begin(), header.end());
    if (!root.is_object()) fail_format("header must be a JSON object, found ", root.type_name());

    // Entries, in header order.
    std::vector<std::string> names;
    std::vector<TensorInfo> infos;
    for (const std::string& key : keys.top_level_keys()) {
      const Json& value = root.at(key);
      if (key == "__metadata__") {
        parse_metadata(value);
      } else {
        names.push_back(key);
        infos.push_back(parse_entry(key, value));
      }
    }

    for (std::size_t i = 0; i < infos.size(); ++i)
      if (infos[i].end > data_size)
        fail_tensor(names[i], "data_offsets ", format_range(infos[i].begin, infos[i].end),
                    " exceed the data section of ", data_size, " bytes");

    // The tensors must tile [0, data_size) in order of offsets. The stable
    // sort keeps header order among empty tensors at the same offset.
    std::vector<std::size_t> order(infos.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return std::pair(infos[a].begin, infos[a].end) < std::pair(infos[b].begin, infos[b].end);
    });
    std::uint64_t covered_until = 0;
    for (std::size_t k = 0; k < order.size(); ++k) {
      const TensorInfo& tensor = infos[order[k]];
      const std::string& name = names[order[k]];
      if (tensor.begin < covered_until) {
        const std::size_t previous = order[k - 1];
        fail_tensor(names[previous], "data_offsets ",
                    format_range(infos[previous].begin, infos[previous].end),
                    " overlap tensor '", name, "' ",
                    format_range(tensor.begin, tensor.end));
      }
      if (tensor.begin > covered_until) {
        if (k == 0)
          fail_tensor(name, "data_offsets ", format_range(tensor.begin, tensor.end),
                      " leave a hole of ", tensor.begin,
                      " bytes at the start of the data section (the first tensor must begin "
                      "at 0)");
        const std::size_t previous = order[k - 1];
        fail_tensor(name, "data_offsets ", format_range(tensor.begin, tensor.end),
                    " leave a hole of ", tensor.begin - covered_until, " bytes after tensor '",
                    names[previous], "' ",
                    format_range(infos[previous].begin, infos[previous].end));
      }
      covered_until = tensor.end;
    }
    if (covered_until != data_size)
      fail_format("the tensors end at byte ", covered_until, " of the data section, but it has ",
                  data_size, " bytes (", data_size - covered_until,
                  " trailing bytes belong to no tensor)");

    for (std::size_t k = 0; k < order.size(); ++k) {
      header_.names.push_back(std::move(names[order[k]]));
      header_.infos.push_back(std::move(infos[order[k]]));
      header_.index.emplace(header_.names.back(), k);
    }
    return std::move(header_);
  }

 private:
  static constexpr const char* kOp = "safetensors";

  template <class... Parts>
  [[noreturn]] void fail_format(Parts&&... parts) const {
    fail_with<FormatError>(kOp, name_, ": ", std::forward<Parts>(parts)...);
  }
  template <class... Parts>
  [[noreturn]] void fail_tensor(const std::string& name, Parts&&... parts) const {
    fail_format("tensor '", name, "': ", std::forward<Parts>(parts)...);
  }

  template <class Json>
  void parse_metadata(const Json& value) {
    if (!value.is_object())
      fail_format("__metadata__ must be an object of strings, found ", value.type_name());
    for (const auto& [key, text] : value.items()) {
      if (!text.is_string())
        fail_format("__metadata__: the value of '", key, "' must be a string, found ",
                    text.type_name());
      header_.metadata.emplace(key, text.template get<std::string>());
    }
  }

  // A non-negative integer as u64, or nullopt for anything else (negative,
  // fractional, too large, or not a number).
  template <class Json>
  static std::optional<std::uint64_t> as_unsigned(const Json& value) {
    // nlohmann parses every integer literal without '-' as unsigned ("-0"
    // is a signed zero, rejected like serde does).
    if (value.is_number_unsigned()) return value.template get<std::uint64_t>();
    return std::nullopt;
  }

  // A JSON value as written; nlohmann reads "-0" as the integer 0.
  template <class Json>
  static std::string json_text(const Json& value) {
    if (value.is_number_integer() && !value.is_number_unsigned() &&
        value.template get<std::int64_t>() == 0)
      return "-0";
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
  }

  template <class Json>
  TensorInfo parse_entry(const std::string& name, const Json& entry) {
    if (!entry.is_object())
      fail_tensor(name, "entry must be an object with dtype, shape and data_offsets, found ",
                  entry.type_name());
    // Other keys are ignored, as by the reference implementation.
    auto field = [&](const char* key) -> const Json& {
      const auto found = entry.find(key);
      if (found == entry.end()) fail_tensor(name, "missing '", key, "'");
      return *found;
    };

    TensorInfo tensor;
    const Json& dtype = field("dtype");
    if (!dtype.is_string()) fail_tensor(name, "dtype must be a string, found ", dtype.type_name());
    tensor.dtype_name = dtype.template get<std::string>();
    const std::optional<int> element_bits = safetensors_dtype_bits(tensor.dtype_name);
    if (!element_bits) fail_tensor(name, "unknown dtype '", tensor.dtype_name, "'");
    tensor.dtype = dtype_from_name(tensor.dtype_name);

    const Json& shape = field("shape");
    if (!shape.is_array())
      fail_tensor(name, "shape must be an array of non-negative integers, found ",
                  shape.type_name());
    for (std::size_t axis = 0; axis < shape.size(); ++axis) {
      const std::optional<std::uint64_t> dimension = as_unsigned(shape[axis]);
      if (!dimension)
        fail_tensor(name, "shape[", axis, "] is ", json_text(shape[axis]),
                    ", expected a non-negative integer");
      if (*dimension > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail_tensor(name, "shape[", axis, "] is ", *dimension, ", larger than 2^63 - 1");
      tensor.shape.push_back(static_cast<std::int64_t>(*dimension));
    }

    const Json& offsets = field("data_offsets");
    std::optional<std::uint64_t> begin, end;
    if (offsets.is_array() && offsets.size() == 2) {
      begin = as_unsigned(offsets[0]);
      end = as_unsigned(offsets[1]);
    }
    if (!begin || !end)
      fail_tensor(name, "data_offsets must be an array of 2 non-negative integers, found ",
                  json_text(offsets));
    if (*begin > *end)
      fail_tensor(name, "data_offsets ", format_range(*begin, *end),
                  " begin after they end");
    tensor.begin = *begin;
    tensor.end = *end;

    // product(shape) * bits / 8 must be exact and equal end - begin; the
    // overflow checks follow the reference (product first, then bits).
    std::uint64_t elements = 1;
    std::uint64_t bits = 0;
    for (std::int64_t dimension : tensor.shape)
      if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(dimension), &elements))
        fail_tensor(name, "shape ", format_shape(tensor.shape),
                    " has more than 2^64 elements");
    if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(*element_bits), &bits))
      fail_tensor(name, "shape ", format_shape(tensor.shape), " of ", tensor.dtype_name,
                  " overflows a 64-bit size in bits");
    if (bits % 8 != 0)
      fail_tensor(name, "shape ", format_shape(tensor.shape), " of ", tensor.dtype_name,
                  " is not a whole number of bytes");
    if (bits / 8 != *end - *begin)
      fail_tensor(name, "data_offsets ", format_range(*begin, *end), " hold ",
                  *end - *begin, " bytes, but shape ", format_shape(tensor.shape), " of ",
                  tensor.dtype_name, " needs ", bits / 8);
    return tensor;
  }

  std::span<const std::byte> file_;
  std::string name_;
  SafetensorsHeader header_;
};

}  // namespace detail

// Parses and validates the header of the safetensors file `file` (all of its
// bytes); `name` stands for the file's path in messages. Throws FormatError
// if the file breaks a rule of the format.
inline SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file,
                                                  std::string name) {
  return detail::SafetensorsHeaderParser(file, std::move(name)).parse();
}

}  // namespace prenorm::io
