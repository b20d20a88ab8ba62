// Fused conv3x3: GroupNorm + SiLU + nearest-2x upsample applied to the input as it
// is staged, bias / residual / 1x1 shortcut added as the output is stored. A direct
// (implicit-GEMM) convolution with no device scratch: per chunk of kConvBK input
// channels the threadgroup stages the activated input halo [3][TM+2][BK] and the
// weight slice [9][BK][TN] in threadgroup memory, then every simdgroup multiplies
// 8x8 fragments of them for the 9 taps with simdgroup_matrix (f32 accumulation).
#include <metal_stdlib>

#include "metal/dtype.h"
#include "metal/kernel_defs.h"
#include "metal/tiles.h"
#include "params.h"

using namespace metal;
using fusedconv::Conv3x3Params;
using fusedconv::metal_plan::kConvBK;

// The activated input at output-space (yy, xx), channel c, of image n: normalised,
// SiLU'd, rounded to T (the reference materialises it in T); 0 outside the image.
template <typename T>
inline float activated_input(const device T* x, const device float* stats, const device T* gamma,
                             const device T* beta, constant Conv3x3Params& p, int n, int yy, int xx, int c) {
  if (yy < 0 || yy >= p.ho || xx < 0 || xx >= p.wo || c >= p.c) return 0.0f;
  const size_t pix = (size_t(n) * p.h + yy / p.upsample) * size_t(p.w) + xx / p.upsample;
  float v = to_float(x[pix * p.c + c]);
  if (p.groups > 0) {
    const device float* s = stats + (size_t(n) * p.groups + c / (p.c / p.groups)) * 2;
    v = (v - s[0]) * s[1] * to_float(gamma[c]) + to_float(beta[c]);
  }
  if (p.silu) v = v / (1.0f + exp(-v));
  return (p.groups > 0 || p.silu) ? round_to<T>(v) : v;
}

