// Per-pixel norm statistics: sqrt(C) / max(||x[pixel, :]||_2, eps), one thread per
// pixel reading its C channels (contiguous in NHWC), accumulated in f32.
#include <metal_stdlib>

#include "metal/dtype.h"
#include "metal/kernel_defs.h"
#include "params.h"

using namespace metal;
using fusedconv::PixelNormStatsParams;

template <typename D>
[[kernel]] void pixel_norm_stats(
    const device typename D::storage* x [[buffer(0)]],
    device float* out [[buffer(1)]],
    constant PixelNormStatsParams& p [[buffer(2)]],
    uint index [[thread_position_in_grid]]) {
  if (ulong(index) >= ulong(p.pixels)) return;
  const device typename D::storage* v = x + ulong(index) * ulong(p.c);
  float ss = 0.0f;
  for (int c = 0; c < p.c; ++c) {
    const float a = D::load(v[c]);
    ss += a * a;
  }
  out[index] = sqrt(float(p.c)) / max(sqrt(ss), p.eps);
}

FC_INSTANTIATE("fc_pixel_norm_stats_float32", pixel_norm_stats<fc_float32>)
FC_INSTANTIATE("fc_pixel_norm_stats_float16", pixel_norm_stats<fc_float16>)
FC_INSTANTIATE("fc_pixel_norm_stats_bfloat16", pixel_norm_stats<fc_bfloat16>)
