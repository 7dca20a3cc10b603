#pragma once
// UTF-8 validation: the safetensors header, and the tensor names and metadata
// prenorm writes into it, must be valid UTF-8.

#include <cstddef>
#include <string_view>

namespace prenorm::io::detail {

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

}  // namespace prenorm::io::detail
