// The GPU side of a build without GPU kernels (MLX's CPU build): no op has a kernel, so
// ops.cpp builds each op's reference composition on a GPU stream and these are never reached.
#include <stdexcept>

#include "primitives.h"

namespace fusedconv {

bool gpu_has_kernel(Op) { return false; }
std::string gpu_conv3x3_kernel_family(const mx::Stream&) { return ""; }

namespace {

[[noreturn]] void unreachable(const char* op) {
  throw std::logic_error(std::string("fusedconv.") + op +
                         ": no GPU kernel in this build; ops should have built the reference composition");
}

}  // namespace

void GroupNormStats::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }
void PixelNormStats::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }
void FusedConv3x3::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }
void Linear::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }
void Attention::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }

}  // namespace fusedconv
