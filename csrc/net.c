// The iteration: gather the batch, forward through every layer, loss, backward,
// update. All buffers come from the workspace laid out by `layout`.
#define MT_REAL_SOURCE
#include "gemm.h"
#include <math.h>
#include <string.h>

typedef struct {
    real *x;                    // gathered batch rows (n, in0)
    real *z[MT_MAX_LAYERS];     // kept for backward (n, out_l): dense pre-activations,
                                // dropout masks, batchnorm normalised inputs; none for
                                // activation layers, whose input is kept by the layer below
    real *a[MT_MAX_LAYERS];     // layer outputs (n, out_l); == z for identity dense layers
    real *stats[MT_MAX_LAYERS]; // batchnorm: batch mean, variance, 1/std (3, out_l)
    double *sums[MT_MAX_LAYERS]; // batchnorm: column sums (2, out_l), reduced over the ranks
    real *d[2];                 // backward ping-pong buffers (n, max width)
    double *rowloss;            // (n,)
    mt_gemm_ws gemm;            // the net's micro-kernels and the GEMM packing buffer
    int nonfinite;              // set by the backward pass when a gradient is not finite
    // what mt_update needs of the step whose gradient it applies (set by mt_step)
    int pending;                // a gradient waits for mt_update
    int team;                   // the step's team
    int64_t rows;               // rows of the (global) batch: batchnorm's running variance
    double weight;              // weight of the (global) batch: scikit-learn's L2 term
    int status;                 // of the reduce hook, shared by the step's team
    // bf16: the weight matrices' copies packed by the update (in the layout of
    // packed.isa), copy[l] the one of layer l (-1: none); packed_valid: they hold the
    // weights as the last update left them, which the products of a step may read instead
    // of packing W when the caller also vouches that nothing wrote W since
    // (mt_net.weights_unchanged)
    mt_packed_weights packed;
    int copy[MT_MAX_LAYERS];
    int packed_valid;
} workspace;

static size_t carve(size_t *off, size_t bytes) {
    size_t at = *off;
    *off += (bytes + MT_ALIGN - 1) / MT_ALIGN * MT_ALIGN;
    return at;
}

// The first layer whose parameters get a gradient: no dX is computed below it
static int first_trained(const mt_net *net) {
    int first = 0;
    while (first < net->nlayers - 1 && net->layers[first].kind != MT_LAYER_DENSE &&
           net->layers[first].kind != MT_LAYER_BATCHNORM)
        first++;
    return first;
}

// Weights from which a matrix gets a copy: 1 MB of float32, a core's L2. A smaller W is
// packed from the cache by the products, and writing its copies in the update costs as
// much as they save (measured on the MNIST-shaped net, whose matrices are all smaller).
#define COPY_MIN_WEIGHTS (1 << 18)

// bf16: the packed copies of the dense layers' W in the layout of net->isa's products,
// for the large matrices in ascending order of their offsets (the update's split takes
// them in that order); the rare W that does not follow the one before it has none and is
// packed by each product as without copies
static void lay_out_copies(const mt_net *net, size_t *off, char *base, workspace *ws) {
    if (base) {
        ws->packed = (mt_packed_weights){.isa = net->isa};
        ws->packed_valid = 0;
        for (int l = 0; l < MT_MAX_LAYERS; l++) ws->copy[l] = -1;
    }
#if !MT_DOUBLE
    if (!net->bf16) return;
    const int first = first_trained(net);
    int n = 0;
    int64_t end = 0;
    for (int l = 0; l < net->nlayers; l++) {
        const mt_layer *L = &net->layers[l];
        if (L->kind != MT_LAYER_DENSE || L->w_off < end || L->in * L->out < COPY_MIN_WEIGHTS)
            continue;
        end = L->w_off + L->in * L->out;
        const size_t fwd = carve(off, mt_gemm_packed_b_words_bf16(net->isa, L->in, L->out) * 4);
        const size_t bwd =
            l == first ? 0 : carve(off, mt_gemm_packed_b_words_bf16(net->isa, L->out, L->in) * 4);
        if (base) {
            ws->packed.w[n] = (mt_packed_w){L->w_off, L->in, L->out, (uint32_t *)(base + fwd),
                                            l == first ? NULL : (uint32_t *)(base + bwd)};
            ws->copy[l] = n;
        }
        n++;
    }
    if (base) ws->packed.n = n;
#else
    (void)net, (void)off;
#endif
}

