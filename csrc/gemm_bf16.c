// Products with bfloat16 inputs and float32 accumulation (dtype "mixed_bfloat16"): C (M, N)
// = op(A) (M, K) · op(B) (K, N), both operands rounded to bfloat16 while they are packed.
//
// vdpbf16ps (AVX512_BF16) takes k in pairs: per float32 lane, acc += a[2q+1] b[2q+1], then
// acc += a[2q] b[2q], each add rounded to nearest with denormal inputs read as zero and
// denormal results flushed to zero. The product of two bfloat16 values is exact in
// float32, so a fused multiply-add on the values widened to float32 rounds as each of
// those adds does: the other instruction sets run their float32 micro-kernels (gemm.c's)
// on panels of the rounded values with the two k of every pair swapped, under the
// flush-to-zero and denormals-are-zero modes. The k blocks (MT_BF16_KC) and the epilogues
// are the same for every ISA, so every ISA gives the same bits, on any thread count (the
// driver is gemm.c's design: packing jobs, then output macro-tiles taken dynamically).
// Both operands are always packed: the rounding happens there, and an odd K is padded
// with a zero pair element.
#define MT_REAL_SOURCE
#include "gemm.h"
#if !MT_DOUBLE
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// float32 bits -> bfloat16 bits: to nearest, ties to even; a NaN stays NaN (made quiet);
// a denormal becomes zero of its sign, as vdpbf16ps reads it. Branch-free: it vectorises.
static inline uint32_t bf16_bits(uint32_t u) {
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;
    const uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
    return (u & 0x7f800000u) == 0 ? (u >> 16) & 0x8000u : r;
}

// lanes one packing job takes when they are contiguous in the source: rows read a
// kilobyte at a time (as gemm.c's PACK_B_COLUMNS)
#define GROUP_LANES 256

// Below this many multiply-adds a product is one macro-tile (as in gemm.c).
#define BF16_SPLIT_FLOPS (1 << 18)

static const mt_kernel_f32 *kernel_for(int isa, int *hw) {
    *hw = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa >= MT_ISA_AVX512_BF16) {
        *hw = 1;
        return &mt_kernel_avx512_bf16;
    }
    if (isa == MT_ISA_AVX512) return &mt_kernel_avx512_f32;
    if (isa == MT_ISA_AVX2) return &mt_kernel_avx2_f32;
#endif
    (void)isa;
    return &mt_kernel_generic_f32;
}

static size_t aligned_words(int64_t n) { return (size_t)round_up(n, MT_ALIGN / 4); }

// 32-bit words of packed panels for op(A) (rows M) and op(B) (columns N): a float per k and
// lane for the emulation (whose panels are the largest: hw packs two k per word)
static size_t pack_words(const mt_kernel_f32 *ker, int64_t M, int64_t N, int64_t K) {
    const int64_t K2 = round_up(K, 2);
    return aligned_words(round_up(M, ker->mr) * K2) + aligned_words(K2 * round_up(N, ker->nr));
}

size_t mt_gemm_pack_elems_bf16(int64_t M, int64_t N, int64_t K) {
    size_t most = 0;
    for (int isa = 0; isa <= MT_ISA_AVX512_BF16; isa++) {
        int hw;
        const size_t need = pack_words(kernel_for(isa, &hw), M, N, K);
        most = need > most ? need : most;
    }
    return most;
}

// Packed layouts, R lanes x (rows of op(A), columns of op(B)) by k pairs q, lanes past
// the operand's and k past kc zeros: hw: dst[q*R + x] = bf16(k = 2q) | bf16(2q + 1) << 16;
// emulation: dst[2q*R + x] = the float32 of bf16(2q + 1), dst[(2q+1)*R + x] = bf16(2q)'s.

