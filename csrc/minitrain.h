// minitrain C core: one training iteration of a multi-layer perceptron per call.
//
// Python owns every buffer (parameters, gradients, optimizer state, workspace) and
// hands the core pointers to them; the core never allocates. The binding
// (src/minitrain/_core.pyx) validates every shape and pointer before calling in,
// so functions here check only what can go wrong at run time: a non-finite loss or
// gradient, and labels that changed after the binding checked them (the caller owns y).
#ifndef MINITRAIN_H
#define MINITRAIN_H

#include <stddef.h>
#include <stdint.h>

#define MT_MAX_LAYERS 64

typedef enum { MT_FLOAT32 = 0, MT_FLOAT64 = 1 } mt_dtype;

typedef enum {
    MT_ACT_IDENTITY = 0,
    MT_ACT_RELU,
    MT_ACT_LEAKY_RELU,
    MT_ACT_TANH,
    MT_ACT_SIGMOID,
    MT_ACT_GELU,
} mt_act;

typedef enum {
    MT_LOSS_CROSS_ENTROPY = 0, // softmax over logits, integer (int64) labels
    MT_LOSS_MSE,               // mean over all n*out elements of (p - y)^2
    MT_LOSS_BINARY_CROSS_ENTROPY, // sigmoid over logits, 0/1 targets, mean over n*out
    MT_LOSS_POISSON,           // exp over log-means z, counts y: exp(z) - y z + y log y - y
} mt_loss;

// How a batch's element losses become the batch loss (rows weighted by sample_weight).
typedef enum {
    MT_REDUCE_MEAN = 0,  // mean over the n*out elements (over the n rows for cross-entropy)
    MT_REDUCE_SKLEARN,   // scikit-learn's MLP: mean over rows of the sum over outputs,
                         // squared error halved, log losses capped at -log(eps)
} mt_reduction;

typedef enum {
    MT_LAYER_DENSE = 0,   // act(X W + b)
    MT_LAYER_DROPOUT,     // inverted dropout in training, identity in inference
    MT_LAYER_BATCHNORM,   // gamma * (X - mean) / sqrt(var + eps) + beta, per column
    MT_LAYER_ACTIVATION,  // act(X)
} mt_layer_kind;

typedef enum {
    MT_OPT_SGD = 0,
    MT_OPT_ADAM,
    MT_OPT_GRADIENT, // no update: the gradient with weight decay's L2 penalty added is left
                     // in grads (and l2_term set), for an optimizer outside the core (L-BFGS)
} mt_opt_kind;

typedef enum {
    MT_OPT_STYLE_TORCH = 0,  // PyTorch's forms (below); weight_decay added to the gradient
    MT_OPT_STYLE_SKLEARN,    // scikit-learn's MLP: velocity v = momentum*v - lr*g, p += v
                             // (nesterov: p += momentum*v - lr*g); Adam p -= lr_t*m/(sqrt(v)+eps)
                             // with lr_t = lr*sqrt(1-beta2^t)/(1-beta1^t); weight_decay is the
                             // L2 alpha of the batch's summed loss, so divided by its weight
} mt_opt_style;

typedef enum {
    MT_OK = 0,
    MT_ERR_NONFINITE_LOSS = 1,     // loss not finite: nothing updated, gradient not computed
    MT_ERR_BATCH_TOO_LARGE = 2,    // n exceeds the batch the workspace was sized for
    MT_ERR_NO_MEMORY = 3,          // mt_gemm could not allocate its packing buffer
    MT_ERR_BAD_LABEL = 4,          // a cross-entropy label of the batch outside [0, out):
                                   // nothing updated, gradient not computed
    MT_ERR_NONFINITE_GRADIENT = 5, // gradient not finite: parameters, optimizer state and
                                   // batchnorm running statistics left untouched
    MT_ERR_REDUCE = 6,             // the net's reduce hook failed: nothing updated
    MT_ERR_NO_GRADIENT = 7,        // mt_update without the gradient of an mt_step before it
} mt_status;

// The sum over the ranks of a data-parallel fit of buf (n doubles), in place; returns 0,
// or nonzero when the collective failed. Called by one thread of the iteration's team
// while the others wait at a barrier.
typedef int (*mt_reduce_fn)(void *ctx, double *buf, int64_t n);

