// Tile constants shared by the Metal kernels and their host plans (plain C++ that
// Apple's Metal compiler also accepts).
#pragma once

// Metal puts every program-scope variable in the constant address space ("program
// scope variable must reside in constant address space"), as MLX's STEEL_CONST does;
// host C++ has no address spaces. tests/metal_emu/rules.py enforces this.
#if defined(__METAL_VERSION__)
#define FC_CONST static constant constexpr
#else
#define FC_CONST static constexpr
#endif

namespace fusedconv {
namespace metal_plan {

// conv3x3: a threadgroup computes TM consecutive pixels of one output row x TN output
// channels with SG_M x SG_N simdgroups, each owning FM x FN 8x8 fragments
// (TM = SG_M*FM*8, TN = SG_N*FN*8); input channels are staged kConvBK at a time.
FC_CONST int kConvBK = 16;

// group_norm_stats: threadgroups of kStatsThreads reduce slices of one (image, group)
// (kStatsSlicePixels..., at most kStatsMaxSlices); merge threads take one each.
FC_CONST int kStatsThreads = 256;
FC_CONST int kStatsThreadgroupFloats = kStatsThreads / 32 + 1;
FC_CONST int kStatsSlicePixels = 4096;
FC_CONST int kStatsMaxSlices = 64;
FC_CONST int kStatsMergeThreads = 64;

// pixel_norm_stats: one thread per pixel.
FC_CONST int kPixelStatsThreads = 256;

}  // namespace metal_plan
}  // namespace fusedconv
