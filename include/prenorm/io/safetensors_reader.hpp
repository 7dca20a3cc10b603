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
//
// A sharded checkpoint (the Hugging Face convention: model.safetensors.index.json
// = {"metadata": {...}, "weight_map": {tensor: shard file}}, the shards beside
// it) opens the same way, from the index's path: SafetensorsFile then maps
// every shard and serves their tensors as one set, so every loader reads a
// sharded checkpoint as it reads one file. Opening checks, each error naming
// the file and the tensor: every shard as one file; a tensor in two shards; a
// shard or tensor the index names but that is missing; a tensor in a shard
// but not in the index (or there under another shard); and that the shards
// agree on the model: when one carries prenorm's layout metadata (format
// "prenorm") every one carries the same.

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
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
#include "json_file.hpp"
#include "mapped_file.hpp"
#include "safetensors_header.hpp"

namespace prenorm::io {

class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeaderSize = kMaxSafetensorsHeaderSize;

  // Maps and validates the file at `path`, or, when `path` ends in
  // ".index.json", the sharded checkpoint it indexes (see the top of this
  // file). Throws FileError if a file cannot be read and FormatError if it
  // breaks a rule of the format or of the index.
  explicit SafetensorsFile(const std::filesystem::path& path) : path_(path) {
    if (is_index_path(path)) {
      open_shards();
    } else {
      shards_.emplace_back(path);
      merge_single_file();
    }
  }

  // Validates a file held in memory (a copy is kept); `name` stands for the
  // path in messages. Same checks as the constructor.
  static SafetensorsFile from_bytes(std::span<const std::byte> bytes, std::string name) {
    return SafetensorsFile(std::vector<std::byte>(bytes.begin(), bytes.end()), std::move(name));
  }

  // Whether `path` names a sharded checkpoint's index (*.index.json).
  static bool is_index_path(const std::filesystem::path& path) {
    const std::string name = path.filename().string();
    constexpr std::string_view kSuffix = ".index.json";
    return name.size() >= kSuffix.size() &&
           name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
  }

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The file, or the index of a sharded checkpoint.
  const std::filesystem::path& path() const { return path_; }

  // Every file read: the file; or the index and then its shards.
  std::vector<std::filesystem::path> files() const {
    std::vector<std::filesystem::path> result;
    if (sharded_) result.push_back(path_);
    for (const Shard& shard : shards_) result.push_back(shard.path);
    return result;
  }

  // The file that holds tensor `name` (its shard, when sharded).
  const std::filesystem::path& file_of(std::string_view name) const {
    return shards_[locate(name).shard].path;
  }

