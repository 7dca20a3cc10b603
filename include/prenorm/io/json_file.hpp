#pragma once
// Reading and writing small JSON files: a config.json, a sharded checkpoint's
// model.safetensors.index.json.

#include <nlohmann/json.hpp>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "atomic_file.hpp"
#include "error.hpp"

namespace prenorm::io {

// Reads a JSON file (a config.json). Throws FileError if it cannot be read and
// FormatError naming the file if it is not JSON.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    detail::fail_with<FileError>("read_json_file", path.string(),
                                 ": cannot open: ", detail::errno_text(error));
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) detail::fail_with<FileError>("read_json_file", path.string(), ": read error");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    std::string_view reason = error.what();
    if (const auto tag_end = reason.find("] "); tag_end != std::string_view::npos)
      reason.remove_prefix(tag_end + 2);
    detail::fail_with<FormatError>("read_json_file", path.string(), ": not valid JSON: ", reason);
  }
}

// Writes `json` (indented by 2) to `path` atomically, refusing to replace any of `inputs`.
inline void write_json_file(const std::filesystem::path& path, const nlohmann::json& json,
                            const std::vector<std::filesystem::path>& inputs = {}) {
  const std::string text = json.dump(2) + "\n";
  write_file_atomically(
      path, [&text](std::ostream& out) { out.write(text.data(), std::streamsize(text.size())); },
      inputs);
}

}  // namespace prenorm::io
