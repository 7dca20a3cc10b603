#pragma once
// A whole file mapped into memory read-only (POSIX mmap), as SafetensorsFile
// reads it. Truncating the file while it is mapped is undefined behaviour
// (SIGBUS), as with any mmap reader.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <utility>

#include "error.hpp"

namespace prenorm::io::detail {

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

  // Gives the pages holding `range` (within bytes()) back to the system
  // (madvise MADV_DONTNEED), so that they leave the resident set; reading
  // them again maps them again from the file. Only a hint: errors are ignored.
  void release(std::span<const std::byte> range) const {
    if (data_ == nullptr || range.empty()) return;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(range.data()) / page * page;
    const auto end = reinterpret_cast<std::uintptr_t>(range.data() + range.size());
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

 private:
  void release() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace prenorm::io::detail
