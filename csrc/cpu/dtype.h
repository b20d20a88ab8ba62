// Storage types of the CPU kernels and their conversions to and from f32.
// Independent of MLX's half types so that kernels compile to plain loads and
// shifts (bf16) or F16C/_Float16 conversions (f16).
#pragma once

#include <cstdint>
#include <cstring>

namespace fusedconv::cpu {

enum class DType { f32, f16, bf16 };

struct bf16 {
  uint16_t bits;
};
using f16 = _Float16;

inline float to_f32(float v) { return v; }
inline float to_f32(f16 v) { return static_cast<float>(v); }
inline float to_f32(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class T>
T from_f32(float v);
template <>
inline float from_f32<float>(float v) { return v; }
template <>
inline f16 from_f32<f16>(float v) { return static_cast<f16>(v); }
template <>
inline bf16 from_f32<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{uint16_t(u >> 16)};
}

// The one DType -> storage type dispatch: calls f(T{}) with T the storage type of dt.
template <class F>
decltype(auto) with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f16: return f(f16{});
    case DType::bf16: return f(bf16{});
    default: return f(float{});
  }
}

// Rounds v to the precision of T (the dtype the reference materialises).
template <class T>
inline float round_to(float v) { return to_f32(from_f32<T>(v)); }

}  // namespace fusedconv::cpu
