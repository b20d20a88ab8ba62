// Portable build of the CPU kernels (baseline flags of the target).
#define FC_ISA generic
#include "cpu/kernels.inc"
