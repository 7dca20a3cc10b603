// A program that uses prenorm the way a downstream project would. Built by the
// packaging tests (tests/package/run.cmake) through find_package,
// add_subdirectory and FetchContent.
#include <prenorm/prenorm.hpp>  // everything but io
#include <prenorm/core.hpp>

#if PRENORM_CONSUMER_IO && __has_include(<prenorm/io.hpp>)
#include <prenorm/io.hpp>  // needs prenorm::io (nlohmann_json)
#endif

#include <cstddef>
#include <iostream>
#include <vector>

static_assert(prenorm::main_width(prenorm::Arch::PreCRMSNorm, 768) == 767,
              "Pre-CRMSNorm compresses the main branch to d-1");

// The largest |a - b| over two logit matrices of the same shape.
static float max_difference(const prenorm::RowMatrix<float>& a, const prenorm::RowMatrix<float>& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

// Instantiates the library's main templates in the consumer's own build (its
// CMakeLists turn warnings into errors): a small Pre-LN GPT converted to
// Pre-CRMSNorm, a prompt forward, the same logits through the KV cache, and a
// ViT, and with prenorm::io the converted GPT saved and loaded back. Width 48
// keeps the compressed main branch (47) off the packet grid, so the padded and
// realigned products and the norms' tails all run.
static bool models_agree() {
  using prenorm::Arch;
  prenorm::GptConfig gpt_config{.vocab = 50, .context = 32, .width = 48, .heads = 4,
                                .layers = 2, .mlp_width = 96};
  prenorm::Gpt<Arch::PreLN, float> pre_ln(gpt_config);
  pre_ln.init_random(1, 0.02, /*random_affine=*/true);
  auto pre_crms = prenorm::convert<Arch::PreCRMSNorm>(pre_ln);
  std::vector<int> ids(20);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = int(i * 7 % 50);
  const prenorm::TokenBatch prompt{ids, 1, 20};
  const prenorm::RowMatrix<float> reference = pre_ln.forward(prompt);
  const prenorm::RowMatrix<float> converted = pre_crms.forward(prompt);
  prenorm::Session session(pre_crms);
  session.prefill({std::vector<int>(ids.begin(), ids.end() - 1), 1, 19});
  const prenorm::RowMatrix<float> last = session.step(std::vector<int>{ids.back()});

  prenorm::VitConfig vit_config{.image_size = 8, .patch_size = 4, .channels = 3, .classes = 5,
                                .width = 48, .heads = 4, .layers = 2, .mlp_width = 96};
  prenorm::Vit<Arch::PreLN, float> vit(vit_config);
  vit.init_random(2, 0.02, /*random_affine=*/true);
  const prenorm::RowMatrix<float> patches = prenorm::RowMatrix<float>::Random(2 * 4, 48);
  const prenorm::RowMatrix<float> vit_reference = vit.forward_patches(patches);
  auto vit_crms = prenorm::convert<Arch::PreCRMSNorm>(vit);

  const float tolerance = 1e-4f;
  bool agree = max_difference(converted, reference) < tolerance &&
               max_difference(last, reference.bottomRows(1)) < tolerance &&
               max_difference(vit_crms.forward_patches(patches), vit_reference) < tolerance;
#if PRENORM_CONSUMER_IO
  // The converted GPT through a safetensors file in memory and back.
  namespace io = prenorm::io;
  const std::vector<std::byte> file = io::save_prenorm(pre_crms, io::Dtype::F32).bytes();
  auto loaded = io::load_prenorm<prenorm::Gpt<Arch::PreCRMSNorm, float>>(
      io::SafetensorsFile::from_bytes(file, "consumer.safetensors"));
  agree = agree && max_difference(loaded.forward(prompt), converted) == 0.0f;
#endif
  return agree;
}

int main() {
  constexpr auto arch = prenorm::Arch::PreCRMSNorm;
  if (!models_agree()) {
    std::cout << "prenorm consumer: a converted (or saved and loaded) model does not give the Pre-LN logits\n";
    return 1;
  }
  std::cout << "prenorm consumer (" PRENORM_CONSUMER_KIND "): " << prenorm::arch_name(arch)
            << " at d=768 has main width " << prenorm::main_width(arch, 768)
            << (PRENORM_CONSUMER_IO ? ", with prenorm::io" : ", without prenorm::io") << '\n';
  return 0;
}
