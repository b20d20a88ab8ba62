// x86-64 AMX build (Sapphire Rapids and later; flags set in CMake): bf16 convolutions
// with even channel counts run on AMX-BF16 tile products; everything else is the
// avx512bf16 build's. The conv walks its strip like the GEMM kernels (a ring of three
// activated halo rows per worker), in blocks of 32 pixels x 32 output channels: four f32
// sum tiles, two tiles of 16 pixels x 32 input channels straight from the halo (pixel
// stride C rounded up to 32, zero channels after C) and two weight tiles of 16 channel
// pairs x 16 outputs (the packed panels, zero rows after C). Each tdpbf16ps is a
// 16 x 32 by 32 x 16 product: the 9 taps x C/32 channel steps of a block never leave the
// tiles, so there are no partial sums.
#define FC_ISA amx
#include "cpu/amx_tiles.h"
#include "cpu/halo.inc"
#include "cpu/isa.h"

namespace fusedconv::cpu::amx {
namespace {

constexpr int kTileK = 32;                    // input channels of one tile product
constexpr int kBlockPixels = 2 * tile::kRows;  // two A tiles
// Halo ring per worker: with L2 at 2 MiB a core (Sapphire/Emerald Rapids) this leaves room
// for one pair of weight panels (9 x C x 32 bf16: 288 KiB at C = 512) next to it.
constexpr size_t kHaloBudgetBytes = 768 * 1024;

// The staged 1x1 shortcut input of one strip row: pixels x 32-aligned channels, bf16.
size_t shortcut_floats(const Conv3x3Params& p, int cols) {
  return p.shortcut_c ? (size_t(cols) * round_up(p.shortcut_c, kTileK) + 1) / 2 : 0;
}

size_t worker_floats(const Conv3x3Params& p, int strip_w) {
  const int cols = round_up(strip_w, kBlockPixels);
  return halo_ring_floats(cols + 2, round_up(p.c, kTileK), sizeof(bf16)) + shortcut_floats(p, cols);
}

// One channel step of a block: sums 0-3 += the two A tiles at `a` (pixels lda elements
// apart) x the weight tiles at `b` (and b + panel_stride for the second panel).
template <int NPAN>
inline void step(const bf16* a, size_t lda, const bf16* b, size_t panel_stride) {
  const size_t row_bytes = lda * sizeof(bf16);
  tile::load<4>(a, row_bytes);
  tile::load<5>(a + tile::kRows * lda, row_bytes);
  tile::load<6>(b, tile::kRowBytes);
  tile::dot<0, 4, 6>();
  tile::dot<2, 5, 6>();
  if constexpr (NPAN == 2) {
    tile::load<7>(b + panel_stride, tile::kRowBytes);
    tile::dot<1, 4, 7>();
    tile::dot<3, 5, 7>();
  }
}

// Where one block works: output row (n, y) from pixel x (halo column col), of which
// `pixels` (<= 32) are stored, output channels 16*ob .. 16*(ob + NPAN); `shortcut` is the
// block's first staged shortcut pixel.
struct Block {
  int n, y, x, col, pixels, ob;
  const bf16* shortcut;
};

// out[0..count) = sums + addend (+ res), rounded to bf16 as from_f32 rounds (nearest even,
// NaN kept a quiet NaN); eight lanes at a time, as the outputs are a fair share of the work
// for C = 128 (a block's 36 tile steps against 1024 stores).
void store_sums(const float* sums, const float* addend, const bf16* res, int count, bf16* out) {
  typedef uint16_t v8h __attribute__((vector_size(16)));
  int j = 0;
  for (; j + 8 <= count; j += 8) {
    v8 s = load8(sums + j) + load8(addend + j);
    if (res) {
      v8h r;
      std::memcpy(&r, res + j, sizeof(r));
      s += __builtin_bit_cast(v8, __builtin_convertvector(r, v8ui) << 16);
    }
    const v8ui u = __builtin_bit_cast(v8ui, s);
    const v8ui rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const v8ui bits = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded;
    const v8h h = __builtin_convertvector(bits, v8h);
    std::memcpy(out + j, &h, sizeof(h));
  }
  for (; j < count; ++j) {
    const float s = sums[j] + addend[j];
    out[j] = from_f32<bf16>(res ? s + to_f32(res[j]) : s);
  }
}

template <int NPAN>
void run_block(const Conv3x3Job& job, const bf16* const rows[3], const Block& blk) {
  const Conv3x3Params& p = *job.p;
  const int ld = round_up(p.c, kTileK);
  const size_t panel_stride = size_t(9) * ld * kPanel;
  const bf16* w = static_cast<const bf16*>(job.packed_w) + blk.ob * panel_stride;
  tile::zero<0>();
  tile::zero<1>();
  tile::zero<2>();
  tile::zero<3>();
  for (int tap = 0; tap < 9; ++tap) {
    const bf16* a = rows[tap / 3] + size_t(blk.col + tap % 3) * ld;
    const bf16* b = w + size_t(tap) * ld * kPanel;
    for (int c0 = 0; c0 < ld; c0 += kTileK) step<NPAN>(a + c0, ld, b + size_t(c0) * kPanel, panel_stride);
  }
  if (blk.shortcut) {
    const int sc_ld = round_up(p.shortcut_c, kTileK);
    const size_t sc_stride = size_t(sc_ld) * kPanel;
    const bf16* b = static_cast<const bf16*>(job.packed_sc) + blk.ob * sc_stride;
    for (int c0 = 0; c0 < sc_ld; c0 += kTileK) {
      step<NPAN>(blk.shortcut + c0, sc_ld, b + size_t(c0) * kPanel, sc_stride);
    }
  }
  alignas(64) float sums[kBlockPixels][2 * kPanel];
  constexpr size_t kSumRow = sizeof(sums[0]);
  tile::store<0>(sums[0], kSumRow);
  tile::store<2>(sums[tile::kRows], kSumRow);
  if constexpr (NPAN == 2) {
    tile::store<1>(sums[0] + kPanel, kSumRow);
    tile::store<3>(sums[tile::kRows] + kPanel, kSumRow);
  }
  const int o0 = blk.ob * kPanel;
  const int count = std::min(NPAN * kPanel, p.o - o0);
  const bf16* bias = static_cast<const bf16*>(job.b.bias);
  const bf16* sc_bias = static_cast<const bf16*>(job.b.shortcut_bias);
  alignas(64) float addend[2 * kPanel] = {};
  for (int j = 0; j < count; ++j) {
    addend[j] = (bias ? to_f32(bias[o0 + j]) : 0.0f) + (sc_bias ? to_f32(sc_bias[o0 + j]) : 0.0f);
  }
  const size_t pix0 = (size_t(blk.n) * p.ho + blk.y) * p.wo + blk.x;
  for (int i = 0; i < blk.pixels; ++i) {
    const size_t at = (pix0 + i) * p.o + o0;
    const bf16* res = job.b.residual ? static_cast<const bf16*>(job.b.residual) + at : nullptr;
    store_sums(sums[i], addend, res, count, static_cast<bf16*>(job.b.out) + at);
  }
}

// Copies the shortcut input of pixels x0 .. x0+cols of row (n, y) into dst
// ([cols][Cs rounded up to 32]), zero past Cs and past the image.
void stage_shortcut(const Conv3x3Params& p, const bf16* x, int n, int y, int x0, int cols, bf16* dst) {
  const int cs = p.shortcut_c, ld = round_up(cs, kTileK);
  const bf16* row = x + (size_t(n) * p.ho + y) * p.wo * cs;
  for (int j = 0; j < cols; ++j) {
    bf16* d = dst + size_t(j) * ld;
    const int have = x0 + j < p.wo ? cs : 0;
    if (have) std::memcpy(d, row + size_t(x0 + j) * cs, size_t(cs) * sizeof(bf16));
    std::memset(d + have, 0, size_t(ld - have) * sizeof(bf16));
  }
}

void unit(const Conv3x3Job& job, int n, int y0, int y1, int x0, int x1, float* scratch) {
  const Conv3x3Params& p = *job.p;
  // Whole blocks: the pixels after x1 are computed from the halo's extra columns (zero
  // past the image) and never stored.
  const int cols = round_up(x1 - x0, kBlockPixels);
  const int ld = round_up(p.c, kTileK);
  const size_t slot = size_t(cols + 2) * ld;
  bf16* halo = reinterpret_cast<bf16*>(scratch);
  bf16* shortcut = p.shortcut_c
                       ? reinterpret_cast<bf16*>(scratch + halo_ring_floats(cols + 2, ld, sizeof(bf16)))
                       : nullptr;
  auto slot_of = [&](int r) { return halo + size_t((r + 1) % 3) * slot; };
  tile::configure();
  fill_halo_row<bf16>(job, n, y0 - 1, x0, cols + 2, ld, slot_of(y0 - 1));
  fill_halo_row<bf16>(job, n, y0, x0, cols + 2, ld, slot_of(y0));
  const int oblocks = ceil_div(p.o, kPanel);
  for (int y = y0; y < y1; ++y) {
    fill_halo_row<bf16>(job, n, y + 1, x0, cols + 2, ld, slot_of(y + 1));
    if (shortcut) stage_shortcut(p, static_cast<const bf16*>(job.b.shortcut_x), n, y, x0, cols, shortcut);
    const bf16* rows[3] = {slot_of(y - 1), slot_of(y), slot_of(y + 1)};
    // Weight panel pairs outermost: one pair stays in L2 across the strip's blocks.
    for (int ob = 0; ob < oblocks; ob += 2) {
      for (int col = 0; col < cols; col += kBlockPixels) {
        const int pixels = std::min(kBlockPixels, x1 - x0 - col);
        const bf16* sc = shortcut ? shortcut + size_t(col) * round_up(p.shortcut_c, kTileK) : nullptr;
        const Block blk{n, y, x0 + col, col, pixels, ob, sc};
        if (ob + 1 < oblocks) {
          run_block<2>(job, rows, blk);
        } else {
          run_block<1>(job, rows, blk);
        }
      }
    }
  }
  tile::release();
}

#if defined(FUSEDCONV_AMX_EMULATION)
// The sanitizer tests' build: emulated tiles on any x86-64 with AVX2.
const IsaKernels& fallback() { return avx2::kernels; }
#else
const IsaKernels& fallback() { return avx512bf16::kernels; }
#endif

Conv3x3Kernel conv3x3_kernel(DType dt, bool even_channels) {
  if (dt == DType::bf16 && even_channels) {
    return {unit, kBlockPixels, true, false, kTileK, kHaloBudgetBytes, worker_floats};
  }
  return fallback().conv3x3(dt, even_channels);
}
LinearRowsFn linear_rows(DType dt) { return fallback().linear_rows(dt); }
AttentionBlockFn attention_block(DType dt) { return fallback().attention_block(dt); }

}  // namespace

const IsaKernels kernels{conv3x3_kernel, linear_rows, attention_block};
}  // namespace fusedconv::cpu::amx
