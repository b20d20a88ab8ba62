// Dispatch plans of the Metal kernels: kernel name, grid, threadgroup size,
// threadgroup memory and buffer order. Plain C++ shared by the Metal host code
// (primitives_metal.cpp) and the CPU emulator that runs the same .metal sources
// in CI (tests/metal_emu), so both launch kernels identically.
#pragma once

#include <string>

#include "metal/tiles.h"
#include "kernel_dtype.h"
#include "params.h"

namespace fusedconv::metal_plan {

struct Dim3 {
  unsigned x, y, z;
};

struct KernelPlan {
  std::string name;       // [[host_name]] of the instantiated kernel
  Dim3 threadgroups;      // grid, in threadgroups
  Dim3 threads;           // threads per threadgroup
  size_t threadgroup_bytes;  // the threadgroup array the kernel declares (checked by the emulator)
};

// ---- Buffer order (the kernels' [[buffer(i)]] indices) -------------------------

enum Conv3x3Buffer : int {
  kConvX = 0,
  kConvWeight = 1,
  kConvStats = 2,
  kConvGamma = 3,
  kConvBeta = 4,
  kConvBias = 5,
  kConvResidual = 6,
  kConvShortcutX = 7,
  kConvShortcutW = 8,
  kConvShortcutBias = 9,
  kConvOut = 10,
  kConvParams = 11,
  kConvBufferCount = 12,
};

// Both statistics kernels: partial reads x and writes the slices' moments, merge
// reads those and writes the [N, G, 2] output.
enum PixelNormStatsBuffer : int {
  kPixelStatsX = 0,
  kPixelStatsOut = 1,
  kPixelStatsParams = 2,
};

enum GroupNormStatsBuffer : int {
  kStatsIn = 0,
  kStatsOut = 1,
  kStatsParams = 2,
  kStatsSlices = 3,
  kStatsBufferCount = 4,
};

// ---- conv3x3 tile configurations (sizes in metal/tiles.h) ------------------------

struct ConvTile {
  int sg_m, sg_n, fm, fn;
  int tm() const { return sg_m * fm * 8; }
  int tn() const { return sg_n * fn * 8; }
  int threads() const { return sg_m * sg_n * 32; }
};
// General tile: 32 pixels x 32 channels, 4 simdgroups of 2x2 fragments.
constexpr ConvTile kConvTileWide{2, 2, 2, 2};
// Few output channels (conv_out has O = 3): 32 pixels x 8 channels, no wasted columns.
constexpr ConvTile kConvTileNarrow{4, 1, 1, 1};

using fusedconv::dtype_name;
using fusedconv::dtype_size;
using fusedconv::KernelDType;

// Threadgroup memory of a tile, in the input dtype: halo [3][TM+2][BK] + weights
// [TN][9][BK], reused by the shortcut pass as A [TM][BK] + B [TN][BK].
inline size_t conv_threadgroup_elements(const ConvTile& t) {
  return size_t(3) * (t.tm() + 2) * kConvBK + size_t(9) * kConvBK * t.tn();
}

inline KernelPlan plan_conv3x3(const Conv3x3Params& p, KernelDType dtype) {
  const ConvTile t = p.o <= 8 ? kConvTileNarrow : kConvTileWide;
  KernelPlan k;
  k.name = std::string("fc_conv3x3_") + dtype_name(dtype) + "_" + std::to_string(t.sg_m) + "x" +
           std::to_string(t.sg_n) + "_" + std::to_string(t.fm) + "x" + std::to_string(t.fn);
  k.threadgroups = {unsigned((p.wo + t.tm() - 1) / t.tm()), unsigned(p.ho),
                    unsigned(p.n * ((p.o + t.tn() - 1) / t.tn()))};
  k.threads = {unsigned(t.threads()), 1, 1};
  k.threadgroup_bytes = conv_threadgroup_elements(t) * dtype_size(dtype);
  return k;
}

// Slices of at least kStatsSlicePixels pixels (enough work to hide a threadgroup's
// start-up), at most kStatsMaxSlices per (image, group); none empty.
inline GroupNormSlices group_norm_slices(const GroupNormStatsParams& p) {
  const fc_int64 wanted = (p.hw + kStatsSlicePixels - 1) / kStatsSlicePixels;
  const fc_int64 count = wanted < 1 ? 1 : (wanted > kStatsMaxSlices ? kStatsMaxSlices : wanted);
  const fc_int64 pixels = (p.hw + count - 1) / count;
  return GroupNormSlices{int(pixels ? (p.hw + pixels - 1) / pixels : 1), pixels};
}

// Float scratch between the two statistics kernels: (count, mean, M2) per slice.
inline size_t group_norm_partials_floats(const GroupNormStatsParams& p, const GroupNormSlices& s) {
  return size_t(p.n) * p.groups * s.count * 3;
}

inline KernelPlan plan_group_norm_partial(const GroupNormStatsParams& p, const GroupNormSlices& s,
                                          KernelDType dtype) {
  return KernelPlan{std::string("fc_group_norm_partial_") + dtype_name(dtype),
                    {unsigned(s.count), unsigned(p.groups), unsigned(p.n)},
                    {unsigned(kStatsThreads), 1, 1},
                    kStatsThreadgroupFloats * sizeof(float)};
}

inline KernelPlan plan_group_norm_merge(const GroupNormStatsParams& p) {
  const unsigned rows = unsigned(p.n * p.groups);
  return KernelPlan{"fc_group_norm_merge", {(rows + kStatsMergeThreads - 1) / kStatsMergeThreads, 1, 1},
                    {unsigned(kStatsMergeThreads), 1, 1}, 0};
}

inline KernelPlan plan_pixel_norm_stats(const PixelNormStatsParams& p, KernelDType dtype) {
  return KernelPlan{std::string("fc_pixel_norm_stats_") + dtype_name(dtype),
                    {unsigned((p.pixels + kPixelStatsThreads - 1) / kPixelStatsThreads), 1, 1},
                    {unsigned(kPixelStatsThreads), 1, 1}, 0};
}

}  // namespace fusedconv::metal_plan
