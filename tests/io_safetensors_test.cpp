// Tests for include/prenorm/io/safetensors.hpp and atomic_file.hpp.
//
// Malformed files are crafted byte by byte (a header string and a data
// section), written to a temporary directory, and opened both from the path
// (mmap) and from memory; each rule gets its own test and message. Sharded
// checkpoints (an index and its shards) are written with write_sharded and
// spoiled one defect at a time.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <prenorm/io/atomic_file.hpp>
#include <prenorm/io/safetensors.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using prenorm::RowMatrix;
using prenorm::Vector;
using prenorm::io::Dtype;
using prenorm::io::FileError;
using prenorm::io::FormatError;
using prenorm::io::SafetensorsFile;
using prenorm::io::SafetensorsWriter;

// --- helpers -----------------------------------------------------------------

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "prenorm-io-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(path_))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

std::vector<std::byte> to_bytes(std::string_view text) {
  const auto* begin = reinterpret_cast<const std::byte*>(text.data());
  return {begin, begin + text.size()};
}

// A file with header length `length`, then `header`, then `data`.
std::vector<std::byte> raw_file(std::uint64_t length, std::string_view header,
                                std::string_view data = {}) {
  std::string text(8, '\0');
  for (int i = 0; i < 8; ++i) text[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  text += header;
  text += data;
  return to_bytes(text);
}

// A well-formed frame around `header` (its true length) and `data_size` zero bytes.
std::vector<std::byte> crafted(std::string_view header, std::size_t data_size = 0) {
  return raw_file(header.size(), header, std::string(data_size, '\0'));
}

void write_bytes(const fs::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::byte> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return to_bytes(text);
}

// Opens `bytes` from a file and from memory; both must throw FormatError
// whose message names the file and contains `expected`.
void expect_format_error(const std::vector<std::byte>& bytes, const std::string& expected) {
  TempDir dir;
  const fs::path path = dir / "model.safetensors";
  write_bytes(path, bytes);
  try {
    SafetensorsFile file(path);
    ADD_FAILURE() << "opened a malformed file; expected: " << expected;
  } catch (const FormatError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("prenorm::safetensors: " + path.string() + ": "), std::string::npos)
        << message;
    EXPECT_NE(message.find(expected), std::string::npos)
        << "message: " << message << "\nexpected to contain: " << expected;
  }
  try {
    (void)SafetensorsFile::from_bytes(bytes, "in-memory.safetensors");
    ADD_FAILURE() << "parsed malformed bytes; expected: " << expected;
  } catch (const FormatError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("in-memory.safetensors: "), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
}

template <class Function>
std::string error_message(Function&& function) {
  try {
    function();
  } catch (const prenorm::Error& error) {
    return error.what();
  }
  return "(no exception)";
}

// What a value becomes when stored as `dtype` and read back.
template <class S>
double stored_value(Dtype dtype, S value) {
  using namespace prenorm::io;
  constexpr bool kDouble = std::is_same_v<S, double>;
  switch (dtype) {
    case Dtype::F64:
      return static_cast<double>(value);
    case Dtype::F32:
      return static_cast<float>(value);
    case Dtype::F16:
      return half_bits_to_float(kDouble ? double_to_half_bits(value) : float_to_half_bits(value));
    case Dtype::BF16:
      return bfloat16_bits_to_float(kDouble ? double_to_bfloat16_bits(value)
                                            : float_to_bfloat16_bits(value));
  }
  return 0;
}

constexpr Dtype kAllDtypes[] = {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16};

// --- dtypes ------------------------------------------------------------------

TEST(SafetensorsDtypeTest, NamesAndSizes) {
  using namespace prenorm::io;
  for (Dtype dtype : kAllDtypes) {
    EXPECT_EQ(dtype_from_name(dtype_name(dtype)), dtype);
    EXPECT_EQ(*safetensors_dtype_bits(dtype_name(dtype)), 8 * static_cast<int>(dtype_size(dtype)));
  }
  EXPECT_EQ(dtype_from_name("I32"), std::nullopt);
  EXPECT_EQ(dtype_from_name("f32"), std::nullopt);
  // Sizes of the standard dtypes prenorm does not read, used to validate files.
  for (const char* name : {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0"})
    EXPECT_EQ(safetensors_dtype_bits(name), 8) << name;
  for (const char* name : {"I16", "U16", "F16", "BF16"})
    EXPECT_EQ(safetensors_dtype_bits(name), 16);
  for (const char* name : {"I32", "U32", "F32"}) EXPECT_EQ(safetensors_dtype_bits(name), 32);
  for (const char* name : {"I64", "U64", "F64", "C64"}) EXPECT_EQ(safetensors_dtype_bits(name), 64);
  EXPECT_EQ(safetensors_dtype_bits("F4"), 4);
  EXPECT_EQ(safetensors_dtype_bits("F6_E2M3"), 6);
  EXPECT_EQ(safetensors_dtype_bits("INT3"), std::nullopt);
}

// --- round trips ---------------------------------------------------------------

template <class S>
class SafetensorsRoundTripTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SafetensorsRoundTripTest, Scalars);

TYPED_TEST(SafetensorsRoundTripTest, EveryDtypeAndRank) {
  using S = TypeParam;
  const std::vector<std::vector<std::int64_t>> shapes = {{7}, {3, 5}, {2, 3, 4}, {0},
                                                         {},  {0, 3}, {4, 0},    {1, 1, 1, 1}};
  std::mt19937 random(1);
  std::normal_distribution<double> normal(0.0, 100.0);

  SafetensorsWriter writer;
  std::vector<std::tuple<std::string, Dtype, std::vector<std::int64_t>, std::vector<S>>> expected;
  for (Dtype dtype : kAllDtypes) {
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      std::int64_t count = 1;
      for (std::int64_t dimension : shapes[k]) count *= dimension;
      std::vector<S> values(static_cast<std::size_t>(count));
      for (S& value : values) value = static_cast<S>(normal(random));
      const std::string name =
          "t." + std::string(prenorm::io::dtype_name(dtype)) + "." + std::to_string(k);
      writer.add(name, dtype, shapes[k], std::span<const S>(values));
      expected.emplace_back(name, dtype, shapes[k], values);
    }
  }
  TempDir dir;
  writer.write(dir / "all.safetensors");
  const SafetensorsFile file(dir / "all.safetensors");
  ASSERT_EQ(file.size(), expected.size());

  for (const auto& [name, dtype, shape, values] : expected) {
    SCOPED_TRACE(name);
    const prenorm::io::TensorInfo& info = file.info(name);
    EXPECT_EQ(info.dtype, dtype);
    EXPECT_EQ(info.dtype_name, prenorm::io::dtype_name(dtype));
    EXPECT_EQ(info.shape, shape);
    EXPECT_EQ(info.end - info.begin, values.size() * prenorm::io::dtype_size(dtype));

    const std::vector<float> as_float = file.values<float>(name);
    const std::vector<double> as_double = file.values<double>(name);
    ASSERT_EQ(as_float.size(), values.size());
    ASSERT_EQ(as_double.size(), values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double stored = stored_value(dtype, values[i]);
      EXPECT_EQ(as_double[i], stored) << i;
      EXPECT_EQ(as_float[i], static_cast<float>(stored)) << i;
    }
    if (shape.size() == 1) {
      const Vector<S> vector = file.vector<S>(name);
      ASSERT_EQ(vector.size(), shape[0]);
      for (Eigen::Index i = 0; i < vector.size(); ++i)
        EXPECT_EQ(static_cast<double>(vector(i)),
                  static_cast<double>(static_cast<S>(stored_value(dtype, values[i]))));
    }
    if (shape.size() == 2) {
      const RowMatrix<S> matrix = file.matrix<S>(name);
      ASSERT_EQ(matrix.rows(), shape[0]);
      ASSERT_EQ(matrix.cols(), shape[1]);
      for (Eigen::Index r = 0; r < matrix.rows(); ++r)
        for (Eigen::Index c = 0; c < matrix.cols(); ++c)
          EXPECT_EQ(static_cast<double>(matrix(r, c)),
                    static_cast<double>(static_cast<S>(
                        stored_value(dtype, values[static_cast<std::size_t>(r * shape[1] + c)]))));
    }
  }
}

TYPED_TEST(SafetensorsRoundTripTest, EigenMatricesAndVectors) {
  using S = TypeParam;
  const RowMatrix<S> row_major = RowMatrix<S>::Random(3, 5);
  const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> col_major =
      Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>::Random(4, 6);
  const Vector<S> vector = Vector<S>::Random(9);

  SafetensorsWriter writer;
  writer.add_matrix("row_major", Dtype::F32, row_major);
  writer.add_matrix("col_major", Dtype::F64, col_major);
  writer.add_matrix("block", Dtype::F64, col_major.block(1, 2, 2, 3));  // non-contiguous
  writer.add_vector("vector", Dtype::F64, vector);
  writer.add_vector("row", Dtype::F64, row_major.row(1));
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.bytes(), "matrices");

  EXPECT_EQ(file.matrix<S>("row_major"), row_major.template cast<float>().template cast<S>());
  EXPECT_EQ(file.matrix<double>("col_major"), col_major.template cast<double>());
  EXPECT_EQ(file.matrix<double>("block"), col_major.block(1, 2, 2, 3).template cast<double>());
  EXPECT_EQ(file.vector<double>("vector"), vector.template cast<double>());
  EXPECT_EQ(file.vector<double>("row"), row_major.row(1).transpose().template cast<double>());
  EXPECT_EQ(file.info("row").shape, (std::vector<std::int64_t>{5}));
}

