#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace fusedconv::cpu {

namespace {
bool cpu_has_avx2() {
#if defined(FUSEDCONV_X86_KERNELS)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}
}  // namespace

const char* active_isa() {
  const char* forced = std::getenv("FUSEDCONV_CPU_ISA");
  if (forced && std::strcmp(forced, "generic") == 0) return "generic";
  return cpu_has_avx2() ? "avx2" : "generic";
}

const char* available_isas() { return cpu_has_avx2() ? "generic,avx2" : "generic"; }

}  // namespace fusedconv::cpu
