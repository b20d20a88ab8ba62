// Fused conv3x3 on CUDA: GroupNorm (or the per-pixel norm) + SiLU + nearest-2x upsample
// applied to the input as it is staged in shared memory, bias / residual / 1x1 shortcut
// added as the output is stored. A direct (implicit-GEMM) convolution with no device
// scratch: M = output pixels, N = output channels, K = 9 taps x input channels.
//
// Two kernels, each instantiated by name (extern "C", loaded by MLX's
// precompiled_cuda_kernel from this file's cubin):
// - fc_conv3x3_mma_<dtype> (bf16/fp16): 8 warps on mma.sync m16n8k16 tensor
//   cores, f32 accumulation; the staged halo rows are the A operand of all 9 taps (each
//   tap is the same tile shifted by (ky, kx)), loaded with ldmatrix;
// - fc_conv3x3_simt_<dtype>_<TN> (float32 at full precision; O <= 8 such as conv_out's
//   3 channels, where a tensor-core tile would be mostly empty; GPUs whose blocks cannot
//   have the tensor-core kernel's shared memory): f32 FMA.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda/kernel_params.h"
#include "cuda/tiles.h"

using fusedconv::Conv3x3Params;
namespace cp = fusedconv::cuda_plan;

namespace {

typedef long long i64;

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Elem<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

// The per-channel affine of the input's norm for channel c of image n: the staged value
// is (x * pixel_stat - mean) * scale + shift (identity without a norm).
struct ChannelNorm {
  float mean, scale, shift;
};

template <typename T>
__device__ ChannelNorm channel_norm(const Conv3x3Params& p, const float* stats, const T* gamma, const T* beta,
                                    int n, int c) {
  ChannelNorm cn{0.0f, 1.0f, 0.0f};
  if (c >= p.c || (p.groups == 0 && !p.pixel_norm)) return cn;
  if (p.groups > 0) {
    const float* s = stats + (i64(n) * p.groups + c / (p.c / p.groups)) * 2;
    cn.mean = s[0];
    cn.scale = s[1] * Elem<T>::load(gamma[c]);
  } else {
    cn.scale = Elem<T>::load(gamma[c]);
  }
  cn.shift = Elem<T>::load(beta[c]);
  return cn;
}

// The activated input at output coordinates (yy, xx), channel c; 0 outside the image
// (the convolution's zero padding applies to the activated input).
template <typename T>
__device__ float activated(const Conv3x3Params& p, const T* x, const float* stats, const ChannelNorm& cn, int n,
                           int yy, int xx, int c) {
  if (c >= p.c || yy < 0 || yy >= p.ho || xx < 0 || xx >= p.wo) return 0.0f;
  const i64 pix = (i64(n) * p.h + yy / p.upsample) * p.w + xx / p.upsample;
  float a = Elem<T>::load(x[pix * p.c + c]);
  if (p.pixel_norm) a *= stats[pix];
  a = (a - cn.mean) * cn.scale + cn.shift;
  if (p.silu) a = a / (1.0f + __expf(-a));
  return a;
}

template <typename T>
__device__ void store_output(const Conv3x3Params& p, T* out, const T* bias, const T* residual, const T* shortcut_bias,
                             i64 pix, int o, float v) {
  const i64 idx = pix * p.o + o;
  if (p.has_bias) v += Elem<T>::load(bias[o]);
  if (p.has_shortcut_bias) v += Elem<T>::load(shortcut_bias[o]);
  if (p.has_residual) v += Elem<T>::load(residual[idx]);
  out[idx] = Elem<T>::store(v);
}

// ---- tensor cores -------------------------------------------------------------------

__device__ inline uint32_t smem_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

template <typename T>
__device__ inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ inline void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ inline void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Eight consecutive elements: one 16-byte load or store.
template <typename T>
struct alignas(16) Vec8 {
  T v[8];
};

// Which block of the grid this is (grids are 2-D only to stay within gridDim.x's range).
__device__ inline i64 linear_block() { return i64(blockIdx.y) * gridDim.x + blockIdx.x; }

// The output tile of a block: image n, rows y0.., columns x0.., channels o0...
struct Tile {
  int n, y0, x0, o0;
};

__device__ inline bool tile_of_block(const Conv3x3Params& p, int tn, Tile& t) {
  const int tiles_x = (p.wo + cp::kTileCols - 1) / cp::kTileCols, tiles_y = (p.ho + cp::kTileRows - 1) / cp::kTileRows;
  const int oblocks = (p.o + tn - 1) / tn;
  i64 b = linear_block();
  if (b >= i64(p.n) * tiles_y * tiles_x * oblocks) return false;
  // Output-channel blocks vary fastest: the blocks that share an input patch run together.
  t.o0 = int(b % oblocks) * tn;
  b /= oblocks;
  t.x0 = int(b % tiles_x) * cp::kTileCols;
  b /= tiles_x;
  t.y0 = int(b % tiles_y) * cp::kTileRows;
  t.n = int(b / tiles_y);
  return true;
}

__device__ inline void cp_async16(void* smem, const void* global, bool valid) {
  // src-size 0 zero-fills the 16 bytes (an output channel past O).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(global),
               "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

template <typename T>
__device__ inline float silu(float a) {
  return __fdividef(a, 1.0f + __expf(-a));
}

// The 8-channel input vectors of one chunk's halo that one thread stages, held in
// registers between their global load and their activation.
// A channel's norm as one FMA on the (pixel-scaled) input: the mean folded into the
// shift. (16-bit inputs only: their rounding dwarfs the f32 cancellation this allows.)
struct ChannelAffine {
  float scale, shift;
};

template <typename T, int N>
struct HaloPrefetch {
  Vec8<T> raw[N];
  float pixel_stat[N];  // the per-pixel norm's statistic (1 without it)
  bool inside[N];       // the pixel lies in the image (else the zero padding)
};

template <typename T, int TR, int TC, int BK, int NT>
struct MmaHalo {
  static constexpr int HR = TR + 2, HC = TC + 2, VECS = HR * HC * (BK / 8);
  static constexpr int PER_THREAD = (VECS + NT - 1) / NT;

  __device__ static void load(const Conv3x3Params& p, const T* x, const float* stats, const Tile& t, int c0,
                              bool x_vec, HaloPrefetch<T, PER_THREAD>& pf) {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int u = threadIdx.x + i * NT;
      const int k8 = (u % (BK / 8)) * 8, hp = u / (BK / 8);
      const int yy = t.y0 + hp / HC - 1, xx = t.x0 + hp % HC - 1;
      pf.inside[i] = u < VECS && yy >= 0 && yy < p.ho && xx >= 0 && xx < p.wo;
      pf.pixel_stat[i] = 1.0f;
      if (!pf.inside[i]) continue;
      const i64 pix = (i64(t.n) * p.h + yy / p.upsample) * p.w + xx / p.upsample;
      if (p.pixel_norm) pf.pixel_stat[i] = stats[pix];
      const T* src = x + pix * p.c + c0 + k8;
      if (x_vec && c0 + k8 < p.c) {
        pf.raw[i] = *reinterpret_cast<const Vec8<T>*>(src);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) pf.raw[i].v[k] = c0 + k8 + k < p.c ? src[k] : Elem<T>::store(0.0f);
      }
    }
  }

