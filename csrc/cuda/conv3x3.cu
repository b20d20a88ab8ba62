// Fused conv3x3 on CUDA: GroupNorm (or the per-pixel norm) + SiLU + nearest-2x upsample
// applied to the input as it is staged in shared memory, bias / residual / 1x1 shortcut
// added as the output is stored. A direct (implicit-GEMM) convolution with no device
// scratch that grows with the image (the wgmma kernel's repacked weights are the weights'
// size): M = output pixels, N = output channels, K = 9 taps x input channels.
//
// Four kernels, each instantiated by name (extern "C", loaded by MLX's
// precompiled_cuda_kernel from its own module of this file):
// - fc_conv3x3_wgmma_<dtype>_<act|copy> (Hopper, sm_90a; bf16/fp16 under the mma kernel's
//   conditions): two warpgroups of wgmma with both operands in shared memory, the weights
//   repacked per call (pack_conv3x3_weights.cu) and moved by bulk copies;
// - fc_conv3x3_mma_<dtype>_<act|copy> (bf16/fp16, C % 8 == 0, aligned x and w): 8 warps on
//   mma.sync m16n8k16 tensor cores, f32 accumulation; the staged halo rows are the A
//   operand of all 9 taps (each tap is the same tile shifted by (ky, kx)), loaded with
//   ldmatrix; `_act` activates the input (norm, SiLU), `_copy` takes it as it is;
// - fc_conv3x3_narrow_<dtype>_<act|copy> (the mma kernel's inputs, O <= 8 such as
//   conv_out's 3 channels): one n8 fragment, small blocks several to an SM;
// - fc_conv3x3_simt_<dtype>_<TN> (TN = 32, 8 or 4 output channels a thread): float32 at full
//   precision, inputs the tensor-core kernels cannot copy as 16-byte vectors, GPUs whose
//   blocks cannot have their shared memory: f32 FMA.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

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
// 16-bit types also convert to and from their bits by intrinsic: with nvcc 13.0 a memcpy of
// a bf16 pair into global memory became byte stores of F2I.U8.F16 conversions of the
// values (seen in the SASS; wrong low bytes on the H200), where the bits were meant.
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
  __device__ static float from_bits(uint16_t b) { return load(__ushort_as_bfloat16(b)); }
  __device__ static uint16_t to_bits(float v) { return __bfloat16_as_ushort(store(v)); }
};
template <>
struct Elem<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
  __device__ static float from_bits(uint16_t b) { return load(__ushort_as_half(b)); }
  __device__ static uint16_t to_bits(float v) { return __half_as_ushort(store(v)); }
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
  return Elem<T>::load(Elem<T>::store(a));  // rounded to T, as the other backends and the reference
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

// row: this lane's row as a shared-space address (base + constant offsets fold into the
// instruction, where generic pointers would each take a register across the taps).
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row));
}

__device__ inline void ldmatrix_x2(uint32_t (&r)[2], uint32_t row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(row));
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

// Which block of the grid this is (grids are 2-D only to stay within gridDim.x's range).
__device__ inline i64 linear_block() { return i64(blockIdx.y) * gridDim.x + blockIdx.x; }

// The output tile of a block: image n, rows y0.., columns x0.., channels o0...
struct Tile {
  int n, y0, x0, o0;
};

template <int TR = cp::kTileRows, int TC = cp::kTileCols>
__device__ inline bool tile_of_block(const Conv3x3Params& p, int tn, Tile& t) {
  const int tiles_x = (p.wo + TC - 1) / TC, tiles_y = (p.ho + TR - 1) / TR;
  const int oblocks = (p.o + tn - 1) / tn;
  i64 b = linear_block();
  if (b >= i64(p.n) * tiles_y * tiles_x * oblocks) return false;
  // Output-channel blocks vary fastest: the blocks that share an input patch run together.
  t.o0 = int(b % oblocks) * tn;
  b /= oblocks;
  t.x0 = int(b % tiles_x) * TC;
  b /= tiles_x;
  t.y0 = int(b % tiles_y) * TR;
  t.n = int(b / tiles_y);
  return true;
}

__device__ inline void cp_async16(void* smem, const void* global, bool valid) {
  // src-size 0 zero-fills the 16 bytes (an output channel past O).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// The "memory" clobbers keep the compiler from moving ordinary shared-memory accesses
// across the copies: the activation reads what cp.async wrote right after the wait.
template <int PENDING>
__device__ inline void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
__device__ inline void cp_async_wait_all() { cp_async_wait_group<0>(); }

// The exponential as one MUFU.EX2, flushing denormal results (where exp(-a) is that small,
// a / (1 + e) is a to the last bit anyway); __expf adds a range fix-up of three instructions.
template <typename T>
__device__ inline float silu(float a) {
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(e) : "f"(a * -1.4426950408889634f));
  return __fdividef(a, 1.0f + e);
}

// on ? a : b as a predicated select, which the compiler cannot turn into a branch around
// a's computation.
__device__ inline float select(bool on, float a, float b) {
  float r;
  asm("{\n.reg .pred p;\nsetp.ne.b32 p, %3, 0;\nselp.f32 %0, %1, %2, p;\n}\n" : "=f"(r) : "f"(a), "f"(b), "r"(int(on)));
  return r;
}

// A channel's norm as one FMA on the (pixel-scaled) input: the mean folded into the
// shift. (16-bit inputs only: their rounding dwarfs the f32 cancellation this allows.)
// Held as two arrays in shared memory, zero past C (so padded channels activate to 0).
struct NormTable {
  float* scale;
  float* shift;
};

// The norm's affine of `channels` input channels (C rounded up to whole chunks) into
// shared memory by the block's NT threads; complete after the next barrier.
template <typename T, int NT>
__device__ void fill_norm_table(const Conv3x3Params& p, const float* stats, const T* gamma, const T* beta, int n,
                                int channels, const NormTable& norm) {
  for (int c = threadIdx.x; c < channels; c += NT) {
    const ChannelNorm cn = channel_norm(p, stats, gamma, beta, n, c);
    norm.scale[c] = c < p.c ? cn.scale : 0.0f;
    norm.shift[c] = c < p.c ? cn.shift - cn.mean * cn.scale : 0.0f;
  }
}

template <int MI, int NI>
__device__ inline void zero(float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.0f;
}

// Eight 16-bit elements in a register quad: the unit a thread moves through the halo.
union Raw8 {
  uint4 bits;
  uint16_t h[8];
};

// Where the 8-channel vector (k8: its first channel within the chunk) of halo pixel hp
// sits in a shared-memory buffer, in elements: hp * PIXEL + (k8 / 8) * VEC.
template <int PIXEL, int VEC>
struct PixelLayout {
  __device__ static int at(int hp, int k8) { return hp * PIXEL + (k8 / 8) * VEC; }
};

// Where the 8-channel vector of output channel nn (of the block's), tap `tap` sits in a
// weight buffer: tap * TAP + nn * ROW + (k8 / 8) * VEC.
template <int TAP, int ROW, int VEC>
struct WeightLayout {
  __device__ static int at(int tap, int nn, int k8) { return tap * TAP + nn * ROW + (k8 / 8) * VEC; }
};

// The halo staging of one thread: which 8-channel vectors of the (rows + 2) x (cols + 2)
// input patch it moves. The pixels are fixed for the whole K loop (a chunk only moves the
// channel offset), so their addresses, the zero padding and the per-pixel norm statistic
// are worked out once; each vector is a cp.async (C % 8 == 0, x 16-byte aligned).
// A chunk's raw input lands in a staging buffer [HR * HC][BK] that only the thread that
// copied a vector reads back (to activate it into a halo buffer); without a norm or SiLU
// it goes to the halo buffer directly.
template <typename T, int TR, int TC, int BK, int NT>
struct MmaHalo {
  static constexpr int HR = TR + 2, HC = TC + 2, PIXELS = HR * HC, VECS = PIXELS * (BK / 8);
  static constexpr int PER_THREAD = (VECS + NT - 1) / NT;
  static_assert(NT % (BK / 8) == 0, "a thread's vectors share one channel offset");

