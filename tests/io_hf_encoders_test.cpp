// The Hugging Face loaders of the encoder families CLIP vision, DINOv2 and
// DeiT (io/hf_clip_vision.hpp, hf_dinov2.hpp, hf_deit.hpp), against the
// checkpoints of tests/support/hf_fixtures.hpp and the long-double references
// of tests/support/hf_reference.hpp (written from the Hugging Face modeling
// code, independent of prenorm). For each variant of each family:
//  - load_any_model detects the layout from config.json, and <double> gives
//    the reference outputs within 1e-12, <float> within 1e-5 (max |diff| /
//    max |ref|), for F32, F16 and BF16 files;
//  - the residual stream starts uncentered (so a conversion that forgot to
//    center it, e.g. after CLIP's pre_layrnorm, fails), and every conversion
//    direction between Pre-LN, Pre-RMSNorm and Pre-CRMSNorm gives the
//    reference outputs (1e-12 in double), also through prenorm's own layout;
//  - the refusals name the key, the tensor or the image size.

#include <gtest/gtest.h>

#include <prenorm/convert.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include "support/hf_fixtures.hpp"
#include "support/hf_reference.hpp"
#include "support/hf_test_util.hpp"
#include "support/temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace io = prenorm::io;
namespace hf = prenorm_test::hf;
using prenorm::Arch;
using prenorm::ImageBatch;
using prenorm::Index;
using prenorm::RowMatrix;
using prenorm::Vit;
using io::Dtype;
using prenorm_test::hf::error_of;
using prenorm_test::hf::expect_error;
using prenorm_test::hf::max_relative_error;
using prenorm_test::hf::tolerance;

// Tiny models: OpenMP fork-joins cost more than the work.
[[maybe_unused]] const bool kSingleThreaded = (prenorm::set_num_threads(1), true);

constexpr int kImages = 2;
const hf::ImageSizes kSizes = {};  // every fixture's image geometry: 3 x 8 x 8

// The reference outputs of the images, a row each.
hf::Mat reference(const hf::Fixture& f, const std::vector<double>& pixels) {
  return hf::reference_outputs(f, pixels, kImages);
}

template <Arch A, class S>
RowMatrix<S> outputs(const Vit<A, S>& model, const std::vector<double>& pixels,
                     const typename Vit<A, S>::BlockHook* hook = nullptr) {
  const std::vector<S> values(pixels.begin(), pixels.end());
  const ImageBatch<S> batch{values, kImages, kSizes.channels, kSizes.image, kSizes.image};
  return hook ? model.forward(batch, *hook) : model.forward(batch);
}

// The Pre-LN ViT a file loads as (through detection).
template <class S>
Vit<Arch::PreLN, S> load_pre_ln(const hf::Fixture& f, io::Layout layout) {
  io::LoadedModel<S> loaded = io::load_any_model<S>(f.model_path());
  EXPECT_EQ(loaded.layout, layout);
  EXPECT_EQ(loaded.dtype, f.dtype);
  auto* model = std::get_if<Vit<Arch::PreLN, S>>(&loaded.model);
  if (!model) throw std::runtime_error("not a Pre-LN ViT");
  return std::move(*model);
}

struct EncoderCase {
  const char* name;
  io::Layout layout;
  std::function<hf::Fixture(const fs::path&, Dtype)> write;
};

const EncoderCase kCases[] = {
    {"clip_vision_projection", io::Layout::HfClipVision,
     [](const fs::path& dir, Dtype dtype) { return hf::write_clip_vision_fixture(dir, {}, dtype, 11); }},
    {"clip_vision_pooled", io::Layout::HfClipVision,
     [](const fs::path& dir, Dtype dtype) {
       return hf::write_clip_vision_fixture(dir, {.projection = false}, dtype, 12);
     }},
    {"clip_whole", io::Layout::HfClipVision,
     [](const fs::path& dir, Dtype dtype) {
       return hf::write_clip_vision_fixture(dir, {.whole = true}, dtype, 13);
     }},
    {"dinov2_classifier", io::Layout::HfDinov2,
     [](const fs::path& dir, Dtype dtype) { return hf::write_dinov2_fixture(dir, {}, dtype, 14); }},
    {"dinov2_model", io::Layout::HfDinov2,
     [](const fs::path& dir, Dtype dtype) {
       return hf::write_dinov2_fixture(dir, {.prefix = false, .classifier = false}, dtype, 15);
     }},
    {"deit_teacher", io::Layout::HfDeit,
     [](const fs::path& dir, Dtype dtype) { return hf::write_deit_fixture(dir, {}, dtype, 16); }},
    {"deit_classifier", io::Layout::HfDeit,
     [](const fs::path& dir, Dtype dtype) {
       return hf::write_deit_fixture(dir, {.teacher = false, .mask_token = true}, dtype, 17);
     }},
};

void PrintTo(const EncoderCase& c, std::ostream* os) { *os << c.name; }

