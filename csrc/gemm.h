// GEMM internals shared by the driver (gemm.c), the per-ISA micro-kernels
// (gemm_avx512.c, gemm_avx2.c, gemm_generic.c, all instantiating gemm_kernel.h) and
// the layers. Typed: include after defining MT_REAL_SOURCE.
#ifndef MT_GEMM_H
#define MT_GEMM_H
#include "mt_internal.h"

// What happens to C once its reduction over k is complete.
typedef enum {
    MT_EP_NONE = 0, // C = op(A) op(B) (+ C when accumulating)
    MT_EP_FORWARD,  // Z = C = op(A) op(B) + bias;  out = act(Z)
    MT_EP_DACT,     // C = op(A) op(B) ⊙ act'(z, a): the dZ of the layer that output a = act(z)
} mt_ep_kind;

typedef struct {
    int kind;         // mt_ep_kind
    int act;          // mt_act
    double alpha;     // leaky_relu negative slope
    const void *bias; // FORWARD: (N,), or NULL
    void *out;        // FORWARD: (M, N) like C; == C for the identity
    const void *z, *a; // DACT: (M, N) like C
    void *b_sums;      // or NULL: (N,) = Σ_k op(B)(k, :) in k order (the bias gradient
                       // when B = dZ), summed while op(B) is packed
    int *nonfinite;    // or NULL: set to 1 when an element of C or b_sums is not finite
} mt_epilogue;

// The epilogues a micro-kernel applies in vector registers; the others (transcendental
// functions) are applied by the driver on the tile right after it is stored.
static inline int mt_ep_in_registers(int kind, int act) {
    if (kind == MT_EP_FORWARD)
        return act == MT_ACT_IDENTITY || act == MT_ACT_RELU || act == MT_ACT_LEAKY_RELU;
    return act != MT_ACT_GELU;
}

#ifdef MT_REAL_SOURCE
// One micro-kernel call: the (m <= MR, n <= NR) tile of C at c gets the sum over kc
// of a(i, k) b(k, j). Packed operands have a_rs = 1, a_cs = MR, ldb = NR and are
// zero-padded to full MR x NR tiles; unpacked ones are read in place, never past m, n.
typedef struct {
    int64_t kc, m, n;
    const real *a;
    int64_t a_rs, a_cs; // a(i, k) = a[i*a_rs + k*a_cs]
    const real *b;
    int64_t ldb;        // b(k, j) = b[k*ldb + j]
    real *c;
    int64_t ldc;        // also the row stride of out, z and za
    int load_c;         // add what C holds (later k blocks, or accumulating calls)
    int ep;             // mt_ep_kind; MT_EP_NONE before the last k block
    int act;
    real alpha;
    const real *bias;   // at the tile's first column
    real *out;          // at the tile's origin, like z and za
    const real *z, *za;
} FN(mt_tile);

typedef void (*FN(mt_kernel_fn))(const FN(mt_tile) *t);
// one micro-panel of op(A) (h <= MR rows) over kc, op(A)(i, k) = src[i*rs + k*cs]
typedef void (*FN(mt_pack_a_fn))(const real *src, int64_t rs, int64_t cs, int64_t h,
                                 int64_t kc, real *dst);
// micro-panels of the first w columns of op(B) over kc, op(B)(k, j) = src[k*rs + j*cs]
// with rs == 1 (one panel, w <= NR) or cs == 1
typedef void (*FN(mt_pack_b_fn))(const real *src, int64_t stride, int64_t w, int64_t kc,
                                 real *dst);

// A micro-kernel and the blocking that fits it to the caches.
typedef struct {
    int mr, nr, vl;            // register tile, lanes per vector
    int64_t kc, mc, nc;        // k block (B micro-panel in L1), A block rows (L2), B block columns
    FN(mt_kernel_fn) packed;   // both operands packed
    FN(mt_kernel_fn) strided;  // either read in place
    FN(mt_kernel_fn) narrow;   // any operands, tiles of at most one vector of columns
    FN(mt_pack_a_fn) pack_a;
    FN(mt_pack_b_fn) pack_bt;     // rs == 1: B stored (N, K), stride cs
    FN(mt_pack_b_fn) pack_b_rows; // cs == 1: B stored (K, N), stride rs
} FN(mt_kernel);

extern const FN(mt_kernel) FN(mt_kernel_generic);
#if defined(__x86_64__) || defined(_M_X64)
extern const FN(mt_kernel) FN(mt_kernel_avx2), FN(mt_kernel_avx512);
#endif

// One product C (M, N) = op(A) (M, K) · op(B) (K, N) (+ C when accumulate), then the
// epilogue ep (NULL: none).
typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    const real *A, *B;
    real *C;
    int accumulate;
    const mt_epilogue *ep;
    const void *packed_b; // or NULL: op(B) already packed as the plan packs it (for bf16
                          // weights: mt_gemm_pack_b_rows_bf16)
} FN(mt_gemm_op);

// Elements of packing buffer that mt_gemm_run needs for the product op (any ISA).
size_t FN(mt_gemm_pack_elems)(int64_t M, int64_t N, int64_t K);

typedef struct FN(mt_packing) FN(mt_packing);

