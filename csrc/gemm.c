// GEMM driver in the BLIS design: C (M, N) = op(A) (M, K) · op(B) (K, N), K in blocks of
// KC, register tiles of MR x NR from the micro-kernels (gemm_kernel.h, the only
// ISA-specific code). One driver for every dtype: what differs is how the operands are
// packed (an mt_packing: as they are, or rounded to bfloat16 in gemm_bf16.c) and the
// micro-kernel that reads the panels.
//
// Two kinds of jobs, taken one at a time by the threads of the calling team:
//   - packing: op(A) into MR-row micro-panels and op(B) into NR-column micro-panels, whole
//     (every k block), a job per panel (or group of panels) over all k (or a k slice of a
//     lone group). The column sums of B (the bias gradient) are taken in the same pass.
//   - tiles: output macro-tiles (a few MR-row and NR-column panels): for each k block in
//     order, for each column panel, for each row panel, the kernel.
// Every B job comes first, then each row of macro-tiles right after the A jobs of the
// panels it reads; a tile waits for the packing jobs of its own panels only (ready flags
// in the workspace), so packing overlaps the tiles and no barrier waits for the slowest
// packing job. Several independent products (a layer's dW and dX) share one hand-out and
// its closing barrier. Every element of C is reduced over k in increasing order, in
// the same k blocks and by the same kernel variant whatever the tile shapes, and by
// exactly one thread: results are bit-identical on any number of threads, and a thread
// that is descheduled holds up at most the tile it holds, not a fixed share of the work.
// Operands that gain nothing from a packed copy are read in place (see plan).
#define MT_REAL_SOURCE
#include "gemm.h"
#include "activation.h"
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static const FN(mt_packing) FN(packing_real);

// The micro-kernels of isa and how their operands are packed
static const FN(mt_kernel) *kernel_for(int isa, int bf16, const FN(mt_packing) **fmt) {
    *fmt = &FN(packing_real);
#if !MT_DOUBLE
    if (bf16) {
        *fmt = &mt_packing_bf16_emulated;
#if defined(__x86_64__) || defined(_M_X64)
        if (isa >= MT_ISA_AVX512_BF16) {
            *fmt = &mt_packing_bf16_pairs;
            return &mt_kernel_avx512_bf16;
        }
#endif
    }
#endif
    (void)bf16;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa >= MT_ISA_AVX512) return &FN(mt_kernel_avx512);
    if (isa == MT_ISA_AVX2) return &FN(mt_kernel_avx2);
#endif
    (void)isa;
    return &FN(mt_kernel_generic);
}

// Below this many multiply-adds a product is one macro-tile: a second thread saves less
// than handing out tiles costs.
#define GEMM_SPLIT_FLOPS (1 << 18)
// lanes (columns of a row-major op(B), rows of a transposed op(A)) one packing job takes
// when they are contiguous in the source: rows read a kilobyte at a time rather than a
// few cache lines per row, rows pages apart
#define PACK_LANES 256
// columns of an in-place B one column-sums job takes
#define SUM_COLUMNS 256

// A packed copy of op(A) is kept below this size; a larger one is read in place (it is a
// whole batch of a layer's input, transposed: the packed copy would double its memory)
#define PACK_A_BYTES (8 << 20)

static size_t aligned_elems(int64_t n) {
    return (size_t)round_up(n, MT_ALIGN / sizeof(real));
}

static int a_fits(const FN(mt_kernel) *ker, int64_t M, int64_t K) {
    return round_up(M, ker->mr) * K * (int64_t)sizeof(real) <= PACK_A_BYTES;
}

// words per lane of K values packed in fmt
static int64_t k_words(const FN(mt_packing) *fmt, int64_t K) {
    return round_up(K, fmt->k_align) / fmt->k_per_word;
}

