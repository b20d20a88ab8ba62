// CPU backend of the fused conv3x3: a direct convolution over tiles of the
// activated (normalised, SiLU'd, upsampled, zero-padded) input, built per
// worker in a bounded ring of three rows, multiplied by packed weights (f32, or
// bf16 channel pairs for the dot-product build) in a register-blocked GEMM step.
#pragma once

#include <cstddef>

#include "cpu/dtype.h"
#include "cpu/pack.h"
#include "params.h"

namespace fusedconv::cpu {

// Packed weight taps of Winograd F(2,3) along rows: 4 transformed taps per kernel row
// (conv3x3_winograd.inc), against the kernel's 9.
constexpr int kWinogradTaps = 12;

// Input channels per pass over a strip (keeps the weight sub-panel cache-resident).
// Even, so that a chunk never splits a bf16 channel pair.
constexpr int kConvKChunk = 128;

struct Conv3x3Buffers {
  const void* x;         // [N,H,W,C]
  const void* weight;    // [O,3,3,C]
  const float* stats;    // [N,G,2] mean, rstd; null without norm
  const void* gamma;     // [C]; null without norm
  const void* beta;      // [C]; null without norm
  const void* bias;      // [O] or null
  const void* residual;  // [N,Ho,Wo,O] or null
  const void* shortcut_x;     // [N,Ho,Wo,Cs] or null
  const void* shortcut_w;     // [O,1,1,Cs] or null
  const void* shortcut_bias;  // [O] or null
  void* out;             // [N,Ho,Wo,O]
};

struct Conv3x3Job;
using Conv3x3UnitFn = void (*)(const Conv3x3Job&, int n, int y0, int y1, int x0,
                               int x1, float* scratch);

// One instruction-set build's kernel for a dtype and channel layout.
struct Conv3x3Kernel {
  Conv3x3UnitFn unit;
  int rows;            // output pixels per GEMM step (strips are multiples of it)
  bool channel_pairs;  // halo and packed weights in bf16 channel pairs (dot products)
  bool winograd;       // weights packed as the 12 taps of Winograd F(2,3) along rows
                       // (conv3x3_winograd.inc), not the 9 taps of the kernel
  int k_align;         // packed input channels padded with zeros to a multiple of this
  size_t halo_budget_bytes;  // one worker's ring of three halo rows at most (sets the strip)
  // Floats of one worker's scratch (halo ring, partial sums, staging) for strips of
  // strip_w output columns.
  size_t (*worker_floats)(const Conv3x3Params& p, int strip_w);
};

// Floats of a ring of three halo rows of `cols` pixels x `ld` elements, rounded up
// to a cache line.
inline size_t halo_ring_floats(int cols, int ld, size_t elem_bytes) {
  const size_t floats = (3 * size_t(cols) * ld * elem_bytes + 3) / 4;
  return (floats + 15) / 16 * 16;
}

// How one call is tiled. Every size here is independent of H and W except
// through the strip width, which is capped: scratch stays bounded.
struct Conv3x3CpuPlan {
  Conv3x3Kernel kernel;
  int threads;
  int strip_w;   // output columns per work unit
  int band_h;    // output rows per work unit
  int strips, bands, units;
  size_t packed_weight_floats;    // ceil(O/16) * taps * C' * 16 elements (f32, or bf16 pairs: half;
                                  // taps = 9, 12 for Winograd; C' = C rounded up to kernel.k_align)
  size_t packed_shortcut_floats;  // ceil(O/16) * Cs' * 16 elements, likewise
  size_t norm_floats;             // N * 3 * C (mean, scale, shift per channel)
  size_t halo_floats;             // per worker: kernel.worker_floats(p, strip_w)
  size_t scratch_floats() const {
    return packed_weight_floats + packed_shortcut_floats + norm_floats + size_t(threads) * halo_floats;
  }
};

struct IsaKernels;

// Picks the kernel of the given instruction-set build (default: the active one, isa.h)
// and the tiling.
Conv3x3CpuPlan plan_conv3x3(const Conv3x3Params& p, DType dt, int threads, const IsaKernels* kernels = nullptr);

// Runs the whole convolution on `plan.threads` threads; scratch holds
// plan.scratch_floats() floats.
void conv3x3(const Conv3x3Params& p, DType dt, const Conv3x3Buffers& b,
             const Conv3x3CpuPlan& plan, float* scratch);

// What each ISA translation unit provides (conv3x3_kernel.inc).
struct Conv3x3Job {
  const Conv3x3Params* p;
  Conv3x3Buffers b;
  const void* packed_w;   // [ceil(O/16)][taps][C'][16] f32, or [ceil(O/16)][9][C'/2][16][2] bf16
  const void* packed_sc;  // [ceil(O/16)][Cs'][16], likewise; or null
  const float* norm;      // [N][3][C] or null
};

}  // namespace fusedconv::cpu