// The panels of w <= GROUP_LANES lanes contiguous in the source (op(X)(x, k) =
// src[x + k*ks]), k in [0, kc): panel g at dst + g*stride. Row by row across the panels,
// so that each source row is read in one sweep rather than R lanes at a time, rows pages
// apart; a row's words are made in one vectorised pass, then copied panel by panel.
MT_TARGET_CLONES
static void pack_pairs_rows(const float *src, int64_t ks, int64_t w, int R, int64_t kc,
                            int hw, uint32_t *restrict dst, int64_t stride) {
    const uint32_t *s = (const uint32_t *)src;
    const int64_t panels = (w + R - 1) / R;
    uint32_t lo[GROUP_LANES + 32], hi[GROUP_LANES + 32]; // zeros past w: the padded lanes
    for (int64_t x = w; x < panels * R; x++) lo[x] = hi[x] = 0;
    for (int64_t q = 0; q < (kc + 1) / 2; q++) {
        const uint32_t *s0 = s + 2 * q * ks, *s1 = s0 + ks;
        if (2 * q + 1 < kc) { // else k = 2q + 1 is the zero pad of an odd kc
            if (hw)
                for (int64_t x = 0; x < w; x++) lo[x] = bf16_bits(s0[x]) | bf16_bits(s1[x]) << 16;
            else
                for (int64_t x = 0; x < w; x++) {
                    lo[x] = bf16_bits(s0[x]) << 16;
                    hi[x] = bf16_bits(s1[x]) << 16;
                }
        } else {
            for (int64_t x = 0; x < w; x++) {
                lo[x] = hw ? bf16_bits(s0[x]) : bf16_bits(s0[x]) << 16;
                hi[x] = 0;
            }
        }
        for (int64_t g = 0; g < panels; g++) {
            uint32_t *d = dst + g * stride + (hw ? q : 2 * q) * R;
            memcpy(d, hw ? lo + g * R : hi + g * R, (size_t)R * 4);
            if (!hw) memcpy(d + R, lo + g * R, (size_t)R * 4);
        }
    }
}

// One panel of h <= R lanes strided in the source (op(X)(x, k) = src[x*ls + k], k
// contiguous), k in [0, kc).
MT_TARGET_CLONES
static void pack_pairs(const float *src, int64_t ls, int64_t h, int R, int64_t kc, int hw,
                       uint32_t *restrict dst) {
    const uint32_t *s = (const uint32_t *)src;
    const int64_t pairs = kc / 2;
    // each lane's pairs into words of a small block (contiguous, so the rounding
    // vectorises), then the block transposed into the panel
    enum { QB = 64 };
    uint32_t block[32 * QB]; // R <= 32 lanes x QB pairs
    int64_t first = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if (hw) first = mt_pack_pairs_strided_avx512(src, ls, h, R, pairs, dst);
#endif
    for (int64_t q0 = first; q0 < pairs; q0 += QB) {
        const int qb = (int)(pairs - q0 < QB ? pairs - q0 : QB);
        for (int x = 0; x < h; x++) {
            const uint32_t *sx = s + x * ls + 2 * q0;
            uint32_t *b = block + x * QB;
            for (int q = 0; q < qb; q++)
                b[q] = bf16_bits(sx[2 * q]) | bf16_bits(sx[2 * q + 1]) << 16;
        }
        for (int q = 0; q < qb; q++) {
            uint32_t *d = dst + (hw ? q0 + q : 2 * (q0 + q)) * R;
            for (int x = 0; x < R; x++) {
                const uint32_t w = x < h ? block[x * QB + q] : 0;
                if (hw) {
                    d[x] = w;
                } else {
                    d[x] = w & 0xffff0000u;
                    d[R + x] = w << 16;
                }
            }
        }
    }
    if (kc % 2) { // the last pair: k = kc - 1 and a zero
        const int64_t q = pairs;
        uint32_t *d = dst + (hw ? q : 2 * q) * R;
        for (int x = 0; x < R; x++) {
            const uint32_t v = x < h ? bf16_bits(s[x * ls + kc - 1]) : 0;
            if (hw) {
                d[x] = v;
            } else {
                d[x] = 0;
                d[R + x] = v << 16;
            }
        }
    }
}

// sums[j] = Σ_k op(B)(k, j) for j in [0, w), op(B)(k, j) = src[j*ls + k*ks], in k order and
// in float32 (the bias gradient, from dZ as it is, not rounded)
static void column_sums(const float *src, int64_t ls, int64_t ks, int64_t w, int64_t K,
                        float *sums) {
    for (int64_t j = 0; j < w; j++) sums[j] = 0;
    for (int64_t k = 0; k < K; k++)
        for (int64_t j = 0; j < w; j++) sums[j] += src[j * ls + k * ks];
}

// One product laid out for the two phases, in 32-bit words: the k block at pc of packed
// op(A) starts at Ap + kw(pc)*Mp, its row panel p at + p*kw(kc2)*MR (likewise for B), with
// kw(k) = k/2 words per lane for hw, k for the emulation.
typedef struct {
    const mt_kernel_f32 *ker;
    int hw;
    mt_gemm_op_f32 op;
    uint32_t *Ap, *Bp;
    int64_t Mp, Np, rp, cp, tr, tc, tiles_n, tiles;
    int64_t a_jobs, b_jobs, b_slices; // packing jobs; k slices of each B group
} plan;

