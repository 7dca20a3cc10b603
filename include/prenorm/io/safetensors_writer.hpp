#pragma once
// Writing safetensors files (the format: safetensors_header.hpp), one file or
// a sharded checkpoint (split, write_sharded; the reader: safetensors_reader.hpp).

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "atomic_file.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "safetensors_header.hpp"
#include "utf8.hpp"

namespace prenorm::io {

// One tensor of a header: name, dtype, shape and the size of its data.
struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t bytes = 0;
};

// A safetensors header: "__metadata__" first (if any), then the tensors in
// order, their data contiguous in that order; JSON padded with spaces to a
// multiple of 8 bytes. Throws prenorm::Error when over the size limit.
inline std::string safetensors_header_text(const std::map<std::string, std::string>& metadata,
                                           const std::vector<TensorEntry>& tensors) {
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
  if (!metadata.empty()) append_entry("__metadata__", Json(metadata));
  std::uint64_t offset = 0;
  for (const TensorEntry& tensor : tensors) {
    Json entry = Json::object();
    entry["dtype"] = dtype_name(tensor.dtype);
    entry["shape"] = tensor.shape;
    entry["data_offsets"] = {offset, offset + tensor.bytes};
    offset += tensor.bytes;
    append_entry(tensor.name, entry);
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxSafetensorsHeaderSize)
    detail::fail_with<Error>("safetensors_writer", "the header would have ", text.size(),
                             " bytes, over the limit of ", kMaxSafetensorsHeaderSize);
  return text;
}

namespace detail {

// The start of a safetensors file: the header's length (8 bytes, little
// endian), then the header (safetensors_header_text).
inline void write_header_block(std::ostream& out, const std::string& header_text) {
  char length[8];
  std::uint64_t size = header_text.size();
  for (char& byte : length) {
    byte = static_cast<char>(size & 0xff);
    size >>= 8;
  }
  out.write(length, 8);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
}

// Where each shard starts when tensors of `sizes` bytes, in order, fill
// shards of at most `max_shard_bytes` each (a larger tensor alone): the index
// of each shard's first tensor; at least one shard.
inline std::vector<std::size_t> shard_starts(const std::vector<std::uint64_t>& sizes,
                                             std::uint64_t max_shard_bytes) {
  std::vector<std::size_t> starts = {0};
  std::uint64_t filled = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (filled > 0 && filled + sizes[i] > max_shard_bytes) {
      starts.push_back(i);
      filled = 0;
    }
    filled += sizes[i];
  }
  return starts;
}

