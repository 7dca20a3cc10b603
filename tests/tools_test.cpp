// End-to-end tests of the command-line tools prenorm-convert, prenorm-infer
// and prenorm-verify (examples/convert_tool.cpp, infer_tool.cpp,
// verify_tool.cpp), run as processes. tests/CMakeLists.txt passes their paths
// as PRENORM_CONVERT_BIN, PRENORM_INFER_BIN and PRENORM_VERIFY_BIN (the tests
// skip when the tools are not built).
//
// Checked:
//  - a GPT-2-layout file (tied, and untied) and a ViT-layout file, written
//    from random Pre-LN models, converted to each architecture with each tied
//    policy: prenorm-infer --logits-out gives the source model's logits
//    (relative error <= 1e-5, in float), and --generate gives the greedy
//    decoding done here with the source model;
//  - converting a converted file again (prenorm layout as input), re-saving,
//    --dtype and its default rule (auto: F32 for 16-bit inputs);
//  - a sharded checkpoint (three shards and an index) is the same model, as
//    input and as output (--max-shard-size);
//  - verification: prenorm-convert prints the logits error of what it wrote
//    (run block by block: the figure of the whole models' forwards) and
//    fails over --verify-tolerance; prenorm-verify passes a conversion
//    and fails a tampered file;
//  - the Hugging Face decoder and encoder families' fixture folders
//    (tests/support/hf_fixtures.hpp) give the long double references of
//    hf_reference.hpp through prenorm-infer, before and after prenorm-convert;
//    the encoders' outputs are named as Hugging Face names them (logits,
//    image embeddings, pooled output);
//  - bad input: exit code 1 and a message naming the file and the tensor;
//    usage errors: exit code 2 and the usage; in every failure no output
//    file and no temporary file is left, and the input is unchanged (bytes
//    compared); writing onto the input is refused, also through another name.

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../examples/model_check.hpp"
#include "support/hf_fixtures.hpp"
#include "support/hf_reference.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::TransformerConfig;
using prenorm::Arch;
using prenorm::Gpt;
using prenorm::GptConfig;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vit;
using prenorm::VitConfig;
using io::Dtype;

#if defined(PRENORM_CONVERT_BIN) && defined(PRENORM_INFER_BIN) && defined(PRENORM_VERIFY_BIN)
const char* const kConvert = PRENORM_CONVERT_BIN;
const char* const kInfer = PRENORM_INFER_BIN;
const char* const kVerify = PRENORM_VERIFY_BIN;
#define PRENORM_SKIP_WITHOUT_TOOLS() (void)0
#else
const char* const kConvert = "";
const char* const kInfer = "";
const char* const kVerify = "";
#define PRENORM_SKIP_WITHOUT_TOOLS() GTEST_SKIP() << "prenorm-convert / prenorm-infer / prenorm-verify are not built"
#endif

// --- helpers -----------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "prenorm-tools-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code error;
    fs::remove_all(path_, error);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

  // Paths of everything in the folder and its subfolders, relative and sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::recursive_directory_iterator(path_))
      names.push_back(fs::relative(entry.path(), path_).string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Outcome {
  int code = -1;
  std::string out, err;
};

// Runs `program` with `args`, capturing stdout and stderr.
Outcome run_tool(const std::string& program, const std::vector<std::string>& args) {
  TempDir capture;
  const std::string out = capture / "stdout", err = capture / "stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> all = {program};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  Outcome result;
  if (posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ) != 0) {
    posix_spawn_file_actions_destroy(&actions);
    ADD_FAILURE() << "cannot start " << program;
    return result;
  }
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  waitpid(pid, &status, 0);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = read_text(out);
  result.err = read_text(err);
  return result;
}

std::string describe(const Outcome& r) {
  return "exit " + std::to_string(r.code) + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err;
}

GptConfig tiny_gpt(bool tied) {
  return GptConfig{.vocab = 31, .context = 16, .width = 12, .heads = 3, .layers = 2,
                   .mlp_width = 24, .epsilon = 1e-5, .activation = prenorm::Activation::GeluTanh,
                   .tied = tied, .head_bias = false};
}

VitConfig tiny_vit() {
  return VitConfig{.image_size = 8, .patch_size = 4, .channels = 3, .classes = 6, .width = 10,
                   .heads = 2, .layers = 2, .mlp_width = 16, .epsilon = 1e-12,
                   .activation = prenorm::Activation::GeluErf};
}

const std::vector<int> kTokens = {5, 3, 0, 30, 7, 7, 12};
const std::string kTokensArg = "5,3,0,30,7,7,12";

// max |a - b| / max |b|
template <class A, class B>
double relative_error(const A& a, const B& b) {
  const RowMatrix<double> x = a.template cast<double>(), y = b.template cast<double>();
  return (x - y).cwiseAbs().maxCoeff() / std::max(y.cwiseAbs().maxCoeff(), 1e-300);
}

RowMatrix<float> read_logits(const fs::path& path, Index rows, Index cols) {
  const io::NpyArray<float> array = io::read_npy<float>(path);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{rows, cols})) << path;
  RowMatrix<float> m(rows, cols);
  if (Index(array.values.size()) == rows * cols) std::copy(array.values.begin(), array.values.end(), m.data());
  return m;
}

// A folder with a GPT-2 file (+ config.json) and a ViT file (+ config.json),
// written from random Pre-LN float models.
class Fixture {
 public:
  explicit Fixture(bool tied) : gpt_(tiny_gpt(tied)), vit_(tiny_vit()) {
    gpt_.init_random(tied ? 101 : 102, 0.3, /*random_affine=*/true);
    vit_.init_random(103, 0.3, /*random_affine=*/true);
    fs::create_directories(dir_ / "gpt2");
    fs::create_directories(dir_ / "vit");
    io::save_hf_gpt2(gpt_, gpt2_file(), Dtype::F32, {.prefix = tied});
    io::write_json_file(dir_ / "gpt2/config.json", io::gpt2_config_to_json(gpt_.config));
    io::save_hf_vit(vit_, vit_file(), Dtype::F32);
    io::write_json_file(dir_ / "vit/config.json", io::vit_config_to_json(vit_.config));
    std::mt19937_64 rng(7);
    std::normal_distribution<float> normal;
    images_.resize(2 * 3 * 8 * 8);
    for (float& p : images_) p = normal(rng);
    io::write_npy<float>(image_file(), images_, {2, 3, 8, 8});
    // The tools pack the weights they load (prenorm::pack_weights): the
    // in-process logits below use the same products, so they are the tools'.
    prenorm::pack_weights(gpt_);
    prenorm::pack_weights(vit_);
  }

  fs::path gpt2_file() const { return dir_ / "gpt2/model.safetensors"; }
  fs::path vit_file() const { return dir_ / "vit/model.safetensors"; }
  fs::path image_file() const { return dir_ / "images.npy"; }
  const TempDir& dir() const { return dir_; }

