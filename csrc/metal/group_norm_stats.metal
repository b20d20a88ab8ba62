// GroupNorm statistics in two kernels, so that a large image uses many threadgroups
// per (image, group) and the result does not depend on scheduling:
//  - group_norm_partial: threadgroup (slice, group, image) reduces its slice of
//    pixels to (count, mean, M2) - two passes (mean, then squared deviations, stable
//    for inputs far from zero), each reduced with simd_sum;
//  - group_norm_merge: one thread per (image, group) merges the slices in slice
//    order with Chan's formula and writes (mean, 1/sqrt(var + eps)).
// Scratch: 3 floats per slice, at most kStatsMaxSlices per (image, group).
#include <metal_stdlib>

#include "metal/dtype.h"
#include "metal/kernel_defs.h"
#include "metal/tiles.h"
#include "params.h"

using namespace metal;
using fusedconv::GroupNormSlices;
using fusedconv::GroupNormStatsParams;
using fusedconv::metal_plan::kStatsThreadgroupFloats;
using fusedconv::metal_plan::kStatsThreads;

// Sum of v over the threadgroup; every thread gets the total. Two barriers: the
// partial sums are complete before thread 0 adds them, and the total is written
// before anyone reads it. A following call may reuse `partial` at once: its writes
// to partial[simd_id] do not touch the total, and thread 0 overwrites the total only
// after the next first barrier, which every thread reaches after reading it.
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
  return partial[kStatsThreads / 32];
}

template <typename D>
[[kernel]] void group_norm_partial(
    const device typename D::storage* x [[buffer(0)]],
    device float* partials [[buffer(1)]],
    constant GroupNormStatsParams& p [[buffer(2)]],
    constant GroupNormSlices& slices [[buffer(3)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint simd_id [[simdgroup_index_in_threadgroup]]) {
  FC_THREADGROUP_ARRAY(float, partial, kStatsThreadgroupFloats);
  const ulong s = tg.x, g = tg.y, n = tg.z;
  const ulong cg = ulong(p.c / p.groups);
  const ulong first = s * ulong(slices.pixels);
  const ulong pixels = min(ulong(slices.pixels), ulong(p.hw) - min(ulong(p.hw), first));
  const ulong count = pixels * cg;
  const device typename D::storage* base = x + (n * ulong(p.hw) + first) * ulong(p.c) + g * cg;

  float sum = 0.0f;
  for (ulong i = tid; i < count; i += kStatsThreads) sum += D::load(base[(i / cg) * ulong(p.c) + i % cg]);
  const float mean = threadgroup_sum(sum, partial, tid, lane, simd_id) / float(count);  // count >= 1 (plan)

  float sq = 0.0f;
  for (ulong i = tid; i < count; i += kStatsThreads) {
    const float d = D::load(base[(i / cg) * ulong(p.c) + i % cg]) - mean;
    sq += d * d;
  }
  const float m2 = threadgroup_sum(sq, partial, tid, lane, simd_id);
  if (tid == 0) {
    device float* out = partials + ((n * ulong(p.groups) + g) * ulong(slices.count) + s) * 3;
    out[0] = float(count);
    out[1] = mean;
    out[2] = m2;
  }
}

[[kernel]] void fc_group_norm_merge(
    const device float* partials [[buffer(0)]],
    device float* out [[buffer(1)]],
    constant GroupNormStatsParams& p [[buffer(2)]],
    constant GroupNormSlices& slices [[buffer(3)]],
    uint index [[thread_position_in_grid]]) {
  if (index >= uint(p.n * p.groups)) return;
  const device float* part = partials + size_t(index) * slices.count * 3;
  float count = 0.0f, mean = 0.0f, m2 = 0.0f;
  for (int s = 0; s < slices.count; ++s) {
    const float nb = part[s * 3];
    if (nb == 0.0f) continue;
    const float total = count + nb, delta = part[s * 3 + 1] - mean;
    mean += delta * (nb / total);
    m2 += part[s * 3 + 2] + delta * delta * (count * nb / total);
    count = total;
  }
  out[size_t(index) * 2] = mean;
  out[size_t(index) * 2 + 1] = rsqrt(m2 / count + p.eps);
}

FC_INSTANTIATE("fc_group_norm_partial_float32", group_norm_partial<fc_float32>)
FC_INSTANTIATE("fc_group_norm_partial_float16", group_norm_partial<fc_float16>)
FC_INSTANTIATE("fc_group_norm_partial_bfloat16", group_norm_partial<fc_bfloat16>)
FC_REGISTER("fc_group_norm_merge", fc_group_norm_merge)
