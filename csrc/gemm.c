// GEMM driver in the BLIS design: C (M, N) = op(A) (M, K) · op(B) (K, N), K in blocks of
// KC, register tiles of MR x NR from the micro-kernels (gemm_kernel.h, the only
// ISA-specific code).
//
// Two phases, each a worksharing loop of the calling team:
//   1. pack: op(A) into MR-row micro-panels and op(B) into NR-column micro-panels, whole
//      (every k block), a job per panel (or group of B panels) over all k; jobs taken
//      dynamically. The column sums of B (the bias gradient) are taken in the same pass.
//   2. tiles: output macro-tiles (a few MR-row and NR-column panels), taken dynamically:
//      for each k block in order, for each column panel, for each row panel, the kernel.
// Several independent products (a layer's dW and dX) share the two phases, so they cost
// two barriers together. Every element of C is reduced over k in increasing order, in
// the same k blocks and by the same kernel variant whatever the tile shapes, and by
// exactly one thread: results are bit-identical on any number of threads, and a thread
// that is descheduled holds up at most the tile it holds, not a fixed share of the work.
// Operands that gain nothing from a packed copy are read in place (see plan).
#define MT_REAL_SOURCE
#include "gemm.h"
#include "activation.h"
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static const FN(mt_kernel) *kernel_for(int isa) {
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
// columns of op(B) one packing job takes when B is row-major: rows read a kilobyte at a
// time rather than a few cache lines per row, rows pages apart
#define PACK_B_COLUMNS 256
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

size_t FN(mt_gemm_pack_elems)(int64_t M, int64_t N, int64_t K) {
    size_t most = 0;
    for (int isa = 0; isa <= MT_ISA_AVX512; isa++) {
        const FN(mt_kernel) *ker = kernel_for(isa);
        size_t need = (a_fits(ker, M, K) ? aligned_elems(round_up(M, ker->mr) * K) : 0) +
                      aligned_elems(K * round_up(N, ker->nr));
        most = need > most ? need : most;
    }
#if !MT_DOUBLE
    const size_t bf16 = mt_gemm_pack_elems_bf16(M, N, K);
    most = bf16 > most ? bf16 : most;
#endif
    return most;
}

// One product laid out for the two phases. Packed op(A): k block [pc, pc+kc) at
// Ap + pc*Mp, row panel p at + p*MR*kc (kc x MR); packed op(B): Bp + pc*Np + q*NR*kc.
typedef struct {
    const FN(mt_kernel) *ker;
    FN(mt_gemm_op) op;
    int pack_a, pack_b;
    real *Ap, *Bp;
    int64_t Mp, Np;           // M, N rounded up to MR, NR
    int64_t rp, cp;           // row, column panels
    int64_t tr, tc;           // row, column panels per macro-tile
    int64_t tiles_m, tiles_n; // macro-tiles down, across
    int64_t a_jobs, b_jobs, sum_jobs, tiles;
} plan;

// Which operands to pack, where, and the macro-tiles for a team of `team` threads.
static real *plan_op(plan *P, const FN(mt_kernel) *ker, const FN(mt_gemm_op) *op, real *pack,
                     int team) {
    const int64_t M = op->M, N = op->N, K = op->K;
    *P = (plan){.ker = ker, .op = *op};
    if (M <= 0 || N <= 0) return pack;
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
    P->Mp = round_up(M, ker->mr);
    P->Np = round_up(N, ker->nr);
    P->rp = P->Mp / ker->mr;
    P->cp = P->Np / ker->nr;
    if (P->pack_a) {
        P->Ap = pack;
        pack += aligned_elems(P->Mp * K);
        P->a_jobs = P->rp;
    }
    if (P->pack_b) {
        P->Bp = pack;
        pack += aligned_elems(K * P->Np);
        P->b_jobs = op->trans_b ? P->cp : (N + PACK_B_COLUMNS - 1) / PACK_B_COLUMNS;
    } else if (op->ep && op->ep->b_sums) {
        P->sum_jobs = (N + SUM_COLUMNS - 1) / SUM_COLUMNS;
    }
    // the A block of a tile stays in L2 and its B panels in L3; then the tiles are split
    // until there are a few per thread, so that they balance when one thread is slowed
    int64_t tr = (ker->mc + ker->mr - 1) / ker->mr, tc = ker->nc / ker->nr;
    tr = tr < P->rp ? tr : P->rp;
    tc = tc < P->cp ? tc : P->cp;
    if ((double)M * N * K < GEMM_SPLIT_FLOPS) {
        tr = P->rp;
        tc = P->cp;
    } else {
        for (;;) {
            const int64_t tiles = (P->rp + tr - 1) / tr * ((P->cp + tc - 1) / tc);
            if (tiles >= 2 * team) break;
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

// NR-column panels [q0, q1) of op(B), every k block. With ep->b_sums, adds their column
// sums to it, in k order, from the packed copy.
static void pack_b(const plan *P, int64_t q0, int64_t q1) {
    const FN(mt_kernel) *ker = P->ker;
    const FN(mt_gemm_op) *op = &P->op;
    const int nr = ker->nr;
    const int64_t N = op->N, K = op->K;
    for (int64_t pc = 0; pc < K; pc += ker->kc) {
        const int64_t kc = min64(ker->kc, K - pc);
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
        for (int64_t pc = 0; pc < K; pc += ker->kc) {
            const int64_t kc = min64(ker->kc, K - pc);
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

// MR-row panel p of op(A), every k block
static void pack_a(const plan *P, int64_t p) {
    const FN(mt_kernel) *ker = P->ker;
    const FN(mt_gemm_op) *op = &P->op;
    const int mr = ker->mr;
    const int64_t M = op->M, K = op->K, i = p * mr;
    // op(A)(i, k) = A[i*rs + k*cs]
    const int64_t rs = op->trans_a ? 1 : K, cs = op->trans_a ? M : 1;
    for (int64_t pc = 0; pc < K; pc += ker->kc) {
        const int64_t kc = min64(ker->kc, K - pc);
        ker->pack_a(op->A + i * rs + pc * cs, rs, cs, min64(mr, M - i), kc,
                    P->Ap + pc * P->Mp + p * kc * mr);
    }
}

// packing job j of the plan: A panels, then B panels (groups), then in-place column sums
static void pack_job(const plan *P, int64_t j) {
    if (j < P->a_jobs) {
        pack_a(P, j);
        return;
    }
    j -= P->a_jobs;
    if (j < P->b_jobs) {
        if (P->op.trans_b) {
            pack_b(P, j, j + 1);
        } else {
            const int64_t per = PACK_B_COLUMNS / P->ker->nr;
            pack_b(P, j * per, min64(P->cp, (j + 1) * per));
        }
        return;
    }
    j -= P->b_jobs;
    const int64_t j0 = j * SUM_COLUMNS;
    const int64_t j1 = min64(P->op.N, j0 + SUM_COLUMNS);
    column_sums_range(P->op.B, P->op.K, P->op.N, j0, j1, P->op.ep->b_sums);
    if (P->op.ep->nonfinite)
        FN(mt_flag_nonfinite)((const real *)P->op.ep->b_sums + j0, 1, j1 - j0, j1 - j0,
                       P->op.ep->nonfinite);
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
static void run_tile(const plan *P, int64_t tile) {
    const FN(mt_kernel) *ker = P->ker;
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
    for (int64_t pc = 0; pc < K || pc == 0; pc += ker->kc) {
        const int64_t kc = min64(ker->kc, K - pc);
        const int last = pc + kc >= K;
        FN(mt_tile) t = {.kc = kc, .ldc = N, .load_c = op->accumulate || pc > 0,
                         .ep = last && ep ? ep->kind : MT_EP_NONE};
        if (ep) {
            t.act = ep->act;
            t.alpha = (real)ep->alpha;
        }
        const int fused = mt_ep_in_registers(t.ep, t.act);
        for (int64_t q = q0; q < q1; q++) {
            const int64_t j = q * nr;
            t.n = min64(nr, N - j);
            FN(mt_kernel_fn) run = t.n <= ker->vl ? ker->narrow : kernel;
            if (P->pack_b) {
                t.b = P->Bp + pc * P->Np + q * kc * nr;
                t.ldb = nr;
            } else {
                t.b = op->B + pc * N + j;
                t.ldb = N;
            }
            for (int64_t p = p0; p < p1; p++) {
                const int64_t i = p * mr;
                t.m = min64(mr, M - i);
                if (P->pack_a) {
                    t.a = P->Ap + pc * P->Mp + p * kc * mr;
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
                } else if (t.ep == MT_EP_DACT) {
                    t.z = (const real *)ep->z + off;
                    t.za = (const real *)ep->a + off;
                }
                run(&t);
                if (t.ep != MT_EP_NONE && !fused) FN(mt_tile_epilogue)(&t);
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
// to PACK_B_COLUMNS columns over every k, and their sums) is many A panels' work: taken
// last, it would leave the other threads waiting at the barrier for one thread.
static void pack_job_of(const plan *P, int n, int64_t j) {
    for (int o = 0; o < n; j -= P[o].b_jobs, o++)
        if (j < P[o].b_jobs) {
            pack_job(&P[o], P[o].a_jobs + j);
            return;
        }
    int o = 0;
    while (j >= P[o].a_jobs) j -= P[o].a_jobs, o++;
    pack_job(&P[o], j);
}

// tile (or column-sums) job j of the products P (in order)
static void tile_job_of(const plan *P, int64_t j) {
    int o = 0;
    while (j >= P[o].tiles + P[o].sum_jobs) j -= P[o].tiles + P[o].sum_jobs, o++;
    if (j < P[o].tiles) run_tile(&P[o], j);
    else pack_job(&P[o], P[o].a_jobs + P[o].b_jobs + j - P[o].tiles);
}

void FN(mt_gemm_run)(const FN(mt_gemm_op) *ops, int n, const mt_gemm_ws *ws) {
#if !MT_DOUBLE
    if (ws->bf16) {
        mt_gemm_run_bf16(ops, n, ws);
        return;
    }
#endif
    const FN(mt_kernel) *ker = kernel_for(ws->isa);
    const int team = omp_get_num_threads();
    plan P[MAX_OPS];
    real *pack = ws->pack;
    int64_t jobs = 0, tiles = 0;
    for (int o = 0; o < n; o++) {
        pack = plan_op(&P[o], ker, &ops[o], pack, team);
        jobs += P[o].a_jobs + P[o].b_jobs;
        tiles += P[o].tiles;
    }
    // tiles wait for the packed panels; column sums of an in-place B need no barrier.
    // One thread runs the same loops without worksharing, whose set-up costs show on a
    // small iteration.
    const int serial = team == 1;
    for (int o = 0; o < n; o++) tiles += P[o].sum_jobs;
    if (serial) {
        for (int64_t j = 0; j < jobs; j++) pack_job_of(P, n, j);
        for (int64_t j = 0; j < tiles; j++) tile_job_of(P, j);
        return;
    }
    if (jobs > 0) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < jobs; j++) pack_job_of(P, n, j);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < tiles; j++) tile_job_of(P, j);
}

int FN(mt_gemm_alloc)(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      const real *A, const real *B, real *C, int accumulate) {
    const size_t bytes = FN(mt_gemm_pack_elems)(M, N, K) * sizeof(real);
    real *pack = aligned_alloc(MT_ALIGN, (bytes + MT_ALIGN) / MT_ALIGN * MT_ALIGN);
    if (!pack) return MT_ERR_NO_MEMORY;
    const FN(mt_gemm_op) op = {trans_a, trans_b, M, N, K, A, B, C, accumulate, NULL};
    const mt_gemm_ws ws = {.isa = isa, .pack = pack};
    mt_team = mt_team_size(0);
    const int parallel = mt_team > 1 && (double)M * N * K >= GEMM_SPLIT_FLOPS;
#pragma omp parallel num_threads(mt_team) if (parallel)
    FN(mt_gemm_run)(&op, 1, &ws);
    mt_team_used(parallel ? mt_team : 1);
    free(pack);
    return MT_OK;
}
