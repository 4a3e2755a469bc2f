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

__attribute__((target("avx512f"))) static double fma_avx512_f32(long reps) {
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 16
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    for (int c = 1; c < CHAINS; c++) acc[0] = _mm512_add_ps(acc[0], acc[c]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx512f"))) static double fma_avx512_f64(long reps) {
    __m512d acc[CHAINS];
    const __m512d a = _mm512_set1_pd(0.999999), b = _mm512_set1_pd(1e-6);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_pd((double)c);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 16
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_pd(acc[c], a, b);
    for (int c = 1; c < CHAINS; c++) acc[0] = _mm512_add_pd(acc[0], acc[c]);
    return _mm512_reduce_add_pd(acc[0]);
}

// AVX2 has 16 vector registers: 12 chains + 2 constants leave room for the compiler.
#define CHAINS_AVX2 12

__attribute__((target("avx2,fma"))) static double fma_avx2_f32(long reps) {
    __m256 acc[CHAINS_AVX2];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
    for (int c = 0; c < CHAINS_AVX2; c++) acc[c] = _mm256_set1_ps((float)c);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 16
        for (int c = 0; c < CHAINS_AVX2; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float out[8];
    for (int c = 1; c < CHAINS_AVX2; c++) acc[0] = _mm256_add_ps(acc[0], acc[c]);
    _mm256_storeu_ps(out, acc[0]);
    return out[0] + out[7];
}

__attribute__((target("avx2,fma"))) static double fma_avx2_f64(long reps) {
    __m256d acc[CHAINS_AVX2];
    const __m256d a = _mm256_set1_pd(0.999999), b = _mm256_set1_pd(1e-6);
    for (int c = 0; c < CHAINS_AVX2; c++) acc[c] = _mm256_set1_pd((double)c);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 16
        for (int c = 0; c < CHAINS_AVX2; c++) acc[c] = _mm256_fmadd_pd(acc[c], a, b);
    double out[4];
    for (int c = 1; c < CHAINS_AVX2; c++) acc[0] = _mm256_add_pd(acc[0], acc[c]);
    _mm256_storeu_pd(out, acc[0]);
    return out[0] + out[3];
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
    printf("{\"isa\": \"%s\", \"threads\": %d, \"float32_gflops\": %.3f, "
           "\"float64_gflops\": %.3f, \"float32_gflops_cpu_time\": %.3f, "
           "\"float64_gflops_cpu_time\": %.3f, \"checksum\": %g}\n",
           isa, threads, best32.wall, best64.wall, best32.cpu, best64.cpu, sink);
    return 0;
}