  RowMatrix<float> gpt_logits() {
    return gpt_.forward(prenorm::TokenBatch{kTokens, 1, Index(kTokens.size())});
  }
  RowMatrix<float> vit_logits() {
    return vit_.forward(prenorm::ImageBatch<float>{images_, 2, 3, 8, 8});
  }
  // Greedy decoding with full forwards (no cache): the next `n` ids.
  std::vector<int> greedy(Index n) {
    std::vector<int> ids = kTokens, generated;
    for (Index i = 0; i < n; ++i) {
      const RowMatrix<float>& logits = gpt_.forward(prenorm::TokenBatch{ids, 1, Index(ids.size())});
      Index best = 0;
      logits.row(logits.rows() - 1).maxCoeff(&best);
      generated.push_back(int(best));
      ids.push_back(int(best));
    }
    return generated;
  }
  const TransformerConfig& gpt_config() const { return gpt_.config; }

 private:
  TempDir dir_;
  Gpt<Arch::PreLN, float> gpt_;
  Vit<Arch::PreLN, float> vit_;
  std::vector<float> images_;
};

const char* const kArchs[] = {"pre-ln", "pre-rmsnorm", "pre-crmsnorm"};
const char* const kPolicies[] = {"untie", "keep"};

// ===========================================================================
// Conversion and inference
// ===========================================================================

class ToolsGpt : public ::testing::TestWithParam<bool> {};