size_t FN(mt_gemm_pack_elems)(int64_t M, int64_t N, int64_t K) {
    size_t most = 0;
    for (int bf16 = 0; bf16 <= !MT_DOUBLE; bf16++)
        for (int isa = 0; isa <= MT_ISA_AVX512_BF16; isa++) {
            const FN(mt_packing) *fmt;
            const FN(mt_kernel) *ker = kernel_for(isa, bf16, &fmt);
            const int64_t kw = k_words(fmt, K);
            const int a = fmt->always || a_fits(ker, M, K);
            const size_t need = (a ? aligned_elems(round_up(M, ker->mr) * kw) : 0) +
                                aligned_elems(kw * round_up(N, ker->nr));
            most = need > most ? need : most;
        }
    return most;
}

static inline int64_t kw(const FN(mt_plan) *P, int64_t k) { return k / P->fmt->k_per_word; }

// The jobs that pack op(B) into P->Bp
static void plan_b_jobs(FN(mt_plan) *P, int team) {
    const FN(mt_gemm_op) *op = &P->op;
    const int64_t K = op->K;
    P->b_per = op->trans_b ? 1 : PACK_LANES / P->ker->nr;
    const int64_t groups = K > 0 ? (P->cp + P->b_per - 1) / P->b_per : 0;
    // a row-major B of one group (a weight matrix of a few hundred columns) would be
    // packed by one thread while the others wait: its rows are split between the team
    // instead, whole rows still read in one sweep
    P->b_slices = P->fmt->slice_b && !op->trans_b && groups < team && K >= 2 * team ? team : 1;
    P->b_jobs = groups * P->b_slices;
}

// Which operands to pack, where, and the macro-tiles for a team of `team` threads.
static real *plan_op(FN(mt_plan) *P, const FN(mt_kernel) *ker, const FN(mt_packing) *fmt,
                     const FN(mt_gemm_op) *op, real *pack, int team) {
    const int64_t M = op->M, N = op->N, K = op->K;
    *P = (FN(mt_plan)){.ker = ker, .fmt = fmt, .op = *op, .kc = fmt->kc ? fmt->kc : ker->kc};
    if (M <= 0 || N <= 0) return pack;
    P->Mp = round_up(M, ker->mr);
    P->Np = round_up(N, ker->nr);
    P->rp = P->Mp / ker->mr;
    P->cp = P->Np / ker->nr;
    const int64_t words = k_words(fmt, K);
    if (fmt->always) {
        P->pack_a = P->pack_b = 1;
    } else {
        // B is packed to transpose it, or when more than one block of A rows reads it: one
        // block reads each row of B once, as well in place as from a packed copy.
        // A is packed when reused by more than one column panel if its rows are 4 KB apart
        // (then the MR rows a tile reads compete for one L1 set), or to transpose it unless
        // it fits in L1 (a tile then broadcasts from MR adjacent elements per k).
        const int64_t a_stride = (op->trans_a ? M : K) * (int64_t)sizeof(real);
        const int a_aliases = a_stride % 4096 == 0;
        const int a_small = M * K * (int64_t)sizeof(real) <= 32768;
        P->pack_a = K > 0 && N > ker->nr && (a_aliases || (op->trans_a && !a_small)) &&
                    a_fits(ker, M, K);
        P->pack_b = K > 0 && (op->trans_b || M > ker->mc);
    }
    if (op->packed_b) P->pack_b = 1;
    if (P->pack_a) {
        P->Ap = pack;
        pack += aligned_elems(P->Mp * words);
        P->a_per = fmt->group_a && op->trans_a ? PACK_LANES / ker->mr : 1;
        P->a_jobs = K > 0 ? (P->rp + P->a_per - 1) / P->a_per : 0;
    }
    if (P->pack_b && op->packed_b) {
        P->Bp = (real *)op->packed_b;
    } else if (P->pack_b) {
        P->Bp = pack;
        pack += aligned_elems(words * P->Np);
        plan_b_jobs(P, team);
    }
    // column sums no packing job takes: of an in-place B, a pre-packed one, or K == 0
    if (P->b_jobs == 0 && op->ep && op->ep->b_sums)
        P->sum_jobs = (N + SUM_COLUMNS - 1) / SUM_COLUMNS;
    // the A block of a tile stays in L2 and its B panels in L3; then the tiles are split
    // until there are a few per thread, so that they balance when one thread is slowed
    int64_t tr = min64((ker->mc + ker->mr - 1) / ker->mr, P->rp);
    int64_t tc = min64(ker->nc / ker->nr, P->cp);
    if ((double)M * N * K < GEMM_SPLIT_FLOPS) {
        tr = P->rp;
        tc = P->cp;
    } else {
        while ((P->rp + tr - 1) / tr * ((P->cp + tc - 1) / tc) < 2 * team) {
            if (tr >= tc && tr > 1) tr = (tr + 1) / 2;
            else if (tc > 1) tc = (tc + 1) / 2;
            else break;
        }
    }
    P->tr = tr;
    P->tc = tc;
    P->tiles_m = (P->rp + tr - 1) / tr;
    P->tiles_n = (P->cp + tc - 1) / tc;
    P->tiles = P->tiles_m * P->tiles_n;
    return pack;
}

