// GroupNorm statistics on CUDA: mean and rstd per (image, group) of an NHWC tensor, in
// two kernels with bounded scratch. The partial sums are the shifted sums (sum d,
// sum d^2) of d = x - K, K being the group's first element in that image (the same for
// every slice, so the sums of slices add up; the shift keeps a large mean from cancelling
// the variance's digits), one pair per (image, group, slice of pixels):
// - fc_group_norm_partial_rows_<dtype>: a block reduces one slice of whole pixels of an
//   image for every group at once, reading contiguous rows in 16-byte vectors (C a
//   multiple of the vector's channels, at most kStatsThreads vectors a pixel, x aligned);
// - fc_group_norm_partial_<dtype>: any C: a block reduces one slice of one (image, group),
//   element by element (a 2-byte load at a time: ~0.6 TB/s on an H200).
// fc_group_norm_merge_<dtype>: a warp per (image, group) adds its slices' sums in double,
// in a fixed order (deterministic), and writes (mean, rstd).
// Each kernel is its own module, as conv3x3.cu's are (FC_ONE_KERNEL; the names in
// cuda/group_norm_stats_kernels.txt): MLX hashes a module's whole image at every launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda/tiles.h"

namespace cp = fusedconv::cuda_plan;

namespace {

typedef long long i64;

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }

// Sum of v over the block (every thread gets it).
__device__ float block_sum(float v, float* scratch) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < cp::kStatsThreads / 32; ++i) total += scratch[i];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

template <typename T>
__device__ void group_norm_partial(const T* __restrict__ x, float* __restrict__ partials, int n_images, int h, int w,
                                   int c, int groups, int slices, int slice_pixels) {
  __shared__ float scratch[cp::kStatsThreads / 32];
  const i64 block = i64(blockIdx.y) * gridDim.x + blockIdx.x;
  const int g = int(block % groups), s = int(block / groups % slices);
  const i64 n = block / groups / slices;
  if (n >= n_images) return;
  const int cg = c / groups;
  const i64 hw = i64(h) * w, p0 = i64(s) * slice_pixels;
  const int pixels = int(min(i64(slice_pixels), hw - p0));
  const T* base = x + i64(n) * hw * c + g * cg;
  const float shift = to_float(base[0]);
  float s1 = 0.0f, s2 = 0.0f;
  if (pixels > 0) {
    const T* slice = base + p0 * c;
    if (cp::kStatsThreads % cg == 0) {
      // Each thread keeps one channel of the group and steps over pixels.
      const int j = threadIdx.x % cg, step = cp::kStatsThreads / cg;
      for (int q = threadIdx.x / cg; q < pixels; q += step) {
        const float d = to_float(slice[i64(q) * c + j]) - shift;
        s1 += d;
        s2 += d * d;
      }
    } else {
      const int count = pixels * cg;
      for (int i = threadIdx.x; i < count; i += cp::kStatsThreads) {
        const float d = to_float(slice[i64(i / cg) * c + i % cg]) - shift;
        s1 += d;
        s2 += d * d;
      }
    }
  }
  s1 = block_sum(s1, scratch);
  s2 = block_sum(s2, scratch);
  if (threadIdx.x == 0) {
    float* out = partials + ((i64(n) * groups + g) * slices + s) * 2;
    out[0] = s1;
    out[1] = s2;
  }
}

// The rows kernel: thread t keeps the sums of channels [VEC v, VEC v + VEC) (v = t % V, V
// vectors a pixel) over every (kStatsThreads / V)-th pixel of the slice, kStatsRowLoads
// 16-byte loads in flight; the block then adds them per group in a fixed order.
template <typename T>
__device__ void group_norm_partial_rows(const T* __restrict__ x, float* __restrict__ partials, int n_images, int h,
                                        int w, int c, int groups, int slices, int slice_pixels) {
  constexpr int VEC = 16 / sizeof(T), LOADS = cp::kStatsRowLoads;
  __shared__ float sums[2][cp::kStatsThreads * VEC];  // [sum][pixel row of the step][channel]
  const i64 block = i64(blockIdx.y) * gridDim.x + blockIdx.x;
  const int s = int(block % slices);
  const i64 n = block / slices;
  if (n >= n_images) return;
  const int vectors = c / VEC, rows = cp::kStatsThreads / vectors, cg = c / groups;
  const int v = threadIdx.x % vectors, row = threadIdx.x / vectors;
  const i64 hw = i64(h) * w, p0 = i64(s) * slice_pixels;
  const int pixels = int(min(i64(slice_pixels), hw - p0));
  const T* image = x + n * hw * c;
  float shift[VEC], s1[VEC], s2[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    shift[k] = to_float(image[(v * VEC + k) / cg * cg]);
    s1[k] = s2[k] = 0.0f;
  }
  const auto add = [&](uint4 bits) {
    const T* e = reinterpret_cast<const T*>(&bits);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float d = to_float(e[k]) - shift[k];
      s1[k] += d;
      s2[k] += d * d;
    }
  };
  if (row < rows) {
    const uint4* col = reinterpret_cast<const uint4*>(image + p0 * c) + v;
    int q = row;
    for (; q + (LOADS - 1) * rows < pixels; q += LOADS * rows) {
      uint4 loaded[LOADS];
#pragma unroll
      for (int u = 0; u < LOADS; ++u) loaded[u] = col[i64(q + u * rows) * vectors];
#pragma unroll
      for (int u = 0; u < LOADS; ++u) add(loaded[u]);
    }
    for (; q < pixels; q += rows) add(col[i64(q) * vectors]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      sums[0][row * c + v * VEC + k] = s1[k];
      sums[1][row * c + v * VEC + k] = s2[k];
    }
  }
  __syncthreads();
  for (int g = threadIdx.x; g < groups; g += cp::kStatsThreads) {
    float g1 = 0.0f, g2 = 0.0f;
    for (int r = 0; r < rows; ++r) {
      for (int j = g * cg; j < (g + 1) * cg; ++j) {
        g1 += sums[0][r * c + j];
        g2 += sums[1][r * c + j];
      }
    }
    float* out = partials + ((n * groups + g) * slices + s) * 2;
    out[0] = g1;
    out[1] = g2;
  }
}

}  // namespace