// Lays the workspace out for batches of up to `rows`; returns its size in bytes.
// With base == NULL only the size is computed.
static size_t layout(const mt_net *net, int64_t rows, char *base, workspace *ws) {
    size_t off = 0, es = sizeof(real);
    int64_t width = 0; // the widest layer output: no gradient flows into the data
    size_t at = carve(&off, rows * net->layers[0].in * es);
    if (base) ws->x = (real *)(base + at);
    for (int l = 0; l < net->nlayers; l++) {
        const mt_layer *L = &net->layers[l];
        width = L->out > width ? L->out : width;
        if (L->kind != MT_LAYER_ACTIVATION) {
            at = carve(&off, rows * L->out * es);
            if (base) ws->z[l] = (real *)(base + at);
        }
        if (L->kind != MT_LAYER_DENSE || L->act != MT_ACT_IDENTITY)
            at = carve(&off, rows * L->out * es);
        if (base) ws->a[l] = (real *)(base + at);
        if (L->kind == MT_LAYER_BATCHNORM) {
            at = carve(&off, 3 * L->out * es);
            if (base) ws->stats[l] = (real *)(base + at);
            at = carve(&off, 2 * L->out * sizeof(double));
            if (base) ws->sums[l] = (double *)(base + at);
        }
    }
    for (int k = 0; k < 2; k++) {
        at = carve(&off, rows * width * es);
        if (base) ws->d[k] = (real *)(base + at);
    }
    at = carve(&off, rows * sizeof(double));
    if (base) ws->rowloss = (double *)(base + at);
    size_t pack = 0;
    for (int l = 0; l < net->nlayers; l++)
        if (net->layers[l].kind == MT_LAYER_DENSE) {
            const size_t need = FN(mt_dense_pack_elems)(&net->layers[l], rows);
            pack = need > pack ? need : pack;
        }
    at = carve(&off, pack * es);
    const size_t sync = carve(&off, sizeof(mt_gemm_sync));
    if (base) {
        memset(base + sync, 0, sizeof(mt_gemm_sync));
        ws->gemm = (mt_gemm_ws){.isa = net->isa, .pack = base + at, .nonfinite = &ws->nonfinite,
                                .bf16 = !MT_DOUBLE && net->bf16,
                                .sync = (mt_gemm_sync *)(base + sync)};
        ws->pending = 0;
    }
    lay_out_copies(net, &off, base, ws);
    return off;
}

// The laid-out workspace sits at the head of net->work, written once per reserve by
// mt_lay_out: an iteration reads its pointers, it does not lay them out again.
#define HEAD ((sizeof(workspace) + MT_ALIGN - 1) / MT_ALIGN * MT_ALIGN)

size_t FN(mt_workspace_bytes)(const mt_net *net, int64_t max_batch) {
    return HEAD + layout(net, max_batch, NULL, NULL);
}

void FN(mt_lay_out)(mt_net *net) {
    layout(net, net->max_batch, (char *)net->work + HEAD, (workspace *)net->work);
}

// the workspace laid out for this net, with the micro-kernels it uses now
static workspace *laid_out(mt_net *net) {
    workspace *ws = net->work;
    ws->gemm.isa = net->isa;
    ws->gemm.bf16 = !MT_DOUBLE && net->bf16;
    return ws;
}

// x (n, in) = rows idx of X (rows, in); threads split the rows
static void gather_rows(const real *X, const int64_t *idx, int64_t n, int64_t in, real *x) {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; i++)
        memcpy(x + i * in, X + idx[i] * in, (size_t)in * sizeof(real));
}

// X rows (idx or 0..n) gathered into ws.x (X itself when idx is NULL)
static const real *gather(const mt_net *net, workspace *ws, const real *X,
                          const int64_t *idx, int64_t n) {
    const int64_t in = net->layers[0].in;
    if (!idx) return X;
    MT_PARALLEL_IF(n * in >= MT_PAR_ELEMS, gather_rows(X, idx, n, in, ws->x));
    return ws->x;
}

