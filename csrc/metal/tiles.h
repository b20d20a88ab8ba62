// Tile constants shared by the Metal kernels and their host plans (plain C++ that
// Apple's Metal compiler also accepts).
#pragma once

namespace fusedconv::metal_plan {

// conv3x3: a threadgroup computes TM consecutive pixels of one output row x TN output
// channels with SG_M x SG_N simdgroups, each owning FM x FN 8x8 fragments
// (TM = SG_M*FM*8, TN = SG_N*FN*8); input channels are staged kConvBK at a time.
constexpr int kConvBK = 16;

// group_norm_stats: one threadgroup of kStatsThreads per (image, group).
constexpr int kStatsThreads = 256;
constexpr int kStatsThreadgroupFloats = kStatsThreads / 32 + 1;

}  // namespace fusedconv::metal_plan
