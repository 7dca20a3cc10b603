#pragma once
// Reading and writing safetensors files (https://github.com/huggingface/safetensors).
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
// SafetensorsFile validates the whole header when it opens a file, as strictly
// as the reference implementation (plus: the header must start with '{' and
// duplicate keys are errors), so every accessor afterwards works on a layout
// known to be sound: the tensors tile the data section exactly, without
// overlap or hole, and each one's byte size is product(shape) * dtype size.
// A violation throws FormatError naming the file, the tensor and the rule:
//   "prenorm::safetensors: model.safetensors: tensor 'wte': data_offsets
//    [0, 12) overlap tensor 'wpe' [8, 20)"
//
// prenorm computes in float or double and reads the values of F64, F32, F16
// and BF16 tensors. A file may hold tensors of the other safetensors dtypes
// (I64 token ids, U8 masks, ...): it opens, and their info is available, but
// asking for their values throws.
//
// The file is memory-mapped read-only. Values come out as converted copies
// (values, vector, matrix) or, when the stored dtype is the one asked for and
// the data is aligned, as zero-copy Eigen maps into the mapping (map,
// map_vector). A map stays valid as long as the SafetensorsFile lives.
// Truncating the file while it is mapped is undefined behaviour (SIGBUS), as
// with any mmap reader.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "atomic_file.hpp"
#include "error.hpp"
#include "half.hpp"

namespace prenorm::io {

static_assert(std::endian::native == std::endian::little,
              "prenorm::io reads and writes little-endian files on little-endian hosts only");

// --- dtypes ----------------------------------------------------------------

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

namespace detail {

// Offset of the first byte that is not part of valid UTF-8 (the rules of
// Rust's str::from_utf8: no overlong forms, no surrogates, <= U+10FFFF), or
// npos when all of `text` is valid.
inline std::size_t find_invalid_utf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t size = text.size();
  std::size_t i = 0;
  auto continuation = [&](std::size_t at, unsigned char low = 0x80, unsigned char high = 0xbf) {
    return at < size && bytes[at] >= low && bytes[at] <= high;
  };
  while (i < size) {
    const unsigned char lead = bytes[i];
    std::size_t length = 0;
    if (lead < 0x80) {
      length = 1;
    } else if (lead >= 0xc2 && lead <= 0xdf) {
      length = continuation(i + 1) ? 2 : 0;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      const unsigned char low = lead == 0xe0 ? 0xa0 : 0x80;   // overlong
      const unsigned char high = lead == 0xed ? 0x9f : 0xbf;  // surrogates
      length = continuation(i + 1, low, high) && continuation(i + 2) ? 3 : 0;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      const unsigned char low = lead == 0xf0 ? 0x90 : 0x80;   // overlong
      const unsigned char high = lead == 0xf4 ? 0x8f : 0xbf;  // > U+10FFFF
      length = continuation(i + 1, low, high) && continuation(i + 2) && continuation(i + 3) ? 4 : 0;
    }
    if (length == 0) return i;
    i += length;
  }
  return std::string_view::npos;
}

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

// A read-only, private memory mapping of a whole file. Move-only.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~MappedFile() { release(); }

  // Maps `path`. Files shorter than `minimum_size` bytes are reported as
  // FormatError before mapping (an empty file cannot be mapped at all).
  static MappedFile open(const std::filesystem::path& path, std::size_t minimum_size,
                         const char* op) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
    // refused as not a regular file); no effect on regular files.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      const int error = errno;
      fail_with<FileError>(op, path.string(), ": cannot open: ", errno_text(error));
    }
    struct CloseOnExit {
      int fd;
      ~CloseOnExit() { ::close(fd); }  // the mapping outlives the descriptor
    } close_on_exit{fd};

    struct ::stat status {};
    if (::fstat(fd, &status) != 0) {
      const int error = errno;
      fail_with<FileError>(op, path.string(), ": cannot stat: ", errno_text(error));
    }
    if (!S_ISREG(status.st_mode)) fail_with<FileError>(op, path.string(), ": not a regular file");
    const auto size = static_cast<std::size_t>(status.st_size);
    if (size < minimum_size)
      fail_with<FormatError>(op, path.string(), ": file has ", size, " bytes, fewer than the ",
                             minimum_size, " of the header length field");

    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const int error = errno;
      fail_with<FileError>(op, path.string(), ": cannot map into memory: ", errno_text(error));
    }
    MappedFile mapping;
    mapping.data_ = static_cast<const std::byte*>(address);
    mapping.size_ = size;
    return mapping;
  }

  std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  void release() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

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

}  // namespace detail

