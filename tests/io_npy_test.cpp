// Tests for include/prenorm/io/npy.hpp.
//
// Expected bytes of numpy-written files are spelled out here (numpy 1.24's
// np.save output), so the tests need no Python.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <prenorm/io/npy.hpp>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using prenorm::io::FileError;
using prenorm::io::FormatError;
using prenorm::io::npy_bytes;
using prenorm::io::NpyArray;
using prenorm::io::parse_npy;
using prenorm::io::read_npy;
using prenorm::io::write_npy;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "prenorm-npy-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  std::size_t entry_count() const {
    return static_cast<std::size_t>(
        std::distance(fs::directory_iterator(path_), fs::directory_iterator()));
  }

 private:
  fs::path path_;
};

std::vector<std::byte> to_bytes(std::string_view text) {
  const auto* begin = reinterpret_cast<const std::byte*>(text.data());
  return {begin, begin + text.size()};
}

template <class S>
std::string data_text(const std::vector<S>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(S));
}

// magic, version major.0, the length field for `header`, `header`, `data`.
std::vector<std::byte> npy_file(std::string_view header, std::string_view data, int major = 1) {
  std::string text = "\x93NUMPY";
  text += static_cast<char>(major);
  text += '\0';
  const int length_size = major == 1 ? 2 : 4;
  for (int i = 0; i < length_size; ++i)
    text += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  text += header;
  text += data;
  return to_bytes(text);
}

// `dict` padded with spaces and '\n' as numpy does (data at a multiple of 64).
std::string padded_header(std::string dict, std::size_t prefix = 10) {
  const std::size_t total = prefix + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  return dict + "\n";
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

void expect_format_error(const std::vector<std::byte>& bytes, const std::string& expected) {
  try {
    (void)parse_npy<float>(bytes, "weights.npy");
    ADD_FAILURE() << "parsed a malformed file; expected: " << expected;
  } catch (const FormatError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("prenorm::npy: weights.npy: ", 0), 0u) << message;
    EXPECT_NE(message.find(expected), std::string::npos)
        << "message: " << message << "\nexpected to contain: " << expected;
  }
}

const std::string kDict34 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";

// --- round trips -------------------------------------------------------------

template <class S>
class NpyRoundTripTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(NpyRoundTripTest, Scalars);

TYPED_TEST(NpyRoundTripTest, AnyRank) {
  using S = TypeParam;
  const std::vector<std::vector<std::int64_t>> shapes = {
      {}, {0}, {5}, {2, 3}, {2, 3, 4}, {3, 0}, {1, 1, 1, 1, 2}};
  std::mt19937 random(3);
  std::normal_distribution<S> normal(0, 10);
  TempDir dir;
  for (const auto& shape : shapes) {
    std::int64_t count = 1;
    for (std::int64_t dimension : shape) count *= dimension;
    std::vector<S> values(static_cast<std::size_t>(count));
    for (S& value : values) value = normal(random);
    const fs::path path = dir / "array.npy";
    write_npy<S>(path, values, shape);

    const NpyArray<S> same = read_npy<S>(path);
    EXPECT_EQ(same.shape, shape);
    EXPECT_EQ(same.values, values);
    const NpyArray<double> wide = read_npy<double>(path);
    ASSERT_EQ(wide.values.size(), values.size());
    for (std::size_t i = 0; i < values.size(); ++i)
      EXPECT_EQ(wide.values[i], static_cast<double>(values[i]));
    const NpyArray<float> narrow = read_npy<float>(path);
    for (std::size_t i = 0; i < values.size(); ++i)
      EXPECT_EQ(narrow.values[i], static_cast<float>(values[i]));
  }
  EXPECT_EQ(dir.entry_count(), 1u);  // no temporary files left behind
}

TEST(NpyTest, WritesTheSameBytesAsNumpy) {
  // np.save(f, np.arange(12, dtype=np.float32).reshape(3, 4))
  std::vector<float> values(12);
  for (int i = 0; i < 12; ++i) values[i] = static_cast<float>(i);
  const std::vector<std::byte> expected = npy_file(padded_header(kDict34), data_text(values));
  ASSERT_EQ(expected.size(), 128u + 48u);
  EXPECT_EQ(npy_bytes<float>(values, {3, 4}), expected);

  // Python's spelling of 0-d and 1-d shapes: () and (5,).
  const std::vector<std::byte> scalar = npy_bytes<double>(std::vector<double>{2.5}, {});
  EXPECT_NE(std::string(reinterpret_cast<const char*>(scalar.data()), 128)
                .find("{'descr': '<f8', 'fortran_order': False, 'shape': (), }"),
            std::string::npos);
  const std::vector<std::byte> vector = npy_bytes<float>(std::vector<float>(5), {5});
  EXPECT_NE(std::string(reinterpret_cast<const char*>(vector.data()), 128).find("'shape': (5,), }"),
            std::string::npos);
}