// Instruction sets of the GEMM micro-kernels, in increasing order. AVX512_BF16 adds
// vdpbf16ps for the bfloat16 products; float32 and float64 use the AVX-512F kernels there.
typedef enum {
    MT_ISA_GENERIC = 0,
    MT_ISA_AVX2 = 1,
    MT_ISA_AVX512 = 2,
    MT_ISA_AVX512_BF16 = 3,
} mt_isa;

typedef struct {
    int kind;          // mt_layer_kind
    int act;           // mt_act (dense, activation)
    double act_param;  // leaky_relu negative slope
    int64_t in, out;   // widths of the layer's input and output rows (equal unless dense)
    int64_t w_off;     // dense: W (in, out); batchnorm: gamma (out,) at params + w_off
    int64_t b_off;     // dense: b (out,);    batchnorm: beta (out,)  at params + b_off
    double rate;       // dropout: probability of zeroing an element
    double momentum;   // batchnorm: running = momentum * running + (1 - momentum) * batch
    double eps;        // batchnorm: added to the variance
    int64_t s_off;     // batchnorm: running mean (out,), variance (out,) at buffers + s_off
    int dact_above;    // set by mt_prepare: 1 when the dX GEMM of the dense layer above
                       // applies this dense layer's activation derivative (fused)
} mt_layer;

typedef struct {
    int kind;             // mt_opt_kind
    double lr;
    double momentum;      // SGD: buf = momentum*buf + g; nesterov uses g + momentum*buf
    int nesterov;
    double weight_decay;  // L2 added to the gradient (SGD, Adam) or decoupled (AdamW)
    int decoupled;        // 1: AdamW-style decay p -= lr*wd*p
    double beta1, beta2, eps;
    int64_t t;            // 1-based update count, for Adam's bias correction
    double clip_norm;     // > 0: rescale the gradient to this global L2 norm when larger
    int64_t n_decay;      // weight decay applies to params [0, n_decay): the weights
    int style;            // mt_opt_style
} mt_optim;

typedef struct {
    int dtype;             // mt_dtype: of params, grads, state, X and float targets
    int loss;              // mt_loss
    int reduction;         // mt_reduction
    const void *sample_weight; // (rows,) in dtype, indexed like y; NULL: every row weighs 1
    int nlayers;
    mt_layer layers[MT_MAX_LAYERS];
    int64_t n_params;
    void *params, *grads;  // n_params each
    void *state;           // SGD: n_params (momentum); Adam: 2*n_params (m, v)
    void *buffers;         // non-trainable state: batchnorm running statistics
    uint64_t seed;         // keys the dropout masks, with the iteration, layer and element
    void *work;            // mt_workspace_bytes(net, max_batch) bytes, 64-byte aligned
    int64_t max_batch;
    double l2_term;        // out, set by mt_step: with the scikit-learn optimizer style, the
                           // L2 term of its batch loss, 0.5 weight_decay Σ params[:n_decay]²
                           // / batch weight, from the parameters before the update; else 0
    int isa;               // mt_isa of the GEMM micro-kernels (at most mt_cpu_isa()): fixed
                           // per net, so no other thread can change a fit's roundings
    int threads;           // the team in "auto" thread mode (<= 0: every core), chosen by
                           // the caller's controller; ignored when the count is fixed
    int bf16;              // float32 only, 1: mixed bfloat16, the dense layers' products take
                           // their inputs rounded to bfloat16 and accumulate in float32;
                           // everything else (and every buffer) stays float32
    int weights_unchanged; // bf16, in, for the next mt_step only (which clears it): 1 when
                           // the caller knows that nothing has written the weights since
                           // this net's last update, so that the step's products may read
                           // the bfloat16 copies of W that update wrote (in the workspace)
                           // instead of packing W again; never set it otherwise: a copy
                           // older than the weights would train a different model
    int copies_read;       // out, set by mt_step: 1 when its products read those copies
    int pack_copies;       // bf16, in, for the next mt_step only (which clears it): 1 when
                           // its update (there or in mt_update) is to write the copies,
                           // because the caller means to vouch for the weights in the step
                           // after it; else the update skips that work
    // The shard of a data-parallel iteration: the n rows of a call are the rows
    // [shard_row0, shard_row0 + n) of a global batch split over the ranks. All zero (and
    // reduce NULL): the call's rows are the whole batch.
    int64_t shard_row0;    // place of the first row in the global batch: keys dropout masks
    int64_t shard_rows;    // rows of the global batch (batchnorm's statistics); 0: n
    double shard_weight;   // weight of the global batch, which scales the loss and gradient
                           // (so that the ranks' parts sum to the batch's); 0: the rows' own
    mt_reduce_fn reduce;   // sums batchnorm's per-feature sums over the ranks, in mt_step;
    void *reduce_ctx;      // NULL: one process. With it, mt_step runs every pass whatever
                           // the loss, so every rank makes the same calls to it
} mt_net;