class HfEncoders : public ::testing::TestWithParam<EncoderCase> {};

TEST_P(HfEncoders, LoadedModelGivesTheReferenceOutputs) {
  const EncoderCase& c = GetParam();
  const std::vector<double> pixels = hf::random_images(kSizes, kImages, 7);
  for (Dtype dtype : {Dtype::F32, Dtype::F16, Dtype::BF16}) {
    prenorm_test::TempDir dir("prenorm-hf-encoders");
    const hf::Fixture f = c.write(dir.path(), dtype);
    const hf::Mat ref = reference(f, pixels);  // of the file's (rounded) values
    const std::string what = std::string(c.name) + " " + std::string(io::dtype_name(dtype));
    EXPECT_LE(max_relative_error(outputs(load_pre_ln<double>(f, c.layout), pixels), ref), 1e-12) << what;
    EXPECT_LE(max_relative_error(outputs(load_pre_ln<float>(f, c.layout), pixels), ref), 1e-5) << what;
  }
}

TEST_P(HfEncoders, EveryConversionGivesTheReferenceOutputs) {
  const EncoderCase& c = GetParam();
  prenorm_test::TempDir dir("prenorm-hf-encoders");
  const hf::Fixture f = c.write(dir.path() / "hf", Dtype::F32);
  const std::vector<double> pixels = hf::random_images(kSizes, kImages, 8);
  const hf::Mat ref = reference(f, pixels);
  const Vit<Arch::PreLN, double> ln = load_pre_ln<double>(f, c.layout);

  // The stream starts with rows of mean far from zero: Pre-RMSNorm needs them centered.
  double start_mean = 0;
  const typename Vit<Arch::PreLN, double>::BlockHook hook = [&](Index i, const RowMatrix<double>& h) {
    if (i == -1)
      for (Index r = 0; r < h.rows(); ++r)
        start_mean = std::max(start_mean, std::abs(h.row(r).mean()) / h.row(r).norm() *
                                              std::sqrt(double(h.cols())));
  };
  EXPECT_LE(max_relative_error(outputs(ln, pixels, &hook), ref), 1e-12);
  EXPECT_GT(start_mean, 0.1) << c.name;

  const auto rms = prenorm::convert<Arch::PreRMSNorm>(ln);
  const auto crms = prenorm::convert<Arch::PreCRMSNorm>(ln);
  EXPECT_LE(prenorm::zero_mean_report(rms).relative, 1e-12) << c.name;
  EXPECT_LE(prenorm::zero_mean_report(crms).relative, 1e-12) << c.name;
  const auto expect = [&](const auto& model, const char* path) {
    EXPECT_LE(max_relative_error(outputs(model, pixels), ref), tolerance<double>()) << c.name << " " << path;
  };
  expect(rms, "ln->rms");
  expect(crms, "ln->crms");
  expect(prenorm::convert<Arch::PreCRMSNorm>(rms), "ln->rms->crms");
  expect(prenorm::convert<Arch::PreRMSNorm>(crms), "ln->crms->rms");
  expect(prenorm::convert<Arch::PreLN>(rms), "ln->rms->ln");
  expect(prenorm::convert<Arch::PreLN>(crms), "ln->crms->ln");

  // Through prenorm's layout (the config options in its metadata), in F64.
  io::save_prenorm(crms, dir.path() / "crms.safetensors", Dtype::F64);
  io::LoadedModel<double> loaded = io::load_any_model<double>(dir.path() / "crms.safetensors");
  ASSERT_EQ(loaded.layout, io::Layout::Prenorm);
  const auto* back = std::get_if<Vit<Arch::PreCRMSNorm, double>>(&loaded.model);
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->config.stem_norm, crms.config.stem_norm);
  EXPECT_EQ(back->config.distillation_token, crms.config.distillation_token);
  EXPECT_EQ(back->config.pooling, crms.config.pooling);
  expect(*back, "ln->crms, saved and loaded");
}