  __device__ static void store(const Conv3x3Params& p, const ChannelAffine* affine, int c0,
                               const HaloPrefetch<T, PER_THREAD>& pf, T* halo) {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int u = threadIdx.x + i * NT;
      if (u >= VECS) continue;
      const int k8 = (u % (BK / 8)) * 8, hp = u / (BK / 8);
      Vec8<T> v;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int c = c0 + k8 + k;
        float a = 0.0f;  // zero padding (and channels past C) apply to the activated input
        if (pf.inside[i] && c < p.c) {
          const ChannelAffine cn = affine[c];
          a = fmaf(Elem<T>::load(pf.raw[i].v[k]), pf.pixel_stat[i] * cn.scale, cn.shift);
          if (p.silu) a = silu<T>(a);
        }
        v.v[k] = Elem<T>::store(a);
      }
      *reinterpret_cast<Vec8<T>*>(halo + hp * cp::kMmaRowStride + k8) = v;
    }
  }
};

// Weights of one chunk, [tap][TN][LDS], by cp.async when rows are 16-byte vectors.
template <typename T, int TN, int BK, int NT>
__device__ void stage_weights(const Conv3x3Params& p, const T* w, int o0, int c0, bool w_vec, T* wt) {
  constexpr int LDS = cp::kMmaRowStride;
  for (int u = threadIdx.x; u < 9 * TN * (BK / 8); u += NT) {
    const int k8 = (u % (BK / 8)) * 8, r = u / (BK / 8);
    const int tap = r % 9, nn = r / 9, o = o0 + nn;
    T* dst = wt + (tap * TN + nn) * LDS + k8;
    const T* src = w + (i64(o < p.o ? o : 0) * 9 + tap) * p.c + c0 + k8;
    if (w_vec) {
      cp_async16(dst, src, o < p.o && c0 + k8 < p.c);
    } else {
      Vec8<T> v;
#pragma unroll
      for (int k = 0; k < 8; ++k) v.v[k] = (o < p.o && c0 + k8 + k < p.c) ? src[k] : Elem<T>::store(0.0f);
      *reinterpret_cast<Vec8<T>*>(dst) = v;
    }
  }
  cp_async_commit();
}

