// GroupNorm statistics: one threadgroup per (group, image) computes the mean and
// 1/sqrt(var + eps) of x[n, :, :, g*C/G:(g+1)*C/G] in two passes (mean, then squared
// deviations: stable for inputs far from zero), each reduced with simd_sum.
#include <metal_stdlib>

#include "metal/dtype.h"
#include "metal/kernel_defs.h"
#include "metal/tiles.h"
#include "params.h"

using namespace metal;
using fusedconv::GroupNormStatsParams;
using fusedconv::metal_plan::kStatsThreadgroupFloats;
using fusedconv::metal_plan::kStatsThreads;

// Sum of v over the threadgroup; every thread gets the total.
inline float threadgroup_sum(float v, threadgroup float* partial, uint tid, uint lane, uint simd_id) {
  v = simd_sum(v);
  if (lane == 0) partial[simd_id] = v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tid == 0) {
    float total = 0.0f;
    for (int i = 0; i < kStatsThreads / 32; ++i) total += partial[i];
    partial[kStatsThreads / 32] = total;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const float total = partial[kStatsThreads / 32];
  threadgroup_barrier(mem_flags::mem_threadgroup);  // partial is reused by the next sum
  return total;
}

template <typename T>
[[kernel]] void group_norm_stats(
    const device T* x [[buffer(0)]],
    device float* out [[buffer(1)]],
    constant GroupNormStatsParams& p [[buffer(2)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint simd_id [[simdgroup_index_in_threadgroup]]) {
  FC_THREADGROUP_ARRAY(float, partial, kStatsThreadgroupFloats);
  const uint g = tg.x, n = tg.y;
  const uint cg = uint(p.c / p.groups);
  const uint count = uint(p.hw) * cg;
  const device T* base = x + size_t(n) * size_t(p.hw) * size_t(p.c) + g * cg;

  float sum = 0.0f;
  for (uint i = tid; i < count; i += kStatsThreads) {
    sum += to_float(base[size_t(i / cg) * size_t(p.c) + i % cg]);
  }
  const float mean = threadgroup_sum(sum, partial, tid, lane, simd_id) / float(count);

  float sq = 0.0f;
  for (uint i = tid; i < count; i += kStatsThreads) {
    const float d = to_float(base[size_t(i / cg) * size_t(p.c) + i % cg]) - mean;
    sq += d * d;
  }
  const float var = threadgroup_sum(sq, partial, tid, lane, simd_id) / float(count);
  if (tid == 0) {
    out[(size_t(n) * p.groups + g) * 2] = mean;
    out[(size_t(n) * p.groups + g) * 2 + 1] = rsqrt(var + p.eps);
  }
}

FC_INSTANTIATE("fc_group_norm_stats_float32", group_norm_stats<float>)
FC_INSTANTIATE("fc_group_norm_stats_float16", group_norm_stats<half>)
FC_INSTANTIATE("fc_group_norm_stats_bfloat16", group_norm_stats<fc_bf16>)
