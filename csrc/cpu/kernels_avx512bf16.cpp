// x86-64 AVX-512 + BF16 build (flags set in CMake): bf16 convolutions with even
// channel counts run on vdpbf16ps channel-pair dot products; everything else is
// the avx512 build's.
#define FC_ISA avx512bf16
#include "cpu/conv3x3_kernel.inc"
#include "cpu/isa.h"

namespace fusedconv::cpu::avx512bf16 {
namespace {
Conv3x3Kernel conv3x3_kernel(DType dt, bool even_channels) {
  if (dt == DType::bf16 && even_channels) return conv3x3_pairs_kernel();
  return avx512::kernels.conv3x3(dt, even_channels);
}
LinearRowsFn linear_rows(DType dt) { return avx512::kernels.linear_rows(dt); }
AttentionBlockFn attention_block(DType dt) { return avx512::kernels.attention_block(dt); }
}  // namespace

const IsaKernels kernels{conv3x3_kernel, linear_rows, attention_block};
}  // namespace fusedconv::cpu::avx512bf16
