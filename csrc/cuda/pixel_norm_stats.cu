// Per-pixel norm statistics on CUDA: sqrt(C) / max(||x[pixel, :]||_2, eps), a warp per
// pixel (its lanes read the pixel's channels side by side), over a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/tiles.h"

namespace cp = fusedconv::cuda_plan;

namespace {

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ void pixel_norm_stats(const T* __restrict__ x, float* __restrict__ out, int rows, int w, int c, float eps) {
  const long long pixels = (long long)rows * w;
  const int lane = threadIdx.x % 32, warps = cp::kPixelStatsThreads / 32;
  for (long long pix = (long long)blockIdx.x * warps + threadIdx.x / 32; pix < pixels;
       pix += (long long)gridDim.x * warps) {
    const T* v = x + pix * c;
    float ss = 0.0f;
    for (int k = lane; k < c; k += 32) {
      const float a = to_float(v[k]);
      ss += a * a;
    }
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) out[pix] = sqrtf(float(c)) / fmaxf(sqrtf(ss), eps);
  }
}

}  // namespace

#define FC_PIXEL_STATS(NAME, T)                                                                       \
  extern "C" __global__ void __launch_bounds__(cp::kPixelStatsThreads)                                 \
      NAME(const T* x, float* out, int rows, int w, int c, float eps) {                               \
    pixel_norm_stats<T>(x, out, rows, w, c, eps);                                                      \
  }

FC_PIXEL_STATS(fc_pixel_norm_stats_float32, float)
FC_PIXEL_STATS(fc_pixel_norm_stats_float16, __half)
FC_PIXEL_STATS(fc_pixel_norm_stats_bfloat16, __nv_bfloat16)