TEST_P(ToolsGpt, ConvertedModelsGiveTheSourceLogitsAndGeneration) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  const bool tied = GetParam();
  Fixture f(tied);
  const RowMatrix<float> expected = f.gpt_logits();
  const std::vector<int> greedy = f.greedy(5);
  std::string greedy_text = "generated 5 tokens:";
  for (int id : greedy) greedy_text.append(" ").append(std::to_string(id));
  const Index T = Index(kTokens.size()), V = f.gpt_config().vocab;

  // The Hugging Face file itself.
  {
    const fs::path logits = f.dir() / "hf.npy";
    const Outcome r = run_tool(kInfer, {f.gpt2_file(), "--tokens", kTokensArg, "--logits-out", logits,
                               "--generate", "5", "--threads", "1"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(relative_error(read_logits(logits, T, V), expected), 0.0) << "same weights, same code";
    EXPECT_NE(r.out.find(greedy_text), std::string::npos) << describe(r);
    EXPECT_NE(r.out.find("hf_gpt2"), std::string::npos) << describe(r);
  }
  for (const char* arch : kArchs)
    for (const char* policy : kPolicies) {
      SCOPED_TRACE(std::string(arch) + " --tied " + policy);
      const fs::path out = f.dir() / (std::string(arch) + "-" + policy + ".safetensors");
      const fs::path logits = f.dir() / (std::string(arch) + "-" + policy + ".npy");
      const Outcome c = run_tool(kConvert, {"--to", arch, "--tied", policy, f.gpt2_file(), out});
      ASSERT_EQ(c.code, 0) << describe(c);
      EXPECT_NE(c.out.find(f.gpt2_file().string() + " (hf_gpt2, gpt) pre_ln -> "), std::string::npos)
          << describe(c);
      EXPECT_NE(c.out.find(out.string()), std::string::npos) << describe(c);
      EXPECT_NE(c.out.find(std::to_string(fs::file_size(out)) + " bytes"), std::string::npos);
      EXPECT_EQ(std::count(c.out.begin(), c.out.end(), '\n'), 1) << "one summary line";

      const io::SafetensorsFile file(out);
      const io::PrenormMetadata meta = io::read_prenorm_metadata(file);
      EXPECT_EQ(file.metadata().at("arch"), std::string(arch) == "pre-ln" ? "pre_ln"
                                            : std::string(arch) == "pre-rmsnorm" ? "pre_rmsnorm"
                                                                                 : "pre_crmsnorm");
      EXPECT_EQ(io::prenorm_dtype(file), Dtype::F32) << "--dtype same";
      const bool keeps_tie = tied && (std::string(policy) == "keep" || std::string(arch) == "pre-ln");
      EXPECT_EQ(meta.gpt.tied, keeps_tie);

      const Outcome r = run_tool(kInfer, {out, "--tokens", kTokensArg, "--logits-out", logits, "--generate", "5"});
      ASSERT_EQ(r.code, 0) << describe(r);
      const double error = relative_error(read_logits(logits, T, V), expected);
      std::printf("[ max error ] GPT %s -> %s --tied %s: %.3g\n", tied ? "tied" : "untied", arch,
                  policy, error);
      EXPECT_LE(error, 1e-5);
      EXPECT_NE(r.out.find(greedy_text), std::string::npos) << describe(r) << "expected " << greedy_text;
      EXPECT_NE(r.out.find("top-5 after position 6"), std::string::npos) << describe(r);
    }
}

INSTANTIATE_TEST_SUITE_P(Head, ToolsGpt, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tied" : "Untied"; });

TEST(Tools, ConvertedVitGivesTheSourceLogits) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const RowMatrix<float> expected = f.vit_logits();
  {
    const fs::path logits = f.dir() / "hf.npy";
    const Outcome r = run_tool(kInfer, {f.vit_file(), "--image", f.image_file(), "--logits-out", logits});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(relative_error(read_logits(logits, 2, 6), expected), 0.0);
    EXPECT_NE(r.out.find("image 1: top-5"), std::string::npos) << describe(r);
  }
  for (const char* arch : kArchs)
    for (const char* policy : kPolicies) {
      SCOPED_TRACE(std::string(arch) + " --tied " + policy);
      const fs::path out = f.dir() / (std::string(arch) + "-" + policy + ".safetensors");
      const fs::path logits = f.dir() / (std::string(arch) + "-" + policy + ".npy");
      const Outcome c = run_tool(kConvert, {"--to", arch, "--tied", policy, f.vit_file(), out});
      ASSERT_EQ(c.code, 0) << describe(c);
      EXPECT_NE(c.out.find("(hf_vit, vit) pre_ln -> "), std::string::npos) << describe(c);
      const Outcome r = run_tool(kInfer, {out, "--image", f.image_file(), "--logits-out", logits});
      ASSERT_EQ(r.code, 0) << describe(r);
      const double error = relative_error(read_logits(logits, 2, 6), expected);
      std::printf("[ max error ] ViT -> %s --tied %s: %.3g\n", arch, policy, error);
      EXPECT_LE(error, 1e-5);
    }
  // One image [C, H, W]: the first of the batch.
  {
    std::vector<float> one(3 * 8 * 8);
    const io::NpyArray<float> all = io::read_npy<float>(f.image_file());
    std::copy(all.values.begin(), all.values.begin() + Index(one.size()), one.begin());
    io::write_npy<float>(f.dir() / "one.npy", one, {3, 8, 8});
    const Outcome r = run_tool(kInfer, {f.dir() / "pre-crmsnorm-untie.safetensors", "--image",
                               f.dir() / "one.npy", "--logits-out", f.dir() / "one-logits.npy"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_LE(relative_error(read_logits(f.dir() / "one-logits.npy", 1, 6), expected.topRows(1)), 1e-5);
  }
}

TEST(Tools, ChainsResavesAndDtypes) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const RowMatrix<float> expected = f.gpt_logits();
  const Index T = Index(kTokens.size()), V = f.gpt_config().vocab;
  const auto infer = [&](const fs::path& model, bool use_double = false) {
    const fs::path logits = f.dir() / "chain.npy";
    std::vector<std::string> args = {model, "--tokens", kTokensArg, "--logits-out", logits};
    if (use_double) args.push_back("--double");
    const Outcome r = run_tool(kInfer, args);
    EXPECT_EQ(r.code, 0) << describe(r);
    return read_logits(logits, T, V);
  };
  // HF -> Pre-RMSNorm (keep) -> Pre-CRMSNorm -> Pre-LN -> Pre-RMSNorm (untie), each from the last.
  fs::path previous = f.gpt2_file();
  const std::vector<std::pair<std::string, std::string>> chain = {
      {"pre-rmsnorm", "keep"}, {"pre-crmsnorm", "keep"}, {"pre-ln", "untie"}, {"pre-rmsnorm", "untie"}};
  int step = 0;
  for (const auto& [arch, policy] : chain) {
    const fs::path out = f.dir() / ("chain" + std::to_string(step++) + ".safetensors");
    const Outcome c = run_tool(kConvert, {"--to=" + arch, "--tied=" + policy, previous, out});
    ASSERT_EQ(c.code, 0) << describe(c);
    EXPECT_LE(relative_error(infer(out), expected), 1e-5) << arch;
    EXPECT_LE(relative_error(infer(out, true), expected), 1e-5) << arch << " (--double)";
    previous = out;
  }
  // The same architecture: a re-save (here also the layout).
  {
    const fs::path out = f.dir() / "resaved.safetensors";
    const Outcome c = run_tool(kConvert, {"--to", "pre-ln", f.gpt2_file(), out});
    ASSERT_EQ(c.code, 0) << describe(c);
    EXPECT_NE(c.err.find("re-saving"), std::string::npos) << describe(c);
    EXPECT_TRUE(infer(out) == expected) << "a re-save in F32 keeps every weight";
    const Outcome again = run_tool(kConvert, {"--to", "pre-ln", out, f.dir() / "resaved2.safetensors"});
    ASSERT_EQ(again.code, 0) << describe(again);
    EXPECT_EQ(read_text(out), read_text(f.dir() / "resaved2.safetensors"))
        << "re-saving a prenorm file gives the same bytes";
  }
  // --dtype: the output dtype; arithmetic in double, rounded once.
  for (const auto& [name, dtype, tolerance] :
       {std::tuple{"F16", Dtype::F16, 1e-2}, std::tuple{"bf16", Dtype::BF16, 5e-2},
        std::tuple{"F64", Dtype::F64, 1e-5}}) {
    const fs::path out = f.dir() / (std::string(name) + ".safetensors");
    const Outcome c = run_tool(kConvert, {"--to", "pre-crmsnorm", "--dtype", name, f.gpt2_file(), out});
    ASSERT_EQ(c.code, 0) << describe(c);
    EXPECT_EQ(io::prenorm_dtype(io::SafetensorsFile(out)), dtype);
    EXPECT_NE(c.out.find(std::string(io::dtype_name(dtype)) + " -> "), std::string::npos) << describe(c);
    EXPECT_LE(relative_error(infer(out), expected), tolerance) << name;
  }
  // The default dtype rule (auto): a 16-bit input becomes F32, anything else
  // keeps its dtype; "same" keeps a 16-bit one.
  for (const auto& [input, rule, dtype] :
       {std::tuple{"F16.safetensors", "", Dtype::F32}, std::tuple{"bf16.safetensors", "auto", Dtype::F32},
        std::tuple{"F64.safetensors", "", Dtype::F64}, std::tuple{"bf16.safetensors", "same", Dtype::BF16}}) {
    const fs::path out = f.dir() / "rule.safetensors";
    std::vector<std::string> args = {"--to", "pre-ln", f.dir() / input, out};
    if (*rule != '\0') args.insert(args.begin(), "--dtype=" + std::string(rule));
    const Outcome c = run_tool(kConvert, args);
    ASSERT_EQ(c.code, 0) << describe(c);
    EXPECT_EQ(io::prenorm_dtype(io::SafetensorsFile(out)), dtype) << input << " " << rule;
  }
  // An explicit --config.
  {
    fs::create_directories(f.dir() / "elsewhere");
    fs::copy_file(f.gpt2_file(), f.dir() / "elsewhere/gpt.safetensors");
    const fs::path out = f.dir() / "from-config.safetensors";
    const Outcome missing = run_tool(kConvert, {"--to", "pre-rmsnorm", f.dir() / "elsewhere/gpt.safetensors", out});
    EXPECT_EQ(missing.code, 1) << describe(missing);
    EXPECT_NE(missing.err.find("config.json"), std::string::npos) << describe(missing);
    const Outcome c = run_tool(kConvert, {"--to", "pre-rmsnorm", "--config", f.dir() / "gpt2/config.json",
                                 f.dir() / "elsewhere/gpt.safetensors", out});
    ASSERT_EQ(c.code, 0) << describe(c);
    EXPECT_LE(relative_error(infer(out), expected), 1e-5);
  }
}

// ===========================================================================
// Failures: exit codes, messages, nothing left behind, inputs unchanged
// ===========================================================================

// Runs a command that must fail with `code`, and checks that the folder
// `dir` has the same entries afterwards (no output, no temporary file) and
// that the `inputs` have the same bytes.
void expect_failure(const std::string& program, const std::vector<std::string>& args, int code,
                    const TempDir& dir, const std::vector<fs::path>& inputs,
                    const std::vector<std::string>& mentions) {
  const std::vector<std::string> before = dir.entries();
  std::vector<std::string> bytes;
  for (const fs::path& input : inputs) bytes.push_back(read_text(input));
  const Outcome r = run_tool(program, args);
  EXPECT_EQ(r.code, code) << describe(r);
  for (const std::string& part : mentions)
    EXPECT_NE(r.err.find(part), std::string::npos) << "stderr does not mention '" << part << "'\n"
                                                   << describe(r);
  if (code == 2) {
    EXPECT_NE(r.err.find("usage: "), std::string::npos) << describe(r);
  }
  EXPECT_EQ(dir.entries(), before) << "files were left behind\n" << describe(r);
  for (std::size_t i = 0; i < inputs.size(); ++i)
    EXPECT_TRUE(read_text(inputs[i]) == bytes[i]) << inputs[i] << " changed";
}

TEST(Tools, UsageErrors) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const TempDir& d = f.dir();
  const std::string in = f.gpt2_file(), out = d / "out.safetensors";
  expect_failure(kConvert, {}, 2, d, {in}, {"--to is required"});
  expect_failure(kConvert, {"--to", "pre-ln", in}, 2, d, {in}, {"expected INPUT and OUTPUT"});
  expect_failure(kConvert, {"--to", "post-ln", in, out}, 2, d, {in}, {"post-ln"});
  expect_failure(kConvert, {"--to", "pre-ln", "--tied", "maybe", in, out}, 2, d, {in}, {"maybe"});
  expect_failure(kConvert, {"--to", "pre-ln", "--dtype", "I8", in, out}, 2, d, {in}, {"I8"});
  expect_failure(kConvert, {"--to", "pre-ln", "--fast", in, out}, 2, d, {in}, {"--fast"});
  expect_failure(kConvert, {"--to"}, 2, d, {in}, {"--to needs a value"});
  expect_failure(kInfer, {in}, 2, d, {in}, {"--tokens", "--image"});
  expect_failure(kInfer, {in, "--tokens", "1,x"}, 2, d, {in}, {"'x'"});
  expect_failure(kInfer, {in, "--tokens", "1,,2"}, 2, d, {in}, {"--tokens"});
  expect_failure(kInfer, {in, "--tokens", "1", "--image", f.image_file()}, 2, d, {in}, {"exactly one"});
  expect_failure(kInfer, {in, "--tokens", "1", "--generate", "-1"}, 2, d, {in}, {"--generate"});
  expect_failure(kInfer, {in, "--tokens", "1", "--threads", "0"}, 2, d, {in}, {"--threads"});
  expect_failure(kInfer, {f.vit_file(), "--image", f.image_file(), "--generate", "2"}, 2, d, {in},
                 {"--generate needs --tokens"});
  const Outcome help = run_tool(kConvert, {"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("usage: prenorm-convert"), std::string::npos);
}

TEST(Tools, OutputOntoTheInputIsRefused) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const TempDir& d = f.dir();
  const fs::path in = f.gpt2_file();
  const fs::path config = d / "gpt2/config.json";
  expect_failure(kConvert, {"--to", "pre-rmsnorm", in, in}, 2, d, {in}, {"refusing", in.string()});
  // Another name for the same file: a relative path, a hard link, a symlink.
  const fs::path other_name = d / "gpt2/../gpt2/./model.safetensors";
  expect_failure(kConvert, {"--to", "pre-rmsnorm", in, other_name}, 2, d, {in}, {"refusing"});
  fs::create_hard_link(in, d / "hard.safetensors");
  fs::create_symlink(in, d / "soft.safetensors");
  expect_failure(kConvert, {"--to", "pre-rmsnorm", in, d / "hard.safetensors"}, 2, d, {in}, {"refusing"});
  expect_failure(kConvert, {"--to", "pre-rmsnorm", d / "soft.safetensors", in}, 2, d, {in}, {"refusing"});
  // The config beside the input is an input too.
  expect_failure(kConvert, {"--to", "pre-rmsnorm", in, config}, 1, d, {in, config},
                 {"refusing", config.string()});
  expect_failure(kConvert, {"--to", "pre-rmsnorm", "--config", config, in, config}, 2, d,
                 {in, config}, {"refusing"});
  // prenorm-infer never writes its logits onto an input.
  expect_failure(kInfer, {in, "--tokens", "1,2", "--logits-out", in}, 2, d, {in}, {"refusing"});
  expect_failure(kInfer, {f.vit_file(), "--image", f.image_file(), "--logits-out", f.image_file()}, 2,
                 d, {f.image_file()}, {"refusing"});
}

TEST(Tools, BadInputNamesTheFileAndTheTensor) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const TempDir& d = f.dir();
  const fs::path in = f.gpt2_file(), out = d / "out.safetensors";
  const io::SafetensorsFile good(in);

  // A tensor with the wrong shape.
  const fs::path bad = d / "gpt2/bad.safetensors";
  {
    io::SafetensorsWriter writer;
    for (const std::string& name : good.names()) {
      std::vector<float> v = good.values<float>(name);
      std::vector<std::int64_t> shape = good.info(name).shape;
      if (name == "transformer.h.1.mlp.c_proj.weight") std::swap(shape[0], shape[1]);
      writer.add(name, Dtype::F32, shape, std::span<const float>(v));
    }
    writer.write(bad);
  }
  expect_failure(kConvert, {"--to", "pre-crmsnorm", bad, out}, 1, d, {bad},
                 {bad.string(), "'transformer.h.1.mlp.c_proj.weight'", "[12, 24]", "expected [24, 12]"});
  expect_failure(kInfer, {bad, "--tokens", "1,2", "--logits-out", d / "l.npy"}, 1, d, {bad},
                 {bad.string(), "'transformer.h.1.mlp.c_proj.weight'"});

  // A truncated file.
  const fs::path truncated = d / "gpt2/truncated.safetensors";
  {
    const std::string bytes = read_text(in);
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  }
  expect_failure(kConvert, {"--to", "pre-rmsnorm", truncated, out}, 1, d, {truncated},
                 {truncated.string(), "tensor '"});

  // A missing tensor, an unknown tensor.
  const fs::path missing = d / "gpt2/missing.safetensors";
  {
    io::SafetensorsWriter writer;
    for (const std::string& name : good.names()) {
      if (name == "transformer.ln_f.bias") continue;
      std::vector<float> v = good.values<float>(name);
      writer.add(name, Dtype::F32, good.info(name).shape, std::span<const float>(v));
    }
    writer.add("transformer.h.0.adapter", Dtype::F32, {1}, std::span<const float>(std::vector<float>{1}));
    writer.write(missing);
  }
  expect_failure(kConvert, {"--to", "pre-rmsnorm", missing, out}, 1, d, {missing},
                 {missing.string(), "missing tensor 'transformer.ln_f.bias'"});

  // Not a model file; a file that does not exist; a bad config.json.
  expect_failure(kConvert, {"--to", "pre-rmsnorm", f.image_file(), out}, 1, d, {f.image_file()},
                 {f.image_file().string()});
  expect_failure(kConvert, {"--to", "pre-rmsnorm", d / "nope.safetensors", out}, 1, d, {},
                 {(d / "nope.safetensors").string()});
  {
    std::ofstream(d / "bad-config.json") << R"({"n_embd": 12, "n_head": 3, "n_layer": 2,
        "vocab_size": 31, "n_positions": 16, "n_inner": 24, "activation_function": "swish"})";
  }
  expect_failure(kConvert, {"--to", "pre-rmsnorm", "--config", d / "bad-config.json", in, out}, 1, d,
                 {in}, {(d / "bad-config.json").string(), "activation_function", "swish"});

  // A Pre-RMSNorm model whose writers are not zero-mean cannot become Pre-CRMSNorm.
  {
    Gpt<Arch::PreRMSNorm, float> rms(tiny_gpt(false));
    rms.init_random(104, 0.3, true);
    io::save_prenorm(rms, d / "rms.safetensors", Dtype::F32);
  }
  expect_failure(kConvert, {"--to", "pre-crmsnorm", d / "rms.safetensors", out}, 1, d,
                 {d / "rms.safetensors"}, {(d / "rms.safetensors").string(), "not zero-mean"});

  // The output folder does not exist.
  expect_failure(kConvert, {"--to", "pre-rmsnorm", in, d / "no/such/dir/out.safetensors"}, 1, d, {in},
                 {"no/such/dir"});

  // prenorm-infer: ids out of range, the wrong input for the model, too many tokens.
  expect_failure(kInfer, {in, "--tokens", "1,31", "--logits-out", d / "l.npy"}, 1, d, {in},
                 {in.string(), "token id 31"});
  expect_failure(kInfer, {in, "--image", f.image_file()}, 1, d, {in}, {in.string(), "--tokens"});
  expect_failure(kInfer, {f.vit_file(), "--tokens", "1"}, 1, d, {}, {f.vit_file().string(), "--image"});
  expect_failure(kInfer, {in, "--tokens", kTokensArg, "--generate", "11"}, 1, d, {in},
                 {in.string(), "context"});
  {
    io::write_npy<float>(d / "small.npy", std::vector<float>(3 * 4 * 4), {3, 4, 4});
    io::write_npy<float>(d / "flat.npy", std::vector<float>(12), {12});
  }
  expect_failure(kInfer, {f.vit_file(), "--image", d / "small.npy", "--logits-out", d / "l.npy"}, 1, d,
                 {}, {(d / "small.npy").string(), "4 x 4"});
  expect_failure(kInfer, {f.vit_file(), "--image", d / "flat.npy"}, 1, d, {},
                 {(d / "flat.npy").string(), "[C, H, W]"});
}

