// What the core runs on: the instruction set of the GEMM micro-kernels (what the CPU
// reports, once at load, lowered on request: MINITRAIN_ISA, tests) and the thread count.
#include "mt_internal.h"
#include <stdatomic.h>
#include <stdlib.h>

int mt_isa_default = MT_ISA_GENERIC;

int mt_cpu_isa(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return __builtin_cpu_supports("avx512bf16") ? MT_ISA_AVX512_BF16 : MT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MT_ISA_AVX2;
#endif
    return MT_ISA_GENERIC;
}

int mt_set_isa(int isa) {
    const int best = mt_cpu_isa();
    mt_isa_default = isa < MT_ISA_GENERIC ? MT_ISA_GENERIC : isa > best ? best : isa;
    return mt_isa_default;
}

int mt_get_isa(void) { return mt_isa_default; }

// Threads. OpenMP's own count (omp_set_num_threads) belongs to the calling thread: a
// Python thread that sets it changes nothing for a fit in another. So the count lives
// here, process-wide, and every parallel region names its team.
static atomic_int fixed_threads;  // >= 1: fixed; 0: auto
static atomic_int last_team;      // the team of the last iteration, for auto mode
static int icv_default;           // OpenMP's count in a fresh thread (OMP_NUM_THREADS or cores)
// what mt_set_num_threads last wrote into this thread's OpenMP count (0: nothing), so that
// a different value there is someone else's limit (threadpoolctl's)
static _Thread_local int icv_ours;
_Thread_local int mt_team = 1;

static int thread_limit(void) {
    const int icv = omp_get_max_threads();
    return icv != (icv_ours ? icv_ours : icv_default) ? icv : 0;
}

int mt_team_size(int wanted) {
    const int fixed = atomic_load_explicit(&fixed_threads, memory_order_relaxed);
    int n = fixed > 0 ? fixed : wanted > 0 ? wanted : icv_default;
    const int limit = thread_limit();
    if (limit > 0 && limit < n) n = limit;
    return n < 1 ? 1 : n;
}

void mt_team_used(int team) { atomic_store_explicit(&last_team, team, memory_order_relaxed); }

void mt_set_num_threads(int n) {
    atomic_store(&fixed_threads, n > 0 ? n : 0);
    // threadpoolctl reads the calling thread's OpenMP count: show it ours
    icv_ours = n > 0 ? n : icv_default;
    omp_set_num_threads(icv_ours);
}

int mt_get_num_threads(void) {
    const int last = atomic_load_explicit(&last_team, memory_order_relaxed);
    return mt_team_size(last > 0 ? last : icv_default);
}

int mt_num_threads_fixed(void) {
    return atomic_load(&fixed_threads) > 0 || thread_limit() > 0;
}

int mt_max_threads(void) { return icv_default; }

int mt_last_team(void) { return mt_team; }

__attribute__((constructor)) static void choose_isa_and_threads(void) {
    mt_set_isa(mt_cpu_isa());
    icv_default = omp_get_max_threads();
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && *env) atomic_store(&fixed_threads, icv_default);
}
