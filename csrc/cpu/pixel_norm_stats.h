// CPU backend of the per-pixel norm statistics: sqrt(C) / max(||x[pixel, :]||_2, eps)
// for every pixel, accumulated in f32. No scratch.
#pragma once

#include "cpu/dtype.h"
#include "params.h"

namespace fusedconv::cpu {

// x: [pixels, C] of dt; out: [pixels] float.
void pixel_norm_stats(const PixelNormStatsParams& p, DType dt, const void* x, float* out, int threads);

}  // namespace fusedconv::cpu
