// Run-time choice between the instruction-set builds of the CPU kernels: each
// ISA translation unit (kernels_*.cpp) fills one IsaKernels table, and every op
// takes its kernel from active_kernels().
#pragma once

#include <string>

#include "cpu/attention.h"
#include "cpu/conv3x3.h"
#include "cpu/linear.h"

namespace fusedconv::cpu {

enum class Isa { generic, avx2, avx512, avx512bf16 };

struct IsaKernels {
  // even_channels: C and the shortcut's Cs are even (bf16 channel pairs possible).
  Conv3x3Kernel (*conv3x3)(DType dt, bool even_channels);
  LinearRowsFn (*linear_rows)(DType dt);
  AttentionBlockFn (*attention_block)(DType dt);
};

// The builds, each a superset of the one before: "generic" (portable), "avx2"
// (AVX2 + FMA + F16C; x86-64), "avx512" (AVX-512 F/BW/DQ/VL: 16-lane GEMM steps)
// and "avx512bf16" (the avx512 build, with bf16 convolutions on AVX512-BF16 dot
// products). active_isa() is the last one this CPU runs, avx512bf16 excepted:
// that one runs only when FUSEDCONV_CPU_ISA names it (see isa.cpp).
// FUSEDCONV_CPU_ISA=<name> forces a build the CPU supports (tests cover each);
// any other name throws std::invalid_argument (a ValueError in Python).
Isa active_isa();
const char* isa_name(Isa isa);
std::string available_isas();  // comma-separated, slowest first
const IsaKernels& active_kernels();

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

}  // namespace fusedconv::cpu