static inline int64_t kw(const plan *P, int64_t k) { return P->hw ? k / 2 : k; }

static uint32_t *plan_op(plan *P, const mt_kernel_f32 *ker, int hw, const mt_gemm_op_f32 *op,
                         uint32_t *pack, int team) {
    const int64_t M = op->M, N = op->N, K = op->K;
    *P = (plan){.ker = ker, .hw = hw, .op = *op};
    if (M <= 0 || N <= 0) return pack;
    P->Mp = round_up(M, ker->mr);
    P->Np = round_up(N, ker->nr);
    P->rp = P->Mp / ker->mr;
    P->cp = P->Np / ker->nr;
    const int64_t K2 = round_up(K, 2);
    P->Ap = pack;
    pack += aligned_words(kw(P, K2) * P->Mp);
    P->Bp = op->packed_b ? (uint32_t *)op->packed_b : pack;
    if (!op->packed_b) pack += aligned_words(kw(P, K2) * P->Np);
    // as gemm.c: A blocks in L2, B panels in L3, then split to a few tiles per thread
    int64_t tr = min64((ker->mc + ker->mr - 1) / ker->mr, P->rp);
    int64_t tc = min64(ker->nc / ker->nr, P->cp);
    if ((double)M * N * K < BF16_SPLIT_FLOPS) {
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
    const int64_t ga = op->trans_a ? GROUP_LANES / ker->mr : 1;
    const int64_t gb = op->trans_b ? 1 : GROUP_LANES / ker->nr;
    P->a_jobs = K > 0 ? (P->rp + ga - 1) / ga : 0;
    P->b_jobs = !op->packed_b && (K > 0 || (op->ep && op->ep->b_sums)) ? (P->cp + gb - 1) / gb
                                                                         : 0;
    // a row-major B of one group (a weight matrix of a few hundred columns) would be
    // packed by one thread while the others wait: its rows are split between the team
    // instead, whole rows still read in one sweep
    P->b_slices = !op->trans_b && P->b_jobs < team && K >= 2 * team ? team : 1;
    P->b_jobs *= P->b_slices;
    P->tiles_n = (P->cp + tc - 1) / tc;
    P->tiles = (P->rp + tr - 1) / tr * P->tiles_n;
    return pack;
}

// Packing job j of P: row panels of op(A) (a group of them when its rows are contiguous
// in k: Aᵀ), then column panels of op(B) (a group when row-major), with their column sums;
// every k block.
static void pack_job(const plan *P, int64_t j) {
    const mt_kernel_f32 *ker = P->ker;
    const mt_gemm_op_f32 *op = &P->op;
    const int64_t M = op->M, N = op->N, K = op->K, KC = MT_BF16_KC;
    const int trans = j < P->a_jobs ? op->trans_a : !op->trans_b; // lanes contiguous
    const int R = j < P->a_jobs ? ker->mr : ker->nr;
    const int64_t L = j < P->a_jobs ? M : N;                        // lanes in all
    const float *src = j < P->a_jobs ? op->A : op->B;
    uint32_t *packed = j < P->a_jobs ? P->Ap : P->Bp;
    const int64_t Lp = j < P->a_jobs ? P->Mp : P->Np;
    int64_t k0 = 0, k1 = K; // the job's k slice, even bounds but the last
    if (j >= P->a_jobs) {
        j -= P->a_jobs;
        const int64_t s = j % P->b_slices, pairs = round_up(K, 2) / 2;
        j /= P->b_slices;
        k0 = 2 * (pairs * s / P->b_slices);
        k1 = min64(K, 2 * (pairs * (s + 1) / P->b_slices));
    }
    const int64_t per = trans ? GROUP_LANES / R : 1;                // panels of the job
    const int64_t x0 = j * per * R, w = min64(per * R, L - x0);
    for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = min64(KC, K - pc), panel = kw(P, round_up(kc, 2)) * R;
        uint32_t *dst = packed + kw(P, pc) * Lp + j * per * panel;
        const int64_t a = k0 > pc ? k0 - pc : 0, b = min64(kc, k1 - pc); // slice's k in block
        if (a >= b) continue;
        if (trans) // op(X)(x, k) = src[x + k*L]
            pack_pairs_rows(src + x0 + (pc + a) * L, L, w, R, b - a, P->hw,
                            dst + kw(P, a) * R, panel);
        else // op(X)(x, k) = src[x*K + k]
            pack_pairs(src + x0 * K + pc, K, w, R, kc, P->hw, dst);
    }
    if (packed == P->Bp && op->ep && op->ep->b_sums && k0 == 0) {
        const int64_t ls = op->trans_b ? K : 1, ks = op->trans_b ? 1 : N;
        float *sums = (float *)op->ep->b_sums + x0;
        column_sums(op->B + x0 * ls, ls, ks, w, K, sums);
        if (op->ep->nonfinite) mt_flag_nonfinite_f32(sums, 1, w, w, op->ep->nonfinite);
    }
}