TEST(SafetensorsTest, ScalarTensor) {
  SafetensorsWriter writer;
  const std::vector<double> value = {2.5};
  writer.add("scale", Dtype::F32, {}, value);
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.bytes(), "scalar");
  EXPECT_TRUE(file.info("scale").shape.empty());
  EXPECT_EQ(file.info("scale").element_count(), 1);
  EXPECT_EQ(file.values<double>("scale"), value);
  EXPECT_NE(error_message([&] {
              (void)file.vector<float>("scale");
            }).find("tensor 'scale': expected 1 dimension, found 0 (shape [])"),
            std::string::npos);
}

TEST(SafetensorsTest, WriterConvertsWithRoundToNearestEven) {
  SafetensorsWriter writer;
  // 1 + 2^-11 is a F16 tie (down to 1), 1 + 2^-8 a BF16 tie (down to 1);
  // 1 + 2^-24 is a F32 tie from double (down to 1); 70000 overflows F16.
  const std::vector<double> values = {1.0 + 0x1p-11, 1.0 + 0x1p-8, 1.0 + 0x1p-24, 70000.0,
                                      std::nan("")};
  writer.add("f16", Dtype::F16, {5}, values);
  writer.add("bf16", Dtype::BF16, {5}, values);
  writer.add("f32", Dtype::F32, {5}, values);
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.bytes(), "rounding");
  const std::vector<double> f16 = file.values<double>("f16");
  const std::vector<double> bf16 = file.values<double>("bf16");
  const std::vector<double> f32 = file.values<double>("f32");
  EXPECT_EQ(f16[0], 1.0);
  EXPECT_EQ(f16[1], 1.0 + 0x1p-8);  // exact in F16
  EXPECT_EQ(f16[3], INFINITY);
  EXPECT_TRUE(std::isnan(f16[4]));
  EXPECT_EQ(bf16[1], 1.0);
  EXPECT_EQ(bf16[3], 70144.0);  // nearest BF16
  EXPECT_TRUE(std::isnan(bf16[4]));
  EXPECT_EQ(f32[2], 1.0);
  EXPECT_TRUE(std::isnan(f32[4]));
}

