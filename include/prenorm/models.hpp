#pragma once
// prenorm models: GPT and ViT over the four architectures, with the paper's configuration
// presets. A model holds parameters; its session (gpt_session.hpp, vit_session.hpp) holds
// the state of a forward: buffers, outputs and the KV cache.
#include "core.hpp"
#include "models/config.hpp"
#include "models/gpt.hpp"
#include "models/gpt_session.hpp"
#include "models/packing.hpp"
#include "models/vit.hpp"
#include "models/vit_session.hpp"