template <typename T, int SG_M, int SG_N, int FM, int FN>
[[kernel]] void conv3x3(
    const device T* x [[buffer(0)]],
    const device T* w [[buffer(1)]],
    const device float* stats [[buffer(2)]],
    const device T* gamma [[buffer(3)]],
    const device T* beta [[buffer(4)]],
    const device T* bias [[buffer(5)]],
    const device T* residual [[buffer(6)]],
    const device T* shortcut_x [[buffer(7)]],
    const device T* shortcut_w [[buffer(8)]],
    const device T* shortcut_bias [[buffer(9)]],
    device T* out [[buffer(10)]],
    constant Conv3x3Params& p [[buffer(11)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint simd_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int TM = SG_M * FM * 8, TN = SG_N * FN * 8, NT = SG_M * SG_N * 32, BK = kConvBK;
  constexpr int HALO_W = TM + 2;
  FC_THREADGROUP_ARRAY(float, tgm, 3 * HALO_W * BK + 9 * BK * TN);
  threadgroup float* halo = tgm;                    // [3][HALO_W][BK]; shortcut pass: [TM][BK]
  threadgroup float* wt = tgm + 3 * HALO_W * BK;    // [9][BK][TN];      shortcut pass: [BK][TN]

  const int oblocks = (p.o + TN - 1) / TN;
  const int n = int(tg.z) / oblocks, o0 = (int(tg.z) % oblocks) * TN;
  const int y = int(tg.y), x0 = int(tg.x) * TM;
  const int m0 = int(simd_id) / SG_N * FM * 8;  // this simdgroup's first pixel in the tile
  const int n0 = int(simd_id) % SG_N * FN * 8;  // and first output channel

  simdgroup_matrix<float, 8, 8> acc[FM][FN];
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < FN; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

  for (int c0 = 0; c0 < p.c; c0 += BK) {
    for (int i = int(tid); i < 3 * HALO_W * BK; i += NT) {
      const int ci = i % BK, col = i / BK % HALO_W, r = i / (BK * HALO_W);
      halo[i] = activated_input(x, stats, gamma, beta, p, n, y + r - 1, x0 + col - 1, c0 + ci);
    }
    for (int i = int(tid); i < 9 * BK * TN; i += NT) {
      const int oj = i % TN, ci = i / TN % BK, tap = i / (TN * BK);
      const int o = o0 + oj, c = c0 + ci;
      wt[i] = (o < p.o && c < p.c) ? to_float(w[(size_t(o) * 9 + tap) * p.c + c]) : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int tap = 0; tap < 9; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
      for (int k = 0; k < BK; k += 8) {
        simdgroup_matrix<float, 8, 8> a[FM], b[FN];
        for (int i = 0; i < FM; ++i) simdgroup_load(a[i], halo + (ky * HALO_W + m0 + i * 8 + kx) * BK + k, BK);
        for (int j = 0; j < FN; ++j) simdgroup_load(b[j], wt + (tap * BK + k) * TN + n0 + j * 8, TN);
        for (int i = 0; i < FM; ++i)
          for (int j = 0; j < FN; ++j) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN).
  const size_t row_pix = (size_t(n) * p.ho + y) * size_t(p.wo);
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    for (int i = int(tid); i < TM * BK; i += NT) {
      const int ci = i % BK, m = i / BK, c = c0 + ci;
      halo[i] = (x0 + m < p.wo && c < p.shortcut_c) ? to_float(shortcut_x[(row_pix + x0 + m) * p.shortcut_c + c]) : 0.0f;
    }
    for (int i = int(tid); i < BK * TN; i += NT) {
      const int oj = i % TN, ci = i / TN, o = o0 + oj, c = c0 + ci;
      wt[i] = (o < p.o && c < p.shortcut_c) ? to_float(shortcut_w[size_t(o) * p.shortcut_c + c]) : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int k = 0; k < BK; k += 8) {
      simdgroup_matrix<float, 8, 8> a[FM], b[FN];
      for (int i = 0; i < FM; ++i) simdgroup_load(a[i], halo + (m0 + i * 8) * BK + k, BK);
      for (int j = 0; j < FN; ++j) simdgroup_load(b[j], wt + k * TN + n0 + j * 8, TN);
      for (int i = 0; i < FM; ++i)
        for (int j = 0; j < FN; ++j) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  // Epilogue straight from registers: this lane holds elements (row, col) and
  // (row, col + 1) of each 8x8 fragment (Apple's simdgroup_matrix lane layout).
  const int qid = int(lane) / 4;
  const int row = (qid & 4) + (int(lane) / 2) % 4;
  const int col = (qid & 2) * 2 + (int(lane) % 2) * 2;
  for (int i = 0; i < FM; ++i) {
    const int xx = x0 + m0 + i * 8 + row;
    if (xx >= p.wo) continue;
    for (int j = 0; j < FN; ++j) {
      const thread auto& e = acc[i][j].thread_elements();
      for (int t = 0; t < 2; ++t) {
        const int o = o0 + n0 + j * 8 + col + t;
        if (o >= p.o) continue;
        const size_t idx = (row_pix + xx) * p.o + o;
        float v = e[t];
        if (p.has_bias) v += to_float(bias[o]);
        if (p.has_shortcut_bias) v += to_float(shortcut_bias[o]);
        if (p.has_residual) v += to_float(residual[idx]);
        out[idx] = from_float<T>(v);
      }
    }
  }
}

#define FC_CONV_INSTANCES(TYPE_NAME, T)                                                 \
  FC_INSTANTIATE("fc_conv3x3_" TYPE_NAME "_2x2_2x2", conv3x3<T, 2, 2, 2, 2>)           \
  FC_INSTANTIATE("fc_conv3x3_" TYPE_NAME "_4x1_1x1", conv3x3<T, 4, 1, 1, 1>)

FC_CONV_INSTANCES("float32", float)
FC_CONV_INSTANCES("float16", half)
FC_CONV_INSTANCES("bfloat16", fc_bf16)
