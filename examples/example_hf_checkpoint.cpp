// example_hf_checkpoint: load a Hugging Face GPT-2 checkpoint (model.safetensors
// + config.json), convert it to Pre-CRMSNorm, and save the converted model in
// prenorm's own layout (README.md, "Checkpoint layout"). Needs prenorm::io.
//
// Nothing is downloaded here: the program first writes a small random GPT-2
// checkpoint into a temporary folder with the library's writer (save_hf_gpt2),
// then loads it as a user would load a real one, e.g. the "gpt2" model saved
// by transformers' save_pretrained(..., safe_serialization=True).
// Exit code 1 if a model does not compute what it should.

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace io = prenorm::io;
using prenorm::Arch;
using Logits = prenorm::RowMatrix<float>;  // [tokens x vocab]

// A temporary folder, removed with everything in it at the end.
struct TempDir {
  fs::path path = fs::temp_directory_path() /
                  ("prenorm-example-hf-" + std::to_string(std::random_device{}()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};

int main() {
  const TempDir dir;
  const fs::path hf_file = dir.path / "model.safetensors", hf_config = dir.path / "config.json";

  // 0. The stand-in checkpoint: a tiny random GPT-2 (2 layers, width 64).
  const prenorm::GptConfig tiny{.vocab = 101, .context = 32, .width = 64, .heads = 4,
                                .layers = 2, .mlp_width = 256};
  prenorm::Gpt<Arch::PreLN, float> original(tiny);
  original.init_random(/*seed=*/11, /*stddev=*/0.2, /*random_affine=*/true);
  io::save_hf_gpt2(original, hf_file, io::Dtype::F32);
  io::write_json_file(hf_config, io::gpt2_config_to_json(original.config));

  // 1. Load it: config.json beside the file gives the shapes, the file the
  //    weights (any of F32, F16, BF16, F64; converted to float here). A Pre-LN GPT.
  auto gpt2 = io::load_hf_gpt2<float>(hf_file);

  // 2. Convert, and save in prenorm's layout (the metadata records the source).
  auto crms = prenorm::convert<Arch::PreCRMSNorm>(gpt2);
  const fs::path out = dir.path / "model.pre_crmsnorm.safetensors";
  io::save_prenorm(crms, out, io::Dtype::F32, {.converted_from = Arch::PreLN});
  auto reloaded = io::load_prenorm<prenorm::Gpt<Arch::PreCRMSNorm, float>>(out);
  std::printf("wrote %s (%lld bytes): Pre-CRMSNorm, main branch width %lld\n", out.filename().c_str(),
              (long long)fs::file_size(out), (long long)reloaded.main());

  // 3. The checks, on one sequence of 16 tokens.
  std::vector<int> ids;
  for (int i = 0; i < 16; ++i) ids.push_back((i * 29 + 3) % int(gpt2.config.vocab));
  const prenorm::TokenBatch tokens(ids, /*batch=*/1, /*seq=*/16);
  const Logits want = original.forward(tokens);
  const Logits loaded = gpt2.forward(tokens);
  const Logits converted = crms.forward(tokens);
  const Logits saved = reloaded.forward(tokens);
  const double load_diff = (loaded - want).cwiseAbs().maxCoeff();
  const double convert_diff = (converted - want).cwiseAbs().maxCoeff();
  const double save_diff = (saved - converted).cwiseAbs().maxCoeff();
  const double scale = want.cwiseAbs().maxCoeff();
  std::printf("max |logit diff|: loaded GPT-2 vs written %.2e, converted vs GPT-2 %.2e, "
              "reloaded vs converted %.2e (max |logit| %.2f)\n",
              load_diff, convert_diff, save_diff, scale);

  // F32 files hold the floats exactly; the conversion rounds (in float).
  const bool ok = load_diff == 0 && save_diff == 0 && convert_diff <= 1e-4 * (1 + scale);
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