// A sharded checkpoint's index: {"metadata": {"total_size": data bytes},
// "weight_map": {tensor: shard file}}, from each shard's file name and tensors.
inline std::string shard_index_text(const std::vector<std::string>& shard_names,
                                    const std::vector<std::vector<std::string>>& shard_tensors,
                                    std::uint64_t total_size) {
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < shard_names.size(); ++i)
    for (const std::string& tensor : shard_tensors[i]) weight_map[tensor] = shard_names[i];
  nlohmann::ordered_json json;
  json["metadata"] = {{"total_size", total_size}};
  json["weight_map"] = std::move(weight_map);
  return json.dump(2) + "\n";
}

}  // namespace detail

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

  // The bytes of tensor data (what a shard size limit counts; the header apart).
  std::uint64_t data_size() const {
    std::uint64_t total = 0;
    for (const Tensor& tensor : tensors_) total += tensor.bytes.size();
    return total;
  }

  // Splits the tensors, in the order they were added, into writers of at most
  // `max_shard_bytes` of data each (a tensor larger than that gets a writer of
  // its own; detail::shard_starts), each with the metadata; at least one
  // writer. The tensors move.
  std::vector<SafetensorsWriter> split(std::uint64_t max_shard_bytes) && {
    std::vector<std::uint64_t> sizes;
    for (const Tensor& tensor : tensors_) sizes.push_back(tensor.bytes.size());
    const std::vector<std::size_t> starts = detail::shard_starts(sizes, max_shard_bytes);
    std::vector<SafetensorsWriter> shards(starts.size());
    for (std::size_t s = 0; s < starts.size(); ++s) {
      const std::size_t end = s + 1 < starts.size() ? starts[s + 1] : tensors_.size();
      for (std::size_t i = starts[s]; i < end; ++i) {
        shards[s].names_.insert(tensors_[i].name);
        shards[s].tensors_.push_back(std::move(tensors_[i]));
      }
      shards[s].metadata_ = metadata_;
    }
    tensors_.clear();
    names_.clear();
    return shards;
  }

  // The header: JSON padded with spaces to a multiple of 8 bytes.
  std::string header() const {
    std::vector<TensorEntry> entries;
    entries.reserve(tensors_.size());
    for (const Tensor& tensor : tensors_)
      entries.push_back({tensor.name, tensor.dtype, tensor.shape, tensor.bytes.size()});
    return safetensors_header_text(metadata_, entries);
  }

  // The "__metadata__" set so far.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

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
    write_files_atomically({file_to_write(path)}, inputs);
  }

  // `path` and the function that writes this file (for write_files_atomically).
  // Header errors throw here, before anything touches the disk.
  FileToWrite file_to_write(const std::filesystem::path& path) const {
    return {path, [this, header_text = header()](std::ostream& out) {
              write_unchecked(out, header_text);
            }};
  }

  // The names of the tensors, in the order they were added.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    for (const Tensor& tensor : tensors_) result.push_back(tensor.name);
    return result;
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
    detail::write_header_block(out, header_text);
    for (const Tensor& tensor : tensors_)
      out.write(reinterpret_cast<const char*>(tensor.bytes.data()),
                static_cast<std::streamsize>(tensor.bytes.size()));
  }

  std::vector<Tensor> tensors_;            // in insertion order
  std::unordered_set<std::string> names_;  // of tensors_, for duplicate checks
  std::map<std::string, std::string> metadata_;
};

// The file name of shard `i` (from 1) of `count` for the index `index`
// (Hugging Face's convention): <prefix>-0000i-of-0000N.safetensors, where the
// index is <prefix>.safetensors.index.json (any other name: the whole name is the prefix).
inline std::string shard_file_name(const std::filesystem::path& index, std::size_t i,
                                   std::size_t count) {
  std::string prefix = index.filename().string();
  constexpr std::string_view kSuffix = ".safetensors.index.json";
  if (prefix.size() > kSuffix.size() &&
      prefix.compare(prefix.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0)
    prefix.resize(prefix.size() - kSuffix.size());
  char number[32];
  std::snprintf(number, sizeof number, "-%05zu-of-%05zu.safetensors", i, count);
  return prefix + number;
}

// Writes a sharded checkpoint: each of `shards` as shard_file_name(index, i,
// N) beside `index`, and the index itself, {"metadata": {"total_size": data
// bytes}, "weight_map": {tensor: shard file}}. All or nothing
// (write_files_atomically), refusing to replace any of `inputs`. Returns the
// paths written, the index first.
inline std::vector<std::filesystem::path> write_sharded(
    const std::vector<SafetensorsWriter>& shards, const std::filesystem::path& index,
    const std::vector<std::filesystem::path>& inputs = {}) {
  const std::filesystem::path folder =
      index.has_parent_path() ? index.parent_path() : std::filesystem::path(".");
  std::vector<std::string> names;
  std::vector<std::vector<std::string>> tensors;
  std::uint64_t total_size = 0;
  std::vector<FileToWrite> files;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    names.push_back(shard_file_name(index, i + 1, shards.size()));
    tensors.push_back(shards[i].names());
    total_size += shards[i].data_size();
    files.push_back(shards[i].file_to_write(folder / names.back()));
  }
  const std::string text = detail::shard_index_text(names, tensors, total_size);
  // The index last: it is renamed into place after every shard.
  files.push_back(FileToWrite{index, [text](std::ostream& out) {
                                out.write(text.data(), std::streamsize(text.size()));
                              }});
  write_files_atomically(files, inputs);
  std::vector<std::filesystem::path> written = {index};
  for (std::size_t i = 0; i + 1 < files.size(); ++i) written.push_back(files[i].destination);
  return written;
}

}  // namespace prenorm::io