// Sets *flag when x (h rows of w, row stride ld) holds an infinity or a NaN: on a tile just
// stored, in this core's caches, rather than a pass over the whole gradient after it. The
// exponent test of mt_all_finite, in integers: it vectorises where a float sum may not.
#if MT_DOUBLE
typedef uint64_t real_bits;
#define EXP_BITS 0x7ff0000000000000u
#define EXP_ONE 0x0010000000000000u
#else
typedef uint32_t real_bits;
#define EXP_BITS 0x7f800000u
#define EXP_ONE 0x00800000u
#endif
MT_TARGET_CLONES
void FN(mt_flag_nonfinite)(const real *x, int64_t h, int64_t w, int64_t ld, int *flag) {
    real_bits bad = 0;
    for (int64_t i = 0; i < h; i++) {
        const real_bits *u = (const real_bits *)(const void *)(x + i * ld);
        for (int64_t j = 0; j < w; j++) bad |= (u[j] & EXP_BITS) + EXP_ONE;
    }
    if (bad >> (8 * sizeof(real_bits) - 1)) {
#pragma omp atomic write
        *flag = 1;
    }
}

// NR-column panels [q0, q1) of op(B) as they are, every k block (k0 == 0, k1 == K). With
// ep->b_sums, adds their column sums to it, in k order, from the packed copy.
static void pack_b_real(const FN(mt_plan) *P, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    const FN(mt_kernel) *ker = P->ker;
    const FN(mt_gemm_op) *op = &P->op;
    const int nr = ker->nr;
    const int64_t N = op->N, K = op->K;
    (void)k0, (void)k1;
    for (int64_t pc = 0; pc < K; pc += P->kc) {
        const int64_t kc = min64(P->kc, K - pc);
        real *Bp = P->Bp + pc * P->Np;
        if (op->trans_b) { // op(B)(k, j) = B[j*K + k]
            for (int64_t q = q0; q < q1; q++) {
                const int64_t j = q * nr;
                ker->pack_bt(op->B + j * K + pc, K, min64(nr, N - j), kc, Bp + q * kc * nr);
            }
        } else {
            ker->pack_b_rows(op->B + pc * N + q0 * nr, N, min64(N, q1 * nr) - q0 * nr, kc,
                             Bp + q0 * kc * nr);
        }
    }
    if (!op->ep || !op->ep->b_sums) return;
    for (int64_t q = q0; q < q1; q++) {
        const int64_t j = q * nr, w = min64(nr, N - j);
        real *sums = (real *)op->ep->b_sums + j;
        for (int64_t c = 0; c < w; c++) sums[c] = 0;
        for (int64_t pc = 0; pc < K; pc += P->kc) {
            const int64_t kc = min64(P->kc, K - pc);
            const real *panel = P->Bp + pc * P->Np + q * kc * nr;
            for (int64_t k = 0; k < kc; k++)
                for (int64_t c = 0; c < w; c++) sums[c] += panel[k * nr + c];
        }
        if (op->ep->nonfinite) FN(mt_flag_nonfinite)(sums, 1, w, w, op->ep->nonfinite);
    }
}

