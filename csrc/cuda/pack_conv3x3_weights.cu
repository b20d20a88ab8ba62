// The Hopper conv's weights, repacked at each call so that one bulk copy (the TMA unit,
// not 9 x 128 x 2 scattered 16-byte cp.async per chunk from the block's threads) moves a
// chunk's weights into shared memory in the layout the wgmma descriptors read:
// packed[o-block][chunk][tap][half][o][8] for o-blocks of kWgmmaTileN output channels and
// chunks of kMmaBK input channels, zeros past O and C. The size follows the weights
// (O x 9 x C rounded up to whole tiles), never the image.
#include <stdint.h>

#include "cuda/tiles.h"

namespace cp = fusedconv::cuda_plan;

// One 8-channel vector (16 bytes of a 16-bit dtype) per thread; vector v of the packed
// tensor, vectors = o-blocks x chunks x 9 x 2 x kWgmmaTileN; w is [O][3][3][C], C % 8 == 0.
// conv_out: the conv's output, an output of this launch only so that MLX allocates it
// (primitives_cuda.cpp); not touched.
extern "C" __global__ void fc_pack_conv3x3_weights(const uint4* __restrict__ w, uint4* __restrict__ packed,
                                                   void* conv_out, int o, int c, int vectors) {
  constexpr int TN = cp::kWgmmaTileN, HALVES = cp::kMmaBK / 8;
  const long long v = (long long)(blockIdx.y) * gridDim.x * blockDim.x + (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const int chunks = (c + cp::kMmaBK - 1) / cp::kMmaBK;
  long long rest = v;
  const int nn = int(rest % TN);
  rest /= TN;
  const int half = int(rest % HALVES);
  rest /= HALVES;
  const int tap = int(rest % 9);
  rest /= 9;
  const int chunk = int(rest % chunks);
  const int oc = int(rest / chunks) * TN + nn, ci = chunk * cp::kMmaBK + half * 8;
  packed[v] = oc < o && ci < c ? w[((long long)oc * 9 + tap) * (c / 8) + ci / 8] : make_uint4(0, 0, 0, 0);
}