// One product laid out for the jobs of mt_gemm_run (gemm.c). Packed panels are
// counted in words of sizeof(real) bytes (bfloat16 pairs: a uint32_t each), kw(k) =
// k / fmt->k_per_word words per lane for k values: the k block at pc of packed op(A)
// starts at Ap + kw(pc)*Mp, its row panel p at + p*kw(kc)*MR (kc rounded up to
// fmt->k_align); likewise Bp + kw(pc)*Np + q*kw(kc)*NR for op(B).
typedef struct {
    const FN(mt_kernel) *ker;
    const FN(mt_packing) *fmt;
    FN(mt_gemm_op) op;
    int pack_a, pack_b;
    real *Ap, *Bp;
    int64_t kc;               // k block
    int64_t Mp, Np;           // M, N rounded up to MR, NR
    int64_t rp, cp;           // row, column panels
    int64_t tr, tc;           // row, column panels per macro-tile
    int64_t tiles_m, tiles_n; // macro-tiles down, across
    int64_t a_per, b_per;     // panels one packing job takes
    int64_t b_slices;         // k slices of each group of B panels
    int64_t a_jobs, b_jobs, sum_jobs, tiles;
    int64_t a_first, b_first; // the indices of its first A and B jobs among every product's
} FN(mt_plan);

// How the operands of a product are packed for its micro-kernel: as they are (gemm.c),
// or rounded to bfloat16 (gemm_bf16.c). The driver is the same for every format.
struct FN(mt_packing) {
    int64_t kc;      // k block whatever the ISA, or 0: the micro-kernel's
    int k_align;     // each k block padded with zeros to a multiple of this
    int k_per_word;  // k values a word holds per lane
    int always;      // both operands packed whatever the shapes (rounded there)
    int group_a;     // a job packs several A panels when op(A) is contiguous across rows
    int slice_b;     // a lone group of row-major B panels may be split in k between jobs
    int ftz;         // runs with flush-to-zero and denormals-are-zero
    int dact_after;  // tanh' and sigmoid' applied by mt_tile_epilogue, not the kernel
    // row panels [p0, p1) of op(A), every k block
    void (*pack_a)(const FN(mt_plan) *P, int64_t p0, int64_t p1);
    // column panels [q0, q1) of op(B), k in [k0, k1) (k0 and k1 on k_align but K); when
    // k0 == 0, also their column sums over every k into ep->b_sums
    void (*pack_b)(const FN(mt_plan) *P, int64_t q0, int64_t q1, int64_t k0, int64_t k1);
};

// op(B) of op into dst (as many elements as mt_gemm_pack_elems gives), by this thread,
// as mt_gemm_run with the micro-kernels of ws packs it: what op.packed_b points at
void FN(mt_gemm_pack_b)(const FN(mt_gemm_op) *op, const mt_gemm_ws *ws, void *dst);
// the part of that copy made from rows [r0, r1) of the stored B (trans_b = 0: B (K, N),
// rows are k, r0 and r1 on the format's k_align; 1: B (N, K), rows are lanes, r0 and r1
// on NR), r1 past the last row meaning up to it
void FN(mt_gemm_pack_b_rows)(const FN(mt_gemm_op) *op, const mt_gemm_ws *ws, int64_t r0,
                             int64_t r1, void *dst);

// The n independent products ops[0..n) with the micro-kernels of ws->isa; ws->pack holds
// the sum of their mt_gemm_pack_elems, 64-byte aligned. Called by every thread of a team
// (or outside any parallel region, by one): the threads take packing jobs and output
// macro-tiles one at a time, and return when every product is complete. ws->sync (zeros
// between calls) lets a tile start as soon as its panels are packed; NULL: a barrier
// after the packing.
void FN(mt_gemm_run)(const FN(mt_gemm_op) *ops, int n, const mt_gemm_ws *ws);

// The epilogues no micro-kernel keeps in registers, on the tile the kernel just stored.
void FN(mt_tile_epilogue)(const FN(mt_tile) *t);
// *flag = 1 when one of the h x w elements of x (row stride ld) is not finite
void FN(mt_flag_nonfinite)(const real *x, int64_t h, int64_t w, int64_t ld, int *flag);

#if !MT_DOUBLE
// bfloat16 products (gemm_bf16.c). Every ISA reduces over k in blocks of MT_BF16_KC (even):
// the same roundings in the same order, so the same bits from each.
#define MT_BF16_KC 512
// the vdpbf16ps micro-kernel: packed panels of k pairs of bfloat16 (gemm_kernel.h)
extern const mt_kernel_f32 mt_kernel_avx512_bf16;
int64_t mt_pack_pairs_strided_avx512(const float *src, int64_t ls, int64_t h, int R,
                                     int64_t pairs, uint32_t *dst);
// the packing of mt_kernel_avx512_bf16 (pairs of bfloat16 per word), and that of the
// float32 kernels emulating it (a float per k, the two k of every pair swapped)
extern const mt_packing_f32 mt_packing_bf16_pairs, mt_packing_bf16_emulated;
// A copy of op(B) (K, N) packed once as the products of `isa` pack it, for products that
// take it pre-packed (mt_gemm_op.packed_b): its size in 32-bit words (independent of M
// and of the team), the rows of the stored B one packing unit holds (trans_b = 0: B
// stored (K, N), a pair of rows; 1: B stored (N, K), a panel of NR rows), and the writer
// of rows [r0, r1) of the stored B, r0 and r1 whole units (or r1 the last row).
size_t mt_gemm_packed_b_words_bf16(int isa, int64_t K, int64_t N);
int mt_gemm_pack_unit_bf16(int isa, int trans_b);
void mt_gemm_pack_b_rows_bf16(int isa, int trans_b, int64_t K, int64_t N, const float *B,
                              int64_t r0, int64_t r1, uint32_t *dst);
#endif
#endif

#endif