TEST(SafetensorsTest, HeaderIsPaddedAndDataContiguousInInsertionOrder) {
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata("note", "caf\xc3\xa9");  // UTF-8 kept as is
  const std::vector<float> values(11, 1.0f);
  writer.add("z_first", Dtype::F16, {11}, values);  // 22 bytes: later data unaligned
  writer.add("a_second", Dtype::F32, {11}, values);
  writer.add("m_third", Dtype::BF16, {1, 11}, values);
  writer.add("empty", Dtype::F64, {0}, std::vector<float>{});

  const std::string header = writer.header();
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9\"},"
                         "\"z_first\":",
                         0),
            0u)
      << header;
  EXPECT_LT(header.find("\"z_first\""), header.find("\"a_second\""));
  EXPECT_LT(header.find("\"a_second\""), header.find("\"m_third\""));
  const std::size_t json_end = header.find_last_not_of(' ');
  EXPECT_EQ(header[json_end], '}');

  const std::vector<std::byte> bytes = writer.bytes();
  EXPECT_EQ(bytes.size(), 8 + header.size() + 22 + 44 + 22);
  const SafetensorsFile file = SafetensorsFile::from_bytes(bytes, "layout");
  EXPECT_EQ(file.names(), (std::vector<std::string>{"z_first", "a_second", "m_third", "empty"}));
  std::uint64_t offset = 0;
  for (const std::string& name : file.names()) {
    EXPECT_EQ(file.info(name).begin, offset) << name;
    offset = file.info(name).end;
  }
  EXPECT_EQ(offset, 88u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "caf\xc3\xa9");
}

TEST(SafetensorsTest, NoMetadataKeyWhenThereIsNone) {
  SafetensorsWriter writer;
  writer.add("w", Dtype::F32, {1}, std::vector<float>{1});
  EXPECT_EQ(writer.header().find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsFile::from_bytes(writer.bytes(), "w").metadata().empty());
}

TEST(SafetensorsTest, EmptyFileHasOnlyAHeader) {
  SafetensorsWriter writer;
  const std::vector<std::byte> bytes = writer.bytes();
  EXPECT_EQ(bytes.size(), 16u);  // "{}" padded to 8
  EXPECT_EQ(SafetensorsFile::from_bytes(bytes, "empty").size(), 0u);
}

TEST(SafetensorsTest, NamesFollowDataOffsetsNotHeaderOrder) {
  const std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const SafetensorsFile file = SafetensorsFile::from_bytes(crafted(header, 8), "order");
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(file.contains("a"));
  EXPECT_FALSE(file.contains("c"));
}

TEST(SafetensorsTest, ZeroCopyMapWhenAlignedCopyOtherwise) {
  const RowMatrix<float> weights = RowMatrix<float>::Random(4, 3);
  const Vector<double> bias = Vector<double>::Random(5);
  SafetensorsWriter writer;
  writer.add_matrix("weights", Dtype::F32, weights);  // offset 0
  writer.add_vector("bias", Dtype::F64, bias);        // offset 48: 8-aligned
  writer.add("odd", Dtype::F16, {1}, std::vector<float>{1});
  writer.add_matrix("shifted", Dtype::F32, weights);  // offset 90: not 4-aligned
  TempDir dir;
  writer.write(dir / "map.safetensors");
  SafetensorsFile file(dir / "map.safetensors");

  const auto mapped = file.map<float>("weights");
  ASSERT_TRUE(mapped.has_value());
  EXPECT_EQ(*mapped, weights);
  const std::span<const std::byte> raw = file.raw_bytes("weights");
  EXPECT_EQ(static_cast<const void*>(mapped->data()), static_cast<const void*>(raw.data()));

  const auto mapped_bias = file.map_vector<double>("bias");
  ASSERT_TRUE(mapped_bias.has_value());
  EXPECT_EQ(*mapped_bias, bias);

  EXPECT_FALSE(file.map<double>("weights").has_value());  // stored as F32
  EXPECT_FALSE(file.map<float>("shifted").has_value());   // misaligned
  EXPECT_EQ(file.matrix<float>("shifted"), weights);      // the copy still works
  EXPECT_NE(error_message([&] {
              (void)file.map<float>("bias");
            }).find("tensor 'bias': expected 2 dimensions, found 1"),
            std::string::npos);

  // A moved file keeps its mapping, and so its maps.
  const SafetensorsFile moved = std::move(file);
  EXPECT_EQ(*mapped, weights);
  EXPECT_EQ(moved.matrix<float>("weights"), weights);
}

TEST(SafetensorsTest, ReadingErrorsNameTheFileAndTensor) {
  SafetensorsWriter writer;
  writer.add("cube", Dtype::F32, {2, 2, 2}, std::vector<float>(8));
  const SafetensorsFile file = SafetensorsFile::from_bytes(writer.bytes(), "model.safetensors");
  EXPECT_EQ(error_message([&] { (void)file.matrix<float>("cube"); }),
            "prenorm::safetensors: model.safetensors: tensor 'cube': expected 2 dimensions, "
            "found 3 (shape [2, 2, 2])");
  EXPECT_EQ(error_message([&] { (void)file.info("missing"); }),
            "prenorm::safetensors: model.safetensors: no tensor named 'missing'");
  EXPECT_EQ(file.values<float>("cube").size(), 8u);  // any rank
}

