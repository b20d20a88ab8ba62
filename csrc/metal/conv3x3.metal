// Fused conv3x3: GroupNorm (or the per-pixel norm) + SiLU + nearest-2x upsample applied to the input as it
// is staged, bias / residual / 1x1 shortcut added as the output is stored. A direct
// (implicit-GEMM) convolution with no device scratch: per chunk of kConvBK input
// channels the threadgroup stages the activated input halo [3][TM+2][BK] and the
// weight slice [TN][9][BK] in threadgroup memory, then every simdgroup multiplies
// 8x8 fragments of them for the 9 taps with simdgroup_matrix (f32 accumulation).
//
// Choices that follow MLX's steel kernels (never timed: no Mac in this project's CI):
// - tiles are staged in the input dtype (half the threadgroup bytes and bandwidth of
//   f32 for f16/bf16) and widened to f32 as each lane loads its two fragment
//   elements, so bf16 needs no simdgroup_matrix<bfloat>;
// - channels are innermost in both staged tiles, as in global memory (NHWC input,
//   OHWI weights): adjacent threads read adjacent addresses;
// - NT % BK == 0, so a thread stages one channel in every chunk and computes that
//   channel's norm scale/shift once per chunk, not per element.
#include <metal_stdlib>

#include "metal/dtype.h"
#include "metal/kernel_defs.h"
#include "metal/tiles.h"
#include "params.h"

using namespace metal;
using fusedconv::Conv3x3Params;
using fusedconv::metal_plan::kConvBK;

// Apple's simdgroup_matrix<T, 8, 8> lane layout: lane holds (row, col) and (row, col + 1).
inline int fragment_row(uint lane) {
  const int qid = int(lane) / 4;
  return (qid & 4) + (int(lane) / 2) % 4;
}
inline int fragment_col(uint lane) {
  const int qid = int(lane) / 4;
  return (qid & 2) * 2 + (int(lane) % 2) * 2;
}

// Loads this lane's two elements of the 8x8 fragment whose (r, c) element is
// src[r * row_stride + c * col_stride], widened to f32.
template <typename D>
inline void load_fragment(thread simdgroup_matrix<float, 8, 8>& m, const threadgroup typename D::storage* src,
                          int row_stride, int col_stride, uint lane) {
  const int r = fragment_row(lane), c = fragment_col(lane);
  m.thread_elements()[0] = D::load(src[r * row_stride + c * col_stride]);
  m.thread_elements()[1] = D::load(src[r * row_stride + (c + 1) * col_stride]);
}