// --- reading -----------------------------------------------------------------

class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeaderSize = 100'000'000;  // as the reference

  // Maps and validates the file at `path`. Throws FileError if it cannot be
  // read and FormatError if it breaks a rule of the format.
  explicit SafetensorsFile(const std::filesystem::path& path)
      : path_(path), mapping_(detail::MappedFile::open(path, 8, kOp)) {
    parse_header();
  }

  // Validates a file held in memory (a copy is kept); `name` stands for the
  // path in messages. Same checks as the constructor.
  static SafetensorsFile from_bytes(std::span<const std::byte> bytes, std::string name) {
    return SafetensorsFile(std::vector<std::byte>(bytes.begin(), bytes.end()), std::move(name));
  }

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // Tensor names in the order of their data in the file.
  const std::vector<std::string>& names() const { return names_; }
  std::size_t size() const { return names_.size(); }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }

  // Throws prenorm::Error if there is no tensor `name`.
  const TensorInfo& info(std::string_view name) const { return infos_[index_of(name)]; }

  // The header's "__metadata__" (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The stored bytes of tensor `name`, whatever its dtype.
  std::span<const std::byte> raw_bytes(std::string_view name) const {
    const TensorInfo& tensor = info(name);
    return file_bytes().subspan(data_start_ + tensor.begin, tensor.end - tensor.begin);
  }

  // All values of tensor `name` (any rank) in C order, converted to S.
  template <class S>
  std::vector<S> values(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    std::vector<S> result(static_cast<std::size_t>(tensor.element_count()));
    copy_values(tensor, result.data());
    return result;
  }

  // Tensor `name` of shape [n] as a vector, converted to S.
  template <class S>
  Vector<S> vector(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    check_rank(name, tensor, 1);
    Vector<S> result(static_cast<Index>(tensor.shape[0]));
    copy_values(tensor, result.data());
    return result;
  }

  // Tensor `name` of shape [rows, cols] as a row-major matrix (the stored
  // order), converted to S.
  template <class S>
  RowMatrix<S> matrix(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    check_rank(name, tensor, 2);
    RowMatrix<S> result(static_cast<Index>(tensor.shape[0]), static_cast<Index>(tensor.shape[1]));
    copy_values(tensor, result.data());
    return result;
  }

  // A zero-copy view of tensor `name` of shape [rows, cols] when it is stored
  // as S (F32 for float, F64 for double) at an address aligned for S;
  // nullopt otherwise (then matrix<S>() copies). Rank errors throw.
  template <class S>
  std::optional<Eigen::Map<const RowMatrix<S>>> map(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = info(name);
    check_rank(name, tensor, 2);
    const S* data = aligned_data<S>(tensor);
    if (data == nullptr) return std::nullopt;
    return Eigen::Map<const RowMatrix<S>>(data, static_cast<Index>(tensor.shape[0]),
                                          static_cast<Index>(tensor.shape[1]));
  }

  // The same for a tensor of shape [n].
  template <class S>
  std::optional<Eigen::Map<const Vector<S>>> map_vector(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = info(name);
    check_rank(name, tensor, 1);
    const S* data = aligned_data<S>(tensor);
    if (data == nullptr) return std::nullopt;
    return Eigen::Map<const Vector<S>>(data, static_cast<Index>(tensor.shape[0]));
  }

 private:
  static constexpr const char* kOp = "safetensors";

  SafetensorsFile(std::vector<std::byte> bytes, std::string name)
      : path_(std::move(name)), owned_bytes_(std::move(bytes)) {
    if (owned_bytes_.size() < 8)
      fail_format("file has ", owned_bytes_.size(),
                  " bytes, fewer than the 8 of the header length field");
    parse_header();
  }

  std::span<const std::byte> file_bytes() const {
    const std::span<const std::byte> mapped = mapping_.bytes();
    return mapped.data() != nullptr ? mapped : std::span<const std::byte>(owned_bytes_);
  }

  template <class... Parts>
  [[noreturn]] void fail_format(Parts&&... parts) const {
    detail::fail_with<FormatError>(kOp, path_.string(), ": ", std::forward<Parts>(parts)...);
  }
  template <class... Parts>
  [[noreturn]] void fail_tensor(const std::string& name, Parts&&... parts) const {
    fail_format("tensor '", name, "': ", std::forward<Parts>(parts)...);
  }
  template <class... Parts>
  [[noreturn]] void fail_usage(Parts&&... parts) const {
    detail::fail_with<Error>(kOp, path_.string(), ": ", std::forward<Parts>(parts)...);
  }

  std::size_t index_of(std::string_view name) const {
    const auto found = index_.find(name);
    if (found == index_.end()) fail_usage("no tensor named '", name, "'");
    return found->second;
  }

  const TensorInfo& readable(std::string_view name) const {
    const TensorInfo& tensor = info(name);
    if (!tensor.dtype)
      fail_usage("tensor '", name, "': dtype ", tensor.dtype_name,
                 " is not supported (supported: ", kSupportedDtypes, ")");
    return tensor;
  }

  void check_rank(std::string_view name, const TensorInfo& tensor, std::size_t rank) const {
    if (tensor.shape.size() != rank)
      fail_usage("tensor '", name, "': expected ", rank, rank == 1 ? " dimension" : " dimensions",
                 ", found ", tensor.shape.size(), " (shape ", detail::format_shape(tensor.shape),
                 ")");
  }

  template <class S>
  void copy_values(const TensorInfo& tensor, S* target) const {
    const std::byte* source = file_bytes().data() + data_start_ + tensor.begin;
    const std::size_t count = static_cast<std::size_t>(tensor.element_count());
    if (count == 0) return;  // target may be null
    const Dtype dtype = *tensor.dtype;
    if (dtype_size(dtype) == sizeof(S) && (dtype == Dtype::F64) == std::is_same_v<S, double>) {
      std::memcpy(target, source, count * sizeof(S));  // stored as S already
      return;
    }
    const std::size_t stride = dtype_size(dtype);
    for (std::size_t i = 0; i < count; ++i)
      target[i] = detail::load_element<S>(dtype, source + i * stride);
  }

  template <class S>
  const S* aligned_data(const TensorInfo& tensor) const {
    constexpr Dtype kStoredAs = std::is_same_v<S, double> ? Dtype::F64 : Dtype::F32;
    if (tensor.dtype != kStoredAs) return nullptr;
    const std::byte* data = file_bytes().data() + data_start_ + tensor.begin;
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(S) != 0) return nullptr;
    return reinterpret_cast<const S*>(data);
  }

  // Parses and validates the header, filling infos_, names_, index_ and
  // metadata_. Called once by each constructor.
  void parse_header() {
    using Json = nlohmann::json;
    const std::span<const std::byte> file = file_bytes();

    // Header length, then the header's bytes.
    std::uint64_t header_size = 0;
    for (std::size_t i = 8; i-- > 0;)
      header_size = (header_size << 8) | std::to_integer<std::uint64_t>(file[i]);
    if (header_size > kMaxHeaderSize)
      fail_format("header length ", header_size, " exceeds the limit of ", kMaxHeaderSize,
                  " bytes");
    if (header_size > file.size() - 8)
      fail_format("header length ", header_size, " exceeds the ", file.size() - 8,
                  " bytes that follow the length field");
    const std::string_view header(reinterpret_cast<const char*>(file.data()) + 8,
                                  static_cast<std::size_t>(header_size));
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const std::uint64_t data_size = file.size() - data_start_;

    if (const std::size_t bad = detail::find_invalid_utf8(header); bad != std::string_view::npos)
      fail_format("header is not valid UTF-8 (byte ", bad, " of the header)");
    if (header.empty()) fail_format("header is empty, expected a JSON object");
    if (header.front() != '{')
      fail_format("header must start with '{', found ", detail::describe_byte(header.front()));

    // nlohmann's lexer takes a NUL byte for the end of input, which would
    // accept "{}\0<anything>"; valid JSON never has a raw NUL.
    if (const std::size_t nul = header.find('\0'); nul != std::string_view::npos)
      fail_format("header is not valid JSON: NUL byte at byte ", nul, " of the header");

    detail::HeaderKeyTracker<Json> keys;
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
        fail_tensor(names[i], "data_offsets ", detail::format_range(infos[i].begin, infos[i].end),
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
                    detail::format_range(infos[previous].begin, infos[previous].end),
                    " overlap tensor '", name, "' ",
                    detail::format_range(tensor.begin, tensor.end));
      }
      if (tensor.begin > covered_until) {
        if (k == 0)
          fail_tensor(name, "data_offsets ", detail::format_range(tensor.begin, tensor.end),
                      " leave a hole of ", tensor.begin,
                      " bytes at the start of the data section (the first tensor must begin "
                      "at 0)");
        const std::size_t previous = order[k - 1];
        fail_tensor(name, "data_offsets ", detail::format_range(tensor.begin, tensor.end),
                    " leave a hole of ", tensor.begin - covered_until, " bytes after tensor '",
                    names[previous], "' ",
                    detail::format_range(infos[previous].begin, infos[previous].end));
      }
      covered_until = tensor.end;
    }
    if (covered_until != data_size)
      fail_format("the tensors end at byte ", covered_until, " of the data section, but it has ",
                  data_size, " bytes (", data_size - covered_until,
                  " trailing bytes belong to no tensor)");

    for (std::size_t k = 0; k < order.size(); ++k) {
      names_.push_back(std::move(names[order[k]]));
      infos_.push_back(std::move(infos[order[k]]));
      index_.emplace(names_.back(), k);
    }
  }

  template <class Json>
  void parse_metadata(const Json& value) {
    if (!value.is_object())
      fail_format("__metadata__ must be an object of strings, found ", value.type_name());
    for (const auto& [key, text] : value.items()) {
      if (!text.is_string())
        fail_format("__metadata__: the value of '", key, "' must be a string, found ",
                    text.type_name());
      metadata_.emplace(key, text.template get<std::string>());
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
      fail_tensor(name, "data_offsets ", detail::format_range(*begin, *end),
                  " begin after they end");
    tensor.begin = *begin;
    tensor.end = *end;

    // product(shape) * bits / 8 must be exact and equal end - begin; the
    // overflow checks follow the reference (product first, then bits).
    std::uint64_t elements = 1;
    std::uint64_t bits = 0;
    for (std::int64_t dimension : tensor.shape)
      if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(dimension), &elements))
        fail_tensor(name, "shape ", detail::format_shape(tensor.shape),
                    " has more than 2^64 elements");
    if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(*element_bits), &bits))
      fail_tensor(name, "shape ", detail::format_shape(tensor.shape), " of ", tensor.dtype_name,
                  " overflows a 64-bit size in bits");
    if (bits % 8 != 0)
      fail_tensor(name, "shape ", detail::format_shape(tensor.shape), " of ", tensor.dtype_name,
                  " is not a whole number of bytes");
    if (bits / 8 != *end - *begin)
      fail_tensor(name, "data_offsets ", detail::format_range(*begin, *end), " hold ",
                  *end - *begin, " bytes, but shape ", detail::format_shape(tensor.shape), " of ",
                  tensor.dtype_name, " needs ", bits / 8);
    return tensor;
  }

  std::filesystem::path path_;
  detail::MappedFile mapping_;                             // the file, when opened from a path
  std::vector<std::byte> owned_bytes_;                     // the file, when given as bytes
  std::size_t data_start_ = 0;                             // 8 + header length
  std::vector<std::string> names_;                         // in order of data offsets
  std::vector<TensorInfo> infos_;                          // parallel to names_
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in names_
  std::map<std::string, std::string> metadata_;
};