// ===========================================================================
// Sharded checkpoints (issue 20 item 2)
// ===========================================================================

// The GPT-2 fixture split into three shards with an index (and its
// config.json) is the same model, bit for bit, for every reader: the family
// loader, load_any_model, prenorm-infer and prenorm-convert, from the index
// and from the folder. Writing onto a shard is refused.
TEST(Tools, ShardedInputIsTheSameModel) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const fs::path folder = f.dir() / "sharded", index = folder / "model.safetensors.index.json";
  fs::create_directories(folder);
  fs::copy_file(f.dir() / "gpt2/config.json", folder / "config.json");
  const Gpt<Arch::PreLN, float> source = io::load_hf_gpt2<float>(f.gpt2_file());
  io::SafetensorsWriter whole = io::save_hf_gpt2(source, Dtype::F32, {.prefix = true});
  const std::uint64_t limit = whole.data_size() / 2;  // greedy filling: three shards
  const std::vector<io::SafetensorsWriter> shards = std::move(whole).split(limit);
  ASSERT_EQ(shards.size(), 3u);
  io::write_sharded(shards, index);

  // In process: the model re-saved in prenorm's layout has the same bytes.
  const auto prenorm_bytes = [](const auto& model) {
    return io::save_prenorm(model, Dtype::F32).bytes();
  };
  const auto any_bytes = [&](const fs::path& path) {
    return std::visit([&](const auto& model) { return prenorm_bytes(model); },
                      io::load_any_model<float>(path).model);
  };
  EXPECT_TRUE(prenorm_bytes(io::load_hf_gpt2<float>(index)) == prenorm_bytes(source));
  EXPECT_TRUE(any_bytes(index) == any_bytes(f.gpt2_file()));
  EXPECT_EQ(io::model_file_path(folder), index);

  // The tools: the same logits and the same converted file.
  const Index T = Index(kTokens.size()), V = f.gpt_config().vocab;
  const auto logits_of = [&](const fs::path& model) {
    const fs::path logits = f.dir() / "sharded-logits.npy";
    const Outcome r = run_tool(kInfer, {model, "--tokens", kTokensArg, "--logits-out", logits});
    EXPECT_EQ(r.code, 0) << describe(r);
    return read_logits(logits, T, V);
  };
  const RowMatrix<float> expected = logits_of(f.gpt2_file());
  EXPECT_TRUE(logits_of(folder) == expected);
  EXPECT_TRUE(logits_of(index) == expected);
  const fs::path from_single = f.dir() / "from-single.safetensors",
                 from_shards = f.dir() / "from-shards.safetensors";
  for (const auto& [input, out] : {std::pair{f.gpt2_file(), from_single}, std::pair{folder, from_shards}}) {
    const Outcome c = run_tool(kConvert, {"--to", "pre-crmsnorm", input, out});
    ASSERT_EQ(c.code, 0) << describe(c);
  }
  EXPECT_EQ(read_text(from_shards), read_text(from_single));
  const fs::path shard = folder / io::shard_file_name(index, 2, 3);
  expect_failure(kConvert, {"--to", "pre-ln", index, shard}, 1, f.dir(), {index, shard},
                 {"refusing to write", shard.string()});
  // A defect of the set fails the tools with its message (exit 1).
  fs::remove(folder / io::shard_file_name(index, 3, 3));
  expect_failure(kInfer, {folder, "--tokens", "1,2"}, 1, f.dir(), {index},
                 {index.string(), "does not exist"});
}

