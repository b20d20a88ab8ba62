// Run-time choice between the instruction-set builds of the CPU kernels: each
// ISA translation unit (kernels_*.cpp) fills one IsaKernels table, and every op
// takes its kernel from active_kernels().
#pragma once

#include <string>

#include "cpu/attention.h"
#include "cpu/conv3x3.h"
#include "cpu/linear.h"

#include <string>
#include <vector>

namespace fusedconv::cpu {

enum class Isa { generic, avx2, avx512, avx512bf16, amx };

struct IsaKernels {
  // even_channels: C and the shortcut's Cs are even (bf16 channel pairs possible).
  Conv3x3Kernel (*conv3x3)(DType dt, bool even_channels);
  LinearRowsFn (*linear_rows)(DType dt);
  AttentionBlockFn (*attention_block)(DType dt);
};

// The builds, each a superset of the one before: "generic" (portable), "avx2"
// (AVX2 + FMA + F16C; x86-64), "avx512" (AVX-512 F/BW/DQ/VL: 16-lane GEMM steps)
// "avx512bf16" (the avx512 build, with bf16 convolutions on AVX512-BF16 dot products)
// and "amx" (the avx512bf16 build, with bf16 convolutions on AMX-BF16 tiles; Linux, where
// the process is granted the tile state). active_isa() is the fastest this CPU runs, by measurement (calibration()),
// because which one wins depends on the micro-architecture: vdpbf16ps lost to f32 FMA
// on an Emerald Rapids Xeon and won 1.8x on a Zen 5. FUSEDCONV_CPU_ISA=<name> forces a
// build the CPU supports (tests cover each); any other name throws std::invalid_argument
// (a ValueError in Python).
Isa active_isa();
const char* isa_name(Isa isa);
std::string available_isas();  // comma-separated, slowest first
const IsaKernels& active_kernels();

// Seconds of each SIMD build this CPU runs (the portable one where there is none) on a
// decoder-like bf16 conv (GroupNorm + SiLU, 16x64 pixels, 256 -> 256 channels; best of 5
// rounds in which the builds take turns, after a warm-up round), measured once per process
// at the first active_isa() that FUSEDCONV_CPU_ISA does not decide.
struct IsaTiming {
  Isa isa;
  double seconds;
};
const std::vector<IsaTiming>& calibration();

namespace generic {
extern const IsaKernels kernels;
}
namespace avx2 {
extern const IsaKernels kernels;
}
namespace avx512 {
extern const IsaKernels kernels;
}
namespace avx512bf16 {
extern const IsaKernels kernels;
}
namespace amx {
extern const IsaKernels kernels;
}

}  // namespace fusedconv::cpu