// --- writing -----------------------------------------------------------------

// Collects tensors and metadata, then writes a safetensors file:
//   header keys: "__metadata__" first (if any), then the tensors in the order
//   they were added; data contiguous in the same order; the header padded
//   with spaces to a multiple of 8 bytes, so each tensor's data is aligned to
//   its element size whenever the tensors before it keep that alignment
//   (always true when wider dtypes are added first).
// Values are converted when added: to F16 and BF16 with round-to-nearest-even
// (NaN stays NaN, overflow gives Inf), and from double to F32 likewise.
class SafetensorsWriter {
 public:
  // A tensor of any rank from values in C order; product(shape) must equal
  // values.size(). An empty shape is a scalar (one value).
  void add(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
           std::span<const float> values) {
    add_values(std::move(name), dtype, std::move(shape), values);
  }
  void add(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
           std::span<const double> values) {
    add_values(std::move(name), dtype, std::move(shape), values);
  }

  // A matrix of float or double (any storage order or block), stored with
  // shape [rows, cols] in row-major order.
  template <class Derived>
  void add_matrix(std::string name, Dtype dtype, const Eigen::MatrixBase<Derived>& matrix) {
    using S = typename Derived::Scalar;
    detail::check_scalar<S>();
    Tensor& tensor = new_tensor(std::move(name), dtype, {matrix.rows(), matrix.cols()},
                                static_cast<std::uint64_t>(matrix.size()));
    std::byte* target = tensor.bytes.data();
    const std::size_t stride = dtype_size(dtype);
    for (Index row = 0; row < matrix.rows(); ++row)
      for (Index col = 0; col < matrix.cols(); ++col, target += stride)
        detail::store_element<S>(dtype, matrix(row, col), target);
  }