TEST(SafetensorsTest, UnsupportedDtypesOpenButTheirValuesThrow) {
  // Every standard dtype, with a byte size from its own element size.
  const std::vector<std::pair<std::string, int>> dtypes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},
      {"U16", 2},  {"I32", 4}, {"U32", 4}, {"I64", 8},     {"U64", 8},     {"F32", 4}};
  std::string header = "{";
  std::size_t offset = 0;
  for (const auto& [dtype, size] : dtypes) {
    const std::string name = dtype == "I32" ? "h.0.w" : "t_" + dtype;
    header += "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[3],\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + 3 * size) + "]},";
    offset += 3 * size;
  }
  header.back() = '}';
  const SafetensorsFile file =
      SafetensorsFile::from_bytes(crafted(header, offset), "model.safetensors");
  EXPECT_EQ(file.size(), dtypes.size());
  EXPECT_EQ(file.info("h.0.w").dtype_name, "I32");
  EXPECT_EQ(file.info("h.0.w").dtype, std::nullopt);
  EXPECT_EQ(file.info("h.0.w").shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(error_message([&] { (void)file.values<float>("h.0.w"); }),
            "prenorm::safetensors: model.safetensors: tensor 'h.0.w': dtype I32 is not "
            "supported (supported: F64, F32, F16, BF16)");
  EXPECT_NE(error_message([&] {
              (void)file.vector<double>("t_F8_E4M3");
            }).find("dtype F8_E4M3 is not supported"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              (void)file.vector<double>("t_BOOL");
            }).find("dtype BOOL is not supported"),
            std::string::npos);
  EXPECT_FALSE(file.map_vector<float>("t_U32").has_value());
  EXPECT_EQ(file.raw_bytes("t_I64").size(), 24u);
  EXPECT_EQ(file.values<float>("t_F32").size(), 3u);
}

TEST(SafetensorsTest, SubByteDtypesNeedWholeBytes) {
  const SafetensorsFile file = SafetensorsFile::from_bytes(
      crafted(R"({"packed":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", 3), "f4");
  EXPECT_EQ(file.info("packed").dtype_name, "F4");
  expect_format_error(crafted(R"({"packed":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
                      "tensor 'packed': shape [3] of F4 is not a whole number of bytes");
}

TEST(SafetensorsTest, WhitespacePaddingAfterTheHeaderIsAllowed) {
  EXPECT_EQ(SafetensorsFile::from_bytes(crafted("{}      "), "padded").size(), 0u);
  EXPECT_EQ(SafetensorsFile::from_bytes(crafted("{}\n \t\r"), "padded").size(), 0u);
  const std::string header = R"({"x":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}   )";
  EXPECT_EQ(SafetensorsFile::from_bytes(crafted(header, 8), "padded").size(), 1u);
}

TEST(SafetensorsTest, UnknownEntryFieldsAreIgnoredAsByTheReference) {
  const std::string header =
      R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":[1,2]}})";
  EXPECT_EQ(SafetensorsFile::from_bytes(crafted(header, 4), "extra").size(), 1u);
}

// --- malformed files: one rule per test ------------------------------------------

TEST(SafetensorsMalformedTest, FileShorterThanTheLengthField) {
  expect_format_error(to_bytes(std::string_view("{}\0\0\0", 5)),
                      "file has 5 bytes, fewer than the 8");
  expect_format_error({}, "file has 0 bytes");
}

TEST(SafetensorsMalformedTest, HeaderLengthOverTheLimit) {
  expect_format_error(raw_file(100'000'001, "{}"),
                      "header length 100000001 exceeds the limit of 100000000 bytes");
  expect_format_error(raw_file(~std::uint64_t{0}, "{}"),
                      "header length 18446744073709551615 exceeds the limit");
}

TEST(SafetensorsMalformedTest, HeaderLengthBeyondTheFile) {
  expect_format_error(raw_file(1000, "{}      ", "1234"),
                      "header length 1000 exceeds the 12 bytes that follow the length field");
  expect_format_error(raw_file(9, "{}      "), "header length 9 exceeds the 8 bytes");
}

TEST(SafetensorsMalformedTest, HeaderNotUtf8) {
  expect_format_error(crafted("{\"a\xff\":1}"), "header is not valid UTF-8 (byte 3 of the header)");
  expect_format_error(crafted("{\"\xc0\xaf\":1}"), "not valid UTF-8 (byte 2");  // overlong '/'
  expect_format_error(crafted("{\"\xed\xa0\x80\":1}"), "not valid UTF-8");      // surrogate
  expect_format_error(crafted("{\"\xf4\x90\x80\x80\":1}"), "not valid UTF-8");  // > U+10FFFF
  expect_format_error(crafted("{\"\xe2\x82\":1}"), "not valid UTF-8");          // truncated
}

TEST(SafetensorsMalformedTest, HeaderEmpty) {
  expect_format_error(raw_file(0, ""), "header is empty, expected a JSON object");
}

TEST(SafetensorsMalformedTest, HeaderMustStartWithABrace) {
  expect_format_error(crafted(" {}"), "header must start with '{', found ' '");
  expect_format_error(crafted("[]"), "header must start with '{', found '['");
  expect_format_error(crafted(std::string("\0{}", 3)), "found byte 0x00");
}

TEST(SafetensorsMalformedTest, HeaderNotJson) {
  expect_format_error(crafted(R"({"a": })"), "header is not valid JSON: parse error");
  expect_format_error(crafted("{} x"), "header is not valid JSON");
  expect_format_error(crafted("{}/* c */"), "header is not valid JSON");
  expect_format_error(crafted(std::string("{}\0\0", 4)),
                      "header is not valid JSON: NUL byte at byte 2 of the header");
  expect_format_error(crafted(std::string("{}\0 \"x\"", 6)), "NUL byte at byte 2");
  expect_format_error(crafted(R"({"a":"\ud800"})"), "header is not valid JSON");  // lone surrogate
  // nlohmann reports numbers beyond double as out_of_range, not parse_error.
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", 4),
                      "header is not valid JSON: number overflow parsing '1e400'");
}