INSTANTIATE_TEST_SUITE_P(Families, HfEncoders, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ===========================================================================
// What each family becomes, and its refusals
// ===========================================================================

// A fixture rewritten: its config edited, its tensors edited.
hf::Fixture rewrite(const hf::Fixture& f, const fs::path& dir,
                    const std::function<void(nlohmann::ordered_json&)>& edit_config,
                    const std::function<void(hf::HfTensors&)>& edit_tensors = {}) {
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(f.config.dump());
  hf::HfTensors tensors = f.tensors;
  if (edit_config) edit_config(config);
  if (edit_tensors) edit_tensors(tensors);
  return hf::write_fixture(dir, config, tensors, f.dtype);
}

std::string load_error(const hf::Fixture& f) {
  return error_of([&] { (void)io::load_any_model<double>(f.model_path()); });
}

TEST(HfEncoders, FamiliesBecomeTheirVitOptions) {
  prenorm_test::TempDir dir("prenorm-hf-encoders");
  const auto clip = load_pre_ln<double>(hf::write_clip_vision_fixture(dir / "clip", {}, Dtype::F32, 1),
                                        io::Layout::HfClipVision);
  EXPECT_TRUE(clip.config.stem_norm);
  EXPECT_EQ(clip.config.activation, prenorm::Activation::QuickGelu);
  EXPECT_EQ(clip.config.classes, 6);  // projection_dim
  EXPECT_EQ(clip.patch.bias, prenorm::Vector<double>::Zero(16));
  const auto dino = load_pre_ln<double>(hf::write_dinov2_fixture(dir / "dino", {}, Dtype::F32, 2),
                                        io::Layout::HfDinov2);
  EXPECT_EQ(dino.config.pooling, prenorm::Pooling::ClsPatchMean);
  EXPECT_EQ(dino.config.mlp_width, 64);  // hidden_size * mlp_ratio
  const auto deit = load_pre_ln<double>(hf::write_deit_fixture(dir / "deit", {}, Dtype::F32, 3),
                                        io::Layout::HfDeit);
  EXPECT_TRUE(deit.config.distillation_token);
  EXPECT_EQ(deit.config.pooling, prenorm::Pooling::ClsDistillation);
  EXPECT_EQ(deit.config.tokens(), 2 + 4);
  // Without model_type, the architectures tell the family.
  const hf::Fixture f = hf::write_deit_fixture(dir / "deit2", {}, Dtype::F32, 3);
  const hf::Fixture g = rewrite(f, dir / "deit3", [](auto& c) { c.erase("model_type"); });
  EXPECT_EQ(io::detect_layout(io::SafetensorsFile(g.model_path())), io::Layout::HfDeit);
  // Plain ViT files and writers refuse the options they cannot hold.
  expect_error([&] { (void)io::vit_config_to_json(deit.config); }, {"distillation token"});
}

TEST(HfEncoders, RefusalsNameTheKeyTensorOrSize) {
  prenorm_test::TempDir dir("prenorm-hf-encoders");
  const hf::Fixture clip = hf::write_clip_vision_fixture(dir / "clip", {.whole = true}, Dtype::F32, 1);
  EXPECT_NE(load_error(rewrite(clip, dir / "c1", [](auto& c) { c.erase("vision_config"); }))
                .find("'vision_config' is missing"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(clip, dir / "c2", [](auto& c) { c["vision_config"].erase("intermediate_size"); }))
                .find("missing 'intermediate_size'"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(clip, dir / "c3", {}, [](auto& t) { t["vision_model.extra"] = {{1}, {0.0}}; }))
                .find("unknown tensor 'vision_model.extra'"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(clip, dir / "c4", {}, [](auto& t) {
                         t["visual_projection.weight"].shape = {3, 32};
                       })).find("'visual_projection.weight' has shape [3, 32], expected [6, 16]"),
            std::string::npos);

  const hf::Fixture dino = hf::write_dinov2_fixture(dir / "dino", {}, Dtype::F32, 2);
  EXPECT_NE(load_error(rewrite(dino, dir / "d1", [](auto& c) { c["use_swiglu_ffn"] = true; }))
                .find("'use_swiglu_ffn' is true"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(dino, dir / "d2", [](auto& c) { c["qkv_bias"] = false; }))
                .find("'qkv_bias' is false"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(dino, dir / "d3", [](auto& c) {
                         c.erase("id2label");
                         c.erase("label2id");
                       })).find("missing 'num_labels' and 'id2label'"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(dino, dir / "d4", {}, [](auto& t) { t.erase("dinov2.embeddings.mask_token"); }))
                .find("missing tensor 'dinov2.embeddings.mask_token'"),
            std::string::npos);
  // Position embeddings for 8 x 8 images: other sizes are refused, not interpolated.
  const auto model = load_pre_ln<double>(dino, io::Layout::HfDinov2);
  const std::vector<double> big(3 * 16 * 16, 0.5);
  expect_error([&] { (void)model.forward(ImageBatch<double>{big, 1, 3, 16, 16}); },
               {"image size 16 x 16, expected 8 x 8", "position embedding"});

  const hf::Fixture deit = hf::write_deit_fixture(dir / "deit", {}, Dtype::F32, 3);
  EXPECT_NE(load_error(rewrite(deit, dir / "e1", {}, [](auto& t) { t.erase("distillation_classifier.bias"); }))
                .find("missing tensor 'distillation_classifier.bias'"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(deit, dir / "e2", {}, [](auto& t) {
                         t["deit.embeddings.position_embeddings"].shape = {1, 5, 16};
                         t["deit.embeddings.position_embeddings"].values.resize(5 * 16);
                       })).find("(1, 2 + (image_size/patch_size)^2, hidden_size)"),
            std::string::npos);
  EXPECT_NE(load_error(rewrite(deit, dir / "e3", [](auto& c) { c["hidden_act"] = "swish"; }))
                .find("'hidden_act' is \"swish\""),
            std::string::npos);
}

}  // namespace
