// How the params structs travel to the CUDA kernels. MLX's precompiled_cuda_kernel
// passes scalar kernel arguments one by one (int, float or bool), so each field of
// Conv3x3Params is its own int argument; these lists are the one definition of their
// order, expanded into the kernels' signatures and into the host's argument vectors.
#pragma once

#include "params.h"

#define FC_CONV3X3_FIELDS(X) \
  X(n) X(h) X(w) X(c) X(ho) X(wo) X(o) X(groups) X(pixel_norm) X(upsample) X(silu) X(has_bias) \
  X(has_residual) X(shortcut_c) X(has_shortcut_bias)

namespace fusedconv {
#define FC_COUNT_FIELD(f) +1
static_assert(sizeof(Conv3x3Params) == sizeof(int) * (0 FC_CONV3X3_FIELDS(FC_COUNT_FIELD)),
              "FC_CONV3X3_FIELDS must list every field of Conv3x3Params");
#undef FC_COUNT_FIELD
}  // namespace fusedconv