// prenorm-convert --max-shard-size: a folder OUTPUT gets an index and shards
// when the model exceeds it (else model.safetensors), an index OUTPUT always
// gets shards, a .safetensors OUTPUT over the size is an error; the shards
// hold the model of the one-file output, bit for bit; a failed write leaves
// nothing behind.
TEST(Tools, ShardedOutput) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(false);
  const TempDir& d = f.dir();
  const std::string in = f.gpt2_file();
  const auto convert = [&](const std::vector<std::string>& extra, const fs::path& out) {
    std::vector<std::string> args = {"--to", "pre-crmsnorm"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(in);
    args.push_back(out);
    const Outcome c = run_tool(kConvert, args);
    EXPECT_EQ(c.code, 0) << describe(c);
    return c;
  };
  const auto model_bytes = [](const fs::path& path) {
    return std::visit([](const auto& model) { return io::save_prenorm(model, Dtype::F32).bytes(); },
                      io::load_any_model<float>(path).model);
  };
  convert({}, d / "single.safetensors");
  const std::vector<std::byte> expected = model_bytes(d / "single.safetensors");
  const std::uintmax_t single_size = fs::file_size(d / "single.safetensors");

  // A folder (made here), over the size: index + shards; within it: model.safetensors.
  const Outcome c = convert({"--max-shard-size", std::to_string(single_size / 3) + "B"}, d / "out/");
  const fs::path index = d / "out/model.safetensors.index.json";
  const io::SafetensorsFile sharded(index);
  const std::size_t shards = sharded.files().size() - 1;
  EXPECT_GE(shards, 3u);
  EXPECT_EQ(sharded.file_of(sharded.names().front()),
            d / "out" / io::shard_file_name(index, 1, shards));
  EXPECT_NE(c.out.find(" and " + std::to_string(shards) + " shards"), std::string::npos) << describe(c);
  EXPECT_TRUE(model_bytes(index) == expected);
  convert({}, d / "small/");  // the default 5GB: one file
  EXPECT_TRUE(model_bytes(d / "small/model.safetensors") == expected);
  // An index OUTPUT: shards even when one is enough.
  convert({"--max-shard-size=1GiB"}, d / "one.safetensors.index.json");
  EXPECT_TRUE(fs::exists(d / "one-00001-of-00001.safetensors"));
  EXPECT_TRUE(model_bytes(d / "one.safetensors.index.json") == expected);

  // Failures leave nothing behind.
  const std::string over = std::to_string(single_size / 2);
  expect_failure(kConvert, {"--to", "pre-ln", "--max-shard-size", over, in, d / "big.safetensors"},
                 1, d, {in}, {"more than --max-shard-size", "name a folder"});
  // The index cannot be renamed into place (a folder has its name): no shard stays.
  fs::create_directories(d / "blocked/model.safetensors.index.json");
  expect_failure(kConvert, {"--to", "pre-ln", "--max-shard-size", over, in, d / "blocked"}, 1, d,
                 {in}, {"model.safetensors.index.json"});
  for (const char* bad : {"0", "5XB", "GB", "-1", "99999999999999999999"})
    expect_failure(kConvert, {"--to", "pre-ln", "--max-shard-size", bad, in, d / "x.safetensors"},
                   2, d, {in}, {"--max-shard-size", bad});
}