// sums[j0, j1) = Σ_k B[k, j0:j1] in k order: a lane per column, so every clone (wider
// vectors) adds in the same order
MT_TARGET_CLONES
static void column_sums_range(const real *restrict B, int64_t K, int64_t N, int64_t j0,
                              int64_t j1, real *restrict sums) {
    for (int64_t j = j0; j < j1; j++) sums[j] = 0;
    for (int64_t k = 0; k < K; k++)
        for (int64_t j = j0; j < j1; j++) sums[j] += B[k * N + j];
}

// MR-row panels [p0, p1) of op(A) as they are, every k block
static void pack_a_real(const FN(mt_plan) *P, int64_t p0, int64_t p1) {
    const FN(mt_kernel) *ker = P->ker;
    const FN(mt_gemm_op) *op = &P->op;
    const int mr = ker->mr;
    const int64_t M = op->M, K = op->K;
    // op(A)(i, k) = A[i*rs + k*cs]
    const int64_t rs = op->trans_a ? 1 : K, cs = op->trans_a ? M : 1;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t i = p * mr;
        for (int64_t pc = 0; pc < K; pc += P->kc) {
            const int64_t kc = min64(P->kc, K - pc);
            ker->pack_a(op->A + i * rs + pc * cs, rs, cs, min64(mr, M - i), kc,
                        P->Ap + pc * P->Mp + p * kc * mr);
        }
    }
}

static const FN(mt_packing) FN(packing_real) = {
    .kc = 0, .k_align = 1, .k_per_word = 1, .pack_a = pack_a_real, .pack_b = pack_b_real};

// packing job j of the plan: A panels, then B panels (groups, k slices), then column sums
// no packing job takes
static void pack_job(const FN(mt_plan) *P, int64_t j) {
    if (j < P->a_jobs) {
        P->fmt->pack_a(P, j * P->a_per, min64(P->rp, (j + 1) * P->a_per));
        return;
    }
    j -= P->a_jobs;
    const FN(mt_gemm_op) *op = &P->op;
    if (j < P->b_jobs) {
        const int64_t s = j % P->b_slices, g = j / P->b_slices, K = op->K;
        const int64_t units = round_up(K, P->fmt->k_align) / P->fmt->k_align;
        const int64_t k0 = P->fmt->k_align * (units * s / P->b_slices);
        const int64_t k1 = min64(K, P->fmt->k_align * (units * (s + 1) / P->b_slices));
        P->fmt->pack_b(P, g * P->b_per, min64(P->cp, (g + 1) * P->b_per), k0, k1);
        return;
    }
    j -= P->b_jobs;
    const int64_t j0 = j * SUM_COLUMNS, j1 = min64(op->N, j0 + SUM_COLUMNS);
    real *sums = op->ep->b_sums;
    if (op->trans_b) { // op(B)(k, j) = B[j*K + k]: a pre-packed Bᵀ, or K == 0
        for (int64_t c = j0; c < j1; c++) {
            sums[c] = 0;
            for (int64_t k = 0; k < op->K; k++) sums[c] += op->B[c * op->K + k];
        }
    } else {
        column_sums_range(op->B, op->K, op->N, j0, j1, sums);
    }
    if (op->ep->nonfinite)
        FN(mt_flag_nonfinite)(sums + j0, 1, j1 - j0, j1 - j0, op->ep->nonfinite);
}

// The epilogues no micro-kernel keeps in registers, on the tile the kernel just stored.
void FN(mt_tile_epilogue)(const FN(mt_tile) *t) {
    for (int64_t i = 0; i < t->m; i++) {
        real *c = t->c + i * t->ldc;
        if (t->ep == MT_EP_FORWARD) {
            real *o = t->out + i * t->ldc;
            for (int64_t j = 0; j < t->n; j++) o[j] = act_forward(t->act, t->alpha, c[j]);
        } else {
            const real *z = t->z + i * t->ldc, *a = t->za + i * t->ldc;
            for (int64_t j = 0; j < t->n; j++) c[j] *= act_derivative(t->act, t->alpha, z[j], a[j]);
        }
    }
}