// x (n, in0) -> the network output. Training draws the dropout masks of `iteration`
// and normalises with batch statistics (both of the global batch whose shard x is);
// inference skips dropout (the next layer reads the dropout layer's input) and normalises
// with the running statistics.
// With `copies`, a dense layer's X·W reads the packed copy of W the last update wrote.
static const real *forward(mt_net *net, workspace *ws, const real *x, int64_t n,
                           int training, int64_t iteration, int copies) {
    const real *input = x;
    for (int l = 0; l < net->nlayers; l++) {
        const mt_layer *L = &net->layers[l];
        switch (L->kind) {
        case MT_LAYER_DENSE: {
            mt_gemm_ws g = ws->gemm;
            if (copies && ws->copy[l] >= 0) g.packed_w = ws->packed.w[ws->copy[l]].fwd;
            FN(mt_dense_forward)(L, net->params, input, ws->z[l], ws->a[l], n, &g);
            break;
        }
        case MT_LAYER_ACTIVATION:
            FN(mt_activation_forward)(L, input, ws->a[l], n);
            break;
        case MT_LAYER_DROPOUT:
            if (!training) continue;
            FN(mt_dropout_forward)(L, net->seed, iteration, l, net->shard_row0, input,
                                   ws->z[l], ws->a[l], n);
            break;
        case MT_LAYER_BATCHNORM:
            if (training)
                FN(mt_batchnorm_forward)(net, L, input, ws->z[l], ws->stats[l], ws->sums[l],
                                         ws->a[l], n, ws->rows, &ws->status);
            else
                FN(mt_batchnorm_inference)(L, net->params, net->buffers, input, ws->a[l], n);
            break;
        }
        input = ws->a[l];
    }
    return input;
}

// dA (n, out_l) of layer l -> its parameter gradients, and dX (n, in_l) unless NULL
// (with `copies`, a dense layer's dZ·Wᵀ reads the packed copy of Wᵀ the last update wrote)
static void backward_layer(mt_net *net, workspace *ws, int l, const real *input, real *dA,
                           real *dX, int64_t n, int copies) {
    const mt_layer *L = &net->layers[l];
    switch (L->kind) {
    case MT_LAYER_DENSE: {
        // dA -> dZ here unless the dense layer above applied act' while its GEMM made dA;
        // likewise this layer's GEMM applies the act' of the layer below to dX when fused
        // (mt_prepare decided both)
        if (L->act != MT_ACT_IDENTITY && !L->dact_above)
            FN(mt_act_backward)(L, ws->z[l], ws->a[l], dA, n);
        const mt_layer *below = l > 0 && net->layers[l - 1].dact_above ? &net->layers[l - 1]
                                                                        : NULL;
        mt_gemm_ws g = ws->gemm;
        if (copies && ws->copy[l] >= 0) g.packed_wt = ws->packed.w[ws->copy[l]].bwd;
        FN(mt_dense_backward)(L, net->params, net->grads, input, dA, dX, n, below,
                              below ? ws->z[l - 1] : NULL, &g);
        break;
    }
    case MT_LAYER_ACTIVATION:
        FN(mt_activation_backward)(L, input, ws->a[l], dA, dX, n);
        break;
    case MT_LAYER_DROPOUT:
        FN(mt_dropout_backward)(L, ws->z[l], dA, dX, n);
        break;
    case MT_LAYER_BATCHNORM: {
        FN(mt_batchnorm_backward)(net, L, ws->z[l], ws->stats[l], ws->sums[l], dA, dX, n,
                                  ws->rows, &ws->status);
        // after the pass's barrier, so every thread sees (and checks) the same values
        const real *g = net->grads;
        if (!mt_all_finite(net->dtype, g + L->w_off, L->out) ||
            !mt_all_finite(net->dtype, g + L->b_off, L->out)) {
#pragma omp atomic write
            ws->nonfinite = 1;
        }
        break;
    }
    }
}

