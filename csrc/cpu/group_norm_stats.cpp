#include "cpu/group_norm_stats.h"

#include <algorithm>
#include <cmath>

#include "cpu/parallel.h"

namespace fusedconv::cpu {

namespace {

constexpr int kMaxChunksPerImage = 64;
// Pixels per sub-block of the two-pass moments: a sub-block of C=512 f32 sums
// stays in L1 for the second pass.
constexpr int kBlockPixels = 16;

// Merged in double: a block's f32 moments are exact to f32 rounding, but thousands of
// merges into an f32 running mean stall it a few ulps from the true mean and add that
// offset squared per block (a single outlier among 2^31 equal pixels: 20% rstd error).
struct Moments {
  double count, mean, m2;
};
constexpr size_t kMomentsFloats = sizeof(Moments) / sizeof(float);

// Chan et al.: merge two (count, mean, M2) summaries.
Moments merge(Moments a, Moments b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  const double n = a.count + b.count;
  const double delta = b.mean - a.mean;
  return {n, a.mean + delta * (b.count / n), a.m2 + b.m2 + delta * delta * (a.count * b.count / n)};
}

// Moments of each group over pixels [p0, p1) of image n, accumulated block by
// block: exact two-pass within a block, Chan merges across blocks.
template <class T>
void chunk_moments(const GroupNormStatsParams& p, const T* x, int n, fc_int64 p0, fc_int64 p1,
                   float* sum, float* dev, Moments* out) {
  const int C = p.c, cg = C / p.groups;
  for (int g = 0; g < p.groups; ++g) out[g] = {0, 0, 0};
  for (fc_int64 b0 = p0; b0 < p1; b0 += kBlockPixels) {
    const int pixels = int(std::min<fc_int64>(p1 - b0, kBlockPixels));
    const T* base = x + (size_t(n) * p.hw + b0) * C;
    std::fill(sum, sum + C, 0.0f);
    for (int i = 0; i < pixels; ++i) {
      for (int c = 0; c < C; ++c) sum[c] += to_f32(base[size_t(i) * C + c]);
    }
    std::fill(dev, dev + C, 0.0f);
    const float count = float(pixels) * cg;
    for (int g = 0; g < p.groups; ++g) {
      float s = 0;
      for (int c = g * cg; c < (g + 1) * cg; ++c) s += sum[c];
      const float mean = s / count;
      for (int c = g * cg; c < (g + 1) * cg; ++c) sum[c] = mean;  // reuse as per-channel mean
    }
    for (int i = 0; i < pixels; ++i) {
      for (int c = 0; c < C; ++c) {
        const float d = to_f32(base[size_t(i) * C + c]) - sum[c];
        dev[c] += d * d;
      }
    }
    for (int g = 0; g < p.groups; ++g) {
      float m2 = 0;
      for (int c = g * cg; c < (g + 1) * cg; ++c) m2 += dev[c];
      out[g] = merge(out[g], Moments{count, sum[g * cg], m2});
    }
  }
}

template <class T>
void run(const GroupNormStatsParams& p, const T* x, float* out, const GroupNormStatsCpuPlan& plan,
         float* scratch) {
  Moments* partial = reinterpret_cast<Moments*>(scratch);
  float* work = scratch + size_t(p.n) * plan.chunks * p.groups * kMomentsFloats;
  parallel_for(p.n * plan.chunks, plan.threads, [&](int task, int worker) {
    const int n = task / plan.chunks, chunk = task % plan.chunks;
    const fc_int64 p0 = chunk * plan.chunk_pixels, p1 = std::min(p.hw, p0 + plan.chunk_pixels);
    float* sum = work + size_t(worker) * 2 * p.c;
    chunk_moments(p, x, n, p0, p1, sum, sum + p.c, partial + size_t(task) * p.groups);
  });
  for (int n = 0; n < p.n; ++n) {
    for (int g = 0; g < p.groups; ++g) {
      Moments m{0, 0, 0};
      for (int chunk = 0; chunk < plan.chunks; ++chunk) {
        m = merge(m, partial[(size_t(n) * plan.chunks + chunk) * p.groups + g]);
      }
      const double var = m.count > 0 ? m.m2 / m.count : 0.0;
      out[(size_t(n) * p.groups + g) * 2] = float(m.mean);
      out[(size_t(n) * p.groups + g) * 2 + 1] = float(1.0 / std::sqrt(var + p.eps));
    }
  }
}

}  // namespace

GroupNormStatsCpuPlan plan_group_norm_stats(const GroupNormStatsParams& p, int threads) {
  GroupNormStatsCpuPlan plan{};
  plan.chunks = int(std::clamp<fc_int64>(p.hw / 256, 1, kMaxChunksPerImage));
  plan.chunk_pixels = (p.hw + plan.chunks - 1) / plan.chunks;
  plan.threads = std::max(1, std::min(threads, p.n * plan.chunks));
  plan.scratch_floats = size_t(p.n) * plan.chunks * p.groups * kMomentsFloats + size_t(plan.threads) * 2 * p.c;
  return plan;
}

void group_norm_stats(const GroupNormStatsParams& p, DType dt, const void* x, float* out,
                      const GroupNormStatsCpuPlan& plan, float* scratch) {
  with_dtype(dt, [&](auto t) { run(p, static_cast<const decltype(t)*>(x), out, plan, scratch); });
}

}  // namespace fusedconv::cpu