size_t mt_gemm_packed_b_words_bf16(int isa, int64_t K, int64_t N) {
    int hw;
    const mt_kernel_f32 *ker = kernel_for(isa, &hw);
    const int64_t K2 = round_up(K, 2);
    return aligned_words((hw ? K2 / 2 : K2) * round_up(N, ker->nr));
}

int mt_gemm_pack_unit_bf16(int isa, int trans_b) {
    int hw;
    return trans_b ? kernel_for(isa, &hw)->nr : 2;
}

// rows [r0, r1) of B (K, N), or of B (N, K) for trans_b, into the packed op(B) at dst: the
// words pack_job writes for them, so that a product reading dst computes what it would
// have computed packing B itself
void mt_gemm_pack_b_rows_bf16(int isa, int trans_b, int64_t K, int64_t N, const float *B,
                              int64_t r0, int64_t r1, uint32_t *dst) {
    int hw;
    const mt_kernel_f32 *ker = kernel_for(isa, &hw);
    const int R = ker->nr;
    const int64_t Np = round_up(N, R), KC = MT_BF16_KC, group = GROUP_LANES / R * R;
    const int64_t words = hw ? 1 : 2; // per lane and pair of k
    if (!trans_b) { // rows are k, lanes contiguous: the pairs of the rows, panel by panel
        for (int64_t pc = r0 / KC * KC; pc < r1; pc += KC) {
            const int64_t kc = min64(KC, K - pc), panel = round_up(kc, 2) / 2 * words * R;
            const int64_t a = r0 > pc ? r0 - pc : 0, b = min64(r1 - pc, kc);
            uint32_t *block = dst + pc / 2 * words * Np + a / 2 * words * R;
            for (int64_t x0 = 0; x0 < N; x0 += group)
                pack_pairs_rows(B + (pc + a) * N + x0, N, min64(group, N - x0), R, b - a, hw,
                                block + x0 / R * panel, panel);
        }
    } else { // rows are lanes, k contiguous: whole panels of R lanes
        for (int64_t x0 = r0; x0 < r1; x0 += R)
            for (int64_t pc = 0; pc < K; pc += KC) {
                const int64_t kc = min64(KC, K - pc), panel = round_up(kc, 2) / 2 * words * R;
                pack_pairs(B + x0 * K + pc, K, min64(R, N - x0), R, kc, hw,
                           dst + pc / 2 * words * Np + x0 / R * panel);
            }
    }
}

// Macro-tile `tile` of P, every k block in order (as gemm.c's run_tile, always packed)
static void run_tile(const plan *P, int64_t tile) {
    const mt_kernel_f32 *ker = P->ker;
    const mt_gemm_op_f32 *op = &P->op;
    const int mr = ker->mr, nr = ker->nr;
    const int64_t M = op->M, N = op->N, K = op->K;
    const int64_t p0 = tile / P->tiles_n * P->tr, p1 = min64(P->rp, p0 + P->tr);
    const int64_t q0 = tile % P->tiles_n * P->tc, q1 = min64(P->cp, q0 + P->tc);
    const mt_epilogue *ep = op->ep;
    for (int64_t pc = 0; pc < K || pc == 0; pc += MT_BF16_KC) {
        const int64_t kc = min64(MT_BF16_KC, K - pc), kc2 = round_up(kc, 2);
        const int last = pc + kc >= K;
        mt_tile_f32 t = {.kc = kc2, .a_rs = 1, .a_cs = mr, .ldb = nr, .ldc = N,
                         .load_c = op->accumulate || pc > 0,
                         .ep = last && ep ? ep->kind : MT_EP_NONE};
        if (ep) {
            t.act = ep->act;
            t.alpha = (float)ep->alpha;
        }
        // tanh' and sigmoid' (1 - a², a(1 - a)) are contracted into FMAs by the kernels
        // that have them: applied after the kernel by the one function that every ISA
        // shares, so that they round alike
        const int after = t.ep == MT_EP_DACT && (t.act == MT_ACT_TANH || t.act == MT_ACT_SIGMOID);
        const int ep_kind = t.ep;
        if (after) t.ep = MT_EP_NONE;
        const int fused = !after && mt_ep_in_registers(t.ep, t.act);
        for (int64_t q = q0; q < q1; q++) {
            const int64_t j = q * nr;
            t.n = min64(nr, N - j);
            // packed words, read by the kernel as its panels (floats, or bfloat16 pairs)
            t.b = (const float *)(P->Bp + kw(P, pc) * P->Np + q * kw(P, kc2) * nr);
            for (int64_t p = p0; p < p1; p++) {
                const int64_t i = p * mr, off = i * N + j;
                t.m = min64(mr, M - i);
                t.a = (const float *)(P->Ap + kw(P, pc) * P->Mp + p * kw(P, kc2) * mr);
                t.c = op->C + off;
                if (t.ep == MT_EP_FORWARD) {
                    t.bias = ep->bias ? (const float *)ep->bias + j : NULL;
                    t.out = (float *)ep->out + off;
                } else if (ep_kind == MT_EP_DACT) {
                    t.z = (const float *)ep->z + off;
                    t.za = (const float *)ep->a + off;
                }
                ker->packed(&t);
                if (after) {
                    t.ep = ep_kind;
                    mt_tile_epilogue_f32(&t);
                    t.ep = MT_EP_NONE;
                } else if (t.ep != MT_EP_NONE && !fused) {
                    mt_tile_epilogue_f32(&t);
                }
            }
        }
    }
    // the finished macro-tile, still in this core's caches: one check per tile (gemm.c's)
    if (ep && ep->nonfinite) {
        const int64_t i0 = p0 * mr, j0 = q0 * nr;
        mt_flag_nonfinite_f32(op->C + i0 * N + j0, min64(M, p1 * mr) - i0,
                              min64(N, q1 * nr) - j0, N, ep->nonfinite);
    }
}

