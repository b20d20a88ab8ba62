// Storage types of the Metal kernels, as traits: each kernel is templated on one of
// fc_float32 / fc_float16 / fc_bfloat16 and reads `typename D::storage` buffers.
// bfloat16 is stored as its raw bits in a plain `ushort` (any Metal version accepts
// ushort device buffers; Metal's own `bfloat` needs Metal 3.1), widened to float by
// a shift, as MLX's bf16.h does without `bfloat`.
#pragma once

#include <metal_stdlib>

using namespace metal;

struct fc_float32 {
  typedef float storage;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};

struct fc_float16 {
  typedef half storage;
  static float load(half v) { return float(v); }
  static half store(float v) { return half(v); }
};

struct fc_bfloat16 {
  typedef ushort storage;
  static float load(ushort bits) { return as_type<float>(uint(bits) << 16); }
  static ushort store(float v) {
    uint u = as_type<uint>(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return ushort((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
    return ushort(u >> 16);
  }
};

// v rounded to D's precision: what the reference materialises between ops.
template <typename D>
inline float round_to(float v) {
  return D::load(D::store(v));
}