TEST(SafetensorsMalformedTest, MetadataNotAnObjectOfStrings) {
  expect_format_error(crafted(R"({"__metadata__":["x"]})"),
                      "__metadata__ must be an object of strings, found array");
  expect_format_error(crafted(R"({"__metadata__":{"epoch":3}})"),
                      "__metadata__: the value of 'epoch' must be a string, found number");
  expect_format_error(crafted(R"({"__metadata__":{"a":{"b":"c"}}})"),
                      "the value of 'a' must be a string, found object");
}

TEST(SafetensorsMalformedTest, EntryNotAnObject) {
  expect_format_error(crafted(R"({"w":[1,2]})"),
                      "tensor 'w': entry must be an object with dtype, shape and data_offsets, "
                      "found array");
}

TEST(SafetensorsMalformedTest, EntryMissingAField) {
  expect_format_error(crafted(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4),
                      "tensor 'w': missing 'dtype'");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4),
                      "tensor 'w': missing 'shape'");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1]}})", 4),
                      "tensor 'w': missing 'data_offsets'");
}

TEST(SafetensorsMalformedTest, DtypeNotAString) {
  expect_format_error(crafted(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
                      "tensor 'w': dtype must be a string, found number");
}

TEST(SafetensorsMalformedTest, DtypeUnknown) {
  expect_format_error(crafted(R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16),
                      "tensor 'w': unknown dtype 'F128'");
  expect_format_error(crafted(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", 4),
                      "unknown dtype 'f32'");  // names are case-sensitive
}

TEST(SafetensorsMalformedTest, ShapeNotAnArray) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", 16),
                      "tensor 'w': shape must be an array of non-negative integers, found number");
}

TEST(SafetensorsMalformedTest, ShapeEntryNotANonNegativeInteger) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})"),
                      "tensor 'w': shape[1] is -1, expected a non-negative integer");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
                      "shape[0] is 2.0, expected a non-negative integer");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
                      "shape[0] is \"2\", expected a non-negative integer");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}})"),
                      "shape[0] is -0, expected a non-negative integer");  // serde: a float
  // Beyond u64, nlohmann parses a float.
  expect_format_error(
      crafted(R"({"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,0]}})"),
      "shape[0] is 1.8446744073709552e+19, expected a non-negative integer");
}

TEST(SafetensorsMalformedTest, ShapeDimensionBeyondInt64) {
  expect_format_error(
      crafted(R"({"w":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})"),
      "tensor 'w': shape[1] is 9223372036854775808, larger than 2^63 - 1");
}

TEST(SafetensorsMalformedTest, ShapeProductOverflows) {
  expect_format_error(
      crafted(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
      "tensor 'w': shape [4294967296, 4294967296] has more than 2^64 elements");
  expect_format_error(
      crafted(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
      "tensor 'w': shape [4611686018427387904] of F64 overflows a 64-bit size in bits");
  // As in the reference, a 0 after a huge (non-overflowing) product is fine.
  const SafetensorsFile file = SafetensorsFile::from_bytes(
      crafted(R"({"w":{"dtype":"F32","shape":[4611686018427387904,3,0],"data_offsets":[0,0]}})"),
      "zero");
  EXPECT_EQ(file.info("w").element_count(), 0);
  EXPECT_TRUE(file.values<float>("w").empty());
}

TEST(SafetensorsMalformedTest, DataOffsetsNotTwoNonNegativeIntegers) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                      "tensor 'w': data_offsets must be an array of 2 non-negative integers, "
                      "found [0]");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4),
                      "found [0,4,8]");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4),
                      "found [-4,0]");
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":{"a":1}}})", 4),
                      "data_offsets must be an array of 2 non-negative integers");
}

TEST(SafetensorsMalformedTest, DataOffsetsBeginAfterEnd) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8),
                      "tensor 'w': data_offsets [8, 4) begin after they end");
}

TEST(SafetensorsMalformedTest, ByteSizeDoesNotMatchShapeAndDtype) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12),
                      "tensor 'w': data_offsets [0, 12) hold 12 bytes, but shape [2, 2] of F32 "
                      "needs 16");
  expect_format_error(crafted(R"({"w":{"dtype":"BF16","shape":[],"data_offsets":[0,4]}})", 4),
                      "hold 4 bytes, but shape [] of BF16 needs 2");
}

TEST(SafetensorsMalformedTest, DataOffsetsOutOfBounds) {
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[25],"data_offsets":[0,100]}})", 16),
                      "tensor 'w': data_offsets [0, 100) exceed the data section of 16 bytes");
}

TEST(SafetensorsMalformedTest, TensorsOverlap) {
  expect_format_error(crafted(R"({"wte":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                              R"("wpe":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}})",
                              20),
                      "tensor 'wte': data_offsets [0, 12) overlap tensor 'wpe' [8, 20)");
  // An empty tensor inside another one overlaps it too.
  expect_format_error(crafted(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                              8),
                      "tensor 'w': data_offsets [0, 8) overlap tensor 'e' [4, 4)");
  // The same range twice.
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                              4),
                      "tensor 'a': data_offsets [0, 4) overlap tensor 'b' [0, 4)");
}

