#pragma once
// Writing a file all at once: readers see either the old file or the whole
// new one, never a half-written file (docs/DESIGN.md §11).
//
// The contents go to a fresh temporary file in the destination's directory
// (rename is atomic only within one file system), which is flushed to disk
// (fsync) and then renamed over the destination. If anything throws, the
// temporary file is removed and the destination is untouched.
//
// A tool that reads some files and writes another passes its inputs, and the
// write is refused when the destination is one of them (the same file under
// another name or through a link included), so a tool never replaces its
// own input.
//
// write_files_atomically does the same for several files (a sharded
// checkpoint): all are written and flushed before the first rename.
//
// POSIX only (open, fsync, rename).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <span>
#include <streambuf>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "error.hpp"

namespace prenorm::io {

namespace detail {

// An output stream buffer over a POSIX file descriptor. A failed write is
// reported through the stream's badbit; `error()` keeps its errno.
class FdStreamBuf : public std::streambuf {
 public:
  explicit FdStreamBuf(int fd) : fd_(fd) { setp(buffer_.data(), buffer_.data() + buffer_.size()); }
  FdStreamBuf(const FdStreamBuf&) = delete;
  FdStreamBuf& operator=(const FdStreamBuf&) = delete;

  int error() const { return error_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* data, std::streamsize count) override {
    // Large blocks (tensor data) bypass the buffer.
    if (count >= static_cast<std::streamsize>(buffer_.size())) {
      if (!flush_buffer() || !write_all(data, static_cast<std::size_t>(count))) return 0;
      return count;
    }
    return std::streambuf::xsputn(data, count);
  }

  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  bool flush_buffer() {
    const auto pending = static_cast<std::size_t>(pptr() - pbase());
    if (pending == 0) return error_ == 0;
    const bool ok = write_all(pbase(), pending);
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return ok;
  }

  bool write_all(const char* data, std::size_t count) {
    if (error_ != 0) return false;
    while (count > 0) {
      const ::ssize_t written = ::write(fd_, data, count);
      if (written < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        return false;
      }
      data += written;
      count -= static_cast<std::size_t>(written);
      start_writeback(static_cast<std::size_t>(written));
    }
    return true;
  }

#if defined(__linux__)
  // Starts the disk writes of every full 64 MiB written so far, without
  // waiting for them: a large file then goes to disk while it is being
  // produced, instead of all at the fsync that ends it (the page cache
  // would otherwise hold it all, up to the dirty limit). Linux only.
  void start_writeback(std::size_t written) {
    constexpr ::off_t kStep = ::off_t(64) << 20;
    written_ += ::off_t(written);
    if (written_ - started_ < kStep) return;
    const ::off_t end = written_ / kStep * kStep;
    ::sync_file_range(fd_, started_, end - started_, SYNC_FILE_RANGE_WRITE);  // a hint
    started_ = end;
  }
  ::off_t written_ = 0;  // bytes written
  ::off_t started_ = 0;  // bytes whose writeback was started
#else
  void start_writeback(std::size_t) {}
#endif

  int fd_;
  int error_ = 0;
  std::array<char, 1 << 16> buffer_{};
};

// "." + name + ".tmp-" + 16 hex digits, unique with overwhelming probability;
// O_EXCL below makes a collision a retry, never a clobber.
inline std::string temporary_name_for(const std::filesystem::path& destination) {
  static std::atomic<std::uint64_t> counter{0};
  thread_local std::mt19937_64 generator{std::random_device{}() ^
                                         (static_cast<std::uint64_t>(::getpid()) << 32)};
  const std::uint64_t token = generator() ^ counter.fetch_add(1);
  static constexpr char kHex[] = "0123456789abcdef";
  // Appended piece by piece: "." + string + "..." trips a false -Wrestrict in GCC 12.
  std::string name(1, '.');
  name += destination.filename().string();
  name += ".tmp-";
  for (int shift = 60; shift >= 0; shift -= 4) name += kHex[(token >> shift) & 0xf];
  return name;
}

}  // namespace detail

// Throws FileError when `destination` names the same file as one of `inputs`
// (std::filesystem::equivalent: hard links and symlinks count). Inputs that
// do not exist are ignored.
inline void check_not_an_input(const std::filesystem::path& destination,
                               const std::vector<std::filesystem::path>& inputs) {
  for (const std::filesystem::path& input : inputs) {
    std::error_code error;
    if (std::filesystem::equivalent(destination, input, error) && !error)
      detail::fail_with<FileError>("write_file_atomically", "refusing to write '",
                                   destination.string(), "': it is the input file '",
                                   input.string(), "'");
  }
}

// One file to write: its destination and what to write into it.
struct FileToWrite {
  std::filesystem::path destination;
  std::function<void(std::ostream&)> write_contents;
};

namespace detail {

// A temporary file beside `destination`, removed unless committed.
class TemporaryFile {
 public:
  static constexpr const char* kOp = "write_file_atomically";

