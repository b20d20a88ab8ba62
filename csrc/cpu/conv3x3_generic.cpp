// Portable build of the conv3x3 tile kernels (baseline flags of the target).
#define FC_ISA generic
#include "cpu/conv3x3_kernel.inc"
