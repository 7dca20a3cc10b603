#pragma once
// prenorm: everything except I/O.
//
// Modules, lowest first: core -> ops -> layers -> models -> convert / train.
// The I/O module (safetensors, model files) needs nlohmann_json and the
// prenorm::io CMake target, so it is not included here: include
// <prenorm/io.hpp> yourself and link prenorm::io.

#include "core.hpp"

#if __has_include("ops.hpp")
#include "ops.hpp"
#endif
#if __has_include("layers.hpp")
#include "layers.hpp"
#endif
#if __has_include("models.hpp")
#include "models.hpp"
#endif
#if __has_include("convert.hpp")
#include "convert.hpp"
#endif
#if __has_include("train.hpp")
#include "train.hpp"
#endif
