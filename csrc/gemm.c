// GEMM driver in the BLIS design: C (M, N) = op(A) (M, K) · op(B) (K, N).
//
//   for jc in N by NC:                B block (KC x NC) packed once, shared
//     for pc in K by KC:
//       pack op(B)[pc:, jc:] into NR-column micro-panels (absorbs trans_b)
//       for ic in M by MC:
//         pack op(A)[ic:, pc:] into MR-row micro-panels (absorbs trans_a)
//         for each MR x NR tile of this block: micro-kernel (gemm_kernel.h)
//
// Threads split the tiles of each block (and the packing), never k: every element of C
// is reduced over k in increasing order by exactly one thread, with a blocking that does
// not depend on the thread count, so results are bit-identical on any number of threads.
// Operands that gain nothing from a packed copy are read in place (see mt_gemm).
#define MT_REAL_SOURCE
#include "gemm.h"
#include "activation.h"
#include <omp.h>
#include <stdlib.h>

// Below this many multiply-adds a GEMM stays on one thread: the fork and the barriers
// cost more than the second thread saves.
#define GEMM_PAR_FLOPS (1 << 20)

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static const FN(mt_kernel) *kernel_for(int isa) {
#if defined(__x86_64__) || defined(_M_X64)
    if (isa == MT_ISA_AVX512) return &FN(mt_kernel_avx512);
    if (isa == MT_ISA_AVX2) return &FN(mt_kernel_avx2);
#endif
    (void)isa;
    return &FN(mt_kernel_generic);
}

// elements of the packed B block, rounded so that the A block after it stays aligned
static size_t b_block_elems(int64_t kc, int64_t nc) {
    return (size_t)round_up(kc * nc, MT_ALIGN / sizeof(real));
}

size_t FN(mt_gemm_pack_size)(int64_t dim) {
    size_t most = 0;
    for (int isa = 0; isa <= MT_ISA_AVX512; isa++) {
        const FN(mt_kernel) *ker = kernel_for(isa);
        int64_t kc = min64(ker->kc, dim), nc = min64(ker->nc, round_up(dim, ker->nr));
        int64_t mc = min64(ker->mc, round_up(dim, ker->mr));
        size_t need = b_block_elems(kc, nc) + (size_t)(mc * kc);
        most = need > most ? need : most;
    }
    return most;
}

typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    const real *A, *B;
    real *C;
    int accumulate;
    const mt_epilogue *ep;
    int pack_a, pack_b;
} problem;