TEST(SafetensorsMalformedTest, TensorsLeaveAHole) {
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                              12),
                      "tensor 'b': data_offsets [8, 12) leave a hole of 4 bytes after tensor "
                      "'a' [0, 4)");
}

TEST(SafetensorsMalformedTest, FirstTensorDoesNotStartAtZero) {
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                      "tensor 'a': data_offsets [4, 8) leave a hole of 4 bytes at the start of "
                      "the data section");
}

TEST(SafetensorsMalformedTest, DataDoesNotEndAtTheEndOfTheFile) {
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 7),
                      "the tensors end at byte 4 of the data section, but it has 7 bytes (3 "
                      "trailing bytes belong to no tensor)");
  expect_format_error(crafted("{}", 1),
                      "the tensors end at byte 0 of the data section, but it "
                      "has 1 bytes");
}

TEST(SafetensorsMalformedTest, DuplicateTensorName) {
  expect_format_error(crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                              8),
                      "duplicate tensor name 'a'");
  expect_format_error(crafted(R"({"__metadata__":{},"__metadata__":{}})"),
                      "'__metadata__' appears twice");
}

TEST(SafetensorsMalformedTest, DuplicateKeyInsideAnEntry) {
  expect_format_error(
      crafted(R"({"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}})", 4),
      "tensor 'a': duplicate key 'dtype'");
  expect_format_error(crafted(R"({"__metadata__":{"k":"1","k":"2"}})"),
                      "__metadata__: duplicate key 'k'");
}

TEST(SafetensorsMalformedTest, DeepNestingIsRejectedNotACrash) {
  std::string header = R"({"a":)" + std::string(10000, '[') + std::string(10000, ']') + "}";
  expect_format_error(crafted(header), "tensor 'a': entry must be an object");
}

TEST(SafetensorsFileTest, MissingFileAndDirectoryAreFileErrors) {
  TempDir dir;
  const std::string missing = error_message([&] { SafetensorsFile file(dir / "nope"); });
  EXPECT_NE(missing.find("prenorm::safetensors: " + (dir / "nope").string() +
                         ": cannot open: No such file or directory"),
            std::string::npos)
      << missing;
  EXPECT_THROW(SafetensorsFile file(dir / "nope"), FileError);
  EXPECT_THROW(SafetensorsFile file(dir.path()), FileError);
  EXPECT_NE(error_message([&] { SafetensorsFile file(dir.path()); }).find("not a regular file"),
            std::string::npos);
}

// --- sharded checkpoints (an index and its shards) ---------------------------

// Four tensors of mixed dtypes and sizes, and some metadata.
SafetensorsWriter four_tensors(std::map<std::string, std::string> metadata = {{"format", "pt"}}) {
  SafetensorsWriter writer;
  writer.add("t0", Dtype::F32, {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});    // 24 bytes
  writer.add("t1", Dtype::F64, {2}, std::vector<double>{0.1, 0.2});               // 16
  writer.add("t2", Dtype::F16, {4}, std::vector<float>{1, -2, 3, -4});            // 8
  writer.add("t3", Dtype::BF16, {3, 2}, std::vector<float>{1, 2, 4, 8, 16, 32});  // 12
  for (auto& [key, value] : metadata) writer.set_metadata(key, value);
  return writer;
}

// Writes four_tensors() in shards of at most 24 bytes: {t0}, {t1, t2}, {t3}.
fs::path write_three_shards(const TempDir& dir,
                            std::map<std::string, std::string> metadata = {{"format", "pt"}}) {
  const fs::path index = dir / "model.safetensors.index.json";
  const std::vector<fs::path> written =
      prenorm::io::write_sharded(four_tensors(std::move(metadata)).split(24), index);
  EXPECT_EQ(written.size(), 4u);
  return index;
}

std::string read_text_file(const fs::path& path) {
  const std::vector<std::byte> bytes = read_bytes(path);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void write_text_file(const fs::path& path, const std::string& text) {
  write_bytes(path, to_bytes(text));
}

// Replaces the first `from` in the file `path` by `to`.
void edit_file(const fs::path& path, const std::string& from, const std::string& to) {
  std::string text = read_text_file(path);
  const std::size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  write_text_file(path, text);
}

TEST(SafetensorsShardsTest, SplitWriteAndReadAsOneSet) {
  TempDir dir;
  const SafetensorsWriter whole = four_tensors();
  const auto single = SafetensorsFile::from_bytes(whole.bytes(), "single.safetensors");
  const fs::path index = write_three_shards(dir);
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{"model-00001-of-00003.safetensors",
                                      "model-00002-of-00003.safetensors",
                                      "model-00003-of-00003.safetensors",
                                      "model.safetensors.index.json"}));
  EXPECT_NE(read_text_file(index).find("\"total_size\": 60"), std::string::npos);

  const SafetensorsFile sharded(index);
  EXPECT_EQ(sharded.path(), index);
  EXPECT_EQ(sharded.names(), single.names());
  EXPECT_EQ(sharded.metadata(), single.metadata());
  EXPECT_EQ(sharded.files().size(), 4u);
  EXPECT_EQ(sharded.file_of("t2"), dir / "model-00002-of-00003.safetensors");
  for (const std::string& name : single.names()) {
    SCOPED_TRACE(name);
    const std::span<const std::byte> a = sharded.raw_bytes(name), b = single.raw_bytes(name);
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    EXPECT_EQ(sharded.info(name).shape, single.info(name).shape);
    EXPECT_EQ(sharded.values<double>(name), single.values<double>(name));
  }
  EXPECT_TRUE(sharded.map<float>("t0").has_value()) << "zero-copy views work in a shard too";
  // One shard when everything fits, every tensor alone when nothing does.
  EXPECT_EQ(four_tensors().split(60).size(), 1u);
  EXPECT_EQ(four_tensors().split(1).size(), 4u);
}

