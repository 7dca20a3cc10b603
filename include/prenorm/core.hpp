#pragma once
// prenorm core: types, architectures, errors and threading shared by every module.
#include "core/arch.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/types.hpp"
