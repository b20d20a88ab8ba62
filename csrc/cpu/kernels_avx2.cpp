// x86-64 AVX2 + FMA + F16C build of the CPU kernels (flags set in CMake).
#define FC_ISA avx2
#include "cpu/kernels.inc"
