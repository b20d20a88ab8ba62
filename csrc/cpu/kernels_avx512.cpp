// x86-64 AVX-512 (F, BW, DQ, VL) build of the CPU kernels (flags set in CMake):
// 16-lane f32 GEMM steps, 12 accumulator rows.
#define FC_ISA avx512
#include "cpu/kernels.inc"
