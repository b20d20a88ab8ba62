// Weight packing shared by the CPU kernels: [N][taps][K] -> [ceil(N/16)][taps][K][16]
// f32, zero beyond N, so that a micro-kernel streams one 16-column panel; or, for
// the bf16 dot-product kernels, [ceil(N/16)][taps][K/2][16][2] bf16 (K even).
#pragma once

#include <type_traits>

#include "cpu/dtype.h"
#include "cpu/parallel.h"

namespace fusedconv::cpu {

constexpr int kPanel = 16;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int v, int m) { return ceil_div(v, m) * m; }

// Index of element (channel c, column j) in one tap's panel of P elements.
template <class P>
constexpr size_t panel_index(int c, int j) {
  if constexpr (std::is_same_v<P, bf16>) {
    return (size_t(c / 2) * kPanel + j) * 2 + c % 2;  // channel pairs side by side
  } else {
    return size_t(c) * kPanel + j;
  }
}

// P = float: [ceil(N/16)][taps][KP][16] f32; P = bf16: [ceil(N/16)][taps][KP/2][16][2]
// (KP even), the channel-pair layout of the dot-product kernels (and AMX's B tiles).
// Element (o, tap, c) is value(o, tap, c) for o < n and c < k, zero elsewhere.
template <class P, class Value>
void pack_panels_of(int n, int taps, int k, int kp, P* packed, int threads, Value value) {
  const int blocks = ceil_div(n, kPanel);
  parallel_for(blocks * taps, threads, [&](int task, int) {
    const int nb = task / taps, tap = task % taps;
    P* dst = packed + (size_t(nb) * taps + tap) * kp * kPanel;
    // Source rows read contiguously; the strided writes stay in one L2-sized panel.
    for (int j = 0; j < kPanel; ++j) {
      const int o = nb * kPanel + j;
      for (int c = 0; c < kp; ++c) dst[panel_index<P>(c, j)] = o < n && c < k ? from_f32<P>(value(o, tap, c)) : P{};
    }
  });
}

// The panels of w = [N][taps][K].
template <class T, class P>
void pack_panels(const T* w, int n, int taps, int k, int kp, P* packed, int threads) {
  pack_panels_of(n, taps, k, kp, packed, threads,
                 [w, taps, k](int o, int tap, int c) { return to_f32(w[(size_t(o) * taps + tap) * k + c]); });
}

}  // namespace fusedconv::cpu