TEST(SafetensorsShardsTest, IndexDefectsNameTheFileAndTheTensor) {
  const auto expect_error = [](const auto& spoil, const std::vector<std::string>& expected,
                               std::map<std::string, std::string> metadata = {{"format", "pt"}}) {
    TempDir dir;
    const fs::path index = write_three_shards(dir, metadata);
    spoil(dir, index);
    const std::string message = error_message([&] { SafetensorsFile file(index); });
    for (const std::string& part : expected)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message: " << message << "\nexpected to contain: " << part;
  };
  const std::string index_name = "model.safetensors.index.json: ";
  // A tensor in two shards: shard 3 rewritten with t2 besides t3.
  expect_error(
      [](const TempDir& dir, const fs::path&) {
        SafetensorsWriter shard;
        shard.add("t2", Dtype::F16, {4}, std::vector<float>{1, -2, 3, -4});
        shard.add("t3", Dtype::BF16, {3, 2}, std::vector<float>{1, 2, 4, 8, 16, 32});
        shard.write(dir / "model-00003-of-00003.safetensors");
      },
      {index_name, "tensor 't2' is in two shards", "model-00002-of-00003.safetensors' and '",
       "model-00003-of-00003.safetensors'"});
  // A shard the index names but that is missing.
  expect_error([](const TempDir& dir, const fs::path&) {
    fs::remove(dir / "model-00003-of-00003.safetensors");
  }, {index_name, "model-00003-of-00003.safetensors' (of tensor 't3' and others) does not exist"});
  // A tensor the index names but that no shard holds.
  expect_error([](const TempDir&, const fs::path& index) {
    edit_file(index, "\"t0\":", "\"t9\": \"model-00001-of-00003.safetensors\", \"t0\":");
  }, {index_name, "tensor 't9' is missing: the index puts it in shard '",
      "model-00001-of-00003.safetensors', which does not hold it"});
  // A tensor in a shard but not in the index, and one the index puts elsewhere.
  expect_error([](const TempDir&, const fs::path& index) {
    edit_file(index, "\"t3\"", "\"t3-renamed\"");
  }, {index_name, "model-00003-of-00003.safetensors' holds tensor 't3', which the index does not list"});
  expect_error([](const TempDir&, const fs::path& index) {
    edit_file(index, "\"t2\": \"model-00002-of-00003", "\"t2\": \"model-00001-of-00003");
  }, {index_name, "model-00002-of-00003.safetensors' holds tensor 't2', which the index puts in "
      "'model-00001-of-00003.safetensors'"});
  // A truncated shard: the per-file validation, naming the shard and the tensor.
  expect_error([](const TempDir& dir, const fs::path&) {
    fs::resize_file(dir / "model-00002-of-00003.safetensors",
                    fs::file_size(dir / "model-00002-of-00003.safetensors") - 4);
  }, {"model-00002-of-00003.safetensors: tensor 't2': data_offsets [16, 24) exceed the data "
      "section of 20 bytes"});
  // Shards that disagree on the model: prenorm's metadata differs in one.
  const std::map<std::string, std::string> prenorm = {{"format", "prenorm"}, {"arch", "pre_ln"}};
  expect_error([](const TempDir& dir, const fs::path&) {
    edit_file(dir / "model-00002-of-00003.safetensors", "pre_ln", "pre_xx");
  }, {index_name, "shards disagree on the model: '", "model-00002-of-00003.safetensors' (tensor 't1'",
      "model-00001-of-00003.safetensors' differ in prenorm metadata 'arch'"}, prenorm);
  // The index itself: not an index, a shard outside the folder.
  expect_error([](const TempDir&, const fs::path& index) { write_text_file(index, "[1, 2]"); },
               {index_name, "needs a non-empty object \"weight_map\""});
  expect_error([](const TempDir&, const fs::path& index) {
    edit_file(index, "\"model-00003-of-00003", "\"../model-00003-of-00003");
  }, {index_name, "tensor 't3': shard '../model-00003-of-00003.safetensors' is not a file name"});
}

TEST(SafetensorsShardsTest, ShardsMayDifferInOtherMetadata) {
  TempDir dir;
  const fs::path index = write_three_shards(dir);
  edit_file(dir / "model-00002-of-00003.safetensors", "\"pt\"", "\"tf\"");
  EXPECT_EQ(SafetensorsFile(index).size(), 4u);
}

TEST(SafetensorsShardsTest, AFailedShardedWriteLeavesNothingBehind) {
  TempDir dir;
  fs::create_directories(dir / "out");
  // The last file (the index) cannot be written: every shard is gone too.
  fs::create_directories(dir / "out" / "model.safetensors.index.json");
  EXPECT_THROW(prenorm::io::write_sharded(four_tensors().split(24),
                                          dir / "out" / "model.safetensors.index.json"),
               FileError);
  EXPECT_EQ(fs::directory_iterator(dir / "out")->path().filename(), "model.safetensors.index.json");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "out"), fs::directory_iterator()), 1);
  // An unwritable folder: nothing is written.
  fs::create_directories(dir / "ro");
  ::chmod((dir / "ro").c_str(), 0555);
  if (::access((dir / "ro").c_str(), W_OK) != 0) {  // root can write anyway
    EXPECT_THROW(prenorm::io::write_sharded(four_tensors().split(24),
                                            dir / "ro" / "model.safetensors.index.json"),
                 FileError);
    EXPECT_TRUE(fs::is_empty(dir / "ro"));
  }
  // Replacing an input is refused before anything is written.
  const fs::path index = write_three_shards(dir);
  const SafetensorsFile input(index);
  EXPECT_THROW(prenorm::io::write_sharded(four_tensors().split(24), index, input.files()),
               FileError);
}