// Below this many multiply-adds an iteration runs on one thread: the team's barriers
// cost more than a second thread saves (the README's digits fit stays serial).
#define ITERATION_PAR_FLOPS (1 << 21)

// multiply-adds of the iteration's products on n rows (forward only, or with backward)
static double iteration_flops(const mt_net *net, int64_t n, int training) {
    double flops = 0;
    for (int l = 0; l < net->nlayers; l++)
        if (net->layers[l].kind == MT_LAYER_DENSE)
            flops += (training ? 3.0 : 1.0) * n * net->layers[l].in * net->layers[l].out;
    return flops;
}

// The team of one call: net->threads in auto mode, one thread for a small iteration
static int team_for(const mt_net *net, int64_t n, int training) {
    mt_team = mt_team_size(net->threads);
    if (iteration_flops(net, n, training) < ITERATION_PAR_FLOPS) mt_team = 1;
    mt_team_used(mt_team);
    return mt_team;
}

// the copies an update writes (NULL: none)
static const mt_packed_weights *copies_of(const workspace *ws) {
    return ws->gemm.bf16 && ws->packed.n > 0 ? &ws->packed : NULL;
}

// After an update: the copies hold the weights it wrote, or are older than the weights
// when it did not write them (an update of the "gradient" kind writes neither).
static void updated(workspace *ws, const mt_optim *opt) {
    if (copies_of(ws) && opt->kind != MT_OPT_GRADIENT) ws->packed_valid = ws->packed.write;
}

// gather, forward, loss, backward and (with opt) the update's checks and pass of one
// iteration: run by every thread of the team, whose passes share the work; each thread
// computes the (cheap, serial) batch loss itself from the row losses, in the same order,
// so all agree without a broadcast
static void step_passes(mt_net *net, workspace *ws, const real *X, const void *y,
                        const int64_t *idx, int64_t n, int64_t iteration, const mt_optim *opt,
                        int copies, mt_update_scratch *update, double *loss,
                        double *batch_weight, int *bad_label) {
    const real *x = gather(net, ws, X, idx, n);
    const real *P = forward(net, ws, x, n, 1, iteration, copies);
    const int last = net->nlayers - 1;
    const int64_t out = net->layers[last].out;
    double value, bw;
    const int status = FN(mt_loss_forward_backward)(net, P, y, idx, ws->d[0], n, out,
                                                    ws->rowloss, bad_label, &value, &bw);
#pragma omp master
    {
        *loss = value;
        *batch_weight = bw;
    }
    // with a reduce hook every rank runs every pass, so that all make the same collective
    // calls; the failure is returned after them, and agreed on before any update
    if ((status != MT_OK || !isfinite(value)) && !net->reduce) return;
    // below the first layer with parameters no gradient is needed
    const int first = first_trained(net);
    int cur = 0;
    for (int l = last; l >= first; l--) {
        real *dx = l > first ? ws->d[1 - cur] : NULL;
        backward_layer(net, ws, l, l > 0 ? ws->a[l - 1] : x, ws->d[cur], dx, n, copies);
        cur = 1 - cur;
    }
    // in the same region: the last backward pass ended at a barrier, so the whole gradient
    // is there, and so is the flag its passes set (they checked each gradient tile as it
    // was stored)
    int nonfinite;
#pragma omp atomic read
    nonfinite = ws->nonfinite;
    // (a failed step reaches here only with a reduce hook: it updates nothing)
    if (opt && !nonfinite && status == MT_OK && isfinite(value) && ws->status == MT_OK)
        FN(mt_optim_update_team)(opt, net->params, net->grads, net->state, net->n_params, bw,
                                 1, copies_of(ws), update);
}

// the batchnorm running statistics, after the update of the step ws describes
static void update_running(mt_net *net, const workspace *ws) {
    for (int l = 0; l < net->nlayers; l++)
        if (net->layers[l].kind == MT_LAYER_BATCHNORM)
            FN(mt_batchnorm_update_running)(&net->layers[l], ws->stats[l], net->buffers,
                                            ws->rows);
}