  // Tensor names in the order of their data in the file (sharded: shard by
  // shard, in the order of the shards' names).
  const std::vector<std::string>& names() const { return names_; }
  std::size_t size() const { return names_.size(); }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }

  // Throws prenorm::Error if there is no tensor `name`.
  const TensorInfo& info(std::string_view name) const {
    const Location at = locate(name);
    return shards_[at.shard].header.infos[at.position];
  }

  // The header's "__metadata__" (empty if absent); sharded: the first shard's.
  const std::map<std::string, std::string>& metadata() const { return shards_.front().header.metadata; }

  // The stored bytes of tensor `name`, whatever its dtype.
  std::span<const std::byte> raw_bytes(std::string_view name) const {
    const Location at = locate(name);
    const TensorInfo& tensor = shards_[at.shard].header.infos[at.position];
    return data_of(at, tensor).first(tensor.end - tensor.begin);
  }

  // All values of tensor `name` (any rank) in C order, converted to S.
  template <class S>
  std::vector<S> values(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    std::vector<S> result(static_cast<std::size_t>(tensor.element_count()));
    copy_values(name, tensor, result.data());
    return result;
  }

  // Tensor `name` of shape [n] as a vector, converted to S.
  template <class S>
  Vector<S> vector(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    check_rank(name, tensor, 1);
    Vector<S> result(static_cast<Index>(tensor.shape[0]));
    copy_values(name, tensor, result.data());
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
    copy_values(name, tensor, result.data());
    return result;
  }

  // Rows [first, first + count) of tensor `name` of shape [rows, cols] (or
  // entries, of a tensor of shape [n]: then a count x 1 matrix), converted
  // to S: a part of a large table without reading the rest.
  template <class S>
  RowMatrix<S> rows(std::string_view name, Index first, Index count) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = readable(name);
    if (tensor.shape.size() != 1) check_rank(name, tensor, 2);
    const Index total = Index(tensor.shape[0]);
    const Index cols = tensor.shape.size() == 2 ? Index(tensor.shape[1]) : 1;
    if (first < 0 || count < 0 || first + count > total)
      fail_usage("tensor '", name, "': rows [", first, ", ", first + count, ") are not within its ",
                 total);
    RowMatrix<S> result(count, cols);
    copy_values(name, tensor, result.data(), std::size_t(first * cols), std::size_t(count * cols));
    return result;
  }

  // Gives the memory-mapped pages of tensor `name` (or of its rows [first,
  // first + count), as rows()) back to the system: a reader that has copied
  // them keeps its resident memory bounded (MappedFile::release).
  void release(std::string_view name, Index first = 0, Index count = -1) const {
    const Location at = locate(name);
    const TensorInfo& tensor = shards_[at.shard].header.infos[at.position];
    std::span<const std::byte> bytes = data_of(at, tensor).first(tensor.end - tensor.begin);
    if (count >= 0 && !tensor.shape.empty() && tensor.shape[0] > 0) {
      const std::size_t row = bytes.size() / std::size_t(tensor.shape[0]);
      bytes = bytes.subspan(std::size_t(first) * row, std::size_t(count) * row);
    }
    shards_[at.shard].mapping.release(bytes);
  }

  // A zero-copy view of tensor `name` of shape [rows, cols] when it is stored
  // as S (F32 for float, F64 for double) at an address aligned for S;
  // nullopt otherwise (then matrix<S>() copies). Rank errors throw.
  template <class S>
  std::optional<Eigen::Map<const RowMatrix<S>>> map(std::string_view name) const {
    detail::check_scalar<S>();
    const TensorInfo& tensor = info(name);
    check_rank(name, tensor, 2);
    const S* data = aligned_data<S>(name, tensor);
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
    const S* data = aligned_data<S>(name, tensor);
    if (data == nullptr) return std::nullopt;
    return Eigen::Map<const Vector<S>>(data, static_cast<Index>(tensor.shape[0]));
  }

 private:
  static constexpr const char* kOp = "safetensors";

  // One mapped (or in-memory) file and its validated header.
  struct Shard {
    explicit Shard(std::filesystem::path file)
        : path(std::move(file)),
          mapping(detail::MappedFile::open(path, 8, kOp)),
          header(parse_safetensors_header(mapping.bytes(), path.string())) {}
    Shard(std::vector<std::byte> bytes, std::string name)
        : path(std::move(name)),
          owned_bytes(std::move(bytes)),
          header(parse_safetensors_header(owned_bytes, path.string())) {}

    std::span<const std::byte> bytes() const {
      const std::span<const std::byte> mapped = mapping.bytes();
      return mapped.data() != nullptr ? mapped : std::span<const std::byte>(owned_bytes);
    }

    std::filesystem::path path;
    detail::MappedFile mapping;          // the file, when opened from a path
    std::vector<std::byte> owned_bytes;  // the file, when given as bytes
    SafetensorsHeader header;            // parsed from the bytes above, so declared after them
  };

  // Where a tensor is: its shard and its position in that shard's header.
  struct Location {
    std::size_t shard = 0;
    std::size_t position = 0;
  };

  SafetensorsFile(std::vector<std::byte> bytes, std::string name) : path_(name) {
    shards_.emplace_back(std::move(bytes), std::move(name));
    merge_single_file();
  }

  void merge_single_file() {
    const SafetensorsHeader& header = shards_.front().header;
    names_ = header.names;
    for (const auto& [name, position] : header.index) index_.emplace(name, Location{0, position});
  }

  template <class... Parts>
  [[noreturn]] void fail_index(Parts&&... parts) const {
    detail::fail_with<FormatError>(kOp, path_.string(), ": ", std::forward<Parts>(parts)...);
  }

  // Reads the index and maps and checks its shards (see the top of this file).
  void open_shards() {
    sharded_ = true;
    const nlohmann::json index = read_json_file(path_);
    const nlohmann::json* weight_map = nullptr;
    if (index.is_object())
      if (const auto found = index.find("weight_map"); found != index.end()) weight_map = &*found;
    if (weight_map == nullptr || !weight_map->is_object() || weight_map->empty())
      fail_index("a sharded checkpoint's index needs a non-empty object \"weight_map\" "
                 "({tensor: shard file})");
    // tensor -> shard file, as the index says; the shards in name order.
    std::map<std::string, std::string, std::less<>> expected;
    std::vector<std::string> shard_names;
    for (const auto& [tensor, file] : weight_map->items()) {
      if (!file.is_string())
        fail_index("weight_map: tensor '", tensor, "': the shard is not a file name (", file.dump(), ")");
      const std::string name = file.get<std::string>();
      const std::filesystem::path relative(name);
      if (name.empty() || relative.is_absolute() || relative.filename() != relative)
        fail_index("weight_map: tensor '", tensor, "': shard '", name,
                   "' is not a file name beside the index");
      expected.emplace(tensor, name);
      shard_names.push_back(name);
    }
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());

    const std::filesystem::path folder =
        path_.has_parent_path() ? path_.parent_path() : std::filesystem::path(".");
    for (const std::string& name : shard_names) {
      const std::filesystem::path shard = folder / name;
      std::error_code error;
      if (!std::filesystem::exists(shard, error)) {
        const auto tensor = std::find_if(expected.begin(), expected.end(),
                                         [&](const auto& entry) { return entry.second == name; });
        fail_index("shard '", shard.string(), "' (of tensor '", tensor->first,
                   "' and others) does not exist");
      }
      shards_.emplace_back(shard);  // validates the file: a truncated shard fails here
    }

    // Every tensor once, then each where the index puts it.
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      const Shard& shard = shards_[s];
      for (std::size_t position = 0; position < shard.header.names.size(); ++position) {
        const std::string& tensor = shard.header.names[position];
        const auto [at, inserted] = index_.emplace(tensor, Location{s, position});
        if (!inserted)
          fail_index("tensor '", tensor, "' is in two shards, '",
                     shards_[at->second.shard].path.string(), "' and '", shard.path.string(), "'");
        names_.push_back(tensor);
      }
    }
    for (const auto& [tensor, at] : index_) {
      const std::string& shard = shards_[at.shard].path.string();
      const auto listed = expected.find(tensor);
      if (listed == expected.end())
        fail_index("shard '", shard, "' holds tensor '", tensor, "', which the index does not list");
      if (listed->second != shard_names[at.shard])
        fail_index("shard '", shard, "' holds tensor '", tensor, "', which the index puts in '",
                   listed->second, "'");
    }
    for (const auto& [tensor, file] : expected)
      if (index_.find(tensor) == index_.end())
        fail_index("tensor '", tensor, "' is missing: the index puts it in shard '",
                   (folder / file).string(), "', which does not hold it");
    check_shards_agree();
  }

  // Shards of one model agree on prenorm's layout metadata: when a shard has
  // format "prenorm", every shard's __metadata__ is the same.
  void check_shards_agree() const {
    const auto is_prenorm = [](const Shard& shard) {
      const auto format = shard.header.metadata.find("format");
      return format != shard.header.metadata.end() && format->second == "prenorm";
    };
    const auto first = std::find_if(shards_.begin(), shards_.end(), is_prenorm);
    if (first == shards_.end()) return;
    for (const Shard& shard : shards_) {
      if (shard.header.metadata == first->header.metadata) continue;
      // Name the first key that differs (or that one of them lacks).
      std::string key;
      for (const auto* side : {&first->header.metadata, &shard.header.metadata})
        for (const auto& [name, value] : *side) {
          const auto* other = side == &first->header.metadata ? &shard.header.metadata
                                                              : &first->header.metadata;
          const auto found = other->find(name);
          if (key.empty() && (found == other->end() || found->second != value)) key = name;
        }
      const std::string tensor = shard.header.names.empty() ? std::string("(none)")
                                                            : shard.header.names.front();
      fail_index("shards disagree on the model: '", shard.path.string(), "' (tensor '", tensor,
                 "', ...) and '", first->path.string(), "' differ in prenorm metadata '", key, "'");
    }
  }

  template <class... Parts>
  [[noreturn]] void fail_usage(Parts&&... parts) const {
    detail::fail_with<Error>(kOp, path_.string(), ": ", std::forward<Parts>(parts)...);
  }

  Location locate(std::string_view name) const {
    const auto found = index_.find(name);
    if (found == index_.end()) fail_usage("no tensor named '", name, "'");
    return found->second;
  }

  // The bytes of the tensor at `at` and after it, to the end of its file.
  std::span<const std::byte> data_of(Location at, const TensorInfo& tensor) const {
    const Shard& shard = shards_[at.shard];
    return shard.bytes().subspan(shard.header.data_start + tensor.begin);
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
  void copy_values(std::string_view name, const TensorInfo& tensor, S* target) const {
    copy_values(name, tensor, target, 0, static_cast<std::size_t>(tensor.element_count()));
  }

  // Values [first, first + count) of the tensor (in C order).
  template <class S>
  void copy_values(std::string_view name, const TensorInfo& tensor, S* target, std::size_t first,
                   std::size_t count) const {
    if (count == 0) return;  // target may be null
    const Dtype dtype = *tensor.dtype;
    const std::byte* source = data_of(locate(name), tensor).data() + first * dtype_size(dtype);
    if (dtype_size(dtype) == sizeof(S) && (dtype == Dtype::F64) == std::is_same_v<S, double>) {
      std::memcpy(target, source, count * sizeof(S));  // stored as S already
      return;
    }
#if defined(__F16C__)
    // F16 -> double 8 at a time in hardware: both widenings are exact, so
    // the values are load_element's (a signaling NaN comes out quiet, as
    // load_element's float -> double conversion makes it too).
    if (std::is_same_v<S, double> && dtype == Dtype::F16) {
      std::size_t i = 0;
      for (; i + 8 <= count; i += 8) {
        const __m256 wide = _mm256_cvtph_ps(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + 2 * i)));
        _mm256_storeu_pd(reinterpret_cast<double*>(target + i), _mm256_cvtps_pd(_mm256_castps256_ps128(wide)));
        _mm256_storeu_pd(reinterpret_cast<double*>(target + i + 4),
                         _mm256_cvtps_pd(_mm256_extractf128_ps(wide, 1)));
      }
      for (; i < count; ++i) target[i] = detail::load_element<S>(dtype, source + 2 * i);
      return;
    }
#endif
    const std::size_t stride = dtype_size(dtype);
    for (std::size_t i = 0; i < count; ++i)
      target[i] = detail::load_element<S>(dtype, source + i * stride);
  }

  template <class S>
  const S* aligned_data(std::string_view name, const TensorInfo& tensor) const {
    constexpr Dtype kStoredAs = std::is_same_v<S, double> ? Dtype::F64 : Dtype::F32;
    if (tensor.dtype != kStoredAs) return nullptr;
    const std::byte* data = data_of(locate(name), tensor).data();
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(S) != 0) return nullptr;
    return reinterpret_cast<const S*>(data);
  }

  std::filesystem::path path_;  // the file, or the index
  bool sharded_ = false;
  std::vector<Shard> shards_;   // one, or the shards in name order
  // Every tensor, over all shards: names in data order, and where each is.
  std::vector<std::string> names_;
  std::map<std::string, Location, std::less<>> index_;
};

}  // namespace prenorm::io