// Macro-tile `tile` of the plan: its row panels [p0, p1) and column panels [q0, q1), every
// k block in order, column panel by column panel so that a B micro-panel stays in L1
static void run_tile(const FN(mt_plan) *P, int64_t tile) {
    const FN(mt_kernel) *ker = P->ker;
    const FN(mt_packing) *fmt = P->fmt;
    const FN(mt_gemm_op) *op = &P->op;
    const int mr = ker->mr, nr = ker->nr;
    const int64_t M = op->M, N = op->N, K = op->K;
    const int64_t p0 = tile / P->tiles_n * P->tr, p1 = min64(P->rp, p0 + P->tr);
    const int64_t q0 = tile % P->tiles_n * P->tc, q1 = min64(P->cp, q0 + P->tc);
    const mt_epilogue *ep = op->ep;
    // op(A)(i, k) at A[i*a_rs + k*a_cs] when read in place
    const int64_t a_rs = op->trans_a ? 1 : K, a_cs = op->trans_a ? M : 1;
    FN(mt_kernel_fn) kernel = P->pack_a && P->pack_b ? ker->packed : ker->strided;
    // K == 0 still runs one empty k block: C = 0 (+ C), then the epilogue
    for (int64_t pc = 0; pc < K || pc == 0; pc += P->kc) {
        const int64_t kc = min64(P->kc, K - pc), kcp = round_up(kc, fmt->k_align);
        const int last = pc + kc >= K;
        FN(mt_tile) t = {.kc = kcp, .ldc = N, .load_c = op->accumulate || pc > 0,
                         .ep = last && ep ? ep->kind : MT_EP_NONE};
        if (ep) {
            t.act = ep->act;
            t.alpha = (real)ep->alpha;
        }
        // tanh' and sigmoid' (1 - a², a(1 - a)) are contracted into FMAs by the kernels
        // that have them: a format whose every ISA must round alike applies them after the
        // kernel, by the one function that every ISA shares
        const int after = fmt->dact_after && t.ep == MT_EP_DACT &&
                          (t.act == MT_ACT_TANH || t.act == MT_ACT_SIGMOID);
        const int ep_kind = t.ep;
        if (after) t.ep = MT_EP_NONE;
        const int fused = !after && mt_ep_in_registers(t.ep, t.act);
        for (int64_t q = q0; q < q1; q++) {
            const int64_t j = q * nr;
            t.n = min64(nr, N - j);
            FN(mt_kernel_fn) run = t.n <= ker->vl && !fmt->always ? ker->narrow : kernel;
            if (P->pack_b) {
                t.b = P->Bp + kw(P, pc) * P->Np + q * kw(P, kcp) * nr;
                t.ldb = nr;
            } else {
                t.b = op->B + pc * N + j;
                t.ldb = N;
            }
            for (int64_t p = p0; p < p1; p++) {
                const int64_t i = p * mr;
                t.m = min64(mr, M - i);
                if (P->pack_a) {
                    t.a = P->Ap + kw(P, pc) * P->Mp + p * kw(P, kcp) * mr;
                    t.a_rs = 1;
                    t.a_cs = mr;
                } else {
                    t.a = op->A + i * a_rs + pc * a_cs;
                    t.a_rs = a_rs;
                    t.a_cs = a_cs;
                }
                const int64_t off = i * N + j;
                t.c = op->C + off;
                if (t.ep == MT_EP_FORWARD) {
                    t.bias = ep->bias ? (const real *)ep->bias + j : NULL;
                    t.out = (real *)ep->out + off;
                } else if (ep_kind == MT_EP_DACT) {
                    t.z = (const real *)ep->z + off;
                    t.za = (const real *)ep->a + off;
                }
                run(&t);
                if (after) {
                    t.ep = ep_kind;
                    FN(mt_tile_epilogue)(&t);
                    t.ep = MT_EP_NONE;
                } else if (t.ep != MT_EP_NONE && !fused) {
                    FN(mt_tile_epilogue)(&t);
                }
            }
        }
    }
    // the finished macro-tile, still in this core's caches: one check per tile
    if (ep && ep->nonfinite) {
        const int64_t i0 = p0 * mr, j0 = q0 * nr;
        FN(mt_flag_nonfinite)(op->C + i0 * N + j0, min64(M, p1 * mr) - i0,
                              min64(N, q1 * nr) - j0, N, ep->nonfinite);
    }
}

enum { MAX_OPS = 2 };

