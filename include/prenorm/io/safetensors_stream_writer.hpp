#pragma once
// Writing a safetensors file, or a sharded checkpoint, whose tensors are
// produced one after the other while it is written: the header (names,
// dtypes, shapes) is known up front, and each tensor's data is asked for in
// file order, so that no more than one tensor (or a part of one) needs to be
// in memory. The same file format, shard rule, names and index as
// SafetensorsWriter (safetensors_writer.hpp), and the same all-or-nothing
// guarantee (write_files_atomically): a producer that throws midway leaves
// nothing behind.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "atomic_file.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "safetensors_writer.hpp"

namespace prenorm::io {

namespace detail {

// Writes buffers to a stream on a thread of its own, at most kDepth waiting,
// so that the next tensor is computed while the last one goes to the file
// (writing a converted GPT-2-medium takes as long as converting it).
class BackgroundWriter {
 public:
  static constexpr std::size_t kDepth = 2;

  explicit BackgroundWriter(std::ostream& out) : out_(&out), thread_([this] { run(); }) {}
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;
  ~BackgroundWriter() { finish(); }

  void write(std::vector<std::byte> buffer) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return queue_.size() < kDepth; });
    queue_.push_back(std::move(buffer));
    changed_.notify_all();
  }

  // Writes what is queued and stops the thread; the stream's state tells
  // whether every write succeeded.
  void finish() {
    {
      const std::lock_guard lock(mutex_);
      done_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    for (;;) {
      std::vector<std::byte> buffer;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return !queue_.empty() || done_; });
        if (queue_.empty()) return;
        buffer = std::move(queue_.front());
        queue_.pop_front();
      }
      changed_.notify_all();
      out_->write(reinterpret_cast<const char*>(buffer.data()), std::streamsize(buffer.size()));
    }
  }

  std::ostream* out_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::vector<std::byte>> queue_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the rest is ready
};

}  // namespace detail

// Where a producer writes the data of one tensor: put() its encoded values in
// order (C order, the tensor's dtype), in as many calls as it likes.
class TensorDataSink {
 public:
  explicit TensorDataSink(detail::BackgroundWriter& out) : out_(&out) {}

  // Values of float or double, encoded to `dtype` (store_element: the
  // rounding SafetensorsWriter uses).
  template <class S>
  void put(Dtype dtype, std::span<const S> values) {
    const std::size_t stride = dtype_size(dtype);
    std::vector<std::byte> buffer(values.size() * stride);
    for (std::size_t i = 0; i < values.size(); ++i)
      detail::store_element<S>(dtype, values[i], buffer.data() + i * stride);
    written_ += buffer.size();
    out_->write(std::move(buffer));
  }

  std::uint64_t written() const { return written_; }

 private:
  detail::BackgroundWriter* out_;
  std::uint64_t written_ = 0;
};

class SafetensorsStreamWriter {
 public:
  // produce(i, sink) writes the data of tensor i (of `tensors`) to the sink;
  // it is called once for each i, in order.
  using Producer = std::function<void(std::size_t, TensorDataSink&)>;

  SafetensorsStreamWriter(std::map<std::string, std::string> metadata,
                          std::vector<TensorEntry> tensors)
      : metadata_(std::move(metadata)), tensors_(std::move(tensors)) {}

  std::size_t size() const { return tensors_.size(); }

  // The bytes of tensor data (what a shard size limit counts).
  std::uint64_t data_size() const {
    std::uint64_t total = 0;
    for (const TensorEntry& tensor : tensors_) total += tensor.bytes;
    return total;
  }

  // Writes one file at `path` (atomically, refusing to replace any of `inputs`).
  void write(const std::filesystem::path& path, const Producer& produce,
             const std::vector<std::filesystem::path>& inputs = {}) const {
    write_files_atomically({file_to_write(path, 0, tensors_.size(), produce)}, inputs);
  }

  // Writes a sharded checkpoint as write_sharded does: shards of at most
  // `max_shard_bytes` of data (detail::shard_starts) named shard_file_name
  // beside `index`, then the index. Returns the paths written, the index first.
  std::vector<std::filesystem::path> write_sharded(
      const std::filesystem::path& index, std::uint64_t max_shard_bytes, const Producer& produce,
      const std::vector<std::filesystem::path>& inputs = {}) const {
    const std::filesystem::path folder =
        index.has_parent_path() ? index.parent_path() : std::filesystem::path(".");
    std::vector<std::uint64_t> sizes;
    for (const TensorEntry& tensor : tensors_) sizes.push_back(tensor.bytes);
    const std::vector<std::size_t> starts = detail::shard_starts(sizes, max_shard_bytes);
    std::vector<std::string> names;
    std::vector<std::vector<std::string>> shard_tensors;
    std::vector<FileToWrite> files;
    for (std::size_t s = 0; s < starts.size(); ++s) {
      const std::size_t end = s + 1 < starts.size() ? starts[s + 1] : tensors_.size();
      names.push_back(shard_file_name(index, s + 1, starts.size()));
      shard_tensors.emplace_back();
      for (std::size_t i = starts[s]; i < end; ++i) shard_tensors.back().push_back(tensors_[i].name);
      files.push_back(file_to_write(folder / names.back(), starts[s], end, produce));
    }
    const std::string text = detail::shard_index_text(names, shard_tensors, data_size());
    files.push_back(FileToWrite{index, [text](std::ostream& out) {
                                  out.write(text.data(), std::streamsize(text.size()));
                                }});
    write_files_atomically(files, inputs);  // the files in order: the producer's order
    std::vector<std::filesystem::path> written = {index};
    for (std::size_t i = 0; i + 1 < files.size(); ++i) written.push_back(files[i].destination);
    return written;
  }

 private:
  // The file holding tensors [begin, end): its header, then each tensor's
  // data from the producer, checked to be exactly the header's size.
  FileToWrite file_to_write(const std::filesystem::path& path, std::size_t begin, std::size_t end,
                            const Producer& produce) const {
    const std::vector<TensorEntry> part(tensors_.begin() + std::ptrdiff_t(begin),
                                        tensors_.begin() + std::ptrdiff_t(end));
    std::string header = safetensors_header_text(metadata_, part);  // throws before any write
    return {path, [this, begin, end, header = std::move(header), &produce](std::ostream& out) {
              detail::write_header_block(out, header);
              detail::BackgroundWriter writer(out);
              for (std::size_t i = begin; i < end; ++i) {
                TensorDataSink sink(writer);
                produce(i, sink);
                if (sink.written() != tensors_[i].bytes)
                  detail::fail_with<Error>("safetensors_stream_writer", "tensor '", tensors_[i].name,
                                           "': the producer wrote ", sink.written(),
                                           " bytes, the header says ", tensors_[i].bytes);
              }
              writer.finish();
            }};
  }

  std::map<std::string, std::string> metadata_;
  std::vector<TensorEntry> tensors_;
};

}  // namespace prenorm::io