template <typename D, int SG_M, int SG_N, int FM, int FN>
[[kernel]] void conv3x3(
    const device typename D::storage* x [[buffer(0)]],
    const device typename D::storage* w [[buffer(1)]],
    const device float* stats [[buffer(2)]],
    const device typename D::storage* gamma [[buffer(3)]],
    const device typename D::storage* beta [[buffer(4)]],
    const device typename D::storage* bias [[buffer(5)]],
    const device typename D::storage* residual [[buffer(6)]],
    const device typename D::storage* shortcut_x [[buffer(7)]],
    const device typename D::storage* shortcut_w [[buffer(8)]],
    const device typename D::storage* shortcut_bias [[buffer(9)]],
    device typename D::storage* out [[buffer(10)]],
    constant Conv3x3Params& p [[buffer(11)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint simd_id [[simdgroup_index_in_threadgroup]]) {
  typedef typename D::storage T;
  constexpr int TM = SG_M * FM * 8, TN = SG_N * FN * 8, NT = SG_M * SG_N * 32, BK = kConvBK;
  constexpr int HALO_W = TM + 2;
  static_assert(NT % BK == 0, "a thread must stage the same channel in every chunk");
  FC_THREADGROUP_ARRAY(T, tgm, 3 * HALO_W * BK + 9 * BK * TN);
  threadgroup T* halo = tgm;                    // [3][HALO_W][BK]; shortcut pass: [TM][BK]
  threadgroup T* wt = tgm + 3 * HALO_W * BK;    // [TN][9][BK];     shortcut pass: [TN][BK]

  const int oblocks = (p.o + TN - 1) / TN;
  const int n = int(tg.z) / oblocks, o0 = (int(tg.z) % oblocks) * TN;
  const int y = int(tg.y), x0 = int(tg.x) * TM;
  const int m0 = int(simd_id) / SG_N * FM * 8;  // this simdgroup's first pixel in the tile
  const int n0 = int(simd_id) % SG_N * FN * 8;  // and first output channel
  const int ci = int(tid) % BK;                 // the channel this thread stages in every chunk

  simdgroup_matrix<float, 8, 8> acc[FM][FN];
  for (int i = 0; i < FM; ++i)
    for (int j = 0; j < FN; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

  for (int c0 = 0; c0 < p.c; c0 += BK) {
    const int c = c0 + ci;
    const bool norm = p.groups > 0 || p.pixel_norm;
    float mean = 0.0f, scale = 1.0f, shift = 0.0f;
    if (norm && c < p.c) {
      if (p.groups > 0) {
        const device float* s = stats + (size_t(n) * p.groups + c / (p.c / p.groups)) * 2;
        mean = s[0];
        scale = s[1] * D::load(gamma[c]);
      } else {
        scale = D::load(gamma[c]);  // the pixel's own statistic multiplies x below
      }
      shift = D::load(beta[c]);
    }
    for (int i = int(tid); i < 3 * HALO_W * BK; i += NT) {
      const int yy = y + i / (BK * HALO_W) - 1, xx = x0 + i / BK % HALO_W - 1;
      float a = 0.0f;  // zero padding applies to the activated input
      if (c < p.c && yy >= 0 && yy < p.ho && xx >= 0 && xx < p.wo) {
        const size_t pix = (size_t(n) * p.h + yy / p.upsample) * size_t(p.w) + xx / p.upsample;
        a = D::load(x[pix * p.c + c]);
        if (p.pixel_norm) a *= stats[pix];
        if (norm) a = (a - mean) * scale + shift;
        if (p.silu) a = a / (1.0f + exp(-a));
      }
      halo[i] = D::store(a);
    }
    for (int i = int(tid); i < TN * 9 * BK; i += NT) {
      const int o = o0 + i / (9 * BK);
      wt[i] = (o < p.o && c < p.c) ? w[(size_t(o) * 9 + i / BK % 9) * p.c + c] : T(0);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int tap = 0; tap < 9; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
      for (int k = 0; k < BK; k += 8) {
        simdgroup_matrix<float, 8, 8> a[FM], b[FN];
        for (int i = 0; i < FM; ++i) load_fragment<D>(a[i], halo + (ky * HALO_W + m0 + i * 8 + kx) * BK + k, BK, 1, lane);
        for (int j = 0; j < FN; ++j) load_fragment<D>(b[j], wt + ((n0 + j * 8) * 9 + tap) * BK + k, 1, 9 * BK, lane);
        for (int i = 0; i < FM; ++i)
          for (int j = 0; j < FN; ++j) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the next chunk restages halo and wt
  }

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN).
  const size_t row_pix = (size_t(n) * p.ho + y) * size_t(p.wo);
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    const int c = c0 + ci;
    for (int i = int(tid); i < TM * BK; i += NT) {
      const int xx = x0 + i / BK;
      halo[i] = (xx < p.wo && c < p.shortcut_c) ? shortcut_x[(row_pix + xx) * p.shortcut_c + c] : T(0);
    }
    for (int i = int(tid); i < TN * BK; i += NT) {
      const int o = o0 + i / BK;
      wt[i] = (o < p.o && c < p.shortcut_c) ? shortcut_w[size_t(o) * p.shortcut_c + c] : T(0);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int k = 0; k < BK; k += 8) {
      simdgroup_matrix<float, 8, 8> a[FM], b[FN];
      for (int i = 0; i < FM; ++i) load_fragment<D>(a[i], halo + (m0 + i * 8) * BK + k, BK, 1, lane);
      for (int j = 0; j < FN; ++j) load_fragment<D>(b[j], wt + (n0 + j * 8) * BK + k, 1, BK, lane);
      for (int i = 0; i < FM; ++i)
        for (int j = 0; j < FN; ++j) simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the next chunk restages halo and wt
  }

  // Epilogue straight from registers, by the fragment lane layout.
  const int row = fragment_row(lane), col = fragment_col(lane);
  for (int i = 0; i < FM; ++i) {
    const int xx = x0 + m0 + i * 8 + row;
    if (xx >= p.wo) continue;
    for (int j = 0; j < FN; ++j) {
      for (int t = 0; t < 2; ++t) {
        const int o = o0 + n0 + j * 8 + col + t;
        if (o >= p.o) continue;
        const size_t idx = (row_pix + xx) * p.o + o;
        float v = acc[i][j].thread_elements()[t];
        if (p.has_bias) v += D::load(bias[o]);
        if (p.has_shortcut_bias) v += D::load(shortcut_bias[o]);
        if (p.has_residual) v += D::load(residual[idx]);
        out[idx] = D::store(v);
      }
    }
  }
}

#define FC_CONV_INSTANCES(TYPE_NAME, D)                                       \
  FC_INSTANTIATE("fc_conv3x3_" TYPE_NAME "_2x2_2x2", conv3x3<D, 2, 2, 2, 2>) \
  FC_INSTANTIATE("fc_conv3x3_" TYPE_NAME "_4x1_1x1", conv3x3<D, 4, 1, 1, 1>)

FC_CONV_INSTANCES("float32", fc_float32)
FC_CONV_INSTANCES("float16", fc_float16)
FC_CONV_INSTANCES("bfloat16", fc_bfloat16)
