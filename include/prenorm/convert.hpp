#pragma once
// prenorm convert: the exact converter between Pre-LN, Pre-RMSNorm and
// Pre-CRMSNorm models, its compile-time plan, and its adjoint for training.
#include "convert/adjoint.hpp"
#include "convert/convert.hpp"
#include "convert/plan.hpp"
#include "convert/roles.hpp"
#include "convert/transforms.hpp"
#include "convert/zero_mean.hpp"