  // The pixel's first vector at channel k8 of chunk 0, in 8-element vectors from the
  // image's start (C % 8 == 0), or kPadding outside the image: 32 bits where a pointer
  // would take two registers, for images of up to 2^35 elements.
  static constexpr uint32_t kPadding = 0xffffffffu;
  const T* image;
  uint32_t vec[PER_THREAD];
  int k8;  // this thread's channel offset within a chunk

  // Pixel hp of vector i; only the last pass can run past the halo.
  __device__ static int pixel(int i) { return (threadIdx.x + i * NT) / (BK / 8); }
  __device__ static bool in_halo(int i) { return (i + 1) * NT <= VECS || pixel(i) < PIXELS; }

  // pixel_stats: the per-pixel norm's statistic of each halo pixel (1 without it), in
  // shared memory, complete after the next barrier.
  __device__ void init(const Conv3x3Params& p, const T* x, const float* stats, const Tile& t, float* pixel_stats) {
    k8 = (threadIdx.x % (BK / 8)) * 8;
    image = x + i64(t.n) * p.h * p.w * p.c;
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      const int hp = pixel(i), yy = t.y0 + hp / HC - 1, xx = t.x0 + hp % HC - 1;
      const bool inside = in_halo(i) && yy >= 0 && yy < p.ho && xx >= 0 && xx < p.wo;
      const i64 pix = i64(yy / p.upsample) * p.w + xx / p.upsample;
      vec[i] = inside ? uint32_t((pix * p.c + k8) / 8) : kPadding;
      if (k8 == 0 && in_halo(i)) pixel_stats[hp] = inside && p.pixel_norm ? stats[i64(t.n) * p.h * p.w + pix] : 1.0f;
    }
  }

  // Chunk c0's raw input, zeros outside the image, past C and where `live` is false, into
  // dst (a staging or halo buffer laid out by DST).
  template <typename DST>
  __device__ void copy(const Conv3x3Params& p, const T* x, int c0, bool live, T* dst) const {
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
      if (!in_halo(i)) continue;
      const bool valid = live && vec[i] != kPadding && c0 + k8 < p.c;
      cp_async16(dst + DST::at(pixel(i), k8), valid ? image + i64(vec[i]) * 8 + c0 : x, valid);
    }
  }

  // This thread's 8 channels of chunk c0 of the norm's table, in registers for a chunk.
  struct ChunkNorm {
    float scale[8], shift[8];
  };
  __device__ ChunkNorm chunk_norm(const NormTable& norm, int c0) const {
    ChunkNorm cn;
    *reinterpret_cast<float4*>(cn.scale) = *reinterpret_cast<const float4*>(norm.scale + c0 + k8);
    *reinterpret_cast<float4*>(cn.scale + 4) = *reinterpret_cast<const float4*>(norm.scale + c0 + k8 + 4);
    *reinterpret_cast<float4*>(cn.shift) = *reinterpret_cast<const float4*>(norm.shift + c0 + k8);
    *reinterpret_cast<float4*>(cn.shift + 4) = *reinterpret_cast<const float4*>(norm.shift + c0 + k8 + 4);
    return cn;
  }

  // Activates this thread's vector i of a chunk from the staging buffer into a halo
  // buffer: the norm as one FMA, SiLU, then the zero padding. BRANCH_FREE where the wgmma
  // kernel runs this between a warpgroup's wgmmas: ptxas fences a warpgroup's wgmmas apart
  // around control flow (C7519), splitting its commit group, so that waiting on the previous
  // chunk drained the tensor cores' queue. There the per-pixel statistic (1 without the
  // per-pixel norm) is always applied and SiLU is computed and then selected; elsewhere
  // uniform branches skip them (fewer registers: the mma.sync kernels spill without).
  template <typename STAGED, typename HALO, bool BRANCH_FREE = false>
  __device__ void activate_vector(const Conv3x3Params& p, const ChunkNorm& cn, const float* pixel_stats, int i,
                                  const T* staged, T* halo) const {
    if (!in_halo(i)) return;
    Raw8 v;
    v.bits = *reinterpret_cast<const uint4*>(staged + STAGED::at(pixel(i), k8));
    // The per-pixel norm's statistic (Qwen-Image's RMS norm) scales the channels' scales.
    float s[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) s[k] = cn.scale[k];
    if (BRANCH_FREE || p.pixel_norm) {
      const float pixel_stat = pixel_stats[pixel(i)];
#pragma unroll
      for (int k = 0; k < 8; ++k) s[k] *= pixel_stat;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float a = fmaf(Elem<T>::from_bits(v.h[k]), s[k], cn.shift[k]);
      v.h[k] = Elem<T>::to_bits(BRANCH_FREE ? select(p.silu, silu<T>(a), a) : (p.silu ? silu<T>(a) : a));
    }
    if (vec[i] == kPadding) v.bits = make_uint4(0, 0, 0, 0);  // the zero padding, a word at a time
    *reinterpret_cast<uint4*>(halo + HALO::at(pixel(i), k8)) = v.bits;
  }

  // All of this thread's vectors of chunk c0.
  template <typename STAGED, typename HALO>
  __device__ void activate(const Conv3x3Params& p, const NormTable& norm, const float* pixel_stats, int c0,
                           const T* staged, T* halo) const {
    const ChunkNorm cn = chunk_norm(norm, c0);
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) activate_vector<STAGED, HALO>(p, cn, pixel_stats, i, staged, halo);
  }
};

// Weights of chunk c0 by cp.async into wt (laid out by WT; zero-filled past O or C, and
// when `live` is false). Rows r = o_local * 9 + tap of the block's output channels are
// contiguous in w ([O][3][3][C]).
template <typename T, int TN, int BK, int NT, typename WT>
__device__ void stage_weights(const Conv3x3Params& p, const T* w, int o0, int c0, bool live, T* wt) {
  constexpr int VECS = 9 * TN * (BK / 8), ROWS_PER_PASS = NT / (BK / 8);
  static_assert(VECS % NT == 0, "every thread stages the same number of vectors");
  const int k8 = (threadIdx.x % (BK / 8)) * 8, r0 = threadIdx.x / (BK / 8);
  const int rows = (p.o - o0 < TN ? p.o - o0 : TN) * 9;
  const bool channels = live && c0 + k8 < p.c;
  const T* src = w + (i64(o0) * 9 + r0) * p.c + c0 + k8;  // row r0, then ROWS_PER_PASS rows a pass
  const i64 pass_stride = i64(ROWS_PER_PASS) * p.c;
#pragma unroll
  for (int i = 0; i < VECS / NT; ++i, src += pass_stride) {
    const int r = r0 + i * ROWS_PER_PASS, nn = r / 9, tap = r - nn * 9;
    const bool valid = channels && r < rows;
    cp_async16(wt + WT::at(tap, nn, k8), valid ? src : w, valid);
  }
}

// One k16 step of a warp's 64 x 64 tile: A fragments from four 16-row blocks (a[mi]: this
// lane's ldmatrix row), B from 64 rows of a [n][LDS] tile (b: this lane's row of the first
// 16); shared-space addresses.
template <typename T>
__device__ inline void warp_mma_k16(float (&acc)[4][8][4], const uint32_t (&a)[4], uint32_t b) {
  uint32_t af[4][4], bf[8][2];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) ldmatrix_x4(af[mi], a[mi]);