  explicit TemporaryFile(std::filesystem::path destination) : destination_(std::move(destination)) {
    if (destination_.empty() || !destination_.has_filename())
      fail_with<FileError>(kOp, "destination '", destination_.string(), "' does not name a file");
    const std::filesystem::path directory = this->directory();
    for (int attempt = 0; fd_ < 0; ++attempt) {
      std::filesystem::path candidate = directory / temporary_name_for(destination_);
      // 0666 minus the umask, like any newly created file.
      const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd >= 0) {
        path_ = std::move(candidate);
        fd_ = fd;
      } else if (errno != EEXIST || attempt >= 100) {
        const int error = errno;
        fail_with<FileError>(kOp, "cannot create a temporary file in '", directory.string(),
                             "' to write '", destination_.string(), "': ", errno_text(error));
      }
    }
    // Replacing a file keeps its permissions.
    struct ::stat existing {};
    if (::stat(destination_.c_str(), &existing) == 0 && S_ISREG(existing.st_mode))
      ::fchmod(fd_, existing.st_mode & 07777);
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && !path_.empty()) ::unlink(path_.c_str());
  }

  const std::filesystem::path& destination() const { return destination_; }
  std::filesystem::path directory() const {
    return destination_.has_parent_path() ? destination_.parent_path() : std::filesystem::path(".");
  }

  // Writes the contents, flushes them to disk and closes the file.
  void write(const std::function<void(std::ostream&)>& write_contents) {
    {
      FdStreamBuf buffer(fd_);
      std::ostream stream(&buffer);
      write_contents(stream);
      stream.flush();
      if (!stream || buffer.error() != 0) {
        const int error = buffer.error();
        fail_with<FileError>(kOp, "cannot write '", path_.string(),
                             "': ", error != 0 ? errno_text(error) : std::string("stream error"));
      }
    }
    if (::fsync(fd_) != 0) {
      const int error = errno;
      fail_with<FileError>(kOp, "cannot flush '", path_.string(), "' to disk: ", errno_text(error));
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      const int error = errno;
      fail_with<FileError>(kOp, "cannot close '", path_.string(), "': ", errno_text(error));
    }
  }

  // Renames the written file onto the destination.
  void commit() {
    if (::rename(path_.c_str(), destination_.c_str()) != 0) {
      const int error = errno;
      fail_with<FileError>(kOp, "cannot rename '", path_.string(), "' to '",
                           destination_.string(), "': ", errno_text(error));
    }
    committed_ = true;
  }
  bool committed() const { return committed_; }

 private:
  std::filesystem::path destination_;
  std::filesystem::path path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace detail

// Creates or replaces each of `files` with what its function writes, all or
// nothing as far as a process can: every file is written to a temporary
// beside its destination and flushed first, and only then are they renamed
// one by one. If anything throws before the renames, no destination is
// touched; if a rename fails, the files renamed before it are removed too.
inline void write_files_atomically(const std::vector<FileToWrite>& files,
                                   const std::vector<std::filesystem::path>& inputs = {}) {
  for (const FileToWrite& file : files) check_not_an_input(file.destination, inputs);
  std::vector<std::unique_ptr<detail::TemporaryFile>> temporaries;
  for (const FileToWrite& file : files) {
    temporaries.push_back(std::make_unique<detail::TemporaryFile>(file.destination));
    temporaries.back()->write(file.write_contents);
  }
  // An input could have been renamed onto a destination meanwhile; check
  // again just before the point of no return.
  for (const FileToWrite& file : files) check_not_an_input(file.destination, inputs);
  try {
    for (const auto& temporary : temporaries) temporary->commit();
  } catch (...) {
    for (const auto& temporary : temporaries)
      if (temporary->committed()) ::unlink(temporary->destination().c_str());
    throw;
  }

  // Make the renames durable. Failure here leaves complete files, so it is
  // not reported.
  std::vector<std::filesystem::path> directories;
  for (const auto& temporary : temporaries) {
    const std::filesystem::path directory = temporary->directory();
    if (std::find(directories.begin(), directories.end(), directory) != directories.end()) continue;
    directories.push_back(directory);
    const int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory_fd >= 0) {
      ::fsync(directory_fd);
      ::close(directory_fd);
    }
  }
}

// Creates or replaces `destination` with what `write_contents` writes to the
// stream it is given. See the top of this file for the guarantees.
inline void write_file_atomically(const std::filesystem::path& destination,
                                  const std::function<void(std::ostream&)>& write_contents,
                                  const std::vector<std::filesystem::path>& inputs = {}) {
  write_files_atomically({FileToWrite{destination, write_contents}}, inputs);
}

// The same for contents already in memory.
inline void write_file_atomically(const std::filesystem::path& destination,
                                  std::span<const std::byte> contents,
                                  const std::vector<std::filesystem::path>& inputs = {}) {
  write_file_atomically(
      destination,
      [contents](std::ostream& out) {
        out.write(reinterpret_cast<const char*>(contents.data()),
                  static_cast<std::streamsize>(contents.size()));
      },
      inputs);
}

}  // namespace prenorm::io
