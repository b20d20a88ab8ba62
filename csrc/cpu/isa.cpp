#include "cpu/isa.h"

#include "cpu/parallel.h"

#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <vector>

#if defined(FUSEDCONV_X86_KERNELS)
#include <cpuid.h>
#endif
#if defined(FUSEDCONV_X86_KERNELS) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fusedconv::cpu {

namespace {

#if defined(FUSEDCONV_X86_KERNELS)
// F16C from CPUID (leaf 1, ECX): clang's __builtin_cpu_supports has no "f16c".
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and Linux's permission for this
// process to use the tile data state, requested once (without it the first tile load is
// SIGILL). The sanitizer tests' build emulates the tiles (amx_tiles.h) on any AVX2 CPU.
bool amx_usable() {
#if defined(FUSEDCONV_AMX_EMULATION)
  return true;
#elif defined(__linux__)
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
#else
  return false;
#endif
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
#if defined(FUSEDCONV_AMX_EMULATION)
    case Isa::amx: return cpu_supports(Isa::avx2) && amx_usable();
#else
    case Isa::amx: return cpu_supports(Isa::avx512bf16) && amx_usable();
#endif
#endif
    default: return false;
  }
}

constexpr Isa kAll[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::amx: return "amx";
  }
  return "generic";
}


namespace {

const IsaKernels& kernels_of(Isa isa) {
  switch (isa) {
#if defined(FUSEDCONV_X86_KERNELS)
    case Isa::avx2: return avx2::kernels;
    case Isa::avx512: return avx512::kernels;
    case Isa::avx512bf16: return avx512bf16::kernels;
    case Isa::amx: return amx::kernels;
#endif
    default: return generic::kernels;
  }
}

// A decoder-like conv: big enough (0.6 GFLOP) that the GEMM step, not the per-call
// overhead, decides (a 128-channel 8x64 conv measured within 10% where whole decodes
// differed 1.8x), small enough to time all builds in ~50 ms.
// Best-of-5 seconds of each build on the calibration conv, the builds taking turns so that a
// burst of other work on the machine (MLX's own CPU stream at start-up, another process)
// slows every build alike instead of deciding the race; the first round warms caches and
// the worker pool.
std::vector<double> time_convs(const std::vector<Isa>& isas) {
  constexpr int kH = 16, kW = 64, kC = 256, kRounds = 6;
  const Conv3x3Params p{1, kH, kW, kC, kH, kW, kC, 32, 0, 1, 1, 0, 0, 0, 0};
  std::vector<bf16> x(size_t(kH) * kW * kC, bf16{0x3f80}), w(size_t(kC) * 9 * kC, bf16{0x3c00}),
      gamma(kC, bf16{0x3f80}), beta(kC, bf16{0}), out(size_t(kH) * kW * kC);
  std::vector<float> stats(32 * 2, 1.0f);
  const Conv3x3Buffers b{x.data(), w.data(), stats.data(), gamma.data(), beta.data(), nullptr, nullptr,
                         nullptr, nullptr, nullptr, out.data()};
  std::vector<double> best(isas.size(), 1e30);
  for (int round = 0; round < kRounds; ++round) {
    for (size_t i = 0; i < isas.size(); ++i) {
      const Conv3x3CpuPlan plan = plan_conv3x3(p, DType::bf16, default_threads(), &kernels_of(isas[i]));
      std::vector<float> scratch(plan.scratch_floats());
      const auto t0 = std::chrono::steady_clock::now();
      conv3x3(p, DType::bf16, b, plan, scratch.data());
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (round > 0) best[i] = std::min(best[i], t);
    }
  }
  return best;
}

}  // namespace

const std::vector<IsaTiming>& calibration() {
  // The portable build only where it is the only one (a SIMD build always beats it).
  static const std::vector<IsaTiming> timings = [] {
    std::vector<Isa> isas;
    for (Isa isa : kAll)
      if (cpu_supports(isa) && (isa != Isa::generic || !cpu_supports(Isa::avx2))) isas.push_back(isa);
    const std::vector<double> seconds = time_convs(isas);
    std::vector<IsaTiming> out;
    for (size_t i = 0; i < isas.size(); ++i) out.push_back({isas[i], seconds[i]});
    return out;
  }();
  return timings;
}

Isa active_isa() {
  const char* forced = std::getenv("FUSEDCONV_CPU_ISA");
  if (forced && *forced) {
    for (Isa isa : kAll)
      if (cpu_supports(isa) && std::strcmp(forced, isa_name(isa)) == 0) return isa;
    throw std::invalid_argument(std::string("FUSEDCONV_CPU_ISA=") + forced +
                                " names no CPU kernel build this machine runs (" + available_isas() + ")");
  }
  // The fastest build, where an earlier (narrower) build must win by 10%: close timings would
  // otherwise pick either from one process to the next (and the builds round differently).
  // The tie goes to the wider build because the small calibration conv understates its lead
  // (Zen 5: avx512bf16 1.5x avx512 there, 1.8x over a whole decode).
  static const Isa chosen = [] {
    const std::vector<IsaTiming>& timings = calibration();
    IsaTiming best = timings.back();
    for (auto t = timings.rbegin(); t != timings.rend(); ++t)
      if (t->seconds < 0.9 * best.seconds) best = *t;
    return best.isa;
  }();
  return chosen;
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

const IsaKernels& active_kernels() { return kernels_of(active_isa()); }

}  // namespace fusedconv::cpu
