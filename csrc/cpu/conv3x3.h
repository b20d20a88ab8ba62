// CPU backend of the fused conv3x3: a direct convolution over tiles of the
// activated (normalised, SiLU'd, upsampled, zero-padded) input, built per
// worker in a bounded ring of three rows, multiplied by f32-packed weights in
// a register-blocked micro-kernel.
#pragma once

#include <cstddef>

#include "cpu/dtype.h"
#include "cpu/pack.h"
#include "params.h"

namespace fusedconv::cpu {

// Output channels per weight panel / micro-kernel column block (two 8-lane vectors).
constexpr int kConvOBlock = kPanel;
// Output pixels per micro-kernel call (register rows).
constexpr int kConvPixels = 6;
// Input channels per pass over a strip (keeps the weight sub-panel cache-resident).
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

// How one call is tiled. Every size here is independent of H and W except
// through the strip width, which is capped: scratch stays bounded.
struct Conv3x3CpuPlan {
  int threads;
  int strip_w;   // output columns per work unit
  int band_h;    // output rows per work unit
  int strips, bands, units;
  size_t packed_weight_floats;  // ceil(O/16) * 9 * C * 16
  size_t packed_shortcut_floats;  // ceil(O/16) * Cs * 16
  size_t norm_floats;           // N * 3 * C (mean, scale, shift per channel)
  size_t halo_floats;           // per worker: 3 rows * (strip_w + 2) * C + strip_w * 16 partial sums
  size_t scratch_floats() const {
    return packed_weight_floats + packed_shortcut_floats + norm_floats + size_t(threads) * halo_floats;
  }
};

Conv3x3CpuPlan plan_conv3x3(const Conv3x3Params& p, int threads);

// Runs the whole convolution on `plan.threads` threads; scratch holds
// plan.scratch_floats() floats.
void conv3x3(const Conv3x3Params& p, DType dt, const Conv3x3Buffers& b,
             const Conv3x3CpuPlan& plan, float* scratch);

// Instruction-set variants of the per-tile work, selected at run time.
// FUSEDCONV_CPU_ISA=generic|avx2 forces one (tests use it to cover each path).
const char* conv3x3_isa();
const char* conv3x3_available_isas();

// What each ISA translation unit provides (conv3x3_kernel.inc).
struct Conv3x3Job {
  const Conv3x3Params* p;
  Conv3x3Buffers b;
  const float* packed_w;  // [ceil(O/16)][9][C][16]
  const float* packed_sc; // [ceil(O/16)][Cs][16] or null
  const float* norm;      // [N][3][C] or null
};
using Conv3x3UnitFn = void (*)(const Conv3x3Job&, int n, int y0, int y1, int x0,
                               int x1, float* halo);
namespace generic {
Conv3x3UnitFn conv3x3_unit(DType dt);
}
namespace avx2 {
Conv3x3UnitFn conv3x3_unit(DType dt);
}

}  // namespace fusedconv::cpu