// NR-column panels [q0, q1) of op(B)[k0:k0+kc, j0:j0+nc] (kc x NR each, zero-padded to
// NR). With ep->b_sums, adds their column sums to it, in k order, from the packed copy.
static void pack_b(const FN(mt_kernel) *ker, const problem *P, int64_t j0, int64_t nc,
                   int64_t k0, int64_t kc, int64_t q0, int64_t q1, real *Bp) {
    const int nr = ker->nr;
    if (q0 >= q1) return;
    if (P->trans_b) { // op(B)(k, j) = B[j*K + k]
        for (int64_t q = q0; q < q1; q++) {
            const int64_t j = j0 + q * nr;
            ker->pack_bt(P->B + j * P->K + k0, P->K, min64(nr, j0 + nc - j), kc,
                         Bp + q * kc * nr);
        }
    } else {
        ker->pack_b_rows(P->B + k0 * P->N + j0 + q0 * nr, P->N, min64(nc, q1 * nr) - q0 * nr,
                         kc, Bp + q0 * kc * nr);
    }
    if (!P->ep || !P->ep->b_sums) return;
    for (int64_t q = q0; q < q1; q++) {
        const int64_t j = j0 + q * nr, w = min64(nr, j0 + nc - j);
        const real *panel = Bp + q * kc * nr;
        real *sums = (real *)P->ep->b_sums + j;
        if (k0 == 0)
            for (int64_t c = 0; c < w; c++) sums[c] = 0;
        for (int64_t k = 0; k < kc; k++)
            for (int64_t c = 0; c < w; c++) sums[c] += panel[k * nr + c];
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

// sums (N) = Σ_k B[k, :] for a B read in place, in k order; threads split the columns
static void column_sums(const real *B, int64_t K, int64_t N, real *sums) {
    enum { CHUNK = 256 };
#pragma omp for schedule(static) nowait
    for (int64_t j0 = 0; j0 < N; j0 += CHUNK)
        column_sums_range(B, K, N, j0, min64(N, j0 + CHUNK), sums);
}

// MR-row panels [p0, p1) of op(A)[i0:i0+mc, k0:k0+kc] (kc x MR each, zero-padded to MR)
static void pack_a(const FN(mt_kernel) *ker, const problem *P, int64_t i0, int64_t mc,
                   int64_t k0, int64_t kc, int64_t p0, int64_t p1, real *Ap) {
    const int mr = ker->mr;
    // op(A)(i, k) = A[i*rs + k*cs]
    const int64_t rs = P->trans_a ? 1 : P->K, cs = P->trans_a ? P->M : 1;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t i = i0 + p * mr;
        ker->pack_a(P->A + i * rs + k0 * cs, rs, cs, min64(mr, i0 + mc - i), kc, Ap + p * kc * mr);
    }
}

// The epilogues no micro-kernel keeps in registers, on the tile the kernel just stored.
static void tile_epilogue(const FN(mt_tile) *t) {
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

// The tiles in row panels [p0, p1) and column panels [q0, q1) of the block
// C[ic:ic+mc, jc:jc+nc], column panel by column panel so that a B micro-panel stays in L1
static void run_tiles(const FN(mt_kernel) *ker, const problem *P, int64_t ic, int64_t mc,
                      int64_t jc, int64_t nc, int64_t pc, int64_t kc, const real *Ap,
                      const real *Bp, int64_t p0, int64_t p1, int64_t q0, int64_t q1) {
    const int mr = ker->mr, nr = ker->nr;
    const int64_t N = P->N;
    const int last = pc + kc >= P->K;
    const mt_epilogue *ep = P->ep;
    FN(mt_tile) t = {.kc = kc, .ldc = N, .load_c = P->accumulate || pc > 0,
                     .ep = last && ep ? ep->kind : MT_EP_NONE};
    if (ep) {
        t.act = ep->act;
        t.alpha = (real)ep->alpha;
    }
    const int fused = mt_ep_in_registers(t.ep, t.act);
    // op(A)(i, k) at A[i*a_rs + k*a_cs] when read in place
    const int64_t a_rs = P->trans_a ? 1 : P->K, a_cs = P->trans_a ? P->M : 1;
    FN(mt_kernel_fn) kernel = P->pack_a && P->pack_b ? ker->packed : ker->strided;
    for (int64_t q = q0; q < q1; q++) {
        const int64_t jr = q * nr, j = jc + jr;
        t.n = min64(nr, nc - jr);
        FN(mt_kernel_fn) run = t.n <= ker->vl ? ker->narrow : kernel;
        if (P->pack_b) {
            t.b = Bp + jr * kc;
            t.ldb = nr;
        } else {
            t.b = P->B + pc * N + j;
            t.ldb = N;
        }
        for (int64_t p = p0; p < p1; p++) {
            const int64_t ir = p * mr, i = ic + ir;
            t.m = min64(mr, mc - ir);
            if (P->pack_a) {
                t.a = Ap + ir * kc;
                t.a_rs = 1;
                t.a_cs = mr;
            } else {
                t.a = P->A + i * a_rs + pc * a_cs;
                t.a_rs = a_rs;
                t.a_cs = a_cs;
            }
            const int64_t off = i * N + j;
            t.c = P->C + off;
            if (t.ep == MT_EP_FORWARD) {
                t.bias = ep->bias ? (const real *)ep->bias + j : NULL;
                t.out = (real *)ep->out + off;
            } else if (t.ep == MT_EP_DACT) {
                t.z = (const real *)ep->z + off;
                t.za = (const real *)ep->a + off;
            }
            run(&t);
            if (t.ep != MT_EP_NONE && !fused) tile_epilogue(&t);
        }
    }
}

// The five loops, run by each thread of the team. Threads share the packed B block and
// split C by row panels or by column panels, whichever balances better. By rows, each
// thread packs and computes its own rows of A: one barrier per B block. By columns,
// they share each packed A block too, with a barrier around it. Either way every tile
// is computed as on one thread.
static void gemm_blocks(const FN(mt_kernel) *ker, const problem *P, real *pack) {
    const int64_t M = P->M, N = P->N, K = P->K;
    const int64_t KC = ker->kc, MC = ker->mc, NC = ker->nc;
    const int mr = ker->mr, nr = ker->nr;
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t rows0 = (M + mr - 1) / mr, cols0 = (min64(NC, N) + nr - 1) / nr;
    // by rows, each thread packs blocks of mct rows into its part of the A buffer
    const int64_t mct = min64(MC, rows0 * mr) / T / mr * mr;
    const int split_rows = (rows0 + T - 1) / T * cols0 <= (cols0 + T - 1) / T * rows0 &&
                           mct > 0;
    real *Bp = pack, *Ap = pack + b_block_elems(min64(KC, K), min64(NC, round_up(N, nr)));
    for (int64_t jc = 0; jc < N; jc += NC) {
        const int64_t nc = min64(NC, N - jc), cols = (nc + nr - 1) / nr;
        // K == 0 still runs one empty k block: C = 0 (+ C), then the epilogue
        for (int64_t pc = 0; pc < K || pc == 0; pc += KC) {
            const int64_t kc = min64(KC, K - pc);
            if (P->pack_b) {
                pack_b(ker, P, jc, nc, pc, kc, cols * t / T, cols * (t + 1) / T, Bp);
#pragma omp barrier
            }
            if (split_rows) {
                // this thread's row panels of all of M: no thread waits for another's A
                const int64_t end = min64(M, rows0 * (t + 1) / T * mr);
                // a stride that does not shrink with the last k block: no barrier separates
                // k blocks here, and a thread ahead must not pack over one still reading
                real *At = Ap + t * mct * min64(KC, K);
                for (int64_t ic = rows0 * t / T * mr; ic < end; ic += mct) {
                    const int64_t mc = min64(mct, end - ic), rows = (mc + mr - 1) / mr;
                    if (P->pack_a) pack_a(ker, P, ic, mc, pc, kc, 0, rows, At);
                    run_tiles(ker, P, ic, mc, jc, nc, pc, kc, At, Bp, 0, rows, 0, cols);
                }
            } else {
                for (int64_t ic = 0; ic < M; ic += MC) {
                    const int64_t mc = min64(MC, M - ic), rows = (mc + mr - 1) / mr;
                    if (P->pack_a) {
#pragma omp for schedule(static)
                        for (int64_t p = 0; p < rows; p++) pack_a(ker, P, ic, mc, pc, kc, p, p + 1, Ap);
                    }
                    run_tiles(ker, P, ic, mc, jc, nc, pc, kc, Ap, Bp, 0, rows, cols * t / T,
                              cols * (t + 1) / T);
                    if (P->pack_a) {
#pragma omp barrier
                    }
                }
            }
            // the packed B block is overwritten next: wait until every thread is done (after
            // the last block, the end of the parallel region waits)
            if (P->pack_b && (jc + NC < N || pc + KC < K)) {
#pragma omp barrier
            }
        }
    }
}

void FN(mt_gemm)(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, const real *A,
                 const real *B, real *C, int accumulate, const mt_epilogue *ep, real *pack) {
    if (M <= 0 || N <= 0) return;
    const FN(mt_kernel) *ker = kernel_for(mt_isa_active);
    // B is packed to transpose it, or when more than one block of A rows reads it: one
    // block reads each row of B once, as well in place as from a packed copy.
    // A is packed when reused by more than one column panel if its rows are 4 KB apart
    // (then the MR rows a tile reads compete for one L1 set), or to transpose it unless
    // it fits in L1 (a tile then broadcasts from MR adjacent elements per k).
    const int64_t a_stride = (trans_a ? M : K) * (int64_t)sizeof(real);
    const int a_aliases = a_stride % 4096 == 0;
    const int a_small = M * K * (int64_t)sizeof(real) <= 32768;
    const problem P = {trans_a, trans_b, M, N, K, A, B, C, accumulate, ep,
                       .pack_a = N > ker->nr && (a_aliases || (trans_a && !a_small)),
                       .pack_b = trans_b || M > ker->mc};
    MT_PARALLEL_IF((double)M * N * K >= GEMM_PAR_FLOPS, gemm_blocks(ker, &P, pack));
    if (ep && ep->b_sums && !P.pack_b)
        MT_PARALLEL_IF(K * N >= MT_PAR_ELEMS, column_sums(B, K, N, ep->b_sums));
}

int FN(mt_gemm_alloc)(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      const real *A, const real *B, real *C, int accumulate) {
    int64_t dim = M > N ? M : N;
    dim = K > dim ? K : dim;
    const size_t bytes = FN(mt_gemm_pack_size)(dim) * sizeof(real);
    real *pack = aligned_alloc(MT_ALIGN, (bytes + MT_ALIGN - 1) / MT_ALIGN * MT_ALIGN);
    if (!pack) return MT_ERR_NO_MEMORY;
    FN(mt_gemm)(trans_a, trans_b, M, N, K, A, B, C, accumulate, NULL, pack);
    free(pack);
    return MT_OK;
}
