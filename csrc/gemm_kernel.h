// The register-blocked micro-kernel and the packing of its panels, written once for
// every instruction set. The including file (gemm_avx512.c, gemm_avx2.c, gemm_generic.c)
// defines the vector type and operations below, includes this file, then defines its
// descriptor with KERNEL_DESCRIPTOR(isa, KC, MC, NC):
//   MR, NV, VL       tile rows, vectors per tile row, lanes per vector (NR = NV*VL)
//   vec, vmask       vector and lane-mask types
//   V_ZERO() V_SET1(x) V_LOAD(p) V_STORE(p, v) V_LOADM(m, p) V_STOREM(p, m, v)
//   V_FMA(a, b, c) = a*b + c, V_ADD V_SUB V_MUL, V_GT0(v) the lanes > 0 as V_SELECT's
//   condition, V_SELECT(cond, t, f), M_FIRST(n) the mask of lanes [0, n)
//   V_TRANSPOSE(r)   optional: transposes the VL x VL block in vec r[VL]
// The tile loop keeps MR x NV accumulators in registers; per k it loads NV vectors of
// B and broadcasts MR elements of A. The epilogue runs on the accumulators.

#define NR (NV * VL)

static inline vec load_part(const real *p, vmask m, int full) {
    return full ? V_LOAD(p) : V_LOADM(m, p);
}

static inline void store_part(real *p, vmask m, int full, vec v) {
    if (full) V_STORE(p, v);
    else V_STOREM(p, m, v);
}

// act(x) for the activations mt_ep_in_registers accepts
static inline vec act_vec(int act, vec alpha, vec x) {
    if (act == MT_ACT_RELU) return V_SELECT(V_GT0(x), x, V_ZERO());
    if (act == MT_ACT_LEAKY_RELU) return V_SELECT(V_GT0(x), x, V_MUL(alpha, x));
    return x;
}

// act'(z) from z or a = act(z), as act_derivative in activation.h
static inline vec dact_vec(int act, vec alpha, const real *z, const real *a, vmask m,
                           int full) {
    const vec one = V_SET1(1);
    switch (act) {
    case MT_ACT_RELU: return V_SELECT(V_GT0(load_part(z, m, full)), one, V_ZERO());
    case MT_ACT_LEAKY_RELU: return V_SELECT(V_GT0(load_part(z, m, full)), one, alpha);
    case MT_ACT_TANH: {
        vec av = load_part(a, m, full);
        return V_SUB(one, V_MUL(av, av));
    }
    case MT_ACT_SIGMOID: {
        vec av = load_part(a, m, full);
        return V_MUL(av, V_SUB(one, av));
    }
    default: return one;
    }
}

// x = the accumulated (i, v-th vector) of the tile: combine with C, apply the epilogue
static inline void store_vec(const FN(mt_tile) *t, int64_t i, int v, vec x, vmask m,
                             int full, int fused, vec alpha) {
    const int64_t off = i * t->ldc + v * VL;
    real *c = t->c + off;
    if (t->load_c) x = V_ADD(x, load_part(c, m, full));
    if (t->ep == MT_EP_FORWARD) {
        if (t->bias) x = V_ADD(x, load_part(t->bias + v * VL, m, full));
        store_part(c, m, full, x);
        if (fused && t->out + off != c) store_part(t->out + off, m, full, act_vec(t->act, alpha, x));
        return;
    }
    if (t->ep == MT_EP_DACT && fused && t->act != MT_ACT_IDENTITY)
        x = V_MUL(x, dact_vec(t->act, alpha, t->z + off, t->za + off, m, full));
    store_part(c, m, full, x);
}

// the C tile is read or written only after the k loop: fetch it while computing
static inline __attribute__((always_inline)) void prefetch_c(const FN(mt_tile) *t) {
    for (int64_t i = 0; i < t->m; i++) {
        __builtin_prefetch(t->c + i * t->ldc, 1);
        __builtin_prefetch(t->c + i * t->ldc + t->n - 1, 1);
    }
}