#pragma unroll
  for (int nj = 0; nj < 4; ++nj) {
    uint32_t r[4];
    ldmatrix_x4(r, b + nj * 16 * cp::kMmaRowStride * sizeof(T));
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

__device__ inline bool aligned(const void* ptr, int bytes) { return (uintptr_t(ptr) & (bytes - 1)) == 0; }

// The epilogue from registers, by the accumulator layout of m16n8 fragments acc[MI][NI]:
// the lane holds rows lane / 4 and + 8, columns 2 * (lane % 4) and + 1 of each (channel
// pairs where O is even). tile_pixel(mi, half) is the tile (row, column) of the lane's
// row `half` of fragment row mi; fragment column ni holds channels o_base + 8 * ni...
template <typename T, int MI, int NI, typename TilePixel>
__device__ void store_fragments(const Conv3x3Params& p, const Tile& t, float (&acc)[MI][NI][4], TilePixel tile_pixel,
                                int o_base, T* __restrict__ out, const T* __restrict__ bias,
                                const T* __restrict__ residual, const T* __restrict__ shortcut_bias) {
  const int lane = threadIdx.x % 32;
  const bool pairs = p.o % 2 == 0 && aligned(out, 4) && (!p.has_residual || aligned(residual, 4)) &&
                     (!p.has_bias || aligned(bias, 4)) && (!p.has_shortcut_bias || aligned(shortcut_bias, 4));
  const auto channel = [&](int ni) { return o_base + ni * 8 + (lane % 4) * 2; };  // of pair ni
  // f(pix, ni, o, v0, v1) for each channel pair of this lane inside the image and below O.
  const auto for_each_pair = [&](auto f) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int2 rc = tile_pixel(mi, half);
        const int yy = t.y0 + rc.x, xx = t.x0 + rc.y;
        if (yy >= p.ho || xx >= p.wo) continue;
        const i64 pix = (i64(t.n) * p.ho + yy) * p.wo + xx;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          if (channel(ni) < p.o) f(pix, ni, channel(ni), acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]);
        }
      }
  };
  if (!pairs) {
    for_each_pair([&](i64 pix, int, int o, float v0, float v1) {
      store_output(p, out, bias, residual, shortcut_bias, pix, o, v0);
      if (o + 1 < p.o) store_output(p, out, bias, residual, shortcut_bias, pix, o + 1, v1);
    });
    return;
  }
  // Every addend is added before the first store: a load after a store would wait out the
  // memory latency each time (the compiler must assume the store changed what it reads).
  const auto add_word = [](const T* src, float& v0, float& v1) {
    const uint32_t bits = *reinterpret_cast<const uint32_t*>(src);
    v0 += Elem<T>::from_bits(uint16_t(bits & 0xffff));
    v1 += Elem<T>::from_bits(uint16_t(bits >> 16));
  };
  for_each_pair([&](i64 pix, int, int o, float& v0, float& v1) {
    if (p.has_bias) add_word(bias + o, v0, v1);
    if (p.has_shortcut_bias) add_word(shortcut_bias + o, v0, v1);
    if (p.has_residual) add_word(residual + pix * p.o + o, v0, v1);
  });
  for_each_pair([&](i64 pix, int, int o, float v0, float v1) {
    *reinterpret_cast<uint32_t*>(out + pix * p.o + o) =
        uint32_t(Elem<T>::to_bits(v0)) | (uint32_t(Elem<T>::to_bits(v1)) << 16);
  });
}

// Whether the output's channels go four at a time (8 bytes of a 16-bit dtype): O % 4 == 0
// and every array the epilogue reads or writes by channel 8-byte aligned.
template <typename T>
__device__ inline bool rows_of_four(const Conv3x3Params& p, const T* out, const T* bias, const T* residual,
                                    const T* shortcut_bias) {
  return p.o % 4 == 0 && aligned(out, 8) && (!p.has_residual || aligned(residual, 8)) &&
         (!p.has_bias || aligned(bias, 8)) && (!p.has_shortcut_bias || aligned(shortcut_bias, 8));
}

// The epilogue through shared memory (rows_of_four): the accumulators of m16n8 fragments
// acc[MI][NI] (as store_fragments) go to an f32 tile [TR * TC][TN + 8] at `tile` (rows
// padded by 8 words: the float2 stores of a half-warp - 4 pixels x 4 lanes x 2 words - then
// fall on 32 distinct banks, one wavefront each; padded by 4, two of its pixels shared
// banks and every store took twice the wavefronts: an H200 profile counted them as a
// quarter of the kernel's shared-store wavefronts), then each warp
// finishes one pixel's TN channels at a time - 4 a lane: bias, residual, one rounding -
// reading the residual and writing the output as contiguous rows where the fragments'
// layout would scatter 4-byte pieces.
template <typename T, int TR, int TC, int TN, int NT, int MI, int NI, typename TilePixel>
__device__ void store_tile_via_shared(const Conv3x3Params& p, const Tile& t, float (&acc)[MI][NI][4],
                                      TilePixel tile_pixel, float* tile, T* __restrict__ out,
                                      const T* __restrict__ bias, const T* __restrict__ residual,
                                      const T* __restrict__ shortcut_bias) {
  constexpr int ROW = TN + 8, GROUPS = TN / 4;
  static_assert(NT % GROUPS == 0 && NI * 8 == TN, "a thread keeps its four channels for the whole tile");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int2 rc = tile_pixel(mi, half);
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        *reinterpret_cast<float2*>(tile + (rc.x * TC + rc.y) * ROW + ni * 8 + (lane % 4) * 2) =
            make_float2(acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]);
      }
    }
  __syncthreads();
  const int g = threadIdx.x % GROUPS, o = t.o0 + 4 * g;
  if (o >= p.o) return;
  float add[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const auto add_four = [](const T* src, float (&v)[4]) {
    const uint2 bits = *reinterpret_cast<const uint2*>(src);
    v[0] += Elem<T>::from_bits(uint16_t(bits.x & 0xffff));
    v[1] += Elem<T>::from_bits(uint16_t(bits.x >> 16));
    v[2] += Elem<T>::from_bits(uint16_t(bits.y & 0xffff));
    v[3] += Elem<T>::from_bits(uint16_t(bits.y >> 16));
  };
  if (p.has_bias) add_four(bias + o, add);
  if (p.has_shortcut_bias) add_four(shortcut_bias + o, add);
  // Pixel m = first + i * STEP of pass i (first < STEP, TC % STEP == 0: the pass's tile row
  // and column offset are constants, its address this thread's base plus a constant
  // multiple of two strides). Every pass's residual is loaded before the first is used
  // (the accumulators' registers are free by now): one memory latency, not 32.
  constexpr int STEP = NT / GROUPS, PASSES = TR * TC / STEP;
  static_assert(TC % STEP == 0, "a pass's pixels lie in one tile row");
  const int first = threadIdx.x / GROUPS;
  const i64 row_stride = i64(p.wo) * p.o, base = ((i64(t.n) * p.ho + t.y0) * p.wo + t.x0 + first) * p.o + o;
  const auto offset = [&](int i) { return (i * STEP / TC) * row_stride + i64((i * STEP) % TC) * p.o; };
  const auto inside = [&](int i) { return t.y0 + i * STEP / TC < p.ho && t.x0 + first + (i * STEP) % TC < p.wo; };
  // The passes specialised on whether the tile lies wholly inside the image (all but the
  // right and bottom edge tiles: no bounds check a pass) and on the residual (no branch a
  // pass): measured on the H200, +2-3 points of cuDNN's FLOP/s on the residual convs.
  const auto passes = [&](auto full_constant, auto residual_constant) {
    constexpr bool FULL = decltype(full_constant)::value, RESIDUAL = decltype(residual_constant)::value;
    uint2 res[PASSES];
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      res[i] = RESIDUAL && (FULL || inside(i)) ? *reinterpret_cast<const uint2*>(residual + base + offset(i))
                                                : make_uint2(0, 0);
    }
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      if (!FULL && !inside(i)) continue;
      const float4 a = *reinterpret_cast<const float4*>(tile + (first + i * STEP) * ROW + 4 * g);
      float v[4] = {a.x + add[0], a.y + add[1], a.z + add[2], a.w + add[3]};
      if (RESIDUAL) add_four(reinterpret_cast<const T*>(&res[i]), v);
      *reinterpret_cast<uint2*>(out + base + offset(i)) =
          make_uint2(uint32_t(Elem<T>::to_bits(v[0])) | (uint32_t(Elem<T>::to_bits(v[1])) << 16),
                     uint32_t(Elem<T>::to_bits(v[2])) | (uint32_t(Elem<T>::to_bits(v[3])) << 16));
    }
  };
  using yes = std::true_type;
  using no = std::false_type;
  const bool full = t.y0 + TR <= p.ho && t.x0 + TC <= p.wo;
  if (full && p.has_residual) passes(yes(), yes());
  else if (full) passes(yes(), no());
  else if (p.has_residual) passes(no(), yes());
  else passes(no(), no());
}

