#pragma once
// prenorm models: GPT and ViT over the four architectures, with the paper's configuration presets.
#include "core.hpp"
#include "models/config.hpp"
#include "models/gpt.hpp"
#include "models/vit.hpp"