// packing job j of the n products P: their B jobs first, then their A panels. A B job (up
// to PACK_LANES columns over every k, and their sums) is many A panels' work: taken
// last, it would leave the other threads waiting at the barrier for one thread.
static void pack_job_of(const FN(mt_plan) *P, int n, int64_t j) {
    for (int o = 0; o < n; j -= P[o].b_jobs, o++)
        if (j < P[o].b_jobs) {
            pack_job(&P[o], P[o].a_jobs + j);
            return;
        }
    int o = 0;
    while (j >= P[o].a_jobs) j -= P[o].a_jobs, o++;
    pack_job(&P[o], j);
}

// Returns once the packing jobs [j0, j1) are done. Spins briefly, then yields the core:
// the thread packing them may be waiting for it.
static void wait_ready(int *ready, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++)
        for (int spins = 0; !__atomic_load_n(&ready[j], __ATOMIC_ACQUIRE); spins++) {
            if (spins < 2000) {
#if defined(__x86_64__) || defined(_M_X64)
                _mm_pause();
#endif
            } else {
                sched_yield();
            }
        }
}

// macro-tile (or column-sums) job j of P; with ready, once the packing jobs of the panels
// it reads are done
static void tile_job(const FN(mt_plan) *P, int64_t j, int *ready) {
    if (j >= P->tiles) {
        pack_job(P, P->a_jobs + P->b_jobs + j - P->tiles);
        return;
    }
    if (ready) {
        const int64_t p0 = j / P->tiles_n * P->tr, p1 = min64(P->rp, p0 + P->tr);
        const int64_t q0 = j % P->tiles_n * P->tc, q1 = min64(P->cp, q0 + P->tc);
        if (P->b_jobs)
            wait_ready(ready, P->b_first + q0 / P->b_per * P->b_slices,
                       P->b_first + ((q1 - 1) / P->b_per + 1) * P->b_slices);
        if (P->a_jobs)
            wait_ready(ready, P->a_first + p0 / P->a_per,
                       P->a_first + (p1 - 1) / P->a_per + 1);
    }
    run_tile(P, j);
}

// tile (or column-sums) job j of the products P (in order)
static void tile_job_of(const FN(mt_plan) *P, int64_t j) {
    int o = 0;
    while (j >= P[o].tiles + P[o].sum_jobs) j -= P[o].tiles + P[o].sum_jobs, o++;
    tile_job(&P[o], j, NULL);
}

// A jobs of P that row r of its macro-tiles reads
static int64_t a_jobs_through(const FN(mt_plan) *P, int64_t r) {
    if (!P->a_jobs) return 0;
    const int64_t p1 = min64(P->rp, (r + 1) * P->tr);
    return (p1 + P->a_per - 1) / P->a_per;
}

// Job j of the n products P in the order one loop takes them: every product's B jobs
// (each is many A panels' work: taken late, it would hold up every tile that reads it),
// then product by product each row of macro-tiles right after the A jobs of the panels
// it reads, then its column sums: a thread packs the next row's panels while another
// computes on the last ones. With ready, a packing job marks itself done there and a
// tile waits for the packing jobs it reads. Returns 1 for a tile or column-sums job.
static int run_job(const FN(mt_plan) *P, int n, int64_t j, int *ready) {
    const int64_t b_jobs = P[n - 1].b_first + P[n - 1].b_jobs;
    if (j < b_jobs) {
        pack_job_of(P, n, j);
        if (ready) __atomic_store_n(&ready[j], 1, __ATOMIC_RELEASE);
        return 0;
    }
    j -= b_jobs;
    int o = 0;
    while (j >= P[o].a_jobs + P[o].tiles + P[o].sum_jobs)
        j -= P[o].a_jobs + P[o].tiles + P[o].sum_jobs, o++;
    P += o;
    if (j >= P->a_jobs + P->tiles) {
        tile_job(P, j - P->a_jobs, NULL);
        return 1;
    }
    for (int64_t r = 0;; r++) {
        const int64_t first = a_jobs_through(P, r) + r * P->tiles_n; // row r's first tile
        if (j < first) { // an A job: r rows of tiles come before it
            const int64_t a = j - r * P->tiles_n;
            pack_job(P, a);
            if (ready) __atomic_store_n(&ready[P->a_first + a], 1, __ATOMIC_RELEASE);
            return 0;
        }
        if (j < first + P->tiles_n) {
            tile_job(P, r * P->tiles_n + j - first, ready);
            return 1;
        }
    }
}

