#pragma once
// prenorm I/O: safetensors and .npy files, 16-bit float conversions,
// atomic file writes, and model checkpoints in three layouts (Hugging Face
// GPT-2 and ViT, prenorm's own) with a loader that detects the layout.
// Needs nlohmann_json (link prenorm::io); the core headers do not.
#include "io/any_model.hpp"
#include "io/atomic_file.hpp"
#include "io/dtype.hpp"
#include "io/error.hpp"
#include "io/half.hpp"
#include "io/hf_bloom.hpp"
#include "io/hf_decoder_common.hpp"
#include "io/hf_gpt2.hpp"
#include "io/hf_gpt_bigcode.hpp"
#include "io/hf_gpt_neo.hpp"
#include "io/hf_gpt_neox.hpp"
#include "io/hf_gptj.hpp"
#include "io/hf_opt.hpp"
#include "io/hf_phi.hpp"
#include "io/hf_vit.hpp"
#include "io/layout_util.hpp"
#include "io/mapped_file.hpp"
#include "io/npy.hpp"
#include "io/prenorm_layout.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_header.hpp"
#include "io/safetensors_reader.hpp"
#include "io/safetensors_writer.hpp"
#include "io/utf8.hpp"
