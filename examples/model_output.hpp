#pragma once
// What a checkpoint's model outputs, as the Hugging Face class names it, for
// prenorm-infer (which prints it by that name) and prenorm-convert (which
// carries it into prenorm's layout as the metadata key "output"):
//   image_embeds   CLIP vision with visual_projection (CLIPVisionModelWithProjection,
//                  CLIPModel.get_image_features): the projected class token
//   pooler_output  CLIP vision without it (CLIPVisionModel) and DINOv2 without
//                  a classifier (Dinov2Model): the normalized class token
//   logits         every other model (GPT, ViT, DINOv2 and DeiT classifiers)
// The loaders give both of the pooled outputs an identity head; a converted
// model's head has the final norm's affine folded in, so what it gives cannot
// be told from its weights: hence the metadata.

#include <prenorm/io.hpp>

#include <string>
#include <string_view>

namespace prenorm_tools {

// The Hugging Face name of what the model in `file` (read as `layout`) outputs.
inline std::string model_output(const prenorm::io::SafetensorsFile& file, prenorm::io::Layout layout) {
  namespace io = prenorm::io;
  switch (layout) {
    case io::Layout::Prenorm: {
      const io::PrenormMetadata meta = io::read_prenorm_metadata(file);
      return meta.kind == io::ModelKind::Vit ? meta.vit_output : "logits";
    }
    case io::Layout::HfClipVision:
      return file.contains("visual_projection.weight") ? "image_embeds" : "pooler_output";
    case io::Layout::HfDinov2:
      return file.contains("classifier.weight") ? "logits" : "pooler_output";
    default:
      return "logits";
  }
}

// How prenorm-infer names an output: "logits", "image embeddings", "pooled output".
inline std::string_view output_label(std::string_view output) {
  if (output == "image_embeds") return "image embeddings";
  if (output == "pooler_output") return "pooled output";
  return "logits";
}

}  // namespace prenorm_tools