// ===========================================================================
// Verification (issue 20 item 4): prenorm-convert checks what it wrote,
// prenorm-verify compares two checkpoints
// ===========================================================================

// A copy of the prenorm file `in` with every weight scaled by 1.001.
void write_tampered(const fs::path& in, const fs::path& out) {
  const io::SafetensorsFile file(in);
  io::SafetensorsWriter writer;
  for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
  for (const std::string& name : file.names()) {
    std::vector<double> values = file.values<double>(name);
    for (double& v : values) v *= 1.001;
    writer.add(name, *file.info(name).dtype, file.info(name).shape, values);
  }
  writer.write(out);
}

TEST(Tools, VerifyConversionsAndCheckpoints) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  Fixture f(true);
  const TempDir& d = f.dir();
  const std::string gpt = f.gpt2_file(), vit = f.vit_file();
  // prenorm-convert: the error of the written model, within the tolerance (F32).
  const fs::path out = d / "crms.safetensors";
  const Outcome c = run_tool(kConvert, {"--to", "pre-crmsnorm", "--verify-tolerance", "1e-5", gpt, out});
  ASSERT_EQ(c.code, 0) << describe(c);
  EXPECT_NE(c.err.find("verify: 8 tokens: the logits of " + out.string() + " (F32) differ"),
            std::string::npos) << describe(c);
  EXPECT_NE(c.out.find("logits relative error "), std::string::npos) << describe(c);
  // The check runs block by block (compare_gpt_checkpoints): the figure of
  // the whole models' forwards (compare_models), up to the rounding of the
  // residual adds, and the one printed.
  {
    const io::SafetensorsFile a(gpt), b(out);
    const double streamed = prenorm_tools::compare_gpt_checkpoints(
        io::open_gpt_checkpoint(a)->checkpoint, io::open_gpt_checkpoint(b)->checkpoint).logits_error;
    const double whole = prenorm_tools::compare_models(io::load_any_model<double>(a).model,
                                                       io::load_any_model<double>(b).model)
                             .logits_error;
    EXPECT_GT(whole, 0.0);
    EXPECT_NEAR(streamed, whole, 1e-6 * whole);
    const std::string printed = c.out.substr(c.out.find("logits relative error ") + 22);
    EXPECT_NEAR(std::stod(printed), whole, 1e-5 * whole) << describe(c);
  }
  // An explicit 16-bit output: the deviation is printed, and over the tolerance
  // the run fails with nothing left behind (also a made folder, also shards).
  const Outcome h = run_tool(kConvert, {"--to", "pre-crmsnorm", "--dtype", "BF16", gpt, d / "bf16.safetensors"});
  ASSERT_EQ(h.code, 0) << describe(h);
  EXPECT_NE(h.err.find("(BF16) differ from the source's by "), std::string::npos) << describe(h);
  for (const fs::path& target : {d / "f16.safetensors.index.json", d / "made/"})
    expect_failure(kConvert, {"--to", "pre-rmsnorm", "--dtype", "F16", "--max-shard-size", "1KB",
                              "--verify-tolerance=1e-6", gpt, target},
                   1, d, {gpt}, {"verification failed", "more than --verify-tolerance 1e-06"});
  expect_failure(kConvert, {"--to", "pre-ln", "--verify-tolerance", "x", gpt, out}, 2, d, {gpt},
                 {"--verify-tolerance takes a number"});

  // prenorm-verify: a correct conversion passes, a tampered file fails.
  const Outcome v = run_tool(kVerify, {d / "gpt2", out});
  EXPECT_EQ(v.code, 0) << describe(v);
  EXPECT_NE(v.out.find("(8 tokens): logits relative error "), std::string::npos) << describe(v);
  EXPECT_NE(v.out.find(": pass"), std::string::npos) << describe(v);
  write_tampered(out, d / "tampered.safetensors");
  const Outcome t = run_tool(kVerify, {gpt, d / "tampered.safetensors"});
  EXPECT_EQ(t.code, 1) << describe(t);
  EXPECT_NE(t.out.find(": FAIL"), std::string::npos) << describe(t);
  EXPECT_EQ(run_tool(kVerify, {"--tolerance=1", gpt, d / "tampered.safetensors"}).code, 0);
  // A ViT and its conversion; a GPT against a ViT; usage.
  const fs::path vit_out = d / "vit-crms.safetensors";
  ASSERT_EQ(run_tool(kConvert, {"--to", "pre-crmsnorm", vit, vit_out}).code, 0);
  const Outcome w = run_tool(kVerify, {vit, vit_out});
  EXPECT_EQ(w.code, 0) << describe(w);
  EXPECT_NE(w.out.find("(one 3x8x8 image)"), std::string::npos) << describe(w);
  expect_failure(kVerify, {gpt, vit}, 1, d, {gpt, vit}, {"cannot compare a gpt with a vit"});
  expect_failure(kVerify, {gpt}, 2, d, {gpt}, {"expected A and B"});
  expect_failure(kVerify, {"--tolerance", "-1", gpt, gpt}, 2, d, {gpt}, {"--tolerance takes a number"});
  expect_failure(kVerify, {gpt, d / "missing.safetensors"}, 1, d, {gpt}, {"missing.safetensors"});
}

// ===========================================================================
// Hugging Face decoder families (GPT-NeoX, OPT, Phi, GPT-J): a fixture folder
// of tests/support/hf_fixtures.hpp, run and converted by the tools, against the
// long-double reference of tests/support/hf_reference.hpp
// ===========================================================================

RowMatrix<double> reference_matrix(const prenorm_test::hf::Mat& m) {
  RowMatrix<double> result(m.rows, m.cols);
  for (int r = 0; r < m.rows; ++r)
    for (int c = 0; c < m.cols; ++c) result(r, c) = double(m(r, c));
  return result;
}

// The reference's greedy continuation of `ids` by `n` tokens (full forwards).
std::string reference_greedy(const prenorm_test::hf::Fixture& f, std::vector<int> ids, int n) {
  std::string text = "generated " + std::to_string(n) + " tokens:";
  for (int i = 0; i < n; ++i) {
    const RowMatrix<double> logits = reference_matrix(prenorm_test::hf::reference_logits(f, ids));
    Index best = 0;
    logits.row(logits.rows() - 1).maxCoeff(&best);
    ids.push_back(int(best));
    text += " " + std::to_string(best);
  }
  return text;
}

