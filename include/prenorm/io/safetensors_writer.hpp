#pragma once
// Writing safetensors files (the format: safetensors_header.hpp).

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
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
    if (text.size() > kMaxSafetensorsHeaderSize)
      fail("the header would have ", text.size(), " bytes, over the limit of ",
           kMaxSafetensorsHeaderSize);
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