TEST(NpyTest, ReadsVersion2) {
  // numpy.lib.format.write_array(f, array_f8_3x4, version=(2, 0))
  std::vector<double> values(12);
  for (int i = 0; i < 12; ++i) values[i] = i + 0.5;
  const std::string header =
      padded_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", 12);
  const NpyArray<double> array = parse_npy<double>(npy_file(header, data_text(values), 2), "v2");
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(array.values, values);
}

TEST(NpyTest, WritesVersion2OnlyWhenTheHeaderNeedsIt) {
  EXPECT_EQ(npy_bytes<float>(std::vector<float>(1), {1})[6], std::byte{1});
  // 25000 dimensions of 1 ("1, " each): the header no longer fits a u16 length.
  const std::vector<std::int64_t> shape(25000, 1);
  const std::vector<std::byte> bytes = npy_bytes<float>(std::vector<float>{7.0f}, shape);
  EXPECT_EQ(bytes[6], std::byte{2});
  EXPECT_EQ((bytes.size() - 4) % 64, 0u);  // data (4 bytes) starts at a multiple of 64
  const NpyArray<float> array = parse_npy<float>(bytes, "long");
  EXPECT_EQ(array.shape, shape);
  EXPECT_EQ(array.values, std::vector<float>{7.0f});
}

TEST(NpyTest, HeaderIsPaddedTo64Bytes) {
  for (std::size_t rank = 0; rank < 40; ++rank) {
    const std::vector<std::int64_t> shape(rank, 1);
    const std::vector<std::byte> bytes = npy_bytes<float>(std::vector<float>{1.0f}, shape);
    EXPECT_EQ((bytes.size() - 4) % 64, 0u) << rank;
    EXPECT_EQ(bytes[bytes.size() - 5], std::byte{'\n'}) << rank;
  }
}

TEST(NpyTest, ReadsOlderHeaderSpellings) {
  // Python 2 longs, double quotes, no trailing comma, 16-byte padding.
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::string header =
      "{\"descr\": \"<f4\", \"shape\": (2L, 3L), \"fortran_order\": False}    \n";
  const NpyArray<float> array = parse_npy<float>(npy_file(header, data_text(values)), "old");
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(array.values, values);
}

TEST(NpyTest, F8ReadAsFloatRoundsToNearest) {
  const std::vector<double> values = {1.0 + 0x1p-24, 1.0 + 3 * 0x1p-24, 0.1};
  const NpyArray<float> array = parse_npy<float>(npy_bytes<double>(values, {3}), "f8");
  EXPECT_EQ(array.values[0], 1.0f);                 // tie: to even
  EXPECT_EQ(array.values[1], 1.0f + 2 * 0x1p-23f);  // tie: to even
  EXPECT_EQ(array.values[2], 0.1f);
}