// Asks L2 for the residual of a tile's TM pixels, channels o0.. o0 + TN (two 128-byte lines
// a pixel for TN = 128 of a 16-bit dtype), at the start of the block: the epilogue, which
// nothing else on the SM overlaps, then reads it from L2 rather than from memory.
template <typename T, int TR, int TC, int TN, int NT>
__device__ void prefetch_residual(const Conv3x3Params& p, const Tile& t, const T* residual) {
  static_assert(TR * TC == NT && TN * sizeof(T) == 256, "a thread a pixel, two lines each");
  const int m = threadIdx.x, yy = t.y0 + m / TC, xx = t.x0 + m % TC;
  if (!p.has_residual || yy >= p.ho || xx >= p.wo) return;
  const T* row = residual + ((i64(t.n) * p.ho + yy) * p.wo + xx) * p.o + t.o0;
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(row));
  if (t.o0 + TN / 2 < p.o) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(row + TN / 2));
}

// One chunk of a 1x1 shortcut (BK channels from c0), element by element (any Cs, any
// alignment), zeros past the image, Cs and O: the tile's TM pixels into a ([TM][LDS]) and
// the TN outputs' weights into b ([TN][LDS]), for the mma.sync kernels' fragments.
template <typename T, int TM, int TN, int TC, int BK, int LDS, int NT>
__device__ void stage_shortcut_rows(const Conv3x3Params& p, const Tile& t, const T* __restrict__ shortcut_x,
                                    const T* __restrict__ shortcut_w, int c0, T* a, T* b) {
  for (int u = threadIdx.x; u < TM * BK; u += NT) {
    const int k = u % BK, m = u / BK, yy = t.y0 + m / TC, xx = t.x0 + m % TC, c = c0 + k;
    a[m * LDS + k] = (c < p.shortcut_c && yy < p.ho && xx < p.wo)
                         ? shortcut_x[((i64(t.n) * p.ho + yy) * p.wo + xx) * p.shortcut_c + c]
                         : Elem<T>::store(0.0f);
  }
  for (int u = threadIdx.x; u < TN * BK; u += NT) {
    const int k = u % BK, nn = u / BK, o = t.o0 + nn, c = c0 + k;
    b[nn * LDS + k] = (c < p.shortcut_c && o < p.o) ? shortcut_w[i64(o) * p.shortcut_c + c] : Elem<T>::store(0.0f);
  }
}

// The tensor-core conv (C % 8 == 0, x and w 16-byte aligned: every staged vector is one
// cp.async), with ACT (a norm or SiLU to apply to the input) or without.
template <typename T, bool ACT>
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
  typedef PixelLayout<BK, 8> Staged;                // [HR * HC][BK]
  typedef PixelLayout<LDS, 8> HaloRows;             // [HR][HC][LDS]
  typedef WeightLayout<TN * LDS, LDS, 8> WeightRows;  // [tap][TN][LDS]
  // Dynamic shared memory (sized by the plan): two halo buffers [HR][HC][LDS], two weight
  // buffers [tap][TN][LDS], the norm's scale and shift per input channel, the staging
  // buffer of a chunk's raw input, the halo pixels' per-pixel norm statistic.
  extern __shared__ __align__(16) unsigned char smem[];
  T* const halo_bufs = reinterpret_cast<T*>(smem);  // buffer b at + b * HALO_ELEMS
  T* const wt_bufs = halo_bufs + 2 * HALO_ELEMS;     // buffer b at + b * WT_ELEMS
  float* const norm_floats = reinterpret_cast<float*>(wt_bufs + 2 * WT_ELEMS);
  const NormTable norm{norm_floats, norm_floats + cp::kMmaMaxNormChannels};
  T* const staged = reinterpret_cast<T*>(norm_floats + 2 * cp::kMmaMaxNormChannels);  // [HR * HC][BK]
  float* const pixel_stats = reinterpret_cast<float*>(staged + Halo::PIXELS * BK);     // [HR * HC]

  Tile t;
  if (!tile_of_block(p, TN, t)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp % 4) * 64, wn = (warp / 4) * 64;  // this warp's 64 x 64 corner of the tile
  float acc[4][8][4];
  zero(acc);

  const int chunks = (p.c + BK - 1) / BK;
  if (ACT) fill_norm_table<T, NT>(p, stats, gamma, beta, t.n, chunks * BK, norm);

  // A: this lane's ldmatrix row of each 16-row fragment mi (tile pixel m -> (m / TC, m % TC);
  // a warp's 64 pixels are two tile rows, so fragment mi is row mi / 2, column 16 * (mi % 2)).
  static_assert(TC == 32, "a warp's 64 pixels span two tile rows");
  constexpr int ROW_BYTES = LDS * sizeof(T);
  const int a_k = (lane / 16) * 8;
  const uint32_t a_lane = ((wm / TC) * Halo::HC + lane % 16) * ROW_BYTES + a_k * sizeof(T);
  // B: rows n of the [TN][LDS] weight tile, k halves by lane group.
  const int b_n = wn + (lane / 16) * 8 + lane % 8, b_k = ((lane / 8) % 2) * 8;
  const uint32_t b_lane = b_n * ROW_BYTES + b_k * sizeof(T);

  Halo halo_in;
  halo_in.init(p, x, stats, t, pixel_stats);
  // The first chunk: copied, then (after the norm table is complete) activated.
  stage_weights<T, TN, BK, NT, WeightRows>(p, w, t.o0, 0, true, wt_bufs);
  if (ACT) halo_in.template copy<Staged>(p, x, 0, true, staged);
  else halo_in.template copy<HaloRows>(p, x, 0, true, halo_bufs);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  if (ACT) halo_in.template activate<Staged, HaloRows>(p, norm, pixel_stats, 0, staged, halo_bufs);
  __syncthreads();

  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int cur = chunk % 2, c_next = (chunk + 1) * BK;
    const bool more = chunk + 1 < chunks;
    T* const halo_next = halo_bufs + (1 - cur) * HALO_ELEMS;
    // The next chunk's input and weights are copied while the tensor cores work on this
    // one (the input first: its group is the one waited for halfway); on the last chunk
    // the spare buffers receive zeros.
    if (ACT) halo_in.template copy<Staged>(p, x, c_next, more, staged);
    else halo_in.template copy<HaloRows>(p, x, c_next, more, halo_next);
    cp_async_commit();
    stage_weights<T, TN, BK, NT, WeightRows>(p, w, t.o0, c_next, more, wt_bufs + (1 - cur) * WT_ELEMS);
    cp_async_commit();
    const uint32_t halo = smem_address(halo_bufs + cur * HALO_ELEMS) + a_lane;
    const uint32_t wt = smem_address(wt_bufs + cur * WT_ELEMS) + b_lane;
    const auto taps = [&](auto first, auto last) {
#pragma unroll
      for (int tap = decltype(first)::value; tap < decltype(last)::value; ++tap) {
        const int shift = (tap / 3) * Halo::HC + tap % 3;
        const uint32_t a[4] = {halo + shift * ROW_BYTES, halo + (shift + 16) * ROW_BYTES,
                               halo + (shift + Halo::HC) * ROW_BYTES, halo + (shift + Halo::HC + 16) * ROW_BYTES};
        warp_mma_k16<T>(acc, a, wt + tap * TN * ROW_BYTES);
      }
    };
    taps(std::integral_constant<int, 0>(), std::integral_constant<int, 5>());
    if (ACT) {
      // Halfway through the taps the next input has landed: activating it here overlaps
      // the SiLU with the tensor cores' queue.
      cp_async_wait_group<1>();
      halo_in.template activate<Staged, HaloRows>(p, norm, pixel_stats, more ? c_next : 0, staged, halo_next);
    }
    taps(std::integral_constant<int, 5>(), std::integral_constant<int, 9>());
    cp_async_wait_all();
    __syncthreads();
  }

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN).
  T* as = halo_bufs;  // [TM][LDS]
  T* bs = wt_bufs;    // [TN][LDS]
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    stage_shortcut_rows<T, TM, TN, TC, BK, LDS, NT>(p, t, shortcut_x, shortcut_w, c0, as, bs);
    __syncthreads();
    const uint32_t a0 = smem_address(as) + (wm + lane % 16) * ROW_BYTES + a_k * sizeof(T);
    const uint32_t a[4] = {a0, a0 + 16 * ROW_BYTES, a0 + 32 * ROW_BYTES, a0 + 48 * ROW_BYTES};
    warp_mma_k16<T>(acc, a, smem_address(bs) + b_lane);
    __syncthreads();
  }

  // This warp's 64 x 64 corner: fragment row mi is tile pixel wm + 16 * mi (+ lane / 4 ...).
  store_fragments<T>(p, t, acc, [&](int mi, int half) {
    const int m = wm + mi * 16 + (threadIdx.x % 32) / 4 + half * 8;
    return int2{m / TC, m % TC};
  }, t.o0 + wn, out, bias, residual, shortcut_bias);
}

