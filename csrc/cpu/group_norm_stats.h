// CPU backend of the GroupNorm statistics: per (image, group) mean and rstd in
// f32, from per-chunk two-pass moments merged with Chan's formula in a fixed
// order (deterministic whatever the thread count).
#pragma once

#include <cstddef>

#include "cpu/dtype.h"
#include "params.h"

namespace fusedconv::cpu {

struct GroupNormStatsCpuPlan {
  int threads;
  int chunks;        // pixel chunks per image (capped: scratch does not grow with H*W)
  fc_int64 chunk_pixels;  // pixels per chunk
  size_t scratch_floats;  // N * chunks * G moments (3 doubles) + threads * 2 * C sums
};

GroupNormStatsCpuPlan plan_group_norm_stats(const GroupNormStatsParams& p, int threads);

// out: [N, G, 2] (mean, rstd).
void group_norm_stats(const GroupNormStatsParams& p, DType dt, const void* x, float* out,
                      const GroupNormStatsCpuPlan& plan, float* scratch);

}  // namespace fusedconv::cpu