// One k16 step of a warp's 64 x 64 tile: A fragments from four 16-row blocks (a[mi]: this
// lane's ldmatrix row), B from 64 rows of a [n][LDS] tile (b: this lane's row of the first 16).
template <typename T>
__device__ inline void warp_mma_k16(float (&acc)[4][8][4], const T* const (&a)[4], const T* b) {
  uint32_t af[4][4], bf[8][2];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) ldmatrix_x4(af[mi], a[mi]);
#pragma unroll
  for (int nj = 0; nj < 4; ++nj) {
    uint32_t r[4];
    ldmatrix_x4(r, b + nj * 16 * cp::kMmaRowStride);
    bf[2 * nj][0] = r[0];
    bf[2 * nj][1] = r[1];
    bf[2 * nj + 1][0] = r[2];
    bf[2 * nj + 1][1] = r[3];
  }
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
}

template <typename T>
__device__ void conv3x3_mma(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ stats,
                            const T* __restrict__ gamma, const T* __restrict__ beta, const T* __restrict__ bias,
                            const T* __restrict__ residual, const T* __restrict__ shortcut_x,
                            const T* __restrict__ shortcut_w, const T* __restrict__ shortcut_bias, T* __restrict__ out,
                            const Conv3x3Params& p) {
  constexpr int TR = cp::kTileRows, TC = cp::kTileCols, TM = TR * TC, TN = cp::kMmaTileN, BK = cp::kMmaBK;
  constexpr int LDS = cp::kMmaRowStride, NT = cp::kMmaThreads;
  typedef MmaHalo<T, TR, TC, BK, NT> Halo;
  constexpr int HALO_ELEMS = Halo::HR * Halo::HC * LDS, WT_ELEMS = 9 * TN * LDS;
  static_assert(BK == 16, "one m16n8k16 step per tap and chunk");
  static_assert(TM == 256 && NT == 256, "8 warps of 64 x 64 cover the 256 x 128 tile");
  // Dynamic shared memory (sized by the plan): two halo buffers [HR][HC][LDS], two weight
  // buffers [tap][TN][LDS], then the norm's affine per input channel.
  extern __shared__ __align__(16) unsigned char smem[];
  T* const halo_bufs = reinterpret_cast<T*>(smem);  // buffer b at + b * HALO_ELEMS
  T* const wt_bufs = halo_bufs + 2 * HALO_ELEMS;     // buffer b at + b * WT_ELEMS
  ChannelAffine* affine = reinterpret_cast<ChannelAffine*>(wt_bufs + 2 * WT_ELEMS);

  Tile t;
  if (!tile_of_block(p, TN, t)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp % 4) * 64, wn = (warp / 4) * 64;  // this warp's 64 x 64 corner of the tile
  float acc[4][8][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.0f;

  const bool x_vec = p.c % 8 == 0 && (uintptr_t(x) & 15) == 0;
  const bool w_vec = p.c % 8 == 0 && (uintptr_t(w) & 15) == 0;
  for (int c = tid; c < p.c; c += NT) {
    const ChannelNorm cn = channel_norm(p, stats, gamma, beta, t.n, c);
    affine[c] = ChannelAffine{cn.scale, cn.shift - cn.mean * cn.scale};
  }

  // A: this lane's ldmatrix row of each 16-row fragment (tile pixel m -> (m / TC, m % TC)).
  const int a_k = (lane / 16) * 8;
  int a_row[4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
    const int m = wm + mi * 16 + lane % 16;
    a_row[mi] = (m / TC) * Halo::HC + m % TC;
  }
  // B: rows n of the [TN][LDS] weight tile, k halves by lane group.
  const int b_n = wn + (lane / 16) * 8 + lane % 8, b_k = ((lane / 8) % 2) * 8;

  HaloPrefetch<T, Halo::PER_THREAD> pf;
  const int chunks = (p.c + BK - 1) / BK;
  stage_weights<T, TN, BK, NT>(p, w, t.o0, 0, w_vec, wt_bufs);
  Halo::load(p, x, stats, t, 0, x_vec, pf);
  __syncthreads();  // affine
  Halo::store(p, affine, 0, pf, halo_bufs);
  cp_async_wait_all();
  __syncthreads();

  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int cur = chunk % 2, c_next = (chunk + 1) * BK;
    const bool more = chunk + 1 < chunks;
    if (more) {
      stage_weights<T, TN, BK, NT>(p, w, t.o0, c_next, w_vec, wt_bufs + (1 - cur) * WT_ELEMS);
      Halo::load(p, x, stats, t, c_next, x_vec, pf);
    }
    const T* halo = halo_bufs + cur * HALO_ELEMS;
    const T* wt = wt_bufs + cur * WT_ELEMS;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int shift = (tap / 3) * Halo::HC + tap % 3;
      const T* const a[4] = {halo + (a_row[0] + shift) * LDS + a_k, halo + (a_row[1] + shift) * LDS + a_k,
                             halo + (a_row[2] + shift) * LDS + a_k, halo + (a_row[3] + shift) * LDS + a_k};
      warp_mma_k16<T>(acc, a, wt + (tap * TN + b_n) * LDS + b_k);
    }
    if (more) Halo::store(p, affine, c_next, pf, halo_bufs + (1 - cur) * HALO_ELEMS);
    cp_async_wait_all();
    __syncthreads();
  }

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN).
  T* as = halo_bufs;  // [TM][LDS]
  T* bs = wt_bufs;    // [TN][LDS]
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    for (int u = tid; u < TM * BK; u += NT) {
      const int k = u % BK, m = u / BK, yy = t.y0 + m / TC, xx = t.x0 + m % TC, c = c0 + k;
      as[m * LDS + k] = (c < p.shortcut_c && yy < p.ho && xx < p.wo)
                            ? shortcut_x[((i64(t.n) * p.ho + yy) * p.wo + xx) * p.shortcut_c + c]
                            : Elem<T>::store(0.0f);
    }
    for (int u = tid; u < TN * BK; u += NT) {
      const int k = u % BK, nn = u / BK, o = t.o0 + nn, c = c0 + k;
      bs[nn * LDS + k] = (c < p.shortcut_c && o < p.o) ? shortcut_w[i64(o) * p.shortcut_c + c] : Elem<T>::store(0.0f);
    }
    __syncthreads();
    const int m = wm + lane % 16;
    const T* const a[4] = {as + m * LDS + a_k, as + (m + 16) * LDS + a_k, as + (m + 32) * LDS + a_k,
                           as + (m + 48) * LDS + a_k};
    warp_mma_k16<T>(acc, a, bs + b_n * LDS + b_k);
    __syncthreads();
  }

  // Epilogue from registers by the accumulator layout: lane holds rows lane / 4 (+ 8),
  // columns 2 * (lane % 4) (+ 1) of each 16 x 8 fragment.
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = wm + mi * 16 + lane / 4 + half * 8, yy = t.y0 + m / TC, xx = t.x0 + m % TC;
      if (yy >= p.ho || xx >= p.wo) continue;
      const i64 pix = (i64(t.n) * p.ho + yy) * p.wo + xx;
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int o = t.o0 + wn + ni * 8 + (lane % 4) * 2 + e;
          if (o < p.o) store_output(p, out, bias, residual, shortcut_bias, pix, o, acc[mi][ni][half * 2 + e]);
        }
      }
    }
  }
}