// The conv of few output channels (O <= kNarrowN: a decoder's conv_out, 3 channels) on
// tensor cores, for the mma kernel's inputs: 8 warps over an 8 x 32 tile, warp w on tile
// row w (two m16 fragments) x one n8 fragment of all the outputs; 16 input channels a chunk.
// Its work is the input's activation, not the MMA: small blocks (static shared memory,
// about 43 KiB, several blocks an SM) hide each other's loads; within a block the next
// chunk's raw input and weights are copied while the tensor cores work on this one.
template <typename T, bool ACT>
__device__ void conv3x3_narrow(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ stats,
                               const T* __restrict__ gamma, const T* __restrict__ beta, const T* __restrict__ bias,
                               const T* __restrict__ residual, const T* __restrict__ shortcut_x,
                               const T* __restrict__ shortcut_w, const T* __restrict__ shortcut_bias,
                               T* __restrict__ out, const Conv3x3Params& p) {
  constexpr int TR = cp::kTileRows, TC = cp::kTileCols, TM = TR * TC, TN = cp::kNarrowN, BK = cp::kMmaBK;
  constexpr int LDS = cp::kMmaRowStride, NT = cp::kNarrowThreads;
  typedef MmaHalo<T, TR, TC, BK, NT> Halo;
  static_assert(TC == 32 && TR * 32 == NT && TN == 8 && BK == 16, "a warp a tile row: two m16n8k16 per tap");
  static_assert(TM <= Halo::PIXELS && 9 * TN * (BK / 8) <= NT, "the shortcut fits the halo; a weight vector a thread");
  typedef PixelLayout<BK, 8> Staged;                  // [HR * HC][BK]
  typedef PixelLayout<LDS, 8> HaloRows;               // [HR][HC][LDS]
  typedef WeightLayout<TN * LDS, LDS, 8> WeightRows;  // [tap][TN][LDS]
  __shared__ __align__(16) T halo[Halo::PIXELS * LDS];
  __shared__ __align__(16) T staged[ACT ? Halo::PIXELS * BK : 8];
  __shared__ __align__(16) T wt[2][9 * TN * LDS];
  __shared__ __align__(16) float norm_floats[ACT ? 2 * cp::kMmaMaxNormChannels : 1];
  __shared__ float pixel_stats[Halo::PIXELS];
  const NormTable norm{norm_floats, norm_floats + cp::kMmaMaxNormChannels};

  Tile t;
  if (!tile_of_block(p, TN, t)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float acc[2][1][4];
  zero(acc);
  const int chunks = (p.c + BK - 1) / BK;
  if (ACT) fill_norm_table<T, NT>(p, stats, gamma, beta, t.n, chunks * BK, norm);
  // Weights of chunk c0: thread r * 2 + half copies tap r % 9 of output r / 9, 8 channels.
  const auto stage_weights = [&](int c0, T* dst) {
    if (tid < 9 * TN * 2) {
      const int r = tid / 2, nn = r / 9, tap = r % 9, k8 = (tid % 2) * 8, o = t.o0 + nn;
      const bool valid = o < p.o && c0 + k8 < p.c;
      cp_async16(dst + WeightRows::at(tap, nn, k8), valid ? w + (i64(o) * 9 + tap) * p.c + c0 + k8 : w, valid);
    }
  };
  Halo halo_in;
  halo_in.init(p, x, stats, t, pixel_stats);
  if (ACT) halo_in.template copy<Staged>(p, x, 0, true, staged);
  else halo_in.template copy<HaloRows>(p, x, 0, true, halo);
  stage_weights(0, wt[0]);
  cp_async_commit();

  // A: this lane's ldmatrix row of fragment mi, tap (ky, kx): halo pixel (warp + ky, kx +
  // 16 mi + lane % 16), channels (lane / 16) * 8 on; B: output lane % 8, channels 8 ((lane /
  // 8) % 2) on (ldmatrix .x2 reads the first 16 lanes' rows).
  constexpr int ROW_BYTES = LDS * sizeof(T);
  const uint32_t a_lane = smem_address(halo) + (warp * Halo::HC + lane % 16) * ROW_BYTES + (lane / 16) * 16;
  const uint32_t b_lane = (lane % 8) * ROW_BYTES + ((lane / 8) % 2) * 16;
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int c_next = (chunk + 1) * BK;
    const bool more = chunk + 1 < chunks;
    cp_async_wait_all();
    __syncthreads();  // this chunk's input staged (or in the halo) and weights landed; last chunk's taps done
    if (ACT) halo_in.template activate<Staged, HaloRows>(p, norm, pixel_stats, chunk * BK, staged, halo);
    __syncthreads();
    if (more) {
      // The next chunk's raw input (into the halo itself without an activation: only once
      // this chunk's taps are done) and weights go out now, during this chunk's taps.
      if (ACT) halo_in.template copy<Staged>(p, x, c_next, true, staged);
      stage_weights(c_next, wt[(chunk + 1) % 2]);
    }
    cp_async_commit();
    const uint32_t b = smem_address(wt[chunk % 2]) + b_lane;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      uint32_t bf[2];
      ldmatrix_x2(bf, b + tap * TN * ROW_BYTES);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        uint32_t af[4];
        ldmatrix_x4(af, a_lane + ((tap / 3) * Halo::HC + tap % 3 + 16 * mi) * ROW_BYTES);
        mma_16816<T>(acc[mi][0], af, bf);
      }
    }
    if (!ACT && more) {
      __syncthreads();  // every warp's taps done with the halo
      halo_in.template copy<HaloRows>(p, x, c_next, true, halo);
      cp_async_commit();
    }
  }
  cp_async_wait_all();
  __syncthreads();

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN),
  // element by element into the halo ([TM][LDS]) and the first weight buffer ([TN][LDS]).
  for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
    stage_shortcut_rows<T, TM, TN, TC, BK, LDS, NT>(p, t, shortcut_x, shortcut_w, c0, halo, wt[0]);
    __syncthreads();
    uint32_t bf[2];
    ldmatrix_x2(bf, smem_address(wt[0]) + b_lane);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      uint32_t af[4];
      ldmatrix_x4(af, smem_address(halo) + (warp * TC + 16 * mi + lane % 16) * ROW_BYTES + (lane / 16) * 16);
      mma_16816<T>(acc[mi][0], af, bf);
    }
    __syncthreads();
  }

  store_fragments<T>(p, t, acc, [&](int mi, int half) {
    return int2{warp, 16 * mi + lane / 4 + half * 8};
  }, t.o0, out, bias, residual, shortcut_bias);
}

// ---- Hopper tensor cores (wgmma, sm_90a) ---------------------------------------------

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// A shared-memory matrix descriptor of wgmma's no-swizzle K-major layout: core matrices of
// 8 rows x 16 bytes with rows 16 bytes apart, consecutive 8-row groups (M or N) 128 bytes
// apart, the two 8-element K halves of a k16 step `k_stride` bytes apart. Addresses and
// strides in 16-byte units; any 16-byte aligned start works (no swizzle pattern to keep),
// which is what lets a tap's A operand start one halo pixel further on.
__device__ inline uint64_t wgmma_descriptor(uint32_t address, uint32_t k_stride) {
  return uint64_t((address >> 4) & 0x3fff) | uint64_t((k_stride >> 4) & 0x3fff) << 16 | uint64_t(128 >> 4) << 32;
}