// --- writer errors -------------------------------------------------------------

TEST(SafetensorsWriterTest, RejectsInvalidTensors) {
  SafetensorsWriter writer;
  const std::vector<float> six(6, 1.0f);
  writer.add("w", Dtype::F32, {2, 3}, six);
  EXPECT_EQ(error_message([&] { writer.add("w", Dtype::F32, {6}, six); }),
            "prenorm::safetensors_writer: tensor 'w' was already added");
  EXPECT_EQ(error_message([&] {
              writer.add("v", Dtype::F32, {4, 2}, six);
            }),
            "prenorm::safetensors_writer: tensor 'v': shape [4, 2] has 8 elements, but 6 values "
            "were given");
  EXPECT_NE(error_message([&] {
              writer.add("v", Dtype::F32, {-2, -3}, six);
            }).find("has a negative dimension"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              writer.add("__metadata__", Dtype::F32, {6}, six);
            }).find("'__metadata__' is reserved"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              writer.add("bad\xff", Dtype::F32, {6}, six);
            }).find("is not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              writer.add_vector("m", Dtype::F32, RowMatrix<float>::Zero(2, 2));
            }).find("expected a vector, got a 2 x 2 matrix"),
            std::string::npos);
  EXPECT_EQ(writer.size(), 1u);  // failed adds leave nothing behind
  EXPECT_EQ(SafetensorsFile::from_bytes(writer.bytes(), "w").size(), 1u);
}

TEST(SafetensorsWriterTest, WriteToStream) {
  SafetensorsWriter writer;
  writer.add("w", Dtype::BF16, {2}, std::vector<float>{1, 2});
  std::ostringstream out;
  writer.write_to(out);
  EXPECT_EQ(to_bytes(out.str()), writer.bytes());
  std::ostringstream failed;
  failed.setstate(std::ios::badbit);
  EXPECT_THROW(writer.write_to(failed), FileError);
}

// --- atomic writes ---------------------------------------------------------------

TEST(AtomicFileTest, WritesAndLeavesNoTemporaryFile) {
  TempDir dir;
  SafetensorsWriter writer;
  writer.add("w", Dtype::F32, {3}, std::vector<float>{1, 2, 3});
  writer.write(dir / "out.safetensors");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"out.safetensors"}));
  EXPECT_EQ(read_bytes(dir / "out.safetensors"), writer.bytes());
  // Replacing works and keeps the old permissions.
  ::chmod((dir / "out.safetensors").c_str(), 0640);
  writer.add("v", Dtype::F32, {1}, std::vector<float>{4});
  writer.write(dir / "out.safetensors");
  EXPECT_EQ(read_bytes(dir / "out.safetensors"), writer.bytes());
  struct ::stat status {};
  ASSERT_EQ(::stat((dir / "out.safetensors").c_str(), &status), 0);
  EXPECT_EQ(status.st_mode & 0777, 0640u);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"out.safetensors"}));
}

TEST(AtomicFileTest, FailureLeavesNoTemporaryFileAndKeepsTheOldFile) {
  TempDir dir;
  const fs::path target = dir / "out.bin";
  write_bytes(target, to_bytes("old contents"));
  EXPECT_THROW(prenorm::io::write_file_atomically(target,
                                                  [](std::ostream& out) {
                                                    out << std::string(100000, 'x');
                                                    throw std::runtime_error("interrupted");
                                                  }),
               std::runtime_error);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"out.bin"}));
  EXPECT_EQ(read_bytes(target), to_bytes("old contents"));
}

TEST(AtomicFileTest, UnwritableDirectoryIsAFileError) {
  TempDir dir;
  SafetensorsWriter writer;
  const std::string message =
      error_message([&] { writer.write(dir / "missing-dir" / "out.safetensors"); });
  EXPECT_NE(message.find("prenorm::write_file_atomically: cannot create a temporary file in"),
            std::string::npos)
      << message;
  EXPECT_TRUE(dir.entries().empty());
}

TEST(AtomicFileTest, RefusesToOverwriteTheInput) {
  TempDir dir;
  const fs::path input = dir / "model.safetensors";
  SafetensorsWriter original;
  original.add("w", Dtype::F32, {2}, std::vector<float>{1, 2});
  original.write(input);
  const std::vector<std::byte> before = read_bytes(input);

  const SafetensorsFile file(input);
  SafetensorsWriter converted;
  converted.add("w", Dtype::F16, {2}, file.values<float>("w"));

  // The same path, another spelling of it, a hard link and a symlink.
  fs::create_hard_link(input, dir / "hard.safetensors");
  fs::create_symlink(input, dir / "soft.safetensors");
  for (const fs::path& destination : {input, dir.path() / "." / "model.safetensors",
                                      dir / "hard.safetensors", dir / "soft.safetensors"}) {
    SCOPED_TRACE(destination.string());
    try {
      converted.write(destination, {input});
      ADD_FAILURE() << "overwrote the input";
    } catch (const FileError& error) {
      EXPECT_EQ(std::string(error.what()), "prenorm::write_file_atomically: refusing to write '" +
                                               destination.string() + "': it is the input file '" +
                                               input.string() + "'");
    }
  }
  EXPECT_EQ(read_bytes(input), before);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"hard.safetensors", "model.safetensors",
                                                     "soft.safetensors"}));
  // Another destination is fine.
  converted.write(dir / "converted.safetensors", {input});
  EXPECT_EQ(SafetensorsFile(dir / "converted.safetensors").info("w").dtype, Dtype::F16);
}

}  // namespace
