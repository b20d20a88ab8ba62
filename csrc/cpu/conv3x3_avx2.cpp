// x86-64 AVX2 + FMA + F16C build of the conv3x3 tile kernels (flags set in CMake).
#define FC_ISA avx2
#include "cpu/conv3x3_kernel.inc"