enum { MAX_OPS = 2 };

// packing job j of the products P: the B jobs of every product first, then the A jobs
// (as gemm.c: a B job is many A panels' work, and taken last it keeps the team waiting)
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

// tile job j of the products P (in order)
static void tile_job_of(const plan *P, int64_t j) {
    int o = 0;
    while (j >= P[o].tiles) j -= P[o].tiles, o++;
    run_tile(&P[o], j);
}

void mt_gemm_run_bf16(const mt_gemm_op_f32 *ops, int n, const mt_gemm_ws *ws) {
    int hw;
    const mt_kernel_f32 *ker = kernel_for(ws->isa, &hw);
    const int team = omp_get_num_threads();
    plan P[MAX_OPS];
    uint32_t *pack = ws->pack;
    int64_t jobs = 0, tiles = 0;
    for (int o = 0; o < n; o++) {
        pack = plan_op(&P[o], ker, hw, &ops[o], pack, team);
        jobs += P[o].a_jobs + P[o].b_jobs;
        tiles += P[o].tiles;
    }
#if defined(__x86_64__) || defined(_M_X64)
    // flush-to-zero and denormals-are-zero, as vdpbf16ps: the emulation's FMAs and every
    // path's epilogue round alike (per thread; restored before returning)
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);
#endif
    // one thread runs the same loops without worksharing (its set-up shows on small
    // products), a team shares them: packing, a barrier, then the tiles
    if (team == 1) {
        for (int64_t j = 0; j < jobs; j++) pack_job_of(P, n, j);
        for (int64_t j = 0; j < tiles; j++) tile_job_of(P, j);
    } else {
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < jobs; j++) pack_job_of(P, n, j);
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < tiles; j++) tile_job_of(P, j);
    }
#if defined(__x86_64__) || defined(_M_X64)
    _mm_setcsr(csr);
#endif
}

int mt_gemm_alloc_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                       const float *A, const float *B, float *C, int accumulate) {
    const size_t bytes = mt_gemm_pack_elems_bf16(M, N, K) * sizeof(float);
    void *pack = aligned_alloc(MT_ALIGN, (bytes + MT_ALIGN) / MT_ALIGN * MT_ALIGN);
    if (!pack) return MT_ERR_NO_MEMORY;
    const mt_gemm_op_f32 op = {trans_a, trans_b, M, N, K, A, B, C, accumulate, NULL};
    const mt_gemm_ws ws = {.isa = isa, .pack = pack, .bf16 = 1};
    mt_team = mt_team_size(0);
    const int parallel = mt_team > 1 && (double)M * N * K >= BF16_SPLIT_FLOPS;
#pragma omp parallel num_threads(mt_team) if (parallel)
    mt_gemm_run_bf16(&op, 1, &ws);
    mt_team_used(parallel ? mt_team : 1);
    free(pack);
    return MT_OK;
}
#endif