// d (64 x 128, f32, the m16n8 fragment layout per warp: warp w of the group holds rows
// 16 w..) += A (64 x 16 from descriptor a) * B^T (128 x 16 from descriptor b), issued
// asynchronously by the warpgroup.
template <typename T>
__device__ inline void wgmma_m64n128k16(float (&d)[16][4], uint64_t a, uint64_t b);

// The one asm statement of both element types (TYPE: "bf16" or "f16"): 64 accumulator
// registers, the two descriptors, scale-d = 1 (accumulate).
#define FC_WGMMA_M64N128K16(TYPE) \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n" \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
      "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
      "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
      "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
      "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), \
      "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
      "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
      "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
      "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
      "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
      "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
      "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
      "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]) \
      : "l"(a), "l"(b), "r"(1))

template <>
__device__ inline void wgmma_m64n128k16<__nv_bfloat16>(float (&d)[16][4], uint64_t a, uint64_t b) {
  FC_WGMMA_M64N128K16("bf16");
}

template <>
__device__ inline void wgmma_m64n128k16<__half>(float (&d)[16][4], uint64_t a, uint64_t b) {
  FC_WGMMA_M64N128K16("f16");
}
#undef FC_WGMMA_M64N128K16

// Orders this thread's register accesses to the accumulators before the next wgmma.
__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int PENDING>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}
// Makes this thread's shared-memory writes (stores, landed cp.async) visible to the
// tensor cores' async proxy; a barrier then publishes them to the warpgroups.
__device__ inline void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// The accumulators as register operands the compiler must keep where they are (the
// tensor cores write them asynchronously between issue and wait).
template <int MI>
__device__ inline void fence_accumulators(float (&acc)[MI][16][4]) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) asm volatile("" : "+f"(acc[i][j][k])::"memory");
}

// mbarriers (shared memory, 8 bytes each): a stage's weights have landed when its barrier
// completes a phase - one arrival (the thread that sends the bulk copy, announcing the
// bytes) plus the copy's bytes.
__device__ inline void mbarrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_address(bar)) : "memory");
}
// Makes initialized barriers visible to the async proxy (the bulk copies complete on them).
__device__ inline void fence_mbarrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ inline void mbarrier_wait(uint64_t* bar, uint32_t phase) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_address(bar)), "r"(phase)
        : "memory");
  } while (!done);
}
// bytes from global src to shared dst by the TMA unit (16-byte aligned, a multiple of 16),
// completing on bar, whose arrival announces them.
__device__ inline void bulk_copy_to_shared(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_address(dst)),
               "l"(src), "r"(bytes), "r"(smem_address(bar))
               : "memory");
}

// The Hopper conv (the inputs of conv3x3_mma, but the weights repacked by
// fc_pack_conv3x3_weights): a block of two warpgroups computes kWgmmaTileRows x
// kWgmmaTileCols output pixels x kWgmmaTileN channels; warpgroup g owns tile rows 2g and
// 2g + 1, an m64n128 accumulator each. The halo is kept K-major by 8-channel halves
// ([half][pixel][8]), so the A operand of tap (ky, kx) for output row r is the 64 halo
// pixels from (r + ky, kx) on: one descriptor, no copy per tap. Chunks of 16 channels go
// through kWgmmaStages stages: a chunk's weights (one tile of the packed weights, [tap]
// [half][o][8]) by one bulk copy two chunks ahead, completing on the stage's mbarrier; its
// input by cp.async - with an activation, raw into one of kWgmmaStages staging buffers
// three chunks ahead and activated into the halo stage during the previous chunk's taps
// (a vector between each pair of taps, so the tensor cores' queue covers the SiLU);
// without one, straight into one of 2 x kWgmmaStages halo stages (the staging buffers'
// room) four chunks ahead. (A warp-specialized variant - one producer warpgroup copying
// and activating for two consumers - ran 1.4x slower on an H200: the producer's SiLU was
// the bottleneck, with one producer warp per scheduler.)
template <typename T, bool ACT>
__device__ void conv3x3_wgmma(const T* __restrict__ x, const T* __restrict__ packed_w, const float* __restrict__ stats,
                              const T* __restrict__ gamma, const T* __restrict__ beta, const T* __restrict__ bias,
                              const T* __restrict__ residual, const T* __restrict__ shortcut_x,
                              const T* __restrict__ shortcut_w, const T* __restrict__ shortcut_bias,
                              T* __restrict__ out, const Conv3x3Params& p) {
  constexpr int TR = cp::kWgmmaTileRows, TC = cp::kWgmmaTileCols, TM = TR * TC, TN = cp::kWgmmaTileN;
  constexpr int BK = cp::kMmaBK, NT = cp::kWgmmaThreads, STAGES = cp::kWgmmaStages;
  typedef MmaHalo<T, TR, TC, BK, NT> Halo;
  constexpr int HALO_ELEMS = Halo::PIXELS * BK, WT_ELEMS = 9 * TN * BK;
  static_assert(BK == 16 && TC == 64 && TN == 128 && TR * 64 == NT, "a warpgroup: two rows of m64n128k16");
  static_assert(Halo::PER_THREAD == 4, "a thread's four vectors are activated between taps 1, 3, 5 and 7");
  // Input copies sent at the end of chunk j's step are chunk j + AHEAD's; the halo stages.
  constexpr int AHEAD = ACT ? 3 : 4, HALO_STAGES = ACT ? STAGES : 2 * STAGES;
  typedef PixelLayout<BK, 8> Staged;                      // [pixel][BK]
  typedef PixelLayout<8, Halo::PIXELS * 8> HaloKMajor;    // [half][pixel][8]
  typedef WeightLayout<TN * BK, 8, TN * 8> WeightKMajor;  // [tap][half][o][8]
  // Dynamic shared memory (sized by the plan): 2 x kWgmmaStages halo-sized buffers (the
  // halo stages, then with an activation the staging buffers of raw input), the weight
  // stages, the norm's scale and shift per input channel, the halo pixels' per-pixel norm
  // statistic, the weight stages' mbarriers.
  extern __shared__ __align__(16) unsigned char smem[];  // (one declaration: the same alignment as the others)
  T* const halo_bufs = reinterpret_cast<T*>(smem);       // halo stage s at + s * HALO_ELEMS
  T* const staged = halo_bufs + STAGES * HALO_ELEMS;      // staging buffer s at + s * HALO_ELEMS
  T* const wt_bufs = halo_bufs + 2 * STAGES * HALO_ELEMS;  // weight stage s at + s * WT_ELEMS
  float* const norm_floats = reinterpret_cast<float*>(wt_bufs + STAGES * WT_ELEMS);
  const NormTable norm{norm_floats, norm_floats + cp::kMmaMaxNormChannels};
  float* const pixel_stats = norm_floats + 2 * cp::kMmaMaxNormChannels;  // [pixel]
  uint64_t* const weights_landed = reinterpret_cast<uint64_t*>(pixel_stats + Halo::PIXELS);  // [stage]

  Tile t;
  if (!tile_of_block<TR, TC>(p, TN, t)) return;
  // (group through a shuffle from lane 0: provably warp-uniform, so the descriptors are
  // computed in uniform registers rather than moved there before every wgmma.)
  const int tid = threadIdx.x, group = __shfl_sync(0xffffffffu, tid / 128, 0), warp = (tid % 128) / 32, lane = tid % 32;
  float acc[2][16][4];
  zero(acc);

  const int chunks = (p.c + BK - 1) / BK;
  const T* const block_weights = packed_w + i64(t.o0 / TN) * chunks * WT_ELEMS;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) mbarrier_init(weights_landed + s);
    fence_mbarrier_init();  // (the other threads wait on them after the barrier below)
  }
  Halo halo_in;
  halo_in.init(p, x, stats, t, pixel_stats);
  const auto halo_stage = [&](int chunk) { return halo_bufs + (chunk % HALO_STAGES) * HALO_ELEMS; };
  // Chunk i's input (one cp.async group, empty past the last chunk) and weights.
  const auto load_input = [&](int chunk) {
    if (chunk < chunks) {
      if (ACT) halo_in.template copy<Staged>(p, x, chunk * BK, true, staged + (chunk % STAGES) * HALO_ELEMS);
      else halo_in.template copy<HaloKMajor>(p, x, chunk * BK, true, halo_stage(chunk));
    }
    cp_async_commit();
  };
  const auto load_weights = [&](int chunk) {
    if (tid == 0 && chunk < chunks) {
      const int s = chunk % STAGES;
      bulk_copy_to_shared(wt_bufs + s * WT_ELEMS, block_weights + i64(chunk) * WT_ELEMS, WT_ELEMS * sizeof(T),
                          weights_landed + s);
    }
  };
  // The first chunks' copies go out first: the residual's prefetch and the norm table's
  // loads then overlap them rather than delay them.
  load_weights(0);
  load_weights(1);
