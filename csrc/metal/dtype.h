// Storage types of the Metal kernels and their conversions to and from float.
// bfloat16 is handled as raw bits so the kernels need no Metal 3.1 `bfloat`.
#pragma once

#include <metal_stdlib>

using namespace metal;

// The raw bits of a bfloat16 (a scalar type, so it copies out of any address space).
enum class fc_bf16 : ushort {};

inline float to_float(float v) { return v; }
inline float to_float(half v) { return float(v); }
inline float to_float(fc_bf16 v) { return as_type<float>(uint(v) << 16); }

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline half from_float<half>(float v) { return half(v); }
template <>
inline fc_bf16 from_float<fc_bf16>(float v) {
  uint u = as_type<uint>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return fc_bf16((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return fc_bf16(u >> 16);
}

// v rounded to T's precision: what the reference materialises between ops.
template <typename T>
inline float round_to(float v) { return to_float(from_float<T>(v)); }
