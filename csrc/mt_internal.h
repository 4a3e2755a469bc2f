// Internal declarations of the C core. The typed sources (gemm.c, layers.c, loss.c,
// optim.c, net.c) are compiled twice, with MT_DOUBLE=0 and 1: `real` is float or
// double and FN(name) gives name_f32 or name_f64, so each kernel is written once.
#ifndef MT_INTERNAL_H
#define MT_INTERNAL_H

#include "minitrain.h"
#include <omp.h>

// Below this many multiply-adds (or elements for elementwise passes) a loop stays on
// one thread: forking costs more than it saves, and more threads must never be slower.
#define MT_PAR_FLOPS (1 << 17)
#define MT_PAR_ELEMS (1 << 15)
#define MT_ALIGN 64

// Runs the statement given after cond, whose loops are orphaned `omp for ... nowait`
// constructs. Inside the parallel region of an iteration (mt_step, mt_forward): by the
// region's team, then a barrier (the next pass reads what this one wrote). Outside one
// (the optimizer update): on a team of mt_team threads when `cond`, else directly, since
// entering a parallel region costs about 0.3 us even when its if clause is false.
#define MT_PARALLEL_IF(cond, ...)                                                          \
    do {                                                                                   \
        if (omp_get_level() > 0) {                                                         \
            __VA_ARGS__;                                                                   \
            _Pragma("omp barrier")                                                         \
        } else if ((cond) && mt_team > 1) {                                                \
            _Pragma("omp parallel num_threads(mt_team)") __VA_ARGS__;                      \
        } else {                                                                           \
            __VA_ARGS__;                                                                   \
        }                                                                                  \
    } while (0)

// Compiles the function once per instruction set below and calls the best the CPU runs
// (resolved once, at load, through a glibc ifunc), for element-wise passes that gain from
// wider vectors; elsewhere the function is compiled once, for the baseline.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && defined(__GLIBC__)
#define MT_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MT_TARGET_CLONES
#endif

// the ISA new nets and calls use unless told otherwise (cpu.c)
extern int mt_isa_default;

// Threads (cpu.c). mt_team: the team size of the call running in this thread, set on
// entry by mt_step, mt_forward and mt_gemm from mt_team_size.
extern _Thread_local int mt_team;
// The team a call from this thread gets: the process-wide count (mt_set_num_threads),
// or in "auto" mode `wanted` (a net's choice; <= 0: every core), lowered to a limit set
// in this thread with omp_set_num_threads (threadpoolctl).
int mt_team_size(int wanted);
// Records the team size an iteration used (mt_get_num_threads reports it in auto mode).
void mt_team_used(int team);

// buf (n) = its sum over the ranks through net->reduce, called by the master thread between
// barriers of the team (nothing without a hook). *status (shared by the team) becomes
// MT_ERR_REDUCE when the hook fails; once it has failed the hook is not called again.
void mt_allreduce(const mt_net *net, double *buf, int64_t n, int *status);

// What the threads of a team share to start output tiles as soon as the panels they read
// are packed, rather than after a barrier (gemm.c). Zeros when no product is under way.
enum { MT_GEMM_READY = 1024 };
typedef struct {
    int64_t next;                 // the next job to hand out
    int64_t done;                 // tiles (and column-sums jobs) finished
    int64_t pad[MT_ALIGN / sizeof(int64_t) - 2];
    int ready[MT_GEMM_READY];     // 1: packing job j is done
} mt_gemm_sync;

// The GEMM micro-kernels and packing buffer of a call (gemm.c)
typedef struct {
    int isa;     // mt_isa
    void *pack;  // mt_gemm_pack_elems of its products, 64-byte aligned
    int *nonfinite; // set to 1 (never cleared here) when a parameter gradient the layers
                    // compute holds an infinity or a NaN: checked as each tile is stored
    int bf16;    // float32 products with bfloat16 inputs (mt_net.bf16)
    // bf16, or NULL: a dense layer's W packed as op(B) of X·W and of dZ·Wᵀ by the update
    // (mt_packed_weights), set by the iteration for the layer whose products it runs
    const void *packed_w, *packed_wt;
    mt_gemm_sync *sync; // or NULL: the tiles wait for all of the packing at a barrier
} mt_gemm_ws;

// The copies of the weight matrices of a bf16 net in the layout its products pack W into
// (mt_gemm_pack_b_rows_bf16 with isa), written by the update pass as it writes W, so that
// an iteration whose weights are as the last update left them packs no weight matrix.
typedef struct {
    int64_t off, in, out; // W (in, out) at params + off; ascending, disjoint offsets
    uint32_t *fwd, *bwd;  // op(B) of X·W; of dZ·Wᵀ (NULL: no dX is computed below)
} mt_packed_w;
typedef struct {
    int isa;   // of the layout
    int n;     // matrices with copies (0: none)
    int write; // the update writes them (else it only splits the parameters as it would)
    mt_packed_w w[MT_MAX_LAYERS];
} mt_packed_weights;

// What the threads of an update share (optim.c): per chunk of the gradient, whether it
// holds a non-finite value, clipping's Σ g² and the update's Σ p² (scikit-learn's L2 term)
enum { MT_UPDATE_CHUNKS = 256 };
typedef struct {
    int bad[MT_UPDATE_CHUNKS];
    // part: per piece of the update's split (fixed chunks, or with packed copies the
    // whole packing units of each weight matrix and chunks in between: optim.c)
    double norm_part[MT_UPDATE_CHUNKS], part[MT_UPDATE_CHUNKS + 2 * MT_MAX_LAYERS + 2];
} mt_update_scratch;