void FN(mt_gemm_run)(const FN(mt_gemm_op) *ops, int n, const mt_gemm_ws *ws) {
    const FN(mt_packing) *fmt;
    const FN(mt_kernel) *ker = kernel_for(ws->isa, ws->bf16, &fmt);
    const int team = omp_get_num_threads();
    FN(mt_plan) P[MAX_OPS];
    real *pack = ws->pack;
    int64_t jobs = 0, tiles = 0;
    for (int o = 0; o < n; o++) {
        pack = plan_op(&P[o], ker, fmt, &ops[o], pack, team);
        P[o].b_first = jobs; // pack_job_of's order: every product's B jobs, then the A jobs
        jobs += P[o].b_jobs;
        tiles += P[o].tiles + P[o].sum_jobs;
    }
    for (int o = 0; o < n; o++) {
        P[o].a_first = jobs;
        jobs += P[o].a_jobs;
    }
#if defined(__x86_64__) || defined(_M_X64)
    // per thread; restored before returning
    const unsigned csr = _mm_getcsr();
    if (fmt->ftz) _mm_setcsr(csr | 0x8040u);
#endif
    mt_gemm_sync *s = ws->sync;
    const int64_t total = jobs + tiles;
    if (team == 1) {
        // the same order without worksharing, whose set-up costs show on a small iteration
        for (int64_t j = 0; j < total; j++) run_job(P, n, j, NULL);
    } else if (jobs > 0 && s && jobs <= MT_GEMM_READY) {
        // Jobs handed out one at a time in run_job's order (a counter, not a worksharing
        // loop, so that the order is this one whatever the OpenMP runtime): a tile waits
        // only for packing jobs handed out before it, whose threads never wait, so no
        // thread waits for a thread that waits. The thread that finishes the last tile
        // clears the flags, the one that takes the counter last resets it, both before
        // the barrier that lets any thread into the next product.
        for (;;) {
            const int64_t j = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED);
            if (j >= total) {
                if (j == total + team - 1) s->next = 0;
                break;
            }
            if (run_job(P, n, j, s->ready) &&
                __atomic_add_fetch(&s->done, 1, __ATOMIC_ACQ_REL) == tiles) {
                for (int64_t i = 0; i < jobs; i++) s->ready[i] = 0;
                s->done = 0;
            }
        }
#pragma omp barrier
    } else {
        // no room for the flags: every packing job, a barrier, then the tiles
        if (jobs > 0) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t j = 0; j < jobs; j++) pack_job_of(P, n, j);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < tiles; j++) tile_job_of(P, j);
    }
#if defined(__x86_64__) || defined(_M_X64)
    if (fmt->ftz) _mm_setcsr(csr);
#endif
}

void FN(mt_gemm_pack_b_rows)(const FN(mt_gemm_op) *op, const mt_gemm_ws *ws, int64_t r0,
                             int64_t r1, void *dst) {
    const FN(mt_packing) *fmt;
    const FN(mt_kernel) *ker = kernel_for(ws->isa, ws->bf16, &fmt);
    FN(mt_gemm_op) bare = *op;
    bare.ep = NULL;
    bare.packed_b = NULL;
    FN(mt_plan) P;
    plan_op(&P, ker, fmt, &bare, dst, 1);
    if (bare.M <= 0 || bare.N <= 0 || bare.K <= 0) return;
    P.Bp = dst;
    plan_b_jobs(&P, 1);
#if defined(__x86_64__) || defined(_M_X64)
    const unsigned csr = _mm_getcsr();
    if (fmt->ftz) _mm_setcsr(csr | 0x8040u);
#endif
    if (!op->trans_b) { // the rows are k: every group of panels (as the jobs take them)
        for (int64_t q = 0; q < P.cp; q += P.b_per)
            fmt->pack_b(&P, q, min64(P.cp, q + P.b_per), r0, min64(r1, bare.K));
    } else { // the rows are lanes: their panels, one at a time, every k
        for (int64_t q = r0 / ker->nr; q < P.cp && q * ker->nr < r1; q++)
            fmt->pack_b(&P, q, q + 1, 0, bare.K);
    }
#if defined(__x86_64__) || defined(_M_X64)
    if (fmt->ftz) _mm_setcsr(csr);
#endif
}

