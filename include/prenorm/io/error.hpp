#pragma once
// Errors of the I/O module. Both derive from prenorm::Error, so one
// `catch (const prenorm::Error&)` covers every failure of a file operation.
//
//   FormatError  the bytes of a file break a rule of its format
//                ("prenorm::safetensors: model.safetensors: tensor 'wte': ...")
//   FileError    the operating system refused an operation (open, write,
//                rename, ...) or a write would destroy an input

#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>

#include "../core/error.hpp"

namespace prenorm::io {

class FormatError : public Error {
 public:
  using Error::Error;
};

class FileError : public Error {
 public:
  using Error::Error;
};

namespace detail {

// "prenorm::<op>: <parts...>" as an exception of type E.
template <class E, class... Parts>
[[noreturn]] void fail_with(const char* op, Parts&&... parts) {
  std::ostringstream message;
  message << "prenorm::" << op << ": ";
  (message << ... << std::forward<Parts>(parts));
  throw E(message.str());
}

// Describes errno for messages, e.g. "No such file or directory".
inline std::string errno_text(int error_number) { return std::strerror(error_number); }

}  // namespace detail
}  // namespace prenorm::io