  // A row or column vector of float or double, stored with shape [n].
  template <class Derived>
  void add_vector(std::string name, Dtype dtype, const Eigen::MatrixBase<Derived>& vector) {
    using S = typename Derived::Scalar;
    detail::check_scalar<S>();
    if (vector.rows() != 1 && vector.cols() != 1)
      fail("add_vector('", name, "'): expected a vector, got a ", vector.rows(), " x ",
           vector.cols(), " matrix");
    Tensor& tensor = new_tensor(std::move(name), dtype, {vector.size()},
                                static_cast<std::uint64_t>(vector.size()));
    const std::size_t stride = dtype_size(dtype);
    for (Index i = 0; i < vector.size(); ++i) {
      const S value = vector.rows() == 1 ? vector(0, i) : vector(i, 0);
      detail::store_element<S>(dtype, value,
                               tensor.bytes.data() + static_cast<std::size_t>(i) * stride);
    }
  }

  // Sets "__metadata__"[key] = value.
  void set_metadata(std::string key, std::string value) {
    check_utf8("metadata key", key);
    check_utf8("metadata value", value);
    metadata_[std::move(key)] = std::move(value);
  }

  std::size_t size() const { return tensors_.size(); }

  // The header: JSON padded with spaces to a multiple of 8 bytes.
  std::string header() const {
    // Joined entry by entry (each one serialized by nlohmann) rather than
    // built as one ordered_json, whose insertion is linear per key.
    using Json = nlohmann::ordered_json;
    std::string text = "{";
    auto append_entry = [&text](const std::string& key, const Json& value) {
      if (text.size() > 1) text += ',';
      text += Json(key).dump();
      text += ':';
      text += value.dump();
    };
    if (!metadata_.empty()) append_entry("__metadata__", Json(metadata_));
    std::uint64_t offset = 0;
    for (const Tensor& tensor : tensors_) {
      Json entry = Json::object();
      entry["dtype"] = dtype_name(tensor.dtype);
      entry["shape"] = tensor.shape;
      entry["data_offsets"] = {offset, offset + tensor.bytes.size()};
      offset += tensor.bytes.size();
      append_entry(tensor.name, entry);
    }
    text += '}';
    text.append((8 - text.size() % 8) % 8, ' ');
    if (text.size() > SafetensorsFile::kMaxHeaderSize)
      fail("the header would have ", text.size(), " bytes, over the limit of ",
           SafetensorsFile::kMaxHeaderSize);
    return text;
  }

