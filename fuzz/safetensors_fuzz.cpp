// libFuzzer target for the safetensors reader.
//
// Any input must either be rejected with a prenorm::Error or open as a file
// whose every accessor works: the header validation has to make all the
// later reads safe. Sanitizers turn an out-of-bounds read into a crash.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I include \
//       -isystem /usr/include/eigen3 fuzz/safetensors_fuzz.cpp -o safetensors_fuzz
//   ./safetensors_fuzz -max_total_time=60 corpus-copy/   (seeds: fuzz/corpus/safetensors/)

#include <cstddef>
#include <cstdint>
#include <prenorm/io/safetensors.hpp>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using prenorm::io::SafetensorsFile;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const SafetensorsFile file = SafetensorsFile::from_bytes(bytes, "fuzz.safetensors");
    double checksum = 0;  // keeps the reads from being optimized away
    for (const auto& [key, value] : file.metadata()) checksum += double(key.size() + value.size());
    for (const std::string& name : file.names()) {
      const prenorm::io::TensorInfo& info = file.info(name);
      checksum += static_cast<double>(file.raw_bytes(name).size());
      if (!info.dtype) continue;  // unsupported dtype: values would throw
      for (float value : file.values<float>(name)) checksum += value;
      if (info.shape.size() == 1) checksum += file.vector<double>(name).sum();
      if (info.shape.size() == 2) {
        checksum += file.matrix<float>(name).sum();
        if (const auto mapped = file.map<float>(name)) checksum += mapped->sum();
      }
    }
    if (checksum == 0.123456789) return 0;
  } catch (const prenorm::Error&) {
    // A rejected input is the expected outcome for most mutations.
  }
  return 0;
}