TEST(ToolsHfDecoders, InferAndConvertAFixtureFolder) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  namespace hf = prenorm_test::hf;
  TempDir dir;
  const std::vector<std::pair<std::string, hf::Fixture>> families = {
      {"hf_gpt_neox", hf::write_gpt_neox_fixture(dir / "neox", {}, Dtype::F32, 61)},
      {"hf_opt", hf::write_opt_fixture(dir / "opt", {}, Dtype::F16, 62)},
      {"hf_phi", hf::write_phi_fixture(dir / "phi", {.kv_heads = 2}, Dtype::BF16, 63)},
      {"hf_gptj", hf::write_gptj_fixture(dir / "gptj", {}, Dtype::F32, 64)},
  };
  for (const auto& [layout, f] : families) {
    SCOPED_TRACE(layout);
    const RowMatrix<double> expected = reference_matrix(hf::reference_logits(f, kTokens));
    const std::string greedy = reference_greedy(f, kTokens, 4);
    const Index T = Index(kTokens.size()), V = f.vocab();
    // prenorm-infer on `model` gives the reference's logits and greedy tokens.
    const auto expect_infers = [&](const fs::path& model, const std::string& what) {
      SCOPED_TRACE(what);
      const fs::path logits = dir / (layout + "-" + what + ".npy");
      const Outcome r = run_tool(kInfer, {model, "--tokens", kTokensArg, "--logits-out", logits,
                                          "--generate", "4", "--threads", "1"});
      ASSERT_EQ(r.code, 0) << describe(r);
      EXPECT_LE(relative_error(read_logits(logits, T, V), expected), 1e-5);
      EXPECT_NE(r.out.find(greedy), std::string::npos) << greedy << "\n" << describe(r);
    };
    // The folder itself (model.safetensors and config.json in it).
    expect_infers(f.dir, "folder");
    {
      const Outcome r = run_tool(kInfer, {f.model_path(), "--tokens", "1,2"});
      EXPECT_NE(r.out.find(": " + layout + " gpt"), std::string::npos) << describe(r);
    }
    for (const char* arch : {"pre-rmsnorm", "pre-crmsnorm"}) {
      const fs::path out = dir / (layout + "-" + arch + ".safetensors");
      // The default --dtype auto writes F32 for the F16 / BF16 files: rounding a
      // converted model to 16 bits would not be exact (expect_infers: 1e-5).
      const Outcome c = run_tool(kConvert, {"--to", arch, f.dir, out});
      ASSERT_EQ(c.code, 0) << describe(c);
      EXPECT_EQ(io::prenorm_dtype(io::SafetensorsFile(out)), Dtype::F32);
      EXPECT_NE(c.out.find(" (" + layout + ", gpt) pre_ln -> "), std::string::npos) << describe(c);
      expect_infers(out, arch);
      const fs::path back = dir / (layout + "-" + arch + "-back.safetensors");
      const Outcome b = run_tool(kConvert, {"--to", "pre-ln", out, back});
      ASSERT_EQ(b.code, 0) << describe(b);
      expect_infers(back, std::string(arch) + "-back");
    }
  }
}

// ===========================================================================
// Hugging Face decoder families (issue 19): GPT-BigCode, GPT-Neo, BLOOM
// ===========================================================================