  // The whole file as bytes.
  std::vector<std::byte> bytes() const {
    std::ostringstream out;
    write_to(out);
    const std::string text = std::move(out).str();
    const auto* begin = reinterpret_cast<const std::byte*>(text.data());
    return std::vector<std::byte>(begin, begin + text.size());
  }

  // Writes the file to `out`. Throws FileError if the stream fails.
  void write_to(std::ostream& out) const {
    write_unchecked(out);
    if (!out) detail::fail_with<FileError>(kOp, "writing to the output stream failed");
  }

  // Creates or replaces the file `path` atomically (write_file_atomically),
  // refusing to replace any of `inputs`.
  void write(const std::filesystem::path& path,
             const std::vector<std::filesystem::path>& inputs = {}) const {
    const std::string header_text = header();  // header errors before touching the disk
    write_file_atomically(
        path, [&](std::ostream& out) { write_unchecked(out, header_text); }, inputs);
  }

 private:
  static constexpr const char* kOp = "safetensors_writer";

  struct Tensor {
    std::string name;
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;  // encoded, little-endian
  };

  template <class... Parts>
  [[noreturn]] static void fail(Parts&&... parts) {
    detail::fail_with<Error>(kOp, std::forward<Parts>(parts)...);
  }

  static void check_utf8(const char* what, const std::string& text) {
    if (const std::size_t bad = detail::find_invalid_utf8(text); bad != std::string_view::npos)
      fail(what, " '", text, "' is not valid UTF-8 (byte ", bad, ")");
  }