// the accumulators of the tile's m rows and nv <= NV vectors into C, through the epilogue
static inline __attribute__((always_inline)) void store_acc(const FN(mt_tile) *t,
                                                            vec acc[MR][NV], int nv,
                                                            const vmask *mk, int full) {
    const int fused = mt_ep_in_registers(t->ep, t->act);
    const vec alpha = V_SET1(t->alpha);
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
        if (i >= t->m) break;
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            if (v * VL < t->n) store_vec(t, i, v, acc[i][v], mk[v], full, fused, alpha);
    }
}

// Inlined into every variant so that each sees constant strides (packed) and a constant
// number nv <= NV of vectors per row.
static inline __attribute__((always_inline)) void kernel_body(const FN(mt_tile) *t,
                                                              int packed, int nv) {
    const int64_t kc = t->kc, m = t->m, n = t->n;
    const int64_t a_cs = packed ? MR : t->a_cs, ldb = packed ? NR : t->ldb;
    const int full = n >= nv * VL;
    vmask mk[NV];
    for (int v = 0; v < NV; v++) mk[v] = M_FIRST(n - v * VL);
    // rows past m of an unpacked A re-read row m-1: in bounds, results discarded
    int64_t aoff[MR];
    for (int i = 0; i < MR; i++) aoff[i] = packed ? i : (i < m ? i : m - 1) * t->a_rs;

    prefetch_c(t);

    vec acc[MR][NV];
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[i][v] = V_ZERO();
    const real *a = t->a, *b = t->b;
    for (int64_t k = 0; k < kc; k++) {
        vec bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            bv[v] = packed || full ? V_LOAD(b + v * VL) : V_LOADM(mk[v], b + v * VL);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            const vec ai = V_SET1(a[aoff[i]]);
#pragma GCC unroll 8
            for (int v = 0; v < nv; v++) acc[i][v] = V_FMA(ai, bv[v], acc[i][v]);
        }
        a += a_cs;
        b += ldb;
    }

    store_acc(t, acc, nv, mk, full);
}

static void kernel_packed(const FN(mt_tile) *t) { kernel_body(t, 1, NV); }
static void kernel_strided(const FN(mt_tile) *t) { kernel_body(t, 0, NV); }
// tiles at most one vector wide (the 10 outputs of a classifier): half the work or less
static void kernel_narrow(const FN(mt_tile) *t) { kernel_body(t, 0, 1); }

// dst[k*R + i] = src[i*stride + k] for i < R, k < kc: R rows that are contiguous in k
// become a k-major panel. With V_TRANSPOSE (an in-register VL x VL transpose), blocks of
// VL rows and VL values of k at a time, else element by element.
static inline __attribute__((always_inline)) void transpose_rows(const real *src,
                                                                 int64_t stride, int R,
                                                                 int64_t kc, real *dst) {
    int64_t k0 = 0;
#ifdef V_TRANSPOSE
    for (; k0 + VL <= kc; k0 += VL)
        for (int g = 0; g < R; g += VL) {
            vec r[VL];
#pragma GCC unroll 16
            for (int i = 0; i < VL; i++)
                r[i] = g + i < R ? V_LOAD(src + (g + i) * stride + k0) : V_ZERO();
            V_TRANSPOSE(r);
            const vmask m = M_FIRST(R - g);
#pragma GCC unroll 16
            for (int k = 0; k < VL; k++) V_STOREM(dst + (k0 + k) * R + g, m, r[k]);
        }
#endif
    for (int64_t k = k0; k < kc; k++)
#pragma GCC unroll 32
        for (int i = 0; i < R; i++) dst[k * R + i] = src[i * stride + k];
}

