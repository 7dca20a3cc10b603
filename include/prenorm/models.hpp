#pragma once
// prenorm models: one Transformer over the architectures, described by a
// TransformerConfig (GPT-2, ViT and the paper's presets are configs). A model
// holds parameters; a Session (session.hpp) holds the state of a forward:
// buffers, outputs and the KV cache. Gpt and Vit name a Transformer by the
// task it trains for.
#include "core.hpp"
#include "models/config.hpp"
#include "models/gpt.hpp"
#include "models/packing.hpp"
#include "models/session.hpp"
#include "models/transformer.hpp"
#include "models/vit.hpp"
