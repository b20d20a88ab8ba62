// x86-64 AVX2 + FMA + F16C build of the CPU kernels (flags set in CMake).
#define FC_ISA avx2
#include "cpu/attention_kernel.inc"
#include "cpu/conv3x3_kernel.inc"
#include "cpu/linear_kernel.inc"
