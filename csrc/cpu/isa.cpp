#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(FUSEDCONV_X86_KERNELS)
#include <cpuid.h>
#endif

namespace fusedconv::cpu {

namespace {

#if defined(FUSEDCONV_X86_KERNELS)
// F16C from CPUID (leaf 1, ECX): clang's __builtin_cpu_supports has no "f16c".
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::generic: return true;
#if defined(FUSEDCONV_X86_KERNELS)
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case Isa::avx512:
      return cpu_supports(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    case Isa::avx512bf16: return cpu_supports(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
#endif
    default: return false;
  }
}

constexpr Isa kAll[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
  }
  return "generic";
}


Isa active_isa() {
  const char* forced = std::getenv("FUSEDCONV_CPU_ISA");
  if (forced && !*forced) forced = nullptr;
  Isa best = Isa::generic;
  for (Isa isa : kAll) {
    if (!cpu_supports(isa)) continue;
    if (forced && std::strcmp(forced, isa_name(isa)) == 0) return isa;
    // avx512bf16 only when asked for: on the Xeon (Emerald Rapids) we measured,
    // vdpbf16ps ran at 85 GFLOP/s a core against 110 for f32 FMA (bench/reports/
    // xeon_emr_2t/), so the f32 avx512 kernels were faster for bf16 too.
    if (isa != Isa::avx512bf16) best = isa;
  }
  if (forced) {
    throw std::invalid_argument(std::string("FUSEDCONV_CPU_ISA=") + forced +
                                " names no CPU kernel build this machine runs (" + available_isas() + ")");
  }
  return best;
}

std::string available_isas() {
  std::string out;
  for (Isa isa : kAll) {
    if (!cpu_supports(isa)) continue;
    if (!out.empty()) out += ",";
    out += isa_name(isa);
  }
  return out;
}

const IsaKernels& active_kernels() {
  switch (active_isa()) {
#if defined(FUSEDCONV_X86_KERNELS)
    case Isa::avx2: return avx2::kernels;
    case Isa::avx512: return avx512::kernels;
    case Isa::avx512bf16: return avx512bf16::kernels;
#endif
    default: return generic::kernels;
  }
}

}  // namespace fusedconv::cpu