// ---- CUDA cores -------------------------------------------------------------------

template <typename T, int TN>
__device__ void conv3x3_simt(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ stats,
                             const T* __restrict__ gamma, const T* __restrict__ beta, const T* __restrict__ bias,
                             const T* __restrict__ residual, const T* __restrict__ shortcut_x,
                             const T* __restrict__ shortcut_w, const T* __restrict__ shortcut_bias,
                             T* __restrict__ out, const Conv3x3Params& p) {
  constexpr int TR = cp::kTileRows, TC = cp::kTileCols, BK = cp::kSimtBK, NT = cp::kSimtThreads;
  constexpr int HR = TR + 2, HC = TC + 2;
  static_assert(NT == TR * TC, "a thread per output pixel of the tile");
  __shared__ float halo[HR][HC][BK + 1];  // +1: the lanes (columns) read with a stride of 17 words
  __shared__ float wt[9][BK][TN];         // every lane reads the same weight: a broadcast
  __shared__ ChannelNorm norm[BK];

  Tile t;
  if (!tile_of_block(p, TN, t)) return;
  const int tid = threadIdx.x, row = tid / TC, col = tid % TC;
  float acc[TN];
#pragma unroll
  for (int j = 0; j < TN; ++j) acc[j] = 0.0f;

  for (int c0 = 0; c0 < p.c; c0 += BK) {
    if (tid < BK) norm[tid] = channel_norm(p, stats, gamma, beta, t.n, c0 + tid);
    __syncthreads();
    for (int u = tid; u < HR * HC * BK; u += NT) {
      const int k = u % BK, hc = u / BK % HC, hr = u / (BK * HC);
      halo[hr][hc][k] = activated(p, x, stats, norm[k], t.n, t.y0 + hr - 1, t.x0 + hc - 1, c0 + k);
    }
    for (int u = tid; u < 9 * BK * TN; u += NT) {
      const int k = u % BK, tap = u / BK % 9, nn = u / (BK * 9), o = t.o0 + nn, c = c0 + k;
      wt[tap][k][nn] = (o < p.o && c < p.c) ? Elem<T>::load(w[(i64(o) * 9 + tap) * p.c + c]) : 0.0f;
    }
    __syncthreads();
    for (int tap = 0; tap < 9; ++tap) {
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        const float a = halo[row + tap / 3][col + tap % 3][k];
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[j] += a * wt[tap][k][j];
      }
    }
    __syncthreads();
  }

  const int yy = t.y0 + row, xx = t.x0 + col;
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    for (int u = tid; u < TR * TC * BK; u += NT) {
      const int k = u % BK, m = u / BK, sy = t.y0 + m / TC, sx = t.x0 + m % TC, c = c0 + k;
      halo[m / TC][m % TC][k] =
          (c < p.shortcut_c && sy < p.ho && sx < p.wo)
              ? Elem<T>::load(shortcut_x[((i64(t.n) * p.ho + sy) * p.wo + sx) * p.shortcut_c + c])
              : 0.0f;
    }
    for (int u = tid; u < BK * TN; u += NT) {
      const int k = u % BK, nn = u / BK, o = t.o0 + nn, c = c0 + k;
      wt[0][k][nn] = (o < p.o && c < p.shortcut_c) ? Elem<T>::load(shortcut_w[i64(o) * p.shortcut_c + c]) : 0.0f;
    }
    __syncthreads();
    for (int k = 0; k < BK; ++k) {
      const float a = halo[row][col][k];
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[j] += a * wt[0][k][j];
    }
    __syncthreads();
  }

  if (yy >= p.ho || xx >= p.wo) return;
  const i64 pix = (i64(t.n) * p.ho + yy) * p.wo + xx;