  // Checks the name and shape and appends a tensor with room for its bytes.
  Tensor& new_tensor(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
                     std::uint64_t value_count) {
    check_utf8("tensor name", name);
    if (name == "__metadata__") fail("'__metadata__' is reserved and cannot name a tensor");
    if (names_.count(name) != 0) fail("tensor '", name, "' was already added");
    std::uint64_t element_count = 1;
    for (std::int64_t dimension : shape) {
      if (dimension < 0)
        fail("tensor '", name, "': shape ", detail::format_shape(shape),
             " has a negative dimension");
      if (__builtin_mul_overflow(element_count, static_cast<std::uint64_t>(dimension),
                                 &element_count))
        fail("tensor '", name, "': shape ", detail::format_shape(shape), " is too large");
    }
    if (element_count != value_count)
      fail("tensor '", name, "': shape ", detail::format_shape(shape), " has ", element_count,
           " elements, but ", value_count, " values were given");
    names_.insert(name);
    Tensor& tensor = tensors_.emplace_back();
    tensor.name = std::move(name);
    tensor.dtype = dtype;
    tensor.shape = std::move(shape);
    tensor.bytes.resize(static_cast<std::size_t>(value_count) * dtype_size(dtype));
    return tensor;
  }

  template <class S>
  void add_values(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
                  std::span<const S> values) {
    Tensor& tensor = new_tensor(std::move(name), dtype, std::move(shape), values.size());
    const std::size_t stride = dtype_size(dtype);
    for (std::size_t i = 0; i < values.size(); ++i)
      detail::store_element<S>(dtype, values[i], tensor.bytes.data() + i * stride);
  }

  void write_unchecked(std::ostream& out) const { write_unchecked(out, header()); }

  void write_unchecked(std::ostream& out, const std::string& header_text) const {
    char length[8];
    std::uint64_t size = header_text.size();
    for (char& byte : length) {
      byte = static_cast<char>(size & 0xff);
      size >>= 8;
    }
    out.write(length, 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const Tensor& tensor : tensors_)
      out.write(reinterpret_cast<const char*>(tensor.bytes.data()),
                static_cast<std::streamsize>(tensor.bytes.size()));
  }

  std::vector<Tensor> tensors_;            // in insertion order
  std::unordered_set<std::string> names_;  // of tensors_, for duplicate checks
  std::map<std::string, std::string> metadata_;
};

}  // namespace prenorm::io