#define FC_GN_PARTIAL(NAME, T)                                                                               \
  extern "C" __global__ void __launch_bounds__(cp::kStatsThreads)                                             \
      NAME(const T* x, float* partials, int n, int h, int w, int c, int groups, int slices, int slice_pixels) { \
    group_norm_partial<T>(x, partials, n, h, w, c, groups, slices, slice_pixels);                            \
  }

#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_float32)
FC_GN_PARTIAL(fc_group_norm_partial_float32, float)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_float16)
FC_GN_PARTIAL(fc_group_norm_partial_float16, __half)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_bfloat16)
FC_GN_PARTIAL(fc_group_norm_partial_bfloat16, __nv_bfloat16)
#endif

// (At least 2 blocks an SM: ptxas otherwise sank each load to its adds, one in flight.)
#define FC_GN_PARTIAL_ROWS(NAME, T)                                                                          \
  extern "C" __global__ void __launch_bounds__(cp::kStatsThreads, 2)                                          \
      NAME(const T* x, float* partials, int n, int h, int w, int c, int groups, int slices, int slice_pixels) { \
    group_norm_partial_rows<T>(x, partials, n, h, w, c, groups, slices, slice_pixels);                       \
  }

#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_rows_float32)
FC_GN_PARTIAL_ROWS(fc_group_norm_partial_rows_float32, float)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_rows_float16)
FC_GN_PARTIAL_ROWS(fc_group_norm_partial_rows_float16, __half)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_partial_rows_bfloat16)
FC_GN_PARTIAL_ROWS(fc_group_norm_partial_rows_bfloat16, __nv_bfloat16)
#endif

// A warp per (image, group): the lanes add every 32nd slice's sums in double, then a fixed
// shuffle tree adds the lanes' (deterministic). x is read again for each (image, group)'s
// shift only; its dtype does not matter past that one element, so the merge is
// instantiated per dtype for that read.
template <typename T>
__device__ void group_norm_merge(const float* __restrict__ partials, const T* __restrict__ x,
                                 float* __restrict__ out, int n_images, int h, int w, int c, int groups, int slices,
                                 float eps) {
  const i64 row = ((i64(blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= i64(n_images) * groups) return;  // (the whole warp: row is the warp's)
  const int lane = threadIdx.x % 32;
  double s1 = 0.0, s2 = 0.0;
  for (int s = lane; s < slices; s += 32) {
    s1 += partials[(row * slices + s) * 2];
    s2 += partials[(row * slices + s) * 2 + 1];
  }
  for (int off = 16; off > 0; off /= 2) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, off);
    s2 += __shfl_xor_sync(0xffffffffu, s2, off);
  }
  if (lane != 0) return;
  const i64 n = row / groups;
  const int g = int(row % groups), cg = c / groups;
  const i64 hw = i64(h) * w;
  const double count = double(hw) * cg;
  const double mean_d = s1 / count, var = s2 / count - mean_d * mean_d;
  out[row * 2] = float(to_float(x[n * hw * c + g * cg]) + mean_d);
  out[row * 2 + 1] = float(1.0 / sqrt((var > 0.0 ? var : 0.0) + double(eps)));
}

#define FC_GN_MERGE(NAME, T)                                                                                  \
  extern "C" __global__ void NAME(const float* partials, const T* x, float* out, int n, int h, int w, int c, \
                                  int groups, int slices, float eps) {                                       \
    group_norm_merge<T>(partials, x, out, n, h, w, c, groups, slices, eps);                                   \
  }

#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_merge_float32)
FC_GN_MERGE(fc_group_norm_merge_float32, float)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_merge_float16)
FC_GN_MERGE(fc_group_norm_merge_float16, __half)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_group_norm_merge_bfloat16)
FC_GN_MERGE(fc_group_norm_merge_bfloat16, __nv_bfloat16)
#endif