int FN(mt_step)(mt_net *net, const real *X, const void *y, const int64_t *idx, int64_t n,
                int64_t iteration, const mt_optim *opt, double *loss) {
    if (n > net->max_batch) return MT_ERR_BATCH_TOO_LARGE;
    net->l2_term = 0;
    workspace *ws = laid_out(net);
    const int team = team_for(net, n, 1);
    ws->pending = 0;
    ws->team = team;
    ws->rows = net->shard_rows > 0 ? net->shard_rows : n;
    ws->status = MT_OK;
    double batch_weight = 0;
    int bad_label = 0; // shared by the team: see mt_loss_forward_backward
    mt_update_scratch update; // shared by the team
    ws->nonfinite = 0;
    // the copies are read only on the caller's word that nothing wrote the weights since
    // the update that wrote the copies, given for this call alone; without it they are
    // not known to match the weights until an update writes them again
    const int copies = net->weights_unchanged && ws->packed_valid && copies_of(ws) &&
                       ws->packed.isa == net->isa;
    net->weights_unchanged = 0;
    net->copies_read = copies;
    if (!copies) ws->packed_valid = 0;
    // (for this step's update, here or in mt_update)
    ws->packed.write = net->pack_copies;
    net->pack_copies = 0;
    // one parallel region for the iteration's passes, the update's included: its threads
    // meet at the barriers the data flow needs, never fork or join in between (no region
    // for one thread: entering one costs a fraction of a microsecond even when inactive)
    if (team > 1) {
#pragma omp parallel num_threads(team)
        step_passes(net, ws, X, y, idx, n, iteration, opt, copies, &update, loss,
                    &batch_weight, &bad_label);
    } else {
        step_passes(net, ws, X, y, idx, n, iteration, opt, copies, &update, loss,
                    &batch_weight, &bad_label);
    }
    ws->weight = batch_weight;
    if (ws->status != MT_OK) return ws->status;
    if (bad_label) return MT_ERR_BAD_LABEL;
    if (!isfinite(*loss)) return MT_ERR_NONFINITE_LOSS;
    if (!opt) {
        ws->pending = 1;
        return MT_OK;
    }
    if (ws->nonfinite) return MT_ERR_NONFINITE_GRADIENT;
    const int status = FN(mt_optim_result)(opt, net->n_params, batch_weight, 1,
                                           copies_of(ws), &update, &net->l2_term);
    if (status != MT_OK || opt->kind == MT_OPT_GRADIENT)
        return status; // the running statistics stay with the parameters
    updated(ws, opt);
    update_running(net, ws);
    return MT_OK;
}

int FN(mt_update)(mt_net *net, const mt_optim *opt) {
    if (!net->work) return MT_ERR_NO_GRADIENT;
    workspace *ws = laid_out(net);
    if (!ws->pending) return MT_ERR_NO_GRADIENT;
    ws->pending = 0;
    mt_team = ws->team;
    // the gradient was summed over the ranks since the step: checked again, whole
    const int status = FN(mt_optim_update)(opt, net->params, net->grads, net->state,
                                           net->n_params, ws->weight, copies_of(ws),
                                           &net->l2_term);
    if (status != MT_OK || opt->kind == MT_OPT_GRADIENT)
        return status; // the running statistics stay with the parameters
    updated(ws, opt);
    update_running(net, ws);
    return MT_OK;
}

int FN(mt_forward)(mt_net *net, const real *X, const int64_t *idx, int64_t n, real *out) {
    if (n > net->max_batch) return MT_ERR_BATCH_TOO_LARGE;
    workspace *ws = laid_out(net);
    const int team = team_for(net, n, 0);
    const real *P = NULL;
    if (team > 1) {
#pragma omp parallel num_threads(team)
        {
            const real *p = forward(net, ws, gather(net, ws, X, idx, n), n, 0, 0, 0);
#pragma omp master
            P = p;
        }
    } else {
        P = forward(net, ws, gather(net, ws, X, idx, n), n, 0, 0, 0);
    }
    memcpy(out, P, (size_t)(n * net->layers[net->nlayers - 1].out) * sizeof(real));
    return MT_OK;
}
