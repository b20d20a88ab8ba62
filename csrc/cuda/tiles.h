// Tile constants shared by the CUDA kernels and their host plans (cuda/plan.h).
#pragma once

namespace fusedconv {
namespace cuda_plan {

// conv3x3 tiles: kTileRows x kTileCols output pixels (a near-square patch: its input
// halo is (rows + 2) x (cols + 2) pixels, 1.33 per output pixel) per block.
constexpr int kTileRows = 8;
constexpr int kTileCols = 32;

// On tensor cores (bf16/fp16): a block of 8 warps (4 x 2, each 64 pixels x 64 channels)
// computes the 256-pixel tile x kMmaTileN output channels, staging kMmaBK input channels
// at a time, double-buffered (the next chunk's weights and raw input by cp.async while the
// tensor cores work on this one; the input is activated into the spare halo buffer
// halfway through the taps). Rows of the staged tiles are kMmaBK + 8 elements (48 bytes):
// the 8 row addresses of an ldmatrix phase fall on disjoint banks. The norm's per-channel
// affine for all C channels sits in shared memory (kMmaMaxNormChannels at most). 158.5 KiB
// in all: GPUs that allow a block less (sm_86/89/120: 99 KiB) or wider inputs take the
// CUDA-core kernel.
constexpr int kMmaThreads = 256;
constexpr int kMmaTileN = 128;
constexpr int kMmaBK = 16;
constexpr int kMmaRowStride = kMmaBK + 8;
constexpr int kMmaMaxNormChannels = 1024;

// On Hopper (sm_90a, wgmma): a block of two warpgroups computes kWgmmaTileRows x
// kWgmmaTileCols output pixels (a warpgroup's m64 operand is one tile row: the A operand of
// every tap is then one run of halo pixels) x kWgmmaTileN channels, kMmaBK input channels a
// chunk through kWgmmaStages weight stages (filled by bulk copies from weights repacked per
// call, kPackThreads threads a block) and 2 x kWgmmaStages halo-sized buffers. About 192
// KiB of shared memory: one block per SM.
constexpr int kWgmmaThreads = 256;
constexpr int kWgmmaTileRows = 4;
constexpr int kWgmmaTileCols = 64;
constexpr int kWgmmaTileN = 128;
constexpr int kWgmmaStages = 3;
constexpr int kPackThreads = 256;

// Few output channels (O <= kNarrowN: conv_out's 3) on tensor cores, under the mma
// kernel's conditions on the input: a block of 8 warps over a kTileRows x kTileCols tile
// (a warp a row, one n8 fragment), static shared memory of about 43 KiB so that
// kNarrowBlocksPerSM blocks share an SM (80 registers a thread at most).
constexpr int kNarrowN = 8;
constexpr int kNarrowThreads = 256;
constexpr int kNarrowBlocksPerSM = 3;

// On CUDA cores (float32, inputs the tensor-core kernels cannot copy as 16-byte vectors,
// and where their shared memory does not fit): a thread per output pixel of the tile
// computes kSimtTileN (or kSimtNarrowN for O <= 8, kSimtRgbN for O <= 4: a decoder's
// conv_out) output channels, staging kSimtBK input channels at a time in f32.
constexpr int kSimtThreads = kTileRows * kTileCols;
constexpr int kSimtTileN = 32;
constexpr int kSimtNarrowN = 8;
constexpr int kSimtRgbN = 4;
constexpr int kSimtBK = 16;

// group_norm_stats: a block reduces one slice of pixels of an image (rows kernel) or of one
// (image, group): about kStatsSliceElements elements, at most kStatsMaxSlices slices; the
// rows kernel keeps kStatsRowLoads 16-byte loads a thread in flight (enough bytes in flight
// for HBM at two blocks an SM).
constexpr int kStatsThreads = 256;
constexpr int kStatsRowLoads = 8;
constexpr long long kStatsSliceElements = 65536;
constexpr int kStatsMaxSlices = 256;
constexpr int kStatsMergeThreads = 128;  // a warp per (image, group)

// pixel_norm_stats: one warp per pixel, kPixelStatsThreads / 32 pixels per block.
constexpr int kPixelStatsThreads = 256;

}  // namespace cuda_plan
}  // namespace fusedconv