#pragma unroll
  for (int j = 0; j < TN; ++j) {
    const int o = t.o0 + j;
    if (o < p.o) store_output(p, out, bias, residual, shortcut_bias, pix, o, acc[j]);
  }
}

}  // namespace

// ---- instances ----------------------------------------------------------------------

#define FC_PARAM(f) , int p_##f
#define FC_FIELD(f) p_##f,
#define FC_CONV_KERNEL(NAME, T, BODY, LAUNCH_BOUNDS)                                                          \
  extern "C" __global__ void __launch_bounds__ LAUNCH_BOUNDS NAME(                                             \
      const T* x, const T* w, const float* stats, const T* gamma, const T* beta, const T* bias,               \
      const T* residual, const T* shortcut_x, const T* shortcut_w, const T* shortcut_bias,                    \
      T* out FC_CONV3X3_FIELDS(FC_PARAM)) {                                                                   \
    const Conv3x3Params p{FC_CONV3X3_FIELDS(FC_FIELD)};                                                        \
    BODY(x, w, stats, gamma, beta, bias, residual, shortcut_x, shortcut_w, shortcut_bias, out, p);             \
  }

#define FC_MMA_BOUNDS (cp::kMmaThreads, 1)
#define FC_SIMT_BOUNDS (cp::kSimtThreads)

FC_CONV_KERNEL(fc_conv3x3_mma_bfloat16, __nv_bfloat16, conv3x3_mma<__nv_bfloat16>, FC_MMA_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_mma_float16, __half, conv3x3_mma<__half>, FC_MMA_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_float32_32, float, (conv3x3_simt<float, cp::kSimtTileN>), FC_SIMT_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_float32_8, float, (conv3x3_simt<float, cp::kSimtNarrowN>), FC_SIMT_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_float16_32, __half, (conv3x3_simt<__half, cp::kSimtTileN>), FC_SIMT_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_float16_8, __half, (conv3x3_simt<__half, cp::kSimtNarrowN>), FC_SIMT_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_bfloat16_32, __nv_bfloat16, (conv3x3_simt<__nv_bfloat16, cp::kSimtTileN>),
               FC_SIMT_BOUNDS)
FC_CONV_KERNEL(fc_conv3x3_simt_bfloat16_8, __nv_bfloat16, (conv3x3_simt<__nv_bfloat16, cp::kSimtNarrowN>),
               FC_SIMT_BOUNDS)