// Decides, once the layers are described, what the description implies (dact_above).
void mt_prepare(mt_net *net);

// Bytes of workspace a net needs for batches of up to max_batch rows.
size_t mt_workspace_bytes(const mt_net *net, int64_t max_batch);

// Lays net->work out for net->max_batch rows (once per reserve, after setting both);
// mt_step and mt_forward use that layout.
void mt_lay_out(mt_net *net);

// One iteration on the n rows X[idx[0..n)] (rows 0..n of X when idx is NULL).
// X (rows, in0) row-major; y int64 (rows,) for cross-entropy, else (rows, out) in dtype.
// `iteration` keys the dropout masks: the same iteration gives the same masks.
// With opt == NULL the gradient is left in net->grads and nothing is updated (neither
// the parameters nor the batchnorm running statistics); an opt of kind MT_OPT_GRADIENT
// adds its L2 penalty to that gradient and updates nothing either.
// *loss receives the batch loss (see mt_reduction). Returns an mt_status: with opt, the
// update is applied only when the loss and the whole gradient are finite.
int mt_step(mt_net *net, const void *X, const void *y, const int64_t *idx, int64_t n,
            int64_t iteration, const mt_optim *opt, double *loss);

// The update of the gradient that the last mt_step with opt == NULL left in net->grads, as
// net->grads is now (summed over the ranks of a data-parallel fit): parameters, optimizer
// state and batchnorm running statistics, as mt_step with opt would have updated them.
// MT_ERR_NO_GRADIENT when no such step precedes it (each gradient is applied once).
int mt_update(mt_net *net, const mt_optim *opt);

// Inference (dropout off, batchnorm on running statistics): out (n, out_last) = network output (logits for the classification losses)
// for rows X[idx[0..n)] (or rows 0..n), n <= max_batch.
int mt_forward(mt_net *net, const void *X, const int64_t *idx, int64_t n, void *out);

// C (M, N) = op(A) (M, K) · op(B) (K, N) (+ C when accumulate), row-major, op = transpose
// when the flag is set, with the micro-kernels of `isa` (at most mt_cpu_isa()). Exposed
// for tests and benchmarks: allocates its packing buffer per call (the layers use the
// workspace's, through the typed entry points in gemm.h).
int mt_gemm(int dtype, int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
            const void *A, const void *B, void *C, int accumulate);

// The same product in float32 with its inputs rounded to bfloat16 (nearest even,
// denormals to zero), accumulated in float32 as vdpbf16ps does: per pair of k, the odd
// product first. The same bits with every isa and thread count. prepack_b: op(B) is
// packed on its own first, and the product reads that copy (as pre-packed weights are).
int mt_gemm_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                 const float *A, const float *B, float *C, int accumulate, int prepack_b);

// 1 when the n elements of x (dtype) are all finite, else 0. Reads x once; a large x
// (millions of elements) with the threads of the current count, outside a parallel region.
int mt_all_finite(int dtype, const void *x, int64_t n);

// The best mt_isa this CPU runs; the default for new nets (chosen at load: the best); set
// the default (clamped to the CPU's best) and return it. Results depend on the ISA (the
// order of roundings), never on the thread count.
int mt_cpu_isa(void);
int mt_get_isa(void);
int mt_set_isa(int isa);

// Threads, process-wide: n >= 1 fixes the team of every call from any thread; n == 0 is
// "auto": each net's `threads`. A limit set in the calling thread with omp_set_num_threads
// (threadpoolctl) lowers either. mt_get_num_threads: the fixed count, or in auto mode the
// team of the last iteration, as lowered for the calling thread; mt_num_threads_fixed: 1
// when the count is fixed (mt_set_num_threads(n >= 1), OMP_NUM_THREADS at load, or a limit
// in the calling thread); mt_max_threads: the most "auto" uses (OMP_NUM_THREADS or cores);
// mt_last_team: the team of the last call from the calling thread.
void mt_set_num_threads(int n);
int mt_get_num_threads(void);
int mt_num_threads_fixed(void);
int mt_max_threads(void);
int mt_last_team(void);

#endif