void FN(mt_gemm_pack_b)(const FN(mt_gemm_op) *op, const mt_gemm_ws *ws, void *dst) {
    FN(mt_gemm_pack_b_rows)(op, ws, 0, op->trans_b ? op->N : op->K, dst);
}

#if !MT_DOUBLE
size_t mt_gemm_packed_b_words_bf16(int isa, int64_t K, int64_t N) {
    const mt_packing_f32 *fmt;
    const mt_kernel_f32 *ker = kernel_for(isa, 1, &fmt);
    return aligned_elems(k_words(fmt, K) * round_up(N, ker->nr));
}

int mt_gemm_pack_unit_bf16(int isa, int trans_b) {
    const mt_packing_f32 *fmt;
    const mt_kernel_f32 *ker = kernel_for(isa, 1, &fmt);
    return trans_b ? ker->nr : fmt->k_align;
}

void mt_gemm_pack_b_rows_bf16(int isa, int trans_b, int64_t K, int64_t N, const float *B,
                              int64_t r0, int64_t r1, uint32_t *dst) {
    const mt_gemm_op_f32 op = {.trans_b = trans_b, .M = 1, .N = N, .K = K, .B = B};
    const mt_gemm_ws ws = {.isa = isa, .bf16 = 1};
    mt_gemm_pack_b_rows_f32(&op, &ws, r0, r1, dst);
}
#endif

// C = op(A) op(B) (+ C) on a team of its own, with a packing buffer of its own; with
// prepack_b, op(B) packed first into a buffer of its own, which the product then reads
static int gemm_alloc(int isa, int bf16, const FN(mt_gemm_op) *op, int prepack_b) {
    const size_t bytes = FN(mt_gemm_pack_elems)(op->M, op->N, op->K) * sizeof(real);
    const size_t size = (bytes + MT_ALIGN) / MT_ALIGN * MT_ALIGN;
    real *pack = aligned_alloc(MT_ALIGN, size);
    real *packed_b = prepack_b ? aligned_alloc(MT_ALIGN, size) : NULL;
    if (!pack || (prepack_b && !packed_b)) {
        free(pack);
        free(packed_b);
        return MT_ERR_NO_MEMORY;
    }
    mt_gemm_sync sync = {0};
    const mt_gemm_ws ws = {.isa = isa, .pack = pack, .bf16 = bf16, .sync = &sync};
    FN(mt_gemm_op) run = *op;
    if (prepack_b) {
        FN(mt_gemm_pack_b)(op, &ws, packed_b);
        run.packed_b = packed_b;
    }
    mt_team = mt_team_size(0);
    const int parallel = mt_team > 1 && (double)op->M * op->N * op->K >= GEMM_SPLIT_FLOPS;
#pragma omp parallel num_threads(mt_team) if (parallel)
    FN(mt_gemm_run)(&run, 1, &ws);
    mt_team_used(parallel ? mt_team : 1);
    free(pack);
    free(packed_b);
    return MT_OK;
}

int FN(mt_gemm_alloc)(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      const real *A, const real *B, real *C, int accumulate) {
    const FN(mt_gemm_op) op = {trans_a, trans_b, M, N, K, A, B, C, accumulate, NULL, NULL};
    return gemm_alloc(isa, 0, &op, 0);
}

#if !MT_DOUBLE
int mt_gemm_alloc_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                       const float *A, const float *B, float *C, int accumulate,
                       int prepack_b) {
    const mt_gemm_op_f32 op = {trans_a, trans_b, M, N, K, A, B, C, accumulate, NULL, NULL};
    return gemm_alloc(isa, 1, &op, prepack_b);
}
#endif
