// The iteration: gather the batch, forward through every layer, loss, backward,
// update. All buffers come from the workspace laid out by `layout`.
#define MT_REAL_SOURCE
#include "mt_internal.h"
#include <math.h>
#include <string.h>

typedef struct {
    real *x;                    // gathered batch rows (n, in0)
    real *z[MT_MAX_LAYERS];     // pre-activations (n, out_l)
    real *a[MT_MAX_LAYERS];     // activations (n, out_l); == z for identity
    real *d[2];                 // backward ping-pong buffers (n, max width)
    double *rowloss;            // (n,)
} workspace;

static size_t carve(size_t *off, size_t bytes) {
    size_t at = *off;
    *off += (bytes + MT_ALIGN - 1) / MT_ALIGN * MT_ALIGN;
    return at;
}

// Lays the workspace out for batches of up to `rows`; returns its size in bytes.
// With base == NULL only the size is computed.
static size_t layout(const mt_net *net, int64_t rows, char *base, workspace *ws) {
    size_t off = 0, es = sizeof(real);
    int64_t width = net->layers[0].in;
    size_t at = carve(&off, rows * width * es);
    if (base) ws->x = (real *)(base + at);
    for (int l = 0; l < net->nlayers; l++) {
        const mt_layer *L = &net->layers[l];
        width = L->out > width ? L->out : width;
        at = carve(&off, rows * L->out * es);
        if (base) ws->z[l] = (real *)(base + at);
        if (L->act != MT_ACT_IDENTITY) at = carve(&off, rows * L->out * es);
        if (base) ws->a[l] = (real *)(base + at);
    }
    for (int k = 0; k < 2; k++) {
        at = carve(&off, rows * width * es);
        if (base) ws->d[k] = (real *)(base + at);
    }
    at = carve(&off, rows * sizeof(double));
    if (base) ws->rowloss = (double *)(base + at);
    return off;
}

size_t FN(mt_workspace_bytes)(const mt_net *net, int64_t max_batch) {
    return layout(net, max_batch, NULL, NULL);
}

// X rows (idx or 0..n) -> ws.x; the network output is left in ws.a[last]
static const real *forward(mt_net *net, workspace *ws, const real *X, const int64_t *idx,
                           int64_t n) {
    const int64_t in = net->layers[0].in;
    const real *x = X;
    if (idx) {
#pragma omp parallel for schedule(static) if (n * in >= MT_PAR_ELEMS)
        for (int64_t i = 0; i < n; i++)
            memcpy(ws->x + i * in, X + idx[i] * in, (size_t)in * sizeof(real));
        x = ws->x;
    }
    const real *input = x;
    for (int l = 0; l < net->nlayers; l++) {
        FN(mt_dense_forward)(&net->layers[l], net->params, input, ws->z[l], ws->a[l], n);
        input = ws->a[l];
    }
    return x;
}

int FN(mt_step)(mt_net *net, const real *X, const void *y, const int64_t *idx, int64_t n,
                const mt_optim *opt, double *loss) {
    if (n > net->max_batch) return MT_ERR_BATCH_TOO_LARGE;
    workspace ws;
    layout(net, net->max_batch, net->work, &ws);
    const real *x = forward(net, &ws, X, idx, n);
    const int last = net->nlayers - 1;
    const int64_t out = net->layers[last].out;
    double batch_weight;
    *loss = FN(mt_loss_forward_backward)(net, ws.a[last], y, idx, ws.d[0], n, out,
                                         ws.rowloss, &batch_weight);
    if (!isfinite(*loss)) return MT_ERR_NONFINITE_LOSS;
    int cur = 0;
    for (int l = last; l >= 0; l--) {
        real *dx = l > 0 ? ws.d[1 - cur] : NULL;
        const real *input = l > 0 ? ws.a[l - 1] : x;
        FN(mt_dense_backward)(&net->layers[l], net->params, net->grads, input, ws.z[l],
                              ws.a[l], ws.d[cur], dx, n);
        cur = 1 - cur;
    }
    if (opt)
        FN(mt_optim_update)(opt, net->params, net->grads, net->state, net->n_params,
                            batch_weight);
    return MT_OK;
}

int FN(mt_forward)(mt_net *net, const real *X, const int64_t *idx, int64_t n, real *out) {
    if (n > net->max_batch) return MT_ERR_BATCH_TOO_LARGE;
    workspace ws;
    layout(net, net->max_batch, net->work, &ws);
    forward(net, &ws, X, idx, n);
    const int last = net->nlayers - 1;
    memcpy(out, ws.a[last], (size_t)(n * net->layers[last].out) * sizeof(real));
    return MT_OK;
}
