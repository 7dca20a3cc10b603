#pragma once
// prenorm train: backward passes, the cross-entropy loss, SGD and AdamW, and
// training through the converter (Pre-LN parameters, Pre-RMSNorm or
// Pre-CRMSNorm compute) that follows the Pre-LN trajectory exactly.
#include "convert/model_adjoint.hpp"
#include "core.hpp"
#include "train/block_backward.hpp"
#include "train/gpt_train.hpp"
#include "train/layers_backward.hpp"
#include "train/loss.hpp"
#include "train/optim.hpp"
#include "train/reparam_backward.hpp"
#include "train/reparam_step.hpp"
#include "train/trainer.hpp"
#include "train/vit_train.hpp"
