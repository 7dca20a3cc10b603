#pragma once
// prenorm ops: stateless row-wise kernels over row-major [rows x width] matrices.
#include "core.hpp"
#include "ops/arch_traits.hpp"
#include "ops/compress.hpp"
#include "ops/crms_norm.hpp"
#include "ops/layer_norm.hpp"
#include "ops/main_branch.hpp"
#include "ops/norm_types.hpp"
#include "ops/rms_norm.hpp"
#if __has_include("ops/activation.hpp")
#include "ops/activation.hpp"
#endif
#if __has_include("ops/softmax.hpp")
#include "ops/softmax.hpp"
#endif
