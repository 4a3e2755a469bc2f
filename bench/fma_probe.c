// FMA peak probe: the highest rate of fused multiply-adds one core (and all cores)
// can retire, the ceiling the GEMM and the training iteration are compared against.
//
// Each thread runs CHAINS independent accumulator chains of vector FMAs. An FMA has a
// latency of about 4 cycles and most cores issue two per cycle, so at least 8
// independent chains are needed to keep both FMA pipes busy; 16 leave margin and
// still fit in the 32 AVX-512 (or, for 8 chains x 2, the 16 AVX2) registers.
//
// Usage: fma_probe THREADS   -> one JSON object on stdout.
// Build: cc -O2 -fopenmp fma_probe.c -o fma_probe  (no -march: the AVX-512 and AVX2
// kernels carry their own target attributes and are chosen at run time).
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 16
#define REPS 2000000L  // ~15 ms per run at AVX-512 rates: short enough to dodge noise
#define RUNS 30

// Every kernel returns a value that depends on all chains so nothing is optimised away.
// The multiplier is just below 1 and the addend tiny, so values stay normal (no
// denormal slow path) over any number of iterations.

// One kernel per (instruction set, type). AVX2 has 16 vector registers: 12 chains + 2
// constants leave room for the compiler; AVX-512's 32 take all CHAINS.
#define CHAINS_AVX2 12
#define FMA_KERNEL(name, isa, vec, elem, set1, fmadd, add, storeu, chains)              \
    __attribute__((target(isa))) static double name(long reps) {                        \
        vec acc[chains];                                                               \
        const vec a = set1((elem)0.999999), b = set1((elem)1e-6);                       \
        for (int c = 0; c < chains; c++) acc[c] = set1((elem)c);                        \
        for (long r = 0; r < reps; r++)                                                \
            _Pragma("GCC unroll 16") for (int c = 0; c < chains; c++)                  \
                acc[c] = fmadd(acc[c], a, b);                                          \
        for (int c = 1; c < chains; c++) acc[0] = add(acc[0], acc[c]);                  \
        elem out[sizeof(vec) / sizeof(elem)];                                          \
        storeu(out, acc[0]);                                                           \
        return out[0] + out[sizeof(vec) / sizeof(elem) - 1];                           \
    }

FMA_KERNEL(fma_avx512_f32, "avx512f", __m512, float, _mm512_set1_ps, _mm512_fmadd_ps,
           _mm512_add_ps, _mm512_storeu_ps, CHAINS)
FMA_KERNEL(fma_avx512_f64, "avx512f", __m512d, double, _mm512_set1_pd, _mm512_fmadd_pd,
           _mm512_add_pd, _mm512_storeu_pd, CHAINS)
FMA_KERNEL(fma_avx2_f32, "avx2,fma", __m256, float, _mm256_set1_ps, _mm256_fmadd_ps,
           _mm256_add_ps, _mm256_storeu_ps, CHAINS_AVX2)
FMA_KERNEL(fma_avx2_f64, "avx2,fma", __m256d, double, _mm256_set1_pd, _mm256_fmadd_pd,
           _mm256_add_pd, _mm256_storeu_pd, CHAINS_AVX2)

// vdpbf16ps: per float32 lane two bfloat16 multiply-adds (4 flops) per instruction. The
// pairs are 1 and tiny, so the accumulators grow by a tiny amount: they stay normal.
__attribute__((target("avx512bf16,avx512f"))) static double dp_avx512_bf16(long reps) {
    __m512 acc[CHAINS];
    // bfloat16 pairs (1e-6, 1e-6) and (1, 1)... a = (2^-20, 2^-20), b = (1, 1)
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x35803580);
    const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long r = 0; r < reps; r++)
        _Pragma("GCC unroll 16") for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    for (int c = 1; c < CHAINS; c++) acc[0] = _mm512_add_ps(acc[0], acc[c]);
    float out[16];
    _mm512_storeu_ps(out, acc[0]);
    return out[0] + out[15];
}

typedef double (*kernel)(long);

typedef struct {
    double wall, cpu;  // GFLOP/s over wall-clock time and over the threads' CPU time
} rate;

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Runs `k` on every thread at once; GFLOP/s summed over threads (2 flops per lane per
// FMA). The CPU-time rate is what the cores retire while they run; the wall-clock rate
// also loses the time other processes on a shared machine take from them.
static rate measure(kernel k, int threads, int lanes, int chains, long reps, double *sink) {
    double t0 = 0, t1 = 0, total = 0, cpu = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total) reduction(max : cpu)
    {
#pragma omp barrier
#pragma omp master
        t0 = omp_get_wtime();
        double c0 = thread_cpu_seconds();
        total += k(reps);
        cpu = thread_cpu_seconds() - c0;
#pragma omp barrier
#pragma omp master
        t1 = omp_get_wtime();
    }
    *sink += total;
    double gflop = 2.0 * lanes * chains * (double)reps * threads / 1e9;
    return (rate){gflop / (t1 - t0), gflop / cpu};
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1) threads = 1;
    __builtin_cpu_init();
    const char *isa;
    kernel k32, k64;
    int lanes32, chains;
    if (__builtin_cpu_supports("avx512f")) {
        isa = "avx512f", k32 = fma_avx512_f32, k64 = fma_avx512_f64, lanes32 = 16,
        chains = CHAINS;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        isa = "avx2+fma", k32 = fma_avx2_f32, k64 = fma_avx2_f64, lanes32 = 8,
        chains = CHAINS_AVX2;
    } else {
        printf("{\"isa\": null, \"error\": \"no AVX2/FMA or AVX-512 on this CPU\"}\n");
        return 0;
    }
    double sink = 0;
    rate best32 = {0, 0}, best64 = {0, 0};
    measure(k32, threads, lanes32, chains, 10 * REPS, &sink);  // warm-up: clocks ramp up
    // The peak is the best short run: noise from other processes only ever lowers a
    // rate, and short runs are the likeliest to find the cores to themselves.
    for (int r = 0; r < RUNS; r++) {
        rate g32 = measure(k32, threads, lanes32, chains, REPS, &sink);
        rate g64 = measure(k64, threads, lanes32 / 2, chains, REPS, &sink);
        if (g32.wall > best32.wall) best32.wall = g32.wall;
        if (g32.cpu > best32.cpu) best32.cpu = g32.cpu;
        if (g64.wall > best64.wall) best64.wall = g64.wall;
        if (g64.cpu > best64.cpu) best64.cpu = g64.cpu;
    }
    // bfloat16 dot products: counted as float32 lanes x 2 multiply-adds (lanes 32 below)
    rate bf16 = {0, 0};
    const int has_bf16 = __builtin_cpu_supports("avx512bf16");
    for (int r = 0; has_bf16 && r < RUNS; r++) {
        rate g = measure(dp_avx512_bf16, threads, 32, CHAINS, REPS, &sink);
        if (g.wall > bf16.wall) bf16.wall = g.wall;
        if (g.cpu > bf16.cpu) bf16.cpu = g.cpu;
    }
    printf("{\"isa\": \"%s\", \"threads\": %d, \"float32_gflops\": %.3f, "
           "\"float64_gflops\": %.3f, \"float32_gflops_cpu_time\": %.3f, "
           "\"float64_gflops_cpu_time\": %.3f, ",
           isa, threads, best32.wall, best64.wall, best32.cpu, best64.cpu);
    if (has_bf16)
        printf("\"bfloat16_gflops\": %.3f, \"bfloat16_gflops_cpu_time\": %.3f, ", bf16.wall,
               bf16.cpu);
    printf("\"checksum\": %g}\n", sink);
    return 0;
}
