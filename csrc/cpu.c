// Run-time choice of the GEMM micro-kernels' instruction set: what the CPU reports,
// once at load, lowered on request (MINITRAIN_ISA, tests).
#include "mt_internal.h"

int mt_isa_active = MT_ISA_GENERIC;

int mt_cpu_isa(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return MT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MT_ISA_AVX2;
#endif
    return MT_ISA_GENERIC;
}

int mt_set_isa(int isa) {
    const int best = mt_cpu_isa();
    mt_isa_active = isa < MT_ISA_GENERIC ? MT_ISA_GENERIC : isa > best ? best : isa;
    return mt_isa_active;
}

int mt_get_isa(void) { return mt_isa_active; }

__attribute__((constructor)) static void choose_isa(void) { mt_set_isa(mt_cpu_isa()); }