#pragma unroll
  for (int i = 0; i < AHEAD; ++i) load_input(i);
  prefetch_residual<T, TR, TC, TN, NT>(p, t, residual);
  if (ACT) fill_norm_table<T, NT>(p, stats, gamma, beta, t.n, chunks * BK, norm);
  cp_async_wait_group<AHEAD - 1>();  // chunk 0
  __syncthreads();                   // and the barriers, the norm table, the pixel statistics
  if (ACT) halo_in.template activate<Staged, HaloKMajor>(p, norm, pixel_stats, 0, staged, halo_bufs);
  fence_async_shared();
  __syncthreads();

  // This warpgroup's A operand: halo row 2 * group (+ rr + ky), pixel kx on. The chunk
  // loop is unrolled by stage, so every weight descriptor is a base plus a constant.
  constexpr uint32_t HALO_BYTES = HALO_ELEMS * sizeof(T), WT_BYTES = WT_ELEMS * sizeof(T);
  const uint64_t a_desc = wgmma_descriptor(smem_address(halo_bufs) + 2 * group * Halo::HC * 16, Halo::PIXELS * 16);
  const uint64_t b_desc = wgmma_descriptor(smem_address(wt_bufs), TN * 16);
  const auto step = [&](int chunk, auto stage_constant) {
    constexpr int stage = decltype(stage_constant)::value;
    const bool next = chunk + 1 < chunks;
    const uint64_t a_stage = a_desc + (ACT ? stage : chunk % HALO_STAGES) * (HALO_BYTES / 16);
    const auto taps = [&](auto first, auto last) {
#pragma unroll
      for (int tap = decltype(first)::value; tap < decltype(last)::value; ++tap)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          constexpr uint32_t b_stage = stage * WT_BYTES / 16;
          wgmma_m64n128k16<T>(acc[rr], a_stage + (rr + tap / 3) * Halo::HC + tap % 3,
                              b_desc + b_stage + tap * TN * BK * sizeof(T) / 16);
        }
    };
    // The next chunk's vectors, each activated once a pair of taps is queued: with no next
    // chunk, the last one's again into the spare stage (a uniform branch here would split
    // the commit group, see activate_vector). The fourth vector, partial and branched, goes
    // after the commit.
    const auto activate_next = [&](int i) {
      if (ACT) {
        // (The norm's table re-read per vector: held across the taps, it spilled.)
        const int next_chunk = next ? chunk + 1 : chunk;
        halo_in.template activate_vector<Staged, HaloKMajor, true>(
            p, halo_in.chunk_norm(norm, next_chunk * BK), pixel_stats, i,
            staged + ((stage + 1) % STAGES) * HALO_ELEMS, halo_bufs + ((stage + 1) % STAGES) * HALO_ELEMS);
      }
    };
    mbarrier_wait(weights_landed + stage, (chunk / STAGES) & 1);
    wgmma_fence();
    taps(std::integral_constant<int, 0>(), std::integral_constant<int, 2>());
    if (ACT) cp_async_wait_group<AHEAD - 2>();  // the next chunk's input
    activate_next(0);
    taps(std::integral_constant<int, 2>(), std::integral_constant<int, 4>());
    activate_next(1);
    taps(std::integral_constant<int, 4>(), std::integral_constant<int, 6>());
    activate_next(2);
    taps(std::integral_constant<int, 6>(), std::integral_constant<int, 9>());
    wgmma_commit();
    activate_next(3);
    if (!ACT) cp_async_wait_group<AHEAD - 2>();  // the next chunk's input
    wgmma_wait<1>();  // chunk - 1: its stages are free once every warpgroup is past the barrier
    fence_async_shared();
    __syncthreads();
    load_weights(chunk + 2);
    load_input(chunk + AHEAD);
  };
  static_assert(STAGES == 3, "the loop below steps through three stages");
  fence_accumulators(acc);
  for (int chunk = 0; chunk < chunks; chunk += STAGES) {
    step(chunk, std::integral_constant<int, 0>());
    if (chunk + 1 < chunks) step(chunk + 1, std::integral_constant<int, 1>());
    if (chunk + 2 < chunks) step(chunk + 2, std::integral_constant<int, 2>());
  }
  wgmma_wait<0>();
  fence_accumulators(acc);

  // A resnet's 1x1 shortcut: acc += shortcut_x[pixels] (TM x Cs) * shortcut_w^T (Cs x TN),
  // 16 channels a chunk: the tile's pixels [half][TM][8] and the weights [half][TN][8].
  typedef PixelLayout<8, TM * 8> TileKMajor;          // [half][TM][8]
  typedef WeightLayout<0, 8, TN * 8> ShortcutKMajor;  // [half][TN][8]
  constexpr int SHORTCUT_ELEMS = (TM + TN) * BK;
  const auto shortcut_mma = [&](const T* chunk_tile) {
    wgmma_fence();
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      wgmma_m64n128k16<T>(acc[rr], wgmma_descriptor(smem_address(chunk_tile + (2 * group + rr) * TC * 8), TM * 16),
                          wgmma_descriptor(smem_address(chunk_tile + TM * BK), TN * 16));
    }
    wgmma_commit();
  };
  __syncthreads();
  if (p.shortcut_c % 8 == 0 && aligned(shortcut_x, 16) && aligned(shortcut_w, 16)) {
    // By cp.async through a ring of SHORTCUT_STAGES chunks (the main loop's buffers), sent
    // SHORTCUT_STAGES - 1 chunks ahead: two pixel vectors and one weight vector a thread.
    constexpr int SHORTCUT_STAGES = 8;
    static_assert(SHORTCUT_STAGES * SHORTCUT_ELEMS <= 2 * STAGES * HALO_ELEMS + STAGES * WT_ELEMS &&
                  TM * 2 == 2 * NT && TN * 2 == NT, "the ring fits the main loop's buffers");
    const int shortcut_chunks = (p.shortcut_c + BK - 1) / BK;
    const auto load_shortcut = [&](int chunk) {
      if (chunk < shortcut_chunks) {
        T* const dst = halo_bufs + (chunk % SHORTCUT_STAGES) * SHORTCUT_ELEMS;
        const int half = tid % 2, c = chunk * BK + 8 * half;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int m = (tid + i * NT) / 2, yy = t.y0 + m / TC, xx = t.x0 + m % TC;
          const bool valid = c < p.shortcut_c && yy < p.ho && xx < p.wo;
          cp_async16(dst + TileKMajor::at(m, 8 * half),
                     valid ? shortcut_x + ((i64(t.n) * p.ho + yy) * p.wo + xx) * p.shortcut_c + c : shortcut_x, valid);
        }
        const int nn = tid / 2, o = t.o0 + nn;
        const bool valid = c < p.shortcut_c && o < p.o;
        cp_async16(dst + TM * BK + ShortcutKMajor::at(0, nn, 8 * half),
                   valid ? shortcut_w + i64(o) * p.shortcut_c + c : shortcut_w, valid);
      }
      cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < SHORTCUT_STAGES - 1; ++i) load_shortcut(i);