// Each family's fixture in its real layout (tests/support/hf_fixtures.hpp):
// prenorm-infer detects it and gives the long double reference's logits
// (float, 1e-5); prenorm-convert to each architecture keeps the logits and
// the greedy generation (--generate, the KV cache).
TEST(Tools, DecoderFamiliesGptBigcodeGptNeoBloom) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  namespace hf = prenorm_test::hf;
  TempDir dir;
  const std::vector<std::pair<std::string, hf::Fixture>> families = {
      {"hf_gpt_bigcode", hf::write_gpt_bigcode_fixture(dir / "gpt_bigcode", {}, Dtype::F32, 11)},
      {"hf_gpt_neo", hf::write_gpt_neo_fixture(dir / "gpt_neo", {.window_size = 3}, Dtype::F32, 12)},
      {"hf_bloom", hf::write_bloom_fixture(dir / "bloom", {}, Dtype::BF16, 13)}};
  for (const auto& [layout, f] : families) {
    SCOPED_TRACE(layout);
    const hf::Mat reference = hf::reference_logits(f, kTokens);
    RowMatrix<double> expected(reference.rows, reference.cols);
    for (Index r = 0; r < expected.rows(); ++r)
      for (Index c = 0; c < expected.cols(); ++c) expected(r, c) = double(reference(int(r), int(c)));
    const Index T = Index(kTokens.size()), V = f.vocab();
    const fs::path logits = dir / (layout + ".npy");
    const Outcome r = run_tool(kInfer, {f.model_path(), "--tokens", kTokensArg, "--logits-out", logits,
                                        "--generate", "5"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_NE(r.out.find(layout), std::string::npos) << describe(r);
    EXPECT_LE(relative_error(read_logits(logits, T, V), expected), 1e-5);
    const std::size_t at = r.out.find("generated 5 tokens:");
    ASSERT_NE(at, std::string::npos) << describe(r);
    const std::string generated = r.out.substr(at, r.out.find('\n', at) - at);
    for (const char* arch : kArchs) {
      SCOPED_TRACE(arch);
      const fs::path out = dir / (layout + "-" + arch + ".safetensors");
      // The default (auto) writes F32: BLOOM's precomputed LN_emb(E) table would
      // lose precision in BF16.
      const Outcome c = run_tool(kConvert, {"--to", arch, f.model_path(), out});
      ASSERT_EQ(c.code, 0) << describe(c);
      EXPECT_NE(c.out.find("(" + layout + ", gpt) pre_ln -> "), std::string::npos) << describe(c);
      const Outcome i = run_tool(kInfer, {out, "--tokens", kTokensArg, "--logits-out", logits, "--generate", "5"});
      ASSERT_EQ(i.code, 0) << describe(i);
      EXPECT_LE(relative_error(read_logits(logits, T, V), expected), 1e-5);
      EXPECT_NE(i.out.find(generated), std::string::npos) << describe(i) << "expected " << generated;
    }
  }
}

// ===========================================================================
// Hugging Face encoder families (issue 19): CLIP vision, DINOv2, DeiT
// ===========================================================================

// Each family's fixture folder (tests/support/hf_fixtures.hpp): prenorm-infer
// --image gives the outputs of the library's own load + forward (bit for bit)
// and of the long double reference (float, 1e-5), named as the Hugging Face
// class names them; prenorm-convert to Pre-RMSNorm and Pre-CRMSNorm and back
// to Pre-LN verifies within 1e-5 and the converted files give the same
// outputs. CLIP's whole checkpoint is in F16 (its converted files in F32).
TEST(ToolsHfEncoders, InferAndConvertAFixtureFolder) {
  PRENORM_SKIP_WITHOUT_TOOLS();
  namespace hf = prenorm_test::hf;
  TempDir dir;
  struct Family {
    std::string name, layout, output;  // output: how prenorm-infer prints it (logits: top-5)
    hf::Fixture f;
  };
  const std::vector<Family> families = {
      {"clip_vision", "hf_clip_vision", "image embeddings",
       hf::write_clip_vision_fixture(dir / "clip_vision", {}, Dtype::F32, 71)},
      {"clip_vision_pooled", "hf_clip_vision", "pooled output",
       hf::write_clip_vision_fixture(dir / "clip_pooled", {.projection = false}, Dtype::F32, 72)},
      {"clip", "hf_clip_vision", "image embeddings",
       hf::write_clip_vision_fixture(dir / "clip", {.whole = true}, Dtype::F16, 73)},
      {"dinov2", "hf_dinov2", "top-5", hf::write_dinov2_fixture(dir / "dinov2", {}, Dtype::F32, 74)},
      {"dinov2_model", "hf_dinov2", "pooled output",
       hf::write_dinov2_fixture(dir / "dinov2_model", {.prefix = false, .classifier = false}, Dtype::F32, 75)},
      {"deit", "hf_deit", "top-5", hf::write_deit_fixture(dir / "deit", {}, Dtype::F32, 76)},
  };
  // Two images, rounded to float as the .npy holds them.
  constexpr int kImages = 2;
  const hf::ImageSizes sizes = {};
  std::vector<double> pixels = hf::random_images(sizes, kImages, 9);
  const std::vector<float> pixels_f(pixels.begin(), pixels.end());
  pixels.assign(pixels_f.begin(), pixels_f.end());
  const fs::path images = dir / "images.npy";
  io::write_npy<float>(images, pixels_f, {kImages, sizes.channels, sizes.image, sizes.image});

  for (const Family& family : families) {
    SCOPED_TRACE(family.name);
    const hf::Fixture& f = family.f;
    const RowMatrix<double> expected = reference_matrix(hf::reference_outputs(f, pixels, kImages));
    const Index K = expected.cols();
    // The library's own load + forward, with the tools' packed weights.
    RowMatrix<float> library;
    io::LoadedModel<float> loaded = io::load_any_model<float>(f.model_path());
    std::visit([&](auto& model) {
      if constexpr (requires { model.config.image_size; }) {
        prenorm::pack_weights(model);
        library = model.forward(prenorm::ImageBatch<float>{pixels_f, kImages, sizes.channels,
                                                           sizes.image, sizes.image});
      }
    }, loaded.model);
    EXPECT_LE(relative_error(library, expected), 1e-5);

    // prenorm-infer on `model` gives the reference's outputs, named.
    const auto expect_infers = [&](const fs::path& model, const std::string& what) {
      SCOPED_TRACE(what);
      const fs::path outputs = dir / (family.name + "-" + what + ".npy");
      const Outcome r = run_tool(kInfer, {model, "--image", images, "--logits-out", outputs,
                                          "--threads", "1"});
      EXPECT_EQ(r.code, 0) << describe(r);
      const RowMatrix<float> got = read_logits(outputs, kImages, K);
      EXPECT_LE(relative_error(got, expected), 1e-5);
      EXPECT_NE(r.out.find("image 1: " + family.output), std::string::npos) << describe(r);
      return got;
    };
    const Outcome r = run_tool(kInfer, {f.model_path(), "--image", images});
    EXPECT_NE(r.out.find(": " + family.layout + " vit"), std::string::npos) << describe(r);
    EXPECT_TRUE(expect_infers(f.dir, "folder") == library) << "same weights, same code";
    for (const char* arch : {"pre-rmsnorm", "pre-crmsnorm"}) {
      const fs::path out = dir / (family.name + "-" + arch + ".safetensors");
      const Outcome c = run_tool(kConvert, {"--to", arch, "--verify-tolerance", "1e-5", f.dir, out});
      ASSERT_EQ(c.code, 0) << describe(c);
      EXPECT_EQ(io::prenorm_dtype(io::SafetensorsFile(out)), Dtype::F32);
      EXPECT_NE(c.out.find(" (" + family.layout + ", vit) pre_ln -> "), std::string::npos) << describe(c);
      expect_infers(out, arch);
      const fs::path back = dir / (family.name + "-" + arch + "-back.safetensors");
      const Outcome b = run_tool(kConvert, {"--to", "pre-ln", "--verify-tolerance", "1e-5", out, back});
      ASSERT_EQ(b.code, 0) << describe(b);
      expect_infers(back, std::string(arch) + "-back");
    }
  }
  // prenorm-verify compares a folder with its conversion (the F16 CLIP checkpoint's tower).
  const Outcome v = run_tool(kVerify, {dir / "clip", dir / "clip-pre-crmsnorm.safetensors"});
  EXPECT_EQ(v.code, 0) << describe(v);
  EXPECT_NE(v.out.find("(one 3x8x8 image)"), std::string::npos) << describe(v);
  // The converted files record what the head gives (logits: nothing); a value
  // the reader does not know is refused, naming the key.
  const fs::path converted = dir / "clip_vision-pre-crmsnorm.safetensors";
  EXPECT_EQ(io::read_prenorm_metadata(io::SafetensorsFile(converted)).vit_output, "image_embeds");
  EXPECT_EQ(io::read_prenorm_metadata(io::SafetensorsFile(dir / "dinov2_model-pre-rmsnorm.safetensors"))
                .vit_output, "pooler_output");
  EXPECT_EQ(io::SafetensorsFile(dir / "deit-pre-rmsnorm.safetensors").metadata().count("output"), 0u);
  {
    const io::SafetensorsFile file(converted);
    io::SafetensorsWriter writer;
    for (const auto& [key, value] : file.metadata())
      writer.set_metadata(key, key == "output" ? "embeddings" : value);
    for (const std::string& name : file.names())
      writer.add(name, *file.info(name).dtype, file.info(name).shape, file.values<double>(name));
    writer.write(dir / "bad-output.safetensors");
  }
  expect_failure(kInfer, {dir / "bad-output.safetensors", "--image", images}, 1, dir, {},
                 {"'output' is 'embeddings', expected 'logits', 'image_embeds' or 'pooler_output'"});
  // Images the model cannot read: the message names the file, what was found and expected.
  io::write_npy<float>(dir / "gray.npy", std::vector<float>(8 * 8), {1, 8, 8});
  io::write_npy<float>(dir / "large.npy", std::vector<float>(3 * 16 * 16), {3, 16, 16});
  const fs::path clip = families.front().f.dir;
  expect_failure(kInfer, {clip, "--image", dir / "gray.npy"}, 1, dir, {},
                 {(dir / "gray.npy").string(), "1 channels, expected 3"});
  expect_failure(kInfer, {clip, "--image", dir / "large.npy"}, 1, dir, {},
                 {(dir / "large.npy").string(), "image size 16 x 16, expected 8 x 8"});
}

}  // namespace
