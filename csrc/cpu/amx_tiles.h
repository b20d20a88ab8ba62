// The AMX tile operations of the CPU conv, in one tile shape throughout: 16 rows of 64
// bytes (16 x 16 f32 sums; 16 pixels x 32 bf16 channels; 16 channel pairs x 16 outputs x
// 2). Inline assembly rather than the intrinsics: GCC's <amxtileintrin.h> pastes the tile
// number into the mnemonic with the preprocessor, so it cannot take a template argument.
// With FUSEDCONV_AMX_EMULATION the same operations run as plain C++ on per-thread tile
// registers, so that the sanitizer tests check the AMX conv's indexing on CPUs without
// AMX (the emulated sums are f32 in another order than the hardware's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fusedconv::cpu::amx::tile {

constexpr int kRows = 16;
constexpr int kRowBytes = 64;

#if defined(FUSEDCONV_AMX_EMULATION)

struct Registers {
  alignas(64) uint8_t t[8][kRows][kRowBytes];
};
inline thread_local Registers registers;

inline void configure() { std::memset(&registers, 0, sizeof(registers)); }  // ldtilecfg zeroes
inline void release() {}
template <int T>
void zero() {
  std::memset(registers.t[T], 0, sizeof(registers.t[T]));
}
template <int T>
void load(const void* p, size_t stride) {
  for (int r = 0; r < kRows; ++r) std::memcpy(registers.t[T][r], static_cast<const char*>(p) + r * stride, kRowBytes);
}
template <int T>
void store(void* p, size_t stride) {
  for (int r = 0; r < kRows; ++r) std::memcpy(static_cast<char*>(p) + r * stride, registers.t[T][r], kRowBytes);
}
// C[m][n] += sum_k A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1] (bf16 in, f32 sums).
template <int C, int A, int B>
void dot() {
  auto bf16_at = [](const uint8_t* row, int i) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (int m = 0; m < kRows; ++m) {
    for (int n = 0; n < kRows; ++n) {
      float c;
      std::memcpy(&c, registers.t[C][m] + 4 * n, 4);
      for (int k = 0; k < kRows; ++k) {
        c += bf16_at(registers.t[A][m], 2 * k) * bf16_at(registers.t[B][k], 2 * n) +
             bf16_at(registers.t[A][m], 2 * k + 1) * bf16_at(registers.t[B][k], 2 * n + 1);
      }
      std::memcpy(registers.t[C][m] + 4 * n, &c, 4);
    }
  }
}

#else

// Palette 1, tiles 0-7 all 16 rows x 64 bytes.
struct alignas(64) Config {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Per thread, before the first tile operation (also zeroes the tiles).
inline void configure() {
  Config cfg{};
  cfg.palette = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = kRowBytes;
    cfg.rows[i] = kRows;
  }
  asm volatile("ldtilecfg %0" ::"m"(cfg));
}
// Gives the tile state back, so that context switches do not save 8 KiB of it.
inline void release() { asm volatile("tilerelease" ::); }
template <int T>
void zero() {
  asm volatile("tilezero %%tmm%c0" ::"i"(T));
}
template <int T>
void load(const void* p, size_t stride) {
  asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(p), "r"(stride), "i"(T) : "memory");
}
template <int T>
void store(void* p, size_t stride) {
  asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(p), "r"(stride), "i"(T) : "memory");
}
// tmm[C] += tmm[A] x tmm[B] (AT&T order: B, A, C).
template <int C, int A, int B>
void dot() {
  asm volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}

#endif

}  // namespace fusedconv::cpu::amx::tile
