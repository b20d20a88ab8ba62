#include "cpu/conv3x3.h"

#include <algorithm>
#include <cstdlib>

#include "cpu/isa.h"
#include "cpu/pack.h"
#include "cpu/parallel.h"

namespace fusedconv::cpu {

namespace {

constexpr int kMaxStrip = 120;
constexpr int kUnitsPerThread = 8;

// Per image and channel (mean, scale, shift) for activate(): group norm from the group's
// statistics; the per-pixel norm as (0, gamma, beta), its pixel statistic applied per pixel.
template <class T>
void fill_norm(const Conv3x3Params& p, const Conv3x3Buffers& b, float* norm) {
  const int C = p.c, cg = p.groups ? C / p.groups : 1;
  const T* gamma = static_cast<const T*>(b.gamma);
  const T* beta = static_cast<const T*>(b.beta);
  for (int n = 0; n < p.n; ++n) {
    float* mean = norm + size_t(n) * 3 * C;
    float* scale = mean + C;
    float* shift = mean + 2 * C;
    for (int c = 0; c < C; ++c) {
      if (p.pixel_norm) {
        mean[c] = 0.0f;
        scale[c] = to_f32(gamma[c]);
      } else {
        const float* s = b.stats + (size_t(n) * p.groups + c / cg) * 2;
        mean[c] = s[0];
        scale[c] = s[1] * to_f32(gamma[c]);
      }
      shift[c] = to_f32(beta[c]);
    }
  }
}

template <class T>
void pack(const T* w, int o, int taps, int c, const Conv3x3Kernel& kernel, float* dst, int threads) {
  const int kp = round_up(c, kernel.k_align);
  if (kernel.channel_pairs) {
    pack_panels(w, o, taps, c, kp, reinterpret_cast<bf16*>(dst), threads);
  } else {
    pack_panels(w, o, taps, c, kp, dst, threads);
  }
}

// The 3x3 weights [O][3][3][C] as Winograd F(2,3)'s 12 taps (t, ky), t-major:
// U = (g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2) of each kernel row g (conv3x3_winograd.inc).
template <class T>
void pack_winograd(const T* w, int o, int c, int kp, float* dst, int threads) {
  pack_panels_of(o, kWinogradTaps, c, kp, dst, threads, [w, c](int oc, int tap, int ci) {
    const T* g = w + (size_t(oc) * 3 + tap % 3) * 3 * c + ci;
    const float g0 = to_f32(g[0]), g1 = to_f32(g[c]), g2 = to_f32(g[2 * c]);
    switch (tap / 3) {
      case 0: return g0;
      case 1: return (g0 + g1 + g2) * 0.5f;
      case 2: return (g0 - g1 + g2) * 0.5f;
      default: return g2;
    }
  });
}

template <class T>
void run(const Conv3x3Params& p, const Conv3x3Buffers& b, const Conv3x3CpuPlan& plan, float* scratch) {
  float* packed = scratch;
  float* packed_sc = p.shortcut_c ? packed + plan.packed_weight_floats : nullptr;
  float* norm = p.groups || p.pixel_norm ? packed + plan.packed_weight_floats + plan.packed_shortcut_floats : nullptr;
  float* halos = packed + plan.packed_weight_floats + plan.packed_shortcut_floats + plan.norm_floats;
  if (plan.kernel.winograd) {
    pack_winograd(static_cast<const T*>(b.weight), p.o, p.c, round_up(p.c, plan.kernel.k_align), packed, plan.threads);
  } else {
    pack(static_cast<const T*>(b.weight), p.o, 9, p.c, plan.kernel, packed, plan.threads);
  }
  if (packed_sc) pack(static_cast<const T*>(b.shortcut_w), p.o, 1, p.shortcut_c, plan.kernel, packed_sc, plan.threads);
  if (norm) fill_norm<T>(p, b, norm);
  const Conv3x3Job job{&p, b, packed, packed_sc, norm};
  const Conv3x3UnitFn unit = plan.kernel.unit;
  parallel_for(plan.units, plan.threads, [&](int u, int worker) {
    const int strip = u % plan.strips;
    const int band = (u / plan.strips) % plan.bands;
    const int n = u / (plan.strips * plan.bands);
    const int x0 = strip * plan.strip_w, x1 = std::min(p.wo, x0 + plan.strip_w);
    const int y0 = band * plan.band_h, y1 = std::min(p.ho, y0 + plan.band_h);
    unit(job, n, y0, y1, x0, x1, halos + size_t(worker) * plan.halo_floats);
  });
}

}  // namespace

Conv3x3CpuPlan plan_conv3x3(const Conv3x3Params& p, DType dt, int threads, const IsaKernels* kernels) {
  Conv3x3CpuPlan plan{};
  const bool even_channels = p.c % 2 == 0 && p.shortcut_c % 2 == 0;
  plan.kernel = (kernels ? *kernels : active_kernels()).conv3x3(dt, even_channels);
  const int rows = plan.kernel.rows;
  const size_t elem_bytes = plan.kernel.channel_pairs ? sizeof(bf16) : sizeof(float);
  const int ld = round_up(p.c, plan.kernel.k_align);
  int strip = int(plan.kernel.halo_budget_bytes / (3 * size_t(ld) * elem_bytes)) - 2;
  strip = std::clamp(strip / rows * rows, rows, std::max(rows, kMaxStrip / rows * rows));
  strip = std::min(strip, p.wo);
  plan.strips = ceil_div(p.wo, strip);
  // Even out the strips (a last strip of a few pixels wastes the GEMM step).
  plan.strip_w = std::min(strip, round_up(ceil_div(p.wo, plan.strips), rows));
  plan.strips = ceil_div(p.wo, plan.strip_w);
  const int want_bands = ceil_div(kUnitsPerThread * threads, p.n * plan.strips);
  plan.band_h = ceil_div(p.ho, std::clamp(want_bands, 1, p.ho));
  plan.bands = ceil_div(p.ho, plan.band_h);
  plan.units = p.n * plan.strips * plan.bands;
  plan.threads = std::max(1, std::min(threads, plan.units));
  const auto floats = [&](size_t elems) { return (elems * elem_bytes + 3) / 4; };
  const int sc_ld = round_up(p.shortcut_c, plan.kernel.k_align);
  const int taps = plan.kernel.winograd ? kWinogradTaps : 9;
  plan.packed_weight_floats = floats(size_t(ceil_div(p.o, kPanel)) * taps * ld * kPanel);
  plan.packed_shortcut_floats = floats(size_t(ceil_div(p.o, kPanel)) * sc_ld * kPanel);
  plan.norm_floats = p.groups || p.pixel_norm ? size_t(p.n) * 3 * p.c : 0;
  plan.halo_floats = plan.kernel.worker_floats(p, plan.strip_w);
  return plan;
}

void conv3x3(const Conv3x3Params& p, DType dt, const Conv3x3Buffers& b,
             const Conv3x3CpuPlan& plan, float* scratch) {
  with_dtype(dt, [&](auto t) { run<decltype(t)>(p, b, plan, scratch); });
}

}  // namespace fusedconv::cpu