#pragma unroll 1
    for (int chunk = 0; chunk < shortcut_chunks; ++chunk) {
      cp_async_wait_group<SHORTCUT_STAGES - 2>();
      fence_async_shared();
      __syncthreads();  // chunk landed; chunk - 1's wgmmas (waited below) done in both warpgroups
      load_shortcut(chunk + SHORTCUT_STAGES - 1);  // into chunk - 1's stage
      shortcut_mma(halo_bufs + (chunk % SHORTCUT_STAGES) * SHORTCUT_ELEMS);
      wgmma_wait<0>();
      fence_accumulators(acc);
    }
    cp_async_wait_all();
    __syncthreads();
  } else {
    // Element by element. (Not unrolled: with the accumulators live, unrolled copies spilled.)
    T* const as = halo_bufs;
#pragma unroll 1
    for (int c0 = 0; c0 < p.shortcut_c; c0 += BK) {
#pragma unroll 1
      for (int u = tid; u < TM * BK; u += NT) {
        const int k = u % BK, m = u / BK, yy = t.y0 + m / TC, xx = t.x0 + m % TC, c = c0 + k;
        as[TileKMajor::at(m, k) + k % 8] = (c < p.shortcut_c && yy < p.ho && xx < p.wo)
                                               ? shortcut_x[((i64(t.n) * p.ho + yy) * p.wo + xx) * p.shortcut_c + c]
                                               : Elem<T>::store(0.0f);
      }
      for (int u = tid; u < TN * BK; u += NT) {
        const int k = u % BK, nn = u / BK, o = t.o0 + nn, c = c0 + k;
        as[TM * BK + ShortcutKMajor::at(0, nn, k) + k % 8] =
            (c < p.shortcut_c && o < p.o) ? shortcut_w[i64(o) * p.shortcut_c + c] : Elem<T>::store(0.0f);
      }
      fence_async_shared();
      __syncthreads();
      shortcut_mma(as);
      wgmma_wait<0>();
      fence_accumulators(acc);
      __syncthreads();
    }
  }

  // Fragment row rr of warp w is tile row 2 * group + rr, columns 16 w + lane / 4 (+ 8).
  const auto tile_pixel = [&](int rr, int half) { return int2{2 * group + rr, 16 * warp + lane / 4 + half * 8}; };
  if (rows_of_four(p, out, bias, residual, shortcut_bias)) {
    static_assert(TM * (TN + 8) * sizeof(float) <= (2 * STAGES * HALO_ELEMS + STAGES * WT_ELEMS) * sizeof(T),
                  "the epilogue's f32 tile fits the main loop's buffers");
    store_tile_via_shared<T, TR, TC, TN, NT>(p, t, acc, tile_pixel, reinterpret_cast<float*>(smem), out, bias,
                                             residual, shortcut_bias);
  } else {
    store_fragments<T>(p, t, acc, tile_pixel, t.o0, out, bias, residual, shortcut_bias);
  }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

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
#define FC_WGMMA_BOUNDS (cp::kWgmmaThreads, 1)
#define FC_SIMT_BOUNDS (cp::kSimtThreads)
#define FC_NARROW_BOUNDS (cp::kNarrowThreads, cp::kNarrowBlocksPerSM)

// Each kernel is built as its own module: MLX copies and hashes a kernel's whole module
// image at every launch (precompiled_cuda_kernel), and one cubin of all of them (2 MB for
// sm_90a) cost about 0.45 ms of CPU a launch (CMake also compresses each module's image:
// 268 -> 59 KB for a wgmma kernel). CMake compiles this file once per kernel with
// FC_ONE_KERNEL and FC_KERNEL_<name> defined (cuda/conv3x3_kernels.txt lists the names);
// without FC_ONE_KERNEL every kernel is built. The wgmma kernels exist only for sm_90a.
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_mma_bfloat16_copy)
FC_CONV_KERNEL(fc_conv3x3_mma_bfloat16_copy, __nv_bfloat16, (conv3x3_mma<__nv_bfloat16, false>), FC_MMA_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_mma_bfloat16_act)
FC_CONV_KERNEL(fc_conv3x3_mma_bfloat16_act, __nv_bfloat16, (conv3x3_mma<__nv_bfloat16, true>), FC_MMA_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_mma_float16_copy)
FC_CONV_KERNEL(fc_conv3x3_mma_float16_copy, __half, (conv3x3_mma<__half, false>), FC_MMA_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_mma_float16_act)
FC_CONV_KERNEL(fc_conv3x3_mma_float16_act, __half, (conv3x3_mma<__half, true>), FC_MMA_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_narrow_bfloat16_copy)
FC_CONV_KERNEL(fc_conv3x3_narrow_bfloat16_copy, __nv_bfloat16, (conv3x3_narrow<__nv_bfloat16, false>), FC_NARROW_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_narrow_bfloat16_act)
FC_CONV_KERNEL(fc_conv3x3_narrow_bfloat16_act, __nv_bfloat16, (conv3x3_narrow<__nv_bfloat16, true>), FC_NARROW_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_narrow_float16_copy)
FC_CONV_KERNEL(fc_conv3x3_narrow_float16_copy, __half, (conv3x3_narrow<__half, false>), FC_NARROW_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_narrow_float16_act)
FC_CONV_KERNEL(fc_conv3x3_narrow_float16_act, __half, (conv3x3_narrow<__half, true>), FC_NARROW_BOUNDS)
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_wgmma_bfloat16_copy)
FC_CONV_KERNEL(fc_conv3x3_wgmma_bfloat16_copy, __nv_bfloat16, (conv3x3_wgmma<__nv_bfloat16, false>), FC_WGMMA_BOUNDS)
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_wgmma_bfloat16_act)
FC_CONV_KERNEL(fc_conv3x3_wgmma_bfloat16_act, __nv_bfloat16, (conv3x3_wgmma<__nv_bfloat16, true>), FC_WGMMA_BOUNDS)
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_wgmma_float16_copy)
FC_CONV_KERNEL(fc_conv3x3_wgmma_float16_copy, __half, (conv3x3_wgmma<__half, false>), FC_WGMMA_BOUNDS)
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_wgmma_float16_act)
FC_CONV_KERNEL(fc_conv3x3_wgmma_float16_act, __half, (conv3x3_wgmma<__half, true>), FC_WGMMA_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float32_32)
FC_CONV_KERNEL(fc_conv3x3_simt_float32_32, float, (conv3x3_simt<float, cp::kSimtTileN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float32_8)
FC_CONV_KERNEL(fc_conv3x3_simt_float32_8, float, (conv3x3_simt<float, cp::kSimtNarrowN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float32_4)
FC_CONV_KERNEL(fc_conv3x3_simt_float32_4, float, (conv3x3_simt<float, cp::kSimtRgbN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float16_32)
FC_CONV_KERNEL(fc_conv3x3_simt_float16_32, __half, (conv3x3_simt<__half, cp::kSimtTileN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float16_8)
FC_CONV_KERNEL(fc_conv3x3_simt_float16_8, __half, (conv3x3_simt<__half, cp::kSimtNarrowN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_float16_4)
FC_CONV_KERNEL(fc_conv3x3_simt_float16_4, __half, (conv3x3_simt<__half, cp::kSimtRgbN>), FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_bfloat16_32)
FC_CONV_KERNEL(fc_conv3x3_simt_bfloat16_32, __nv_bfloat16, (conv3x3_simt<__nv_bfloat16, cp::kSimtTileN>),
               FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_bfloat16_8)
FC_CONV_KERNEL(fc_conv3x3_simt_bfloat16_8, __nv_bfloat16, (conv3x3_simt<__nv_bfloat16, cp::kSimtNarrowN>),
               FC_SIMT_BOUNDS)
#endif
#if (!FC_ONE_KERNEL || FC_KERNEL_fc_conv3x3_simt_bfloat16_4)
FC_CONV_KERNEL(fc_conv3x3_simt_bfloat16_4, __nv_bfloat16, (conv3x3_simt<__nv_bfloat16, cp::kSimtRgbN>),
               FC_SIMT_BOUNDS)
#endif
