// Public entry points: dispatch on the dtype.
#include "mt_internal.h"

// A dense layer's activation derivative is applied by the GEMM that makes its dA: the dX
// GEMM of a dense layer directly above it, if there is one; else by the layer itself.
void mt_prepare(mt_net *net) {
    for (int l = 0; l < net->nlayers; l++) {
        mt_layer *L = &net->layers[l];
        L->dact_above = L->kind == MT_LAYER_DENSE && L->act != MT_ACT_IDENTITY &&
                        l + 1 < net->nlayers && net->layers[l + 1].kind == MT_LAYER_DENSE;
    }
}

void mt_lay_out(mt_net *net) {
    if (net->dtype == MT_FLOAT64)
        mt_lay_out_f64(net);
    else
        mt_lay_out_f32(net);
}

size_t mt_workspace_bytes(const mt_net *net, int64_t max_batch) {
    return net->dtype == MT_FLOAT64 ? mt_workspace_bytes_f64(net, max_batch)
                                    : mt_workspace_bytes_f32(net, max_batch);
}

int mt_step(mt_net *net, const void *X, const void *y, const int64_t *idx, int64_t n,
            int64_t iteration, const mt_optim *opt, double *loss) {
    return net->dtype == MT_FLOAT64 ? mt_step_f64(net, X, y, idx, n, iteration, opt, loss)
                                    : mt_step_f32(net, X, y, idx, n, iteration, opt, loss);
}

int mt_update(mt_net *net, const mt_optim *opt) {
    return net->dtype == MT_FLOAT64 ? mt_update_f64(net, opt) : mt_update_f32(net, opt);
}

void mt_allreduce(const mt_net *net, double *buf, int64_t n, int *status) {
    if (!net->reduce) return;
    // the callers' loops end with a barrier: buf is complete; the hook runs in the thread
    // that called mt_step (a Python callback takes the GIL back there)
#pragma omp master
    if (*status == MT_OK && net->reduce(net->reduce_ctx, buf, n) != 0) *status = MT_ERR_REDUCE;
#pragma omp barrier
}

int mt_forward(mt_net *net, const void *X, const int64_t *idx, int64_t n, void *out) {
    return net->dtype == MT_FLOAT64 ? mt_forward_f64(net, X, idx, n, out)
                                    : mt_forward_f32(net, X, idx, n, out);
}

int mt_gemm(int dtype, int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
            const void *A, const void *B, void *C, int accumulate) {
    return dtype == MT_FLOAT64
               ? mt_gemm_alloc_f64(isa, trans_a, trans_b, M, N, K, A, B, C, accumulate)
               : mt_gemm_alloc_f32(isa, trans_a, trans_b, M, N, K, A, B, C, accumulate);
}

int mt_gemm_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                 const float *A, const float *B, float *C, int accumulate, int prepack_b) {
    return mt_gemm_alloc_bf16(isa, trans_a, trans_b, M, N, K, A, B, C, accumulate, prepack_b);
}

// Adding one to the exponent field carries into the top bit exactly when the field is all
// ones (infinity, NaN): one branch-free pass of integer operations that vectorises, with
// no temporary, where NumPy's isfinite(x).all() writes a mask and reads it back.
// Cloned per instruction set (chosen at load by the dynamic linker): wider vectors read
// the batch at the speed of the cache rather than 16 bytes per instruction.
MT_TARGET_CLONES
static int all_finite_range(int dtype, const void *x, int64_t n) {
    if (dtype == MT_FLOAT64) {
        const uint64_t *u = x, exp = 0x7ff0000000000000u, one = 0x0010000000000000u;
        uint64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad |= (u[i] & exp) + one;
        return !(bad >> 63);
    }
    const uint32_t *u = x, exp = 0x7f800000u, one = 0x00800000u;
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad |= (u[i] & exp) + one;
    return !(bad >> 31);
}

// From this many elements (a training set, checked once per fit) the team shares the pass
// in chunks taken dynamically: one core reads memory at a fraction of what two do, and on
// the MNIST-shaped set the serial pass was a twentieth of a two-thread epoch.
#define FINITE_PAR_ELEMS (1 << 21)
#define FINITE_CHUNK (1 << 18)

int mt_all_finite(int dtype, const void *x, int64_t n) {
    const int team = omp_get_level() > 0 ? 1 : mt_team_size(0);
    if (team == 1 || n < FINITE_PAR_ELEMS) return all_finite_range(dtype, x, n);
    const size_t es = dtype == MT_FLOAT64 ? sizeof(double) : sizeof(float);
    const int64_t chunks = (n + FINITE_CHUNK - 1) / FINITE_CHUNK;
    int ok = 1;
#pragma omp parallel for num_threads(team) schedule(dynamic, 1) reduction(&& : ok)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t lo = c * FINITE_CHUNK;
        if (ok) // a thread that found a bad chunk skips the rest of its share
            ok = all_finite_range(dtype, (const char *)x + lo * es,
                                  n - lo < FINITE_CHUNK ? n - lo : FINITE_CHUNK);
    }
    return ok;
}
