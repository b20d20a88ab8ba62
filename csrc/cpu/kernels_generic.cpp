// Portable build of the CPU kernels (baseline flags of the target).
#define FC_ISA generic
#include "cpu/attention_kernel.inc"
#include "cpu/conv3x3_kernel.inc"
#include "cpu/linear_kernel.inc"
