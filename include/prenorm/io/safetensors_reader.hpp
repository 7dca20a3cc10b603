#pragma once
// Reading safetensors files: SafetensorsFile maps a file (or copies one held
// in memory) and validates its whole header when it opens it
// (parse_safetensors_header, which describes the format and its rules), so
// every accessor afterwards works on a layout known to be sound.
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

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "mapped_file.hpp"
#include "safetensors_header.hpp"

namespace prenorm::io {

class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeaderSize = kMaxSafetensorsHeaderSize;

  // Maps and validates the file at `path`. Throws FileError if it cannot be
  // read and FormatError if it breaks a rule of the format.
  explicit SafetensorsFile(const std::filesystem::path& path)
      : path_(path),
        mapping_(detail::MappedFile::open(path, 8, kOp)),
        header_(parse_safetensors_header(mapping_.bytes(), path_.string())) {}

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
  const std::vector<std::string>& names() const { return header_.names; }
  std::size_t size() const { return header_.names.size(); }
  bool contains(std::string_view name) const {
    return header_.index.find(name) != header_.index.end();
  }

  // Throws prenorm::Error if there is no tensor `name`.
  const TensorInfo& info(std::string_view name) const { return header_.infos[index_of(name)]; }

  // The header's "__metadata__" (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  // The stored bytes of tensor `name`, whatever its dtype.
  std::span<const std::byte> raw_bytes(std::string_view name) const {
    const TensorInfo& tensor = info(name);
    return file_bytes().subspan(header_.data_start + tensor.begin, tensor.end - tensor.begin);
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
      : path_(std::move(name)),
        owned_bytes_(std::move(bytes)),
        header_(parse_safetensors_header(owned_bytes_, path_.string())) {}

  std::span<const std::byte> file_bytes() const {
    const std::span<const std::byte> mapped = mapping_.bytes();
    return mapped.data() != nullptr ? mapped : std::span<const std::byte>(owned_bytes_);
  }

  template <class... Parts>
  [[noreturn]] void fail_usage(Parts&&... parts) const {
    detail::fail_with<Error>(kOp, path_.string(), ": ", std::forward<Parts>(parts)...);
  }

  std::size_t index_of(std::string_view name) const {
    const auto found = header_.index.find(name);
    if (found == header_.index.end()) fail_usage("no tensor named '", name, "'");
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
    const std::byte* source = file_bytes().data() + header_.data_start + tensor.begin;
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
    const std::byte* data = file_bytes().data() + header_.data_start + tensor.begin;
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(S) != 0) return nullptr;
    return reinterpret_cast<const S*>(data);
  }

  std::filesystem::path path_;
  detail::MappedFile mapping_;          // the file, when opened from a path
  std::vector<std::byte> owned_bytes_;  // the file, when given as bytes
  SafetensorsHeader header_;            // parsed from the bytes above, so declared after them
};

}  // namespace prenorm::io