#define MT_DECLARE_TYPED(real, sfx)                                                        \
    int mt_gemm_alloc_##sfx(int isa, int trans_a, int trans_b, int64_t M, int64_t N,       \
                            int64_t K, const real *A, const real *B, real *C,              \
                            int accumulate);                                               \
    size_t mt_workspace_bytes_##sfx(const mt_net *net, int64_t max_batch);                 \
    void mt_lay_out_##sfx(mt_net *net);                                                    \
    int mt_step_##sfx(mt_net *net, const real *X, const void *y, const int64_t *idx,       \
                      int64_t n, int64_t iteration, const mt_optim *opt, double *loss);    \
    int mt_update_##sfx(mt_net *net, const mt_optim *opt);                                 \
    int mt_forward_##sfx(mt_net *net, const real *X, const int64_t *idx, int64_t n,        \
                         real *out);

MT_DECLARE_TYPED(float, f32)
int mt_gemm_alloc_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                       const float *A, const float *B, float *C, int accumulate,
                       int prepack_b);
MT_DECLARE_TYPED(double, f64)

#ifdef MT_REAL_SOURCE
#if MT_DOUBLE
typedef double real;
#define FN(name) name##_f64
#else
typedef float real;
#define FN(name) name##_f32
#endif

// layers.c (g: the GEMM micro-kernels and a packing buffer for the layer's products)
void FN(mt_dense_forward)(const mt_layer *L, const real *params, const real *X, real *Z,
                          real *A, int64_t n, const mt_gemm_ws *g);
void FN(mt_act_backward)(const mt_layer *L, const real *Z, const real *A, real *dA,
                         int64_t n);
void FN(mt_dense_backward)(const mt_layer *L, const real *params, real *grads,
                           const real *X, const real *dZ, real *dX, int64_t n,
                           const mt_layer *below, const real *Zin, const mt_gemm_ws *g);
// elements of packing buffer the layer's products need for batches of n rows
size_t FN(mt_dense_pack_elems)(const mt_layer *L, int64_t n);
void FN(mt_activation_forward)(const mt_layer *L, const real *X, real *Y, int64_t n);
void FN(mt_activation_backward)(const mt_layer *L, const real *X, const real *Y,
                                const real *dY, real *dX, int64_t n);
// dropout.c
void FN(mt_dropout_forward)(const mt_layer *L, uint64_t seed, int64_t iteration, int layer,
                            int64_t row0, const real *X, real *M, real *Y, int64_t n);
void FN(mt_dropout_backward)(const mt_layer *L, const real *M, const real *dY, real *dX,
                             int64_t n);
// batchnorm.c (sums: 2 c doubles of workspace; total: the rows of the global batch)
void FN(mt_batchnorm_forward)(const mt_net *net, const mt_layer *L, const real *X,
                              real *Xhat, real *stats, double *sums, real *Y, int64_t n,
                              int64_t total, int *status);
void FN(mt_batchnorm_inference)(const mt_layer *L, const real *params, const real *buffers,
                                const real *X, real *Y, int64_t n);
void FN(mt_batchnorm_backward)(const mt_net *net, const mt_layer *L, const real *Xhat,
                               const real *stats, double *sums, const real *dY, real *dX,
                               int64_t n, int64_t total, int *status);
void FN(mt_batchnorm_update_running)(const mt_layer *L, const real *stats, real *buffers,
                                     int64_t n);
// loss.c (returns MT_OK or MT_ERR_BAD_LABEL)
int FN(mt_loss_forward_backward)(const mt_net *net, const real *P, const void *y,
                                 const int64_t *idx, real *dP, int64_t n, int64_t out,
                                 double *rowloss, int *bad_label, double *batch_loss,
                                 double *batch_weight);
// optim.c (returns MT_OK or MT_ERR_NONFINITE_GRADIENT, then with nothing written).
// pw (float32 only, or NULL): copies of the weight matrices the update writes from the
// new weights (none for MT_OPT_GRADIENT), in the same pass; its split of the parameters
// follows pw's matrices, so pass the same pw (or NULL) to every call of one net.
int FN(mt_optim_update)(const mt_optim *o, real *params, real *grads, real *state,
                        int64_t n, double batch_weight, const mt_packed_weights *pw,
                        double *l2_term);
// The same update in two parts, for the parallel region of an iteration: every thread of
// the team runs mt_optim_update_team on one scratch (shared); once the team is done,
// mt_optim_result gives mt_optim_update's status and *l2_term.
// checked: the caller found every gradient element finite, so the update skips its own
// check (unless it clips: the norm takes a pass anyway).
void FN(mt_optim_update_team)(const mt_optim *o, real *params, real *grads,
                              real *state, int64_t n, double batch_weight, int checked,
                              const mt_packed_weights *pw, mt_update_scratch *s);
int FN(mt_optim_result)(const mt_optim *o, int64_t n, double batch_weight, int checked,
                        const mt_packed_weights *pw, const mt_update_scratch *s,
                        double *l2_term);
#endif

#endif
