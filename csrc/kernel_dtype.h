// The storage dtypes the GPU kernels are instantiated for, spelled as their kernel names
// spell them. Plain C++, shared by the Metal and CUDA dispatch plans and the emulator.
#pragma once

#include <cstddef>

namespace fusedconv {

enum class KernelDType { float32, float16, bfloat16 };

inline const char* dtype_name(KernelDType dt) {
  switch (dt) {
    case KernelDType::float32: return "float32";
    case KernelDType::float16: return "float16";
    case KernelDType::bfloat16: return "bfloat16";
  }
  return "";
}

inline std::size_t dtype_size(KernelDType dt) { return dt == KernelDType::float32 ? 4 : 2; }

}  // namespace fusedconv