// h <= MR rows i of op(A), k in [0, kc) -> dst[k*MR + i], zero rows past h.
// op(A)(i, k) = src[i*rs + k*cs]: cs == 1 transposes (rows of A are contiguous in k).
static void pack_a_panel(const real *src, int64_t rs, int64_t cs, int64_t h, int64_t kc,
                         real *dst) {
    if (h == MR && (cs == 1 || rs == 1)) { // constant trip counts: unrolled, vectorized
        if (cs == 1)
            transpose_rows(src, rs, MR, kc, dst);
        else
            for (int64_t k = 0; k < kc; k++)
#pragma GCC unroll 32
                for (int i = 0; i < MR; i++) dst[k * MR + i] = src[k * cs + i];
        return;
    }
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < MR; i++) dst[k * MR + i] = i < h ? src[i * rs + k * cs] : 0;
}

// w <= NR columns j of op(B) = Bᵀ, B stored (N, K), k in [0, kc) -> dst[k*NR + j],
// zero columns past w. op(B)(k, j) = src[j*cs + k].
static void pack_bt_panel(const real *src, int64_t cs, int64_t w, int64_t kc, real *dst) {
    if (w == NR) {
        transpose_rows(src, cs, NR, kc, dst);
        return;
    }
    for (int64_t k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++) dst[k * NR + j] = j < w ? src[j * cs + k] : 0;
}

// Columns [0, w) of op(B) = B row-major (op(B)(k, j) = src[k*rs + j]), k in [0, kc) ->
// the NR-column panels dst + q*kc*NR, zero-padded: row by row, so that B is read
// sequentially rather than a few cache lines per row, rows pages apart
static void pack_b_rows(const real *src, int64_t rs, int64_t w, int64_t kc, real *dst) {
    const int64_t panels = (w + NR - 1) / NR;
    for (int64_t k = 0; k < kc; k++)
        for (int64_t q = 0; q < panels; q++) {
            const real *s = src + k * rs + q * NR;
            real *d = dst + q * kc * NR + k * NR;
            if (w - q * NR >= NR) {
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) V_STORE(d + v * VL, V_LOAD(s + v * VL));
            } else {
                for (int v = 0; v < NV; v++)
                    V_STORE(d + v * VL, V_LOADM(M_FIRST(w - q * NR - v * VL), s + v * VL));
            }
        }
}

#ifdef V_DPBF16
// bfloat16 products with V_DPBF16(acc, a, b) (vdpbf16ps: per lane, acc += the odd products
// of a pair, then the even ones). Packed panels of k pairs: a[(q*MR + i)*2 + {0, 1}] =
// op(A)(i, 2q + {0, 1}), b[(q*NR + j)*2 + {0, 1}] likewise, as bfloat16; kc is even.
BF16_TARGET static void kernel_packed_bf16(const FN(mt_tile) *t) {
    const int64_t pairs = t->kc / 2, n = t->n;
    const int full = n >= NR;
    vmask mk[NV];
    for (int v = 0; v < NV; v++) mk[v] = M_FIRST(n - v * VL);
    prefetch_c(t);
    vec acc[MR][NV];
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[i][v] = V_ZERO();
    const int32_t *a = (const int32_t *)t->a, *b = (const int32_t *)t->b;
    for (int64_t q = 0; q < pairs; q++) {
        vint bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) bv[v] = VI_LOAD(b + v * VL);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            const vint ai = VI_SET1(a[i]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[i][v] = V_DPBF16(acc[i][v], ai, bv[v]);
        }
        a += MR;
        b += NR;
    }
    store_acc(t, acc, NV, mk, full);
}
#endif

// the descriptor FN(mt_kernel_<isa>) of these functions, with their cache blocking
#define KERNEL_DESCRIPTOR(isa, KC, MC, NC)                                                 \
    const FN(mt_kernel) FN(mt_kernel_##isa) = {                                            \
        .mr = MR, .nr = NR, .vl = VL, .kc = KC, .mc = MC, .nc = NC,                        \
        .packed = kernel_packed, .strided = kernel_strided, .narrow = kernel_narrow,       \
        .pack_a = pack_a_panel, .pack_bt = pack_bt_panel, .pack_b_rows = pack_b_rows}
