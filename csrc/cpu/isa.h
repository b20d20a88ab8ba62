// Run-time choice between the instruction-set builds of the CPU kernels.
#pragma once

namespace fusedconv::cpu {

// "avx2" where the CPU has AVX2+FMA+F16C (x86-64 builds), else "generic".
// FUSEDCONV_CPU_ISA=generic forces the portable build (tests cover both).
const char* active_isa();
const char* available_isas();  // comma-separated

}  // namespace fusedconv::cpu
