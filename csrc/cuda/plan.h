// Dispatch plans of the CUDA kernels: which compiled module and kernel, the grid, the
// block size and the dynamic shared memory. Host-only C++ (no CUDA, no MLX), so the
// choices can be unit-tested and read apart from the launch glue.
#pragma once

#include <stdexcept>
#include <string>

#include "cuda/tiles.h"
#include "kernel_dtype.h"
#include "params.h"

namespace fusedconv::cuda_plan {

using fusedconv::dtype_name;
using fusedconv::KernelDType;

struct KernelPlan {
  std::string module;  // its image's stem: the .cu file's, or the kernel's own (conv3x3, group_norm_stats)
  std::string name;    // the kernel's extern "C" name
  unsigned blocks_x = 1, blocks_y = 1;
  unsigned threads = 1;
  unsigned shared_bytes = 0;  // dynamic shared memory
};

// A 1-D grid of `blocks` blocks as 2-D (the kernels index it linearly): MLX takes the
// grid in threads as ints, so blocks_x * threads stays below 2^31.
inline void set_grid(KernelPlan& k, long long blocks, unsigned threads) {
  const long long max_x = (1ll << 30) / threads;
  k.threads = threads;
  k.blocks_x = unsigned(blocks < max_x ? blocks : max_x);
  const long long y = (blocks + k.blocks_x - 1) / k.blocks_x;
  if (y > 65535) throw std::invalid_argument("fusedconv: tensor too large for one CUDA launch");
  k.blocks_y = unsigned(y);
}

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// A kernel built as its own module (conv3x3.cu's and group_norm_stats.cu's kernels).
inline KernelPlan own_module(std::string name) { return KernelPlan{name, name}; }

inline long long conv_tiles(const Conv3x3Params& p, int rows, int cols, int tile_n) {
  return p.n * ceil_div(p.ho, rows) * ceil_div(p.wo, cols) * ceil_div(p.o, tile_n);
}

// The tensor-core kernel's shared memory: two halo and two weight buffers in the input
// dtype, the norm's affine (2 floats) per input channel, the staging buffer of one
// chunk's raw input and a float per halo pixel. Always the size for kMmaMaxNormChannels:
// MLX raises a kernel's dynamic shared-memory limit once, at its first launch.
inline unsigned mma_shared_bytes() {
  const int halo_pixels = (kTileRows + 2) * (kTileCols + 2);
  const int weights = 9 * kMmaTileN * kMmaRowStride;
  return unsigned(2 * (halo_pixels * kMmaRowStride + weights) * 2 + kMmaMaxNormChannels * 2 * 4 +
                  halo_pixels * kMmaBK * 2 + halo_pixels * 4);
}

// The Hopper kernel's: 2 x kWgmmaStages halo-sized buffers (halo stages and staging
// buffers of raw input), kWgmmaStages weight stages, the norm's affine, a float per halo
// pixel and an mbarrier per weight stage.
inline unsigned wgmma_shared_bytes() {
  const int halo_pixels = (kWgmmaTileRows + 2) * (kWgmmaTileCols + 2);
  const int weights = 9 * kWgmmaTileN * kMmaBK;
  return unsigned(2 * kWgmmaStages * halo_pixels * kMmaBK * 2 + kWgmmaStages * weights * 2 +
                  kMmaMaxNormChannels * 2 * 4 + halo_pixels * 4 + kWgmmaStages * 8);
}

// The wgmma kernel's weights, repacked by fc_pack_conv3x3_weights: whole tiles of
// kWgmmaTileN output x kMmaBK input channels x 9 taps, one thread per 8-channel vector.
inline long long packed_weight_elements(const Conv3x3Params& p) {
  return ceil_div(p.o, kWgmmaTileN) * kWgmmaTileN * 9 * ceil_div(p.c, kMmaBK) * kMmaBK;
}

inline KernelPlan plan_pack_conv3x3_weights(const Conv3x3Params& p) {
  KernelPlan k{"pack_conv3x3_weights", "fc_pack_conv3x3_weights"};
  set_grid(k, ceil_div(packed_weight_elements(p) / 8, kPackThreads), kPackThreads);
  return k;
}

// The tensor-core kernel family of a conv whose inputs those kernels take (bf16/fp16 in
// aligned 8-channel vectors, C <= kMmaMaxNormChannels, O > kNarrowN): "wgmma" where the
// device loads sm_90a code, "mma", or "simt" where neither's shared memory fits.
inline const char* tensor_core_family(unsigned max_shared_bytes, bool sm90a) {
  if (sm90a && wgmma_shared_bytes() <= max_shared_bytes) return "wgmma";
  return mma_shared_bytes() <= max_shared_bytes ? "mma" : "simt";
}

// max_shared_bytes: the most dynamic shared memory the device lets one block opt into;
// aligned: x and the weights start on 16 bytes (the tensor-core kernels copy 8-channel
// vectors, so they also need C % 8 == 0); sm90a: the device loads sm_90a code and the
// wgmma kernels' are installed.
inline KernelPlan plan_conv3x3(const Conv3x3Params& p, KernelDType dt, unsigned max_shared_bytes, bool aligned,
                               bool sm90a) {
  // It also addresses an image's input in 32-bit counts of 8-element vectors.
  const bool vectors = p.c % 8 == 0 && aligned && (long long)p.h * p.w * (p.c / 8) < 0xffffffffll;
  const bool tensor_inputs = dt != KernelDType::float32 && p.c <= kMmaMaxNormChannels && vectors;
  const bool narrow = tensor_inputs && p.o <= kNarrowN;
  const std::string family = tensor_inputs && !narrow ? tensor_core_family(max_shared_bytes, sm90a) : "simt";
  const bool wgmma = family == "wgmma", mma = family == "mma";
  // Without a norm or SiLU the input is copied into the halo as it is.
  const char* prologue = p.groups > 0 || p.pixel_norm || p.silu ? "_act" : "_copy";
  if (narrow) {
    KernelPlan k = own_module(std::string("fc_conv3x3_narrow_") + dtype_name(dt) + prologue);
    set_grid(k, conv_tiles(p, kTileRows, kTileCols, kNarrowN), kNarrowThreads);
    return k;
  }
  if (!wgmma && !mma) {
    // f32 at full precision; inputs not in aligned 8-channel vectors; GPUs short of shared memory.
    const int tn = p.o <= kSimtRgbN ? kSimtRgbN : p.o <= kSimtNarrowN ? kSimtNarrowN : kSimtTileN;
    KernelPlan k = own_module(std::string("fc_conv3x3_simt_") + dtype_name(dt) + "_" + std::to_string(tn));
    set_grid(k, conv_tiles(p, kTileRows, kTileCols, tn), kSimtThreads);
    return k;
  }
  KernelPlan k = own_module(std::string(wgmma ? "fc_conv3x3_wgmma_" : "fc_conv3x3_mma_") + dtype_name(dt) + prologue);
  if (wgmma) {
    set_grid(k, conv_tiles(p, kWgmmaTileRows, kWgmmaTileCols, kWgmmaTileN), kWgmmaThreads);
    k.shared_bytes = wgmma_shared_bytes();
  } else {
    set_grid(k, conv_tiles(p, kTileRows, kTileCols, kMmaTileN), kMmaThreads);
    k.shared_bytes = mma_shared_bytes();
  }
  return k;
}

// Whether the statistics take the rows kernel: C in whole 16-byte vectors, at most
// kStatsThreads of them a pixel, x aligned to 16 bytes. Else the element-wise kernel.
inline bool group_norm_rows(const GroupNormStatsParams& p, KernelDType dt, bool aligned) {
  const int vec = int(16 / dtype_size(dt));
  return aligned && p.c % vec == 0 && p.c / vec <= kStatsThreads;
}

// How many slices of pixels each image (rows kernel) or each (image, group) (element-wise
// kernel) of the statistics is cut into: about kStatsSliceElements elements each, at most
// kStatsMaxSlices (bounded scratch: 2 floats per (image, group, slice)).
struct StatsSlices {
  int count;
  int pixels;  // per slice; the last may hold fewer
};

inline StatsSlices group_norm_slices(const GroupNormStatsParams& p, bool rows) {
  const long long elements = p.hw * (rows ? p.c : p.c / p.groups);
  long long count = ceil_div(elements, kStatsSliceElements);
  count = count < 1 ? 1 : (count > kStatsMaxSlices ? kStatsMaxSlices : count);
  const long long pixels = ceil_div(p.hw, count);
  if (pixels > (1ll << 31) - 1) throw std::invalid_argument("fusedconv: image too large for group_norm_stats");
  return StatsSlices{int(ceil_div(p.hw, pixels)), int(pixels)};
}

inline KernelPlan plan_group_norm_partial(const GroupNormStatsParams& p, const StatsSlices& s, KernelDType dt,
                                          bool rows) {
  KernelPlan k = own_module(std::string(rows ? "fc_group_norm_partial_rows_" : "fc_group_norm_partial_") +
                            dtype_name(dt));
  set_grid(k, (long long)p.n * s.count * (rows ? 1 : p.groups), kStatsThreads);
  return k;
}

inline KernelPlan plan_group_norm_merge(const GroupNormStatsParams& p, KernelDType dt) {
  KernelPlan k = own_module(std::string("fc_group_norm_merge_") + dtype_name(dt));
  set_grid(k, ceil_div((long long)p.n * p.groups * 32, kStatsMergeThreads), kStatsMergeThreads);
  return k;
}

inline KernelPlan plan_pixel_norm_stats(const PixelNormStatsParams& p, KernelDType dt) {
  KernelPlan k{"pixel_norm_stats", std::string("fc_pixel_norm_stats_") + dtype_name(dt)};
  const long long blocks = ceil_div(p.pixels, kPixelStatsThreads / 32);
  set_grid(k, blocks < 65536 ? blocks : 65536, kPixelStatsThreads);  // a grid-stride loop does the rest
  return k;
}

}  // namespace fusedconv::cuda_plan