TEST(NpyTest, WritesEigenMatricesRowMajor) {
  Eigen::MatrixXd matrix(2, 3);  // column-major storage
  matrix << 1, 2, 3, 4, 5, 6;
  TempDir dir;
  prenorm::io::write_npy_matrix(dir / "m.npy", matrix);
  const NpyArray<double> array = read_npy<double>(dir / "m.npy");
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(array.values, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  prenorm::io::write_npy_matrix(dir / "block.npy", matrix.block(0, 1, 2, 2).cast<float>());
  EXPECT_EQ(read_npy<float>(dir / "block.npy").values, (std::vector<float>{2, 3, 5, 6}));
}

TEST(NpyTest, WriterErrors) {
  EXPECT_EQ(error_message([] {
              (void)npy_bytes<float>(std::vector<float>(5), {2, 3});
            }),
            "prenorm::npy: shape (2, 3) has 6 elements, but 5 values were given");
  EXPECT_NE(error_message([] {
              (void)npy_bytes<float>(std::vector<float>(5), {-5});
            }).find("shape (-5,) is invalid"),
            std::string::npos);
}

TEST(NpyTest, RefusesToOverwriteTheInput) {
  TempDir dir;
  const fs::path input = dir / "in.npy";
  write_npy<float>(input, std::vector<float>{1, 2}, {2});
  const NpyArray<float> array = read_npy<float>(input);
  EXPECT_THROW(write_npy<float>(input, array.values, array.shape, {input}), FileError);
  EXPECT_EQ(read_npy<float>(input).values, array.values);
  EXPECT_EQ(dir.entry_count(), 1u);
}

TEST(NpyTest, MissingFileIsAFileError) {
  TempDir dir;
  const std::string message = error_message([&] { (void)read_npy<float>(dir / "nope.npy"); });
  EXPECT_NE(message.find("prenorm::npy: " + (dir / "nope.npy").string() + ": cannot open"),
            std::string::npos)
      << message;
  EXPECT_THROW((void)read_npy<float>(dir / "nope.npy"), FileError);
}

// --- malformed files ------------------------------------------------------------

TEST(NpyMalformedTest, BadMagic) {
  expect_format_error(to_bytes("PK\x03\x04 not npy at all"),
                      "not a .npy file (it does not start with \"\\x93NUMPY\")");
  expect_format_error(to_bytes("\x93NUM"), "not a .npy file");
  expect_format_error({}, "not a .npy file");
}

TEST(NpyMalformedTest, UnsupportedVersion) {
  expect_format_error(npy_file(padded_header(kDict34), "", 3),
                      "format version 3.0 is not supported (supported: 1.0, 2.0)");
  std::vector<std::byte> minor = npy_file(padded_header(kDict34), std::string(48, '\0'));
  minor[7] = std::byte{1};
  expect_format_error(minor, "format version 1.1 is not supported");
}

TEST(NpyMalformedTest, TruncatedLengthField) {
  expect_format_error(to_bytes(std::string_view("\x93NUMPY\x02\x00\x10\x00", 10)),
                      "file has 10 bytes, too short for the header length field");
}

TEST(NpyMalformedTest, HeaderLengthBeyondTheFile) {
  std::vector<std::byte> bytes = npy_file(padded_header(kDict34), "");
  bytes[8] = std::byte{0xff};
  bytes[9] = std::byte{0x7f};
  expect_format_error(bytes, "header length 32767 exceeds the 118 bytes that follow");
}

TEST(NpyMalformedTest, HeaderNotADict) {
  expect_format_error(npy_file("[1, 2]\n", ""), "expected '{' at column 1 of the header");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "    "),
                      "expected ',' or '}'");
  expect_format_error(npy_file(kDict34 + " extra\n", std::string(48, '\0')),
                      "unexpected text after the header dict");
  expect_format_error(npy_file("{'descr: '<f4'}", ""), "expected ':'");
  expect_format_error(npy_file("{'descr", ""), "unterminated string in the header");
  expect_format_error(npy_file("{'de\\'scr': 1}", ""), "escape sequences are not supported");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\xe9", ""),
                      "header contains a non-ASCII byte");
}

TEST(NpyMalformedTest, WrongKeys) {
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False}\n", ""),
                      "the header has no 'shape'");
  expect_format_error(npy_file("{'shape': (1,), 'fortran_order': False}\n", "    "),
                      "the header has no 'descr'");
  expect_format_error(
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'extra': 1}\n", "    "),
      "unexpected key 'extra' in the header (expected descr, fortran_order, shape)");
  expect_format_error(
      npy_file("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': ()}\n", ""),
      "'descr' appears twice in the header");
}

TEST(NpyMalformedTest, UnsupportedDtype) {
  expect_format_error(
      npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n", "12345678"),
      "dtype '<i8' is not supported (supported: '<f4', '<f8')");
  expect_format_error(
      npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }\n", "1234"),
      "dtype '>f4' is not supported");
  expect_format_error(
      npy_file("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }\n", "1234"),
      "descr must be a string such as '<f4' (structured dtypes are not supported)");
}

TEST(NpyMalformedTest, FortranOrder) {
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n",
                               std::string(16, '\0')),
                      "fortran_order is True; only C-order arrays are supported");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }\n", "1234"),
                      "fortran_order must be True or False");
}

TEST(NpyMalformedTest, ShapeNotATupleOfNonNegativeIntegers) {
  expect_format_error(
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3), }\n", std::string(12, '\0')),
      "shape (3) is not a tuple");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': [3], }\n", ""),
                      "expected '('");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n", ""),
                      "shape must be a tuple of non-negative integers");
  expect_format_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3 4), }\n", ""),
                      "expected ',' or ')' in the shape");
  expect_format_error(
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808,), }\n", ""),
      "shape dimension is larger than 2^63 - 1");
  expect_format_error(
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n",
               ""),
      "shape has more than 2^64 elements");
  expect_format_error(
      npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }\n", ""),
      "shape needs more than 2^64 bytes of data");
}

TEST(NpyMalformedTest, DataSizeMustMatchTheShape) {
  expect_format_error(npy_file(padded_header(kDict34), std::string(44, '\0')),
                      "data has 44 bytes, but shape (3, 4) of '<f4' needs 48");
  expect_format_error(npy_file(padded_header(kDict34), std::string(52, '\0')),
                      "data has 52 bytes, but shape (3, 4) of '<f4' needs 48");
}

}  // namespace
