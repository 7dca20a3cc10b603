#pragma once
// prenorm layers: own weights and compose ops (Linear, Embedding, attention, MLP, the Pre-Norm block).
#include "core.hpp"
#include "layers/attention.hpp"
#include "layers/block.hpp"
#include "layers/embedding.hpp"
#include "layers/linear.hpp"
#include "layers/mlp.hpp"
#include "layers/topology.hpp"
