// Weight packing shared by the CPU kernels: [N][taps][K] -> [ceil(N/16)][taps][K][16]
// f32, zero beyond N, so that a micro-kernel streams one 16-column panel; or, for
// the bf16 dot-product kernels, [ceil(N/16)][taps][K/2][16][2] bf16 (K even).
#pragma once

#include "cpu/dtype.h"
#include "cpu/parallel.h"

namespace fusedconv::cpu {

constexpr int kPanel = 16;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

template <class T>
void pack_panels(const T* w, int n, int taps, int k, float* packed, int threads) {
  const int blocks = ceil_div(n, kPanel);
  parallel_for(blocks * taps, threads, [&](int task, int) {
    const int nb = task / taps, tap = task % taps;
    float* dst = packed + (size_t(nb) * taps + tap) * k * kPanel;
    // Source rows read contiguously; the strided writes stay in one L2-sized panel.
    for (int j = 0; j < kPanel; ++j) {
      const int o = nb * kPanel + j;
      const T* src = o < n ? w + (size_t(o) * taps + tap) * k : nullptr;
      for (int c = 0; c < k; ++c) dst[size_t(c) * kPanel + j] = src ? to_f32(src[c]) : 0.0f;
    }
  });
}

template <class T>
void pack_panel_pairs(const T* w, int n, int taps, int k, bf16* packed, int threads) {
  const int blocks = ceil_div(n, kPanel);
  parallel_for(blocks * taps, threads, [&](int task, int) {
    const int nb = task / taps, tap = task % taps;
    bf16* dst = packed + (size_t(nb) * taps + tap) * k * kPanel;
    for (int j = 0; j < kPanel; ++j) {
      const int o = nb * kPanel + j;
      const T* src = o < n ? w + (size_t(o) * taps + tap) * k : nullptr;
      for (int c = 0; c < k; ++c) {
        dst[(size_t(c / 2) * kPanel + j) * 2 + c % 2] = src ? from_f32<bf16>(to_f32(src[c])) : bf16{0};
      }
    }
  });
}

}  // namespace fusedconv::cpu
