#pragma once
// prenorm I/O: safetensors and .npy files, 16-bit float conversions and
// atomic file writes. Needs nlohmann_json (link prenorm::io); the core
// headers do not.
#include "io/atomic_file.hpp"
#include "io/error.hpp"
#include "io/half.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
