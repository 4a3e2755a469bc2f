// Inverted dropout: forward/backward pair.
//
// The mask is a counter-based hash of (seed, iteration, layer, element): every element's
// fate is fixed before any thread touches it, so results do not depend on the thread
// count or the schedule, and a resumed run draws the same masks. The NumPy backend
// (functional.dropout_mask) computes the same hash in uint64 arithmetic.
#define MT_REAL_SOURCE
#include "mt_internal.h"

#define GOLDEN 0x9E3779B97F4A7C15ULL // splitmix64's increment: 2^64 / golden ratio
#define TWO_POW_53 9007199254740992.0

// splitmix64's output function: a bijection of 64-bit words with full avalanche
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// X (n, c) -> M (n, c) in {0, 1/(1-rate)}, Y (n, c) = X ⊙ M, for the rows [row0, row0 + n)
// of a batch. Element e (row-major in the batch) is the e-th output of the splitmix64
// stream keyed by (seed, iteration, layer); it is zeroed when its top 53 bits, a uniform
// draw from [0, 2^53), fall below rate * 2^53. A rank's part of a global batch thus draws
// the masks its rows have in the one-process run.
void FN(mt_dropout_forward)(const mt_layer *L, uint64_t seed, int64_t iteration, int layer,
                            int64_t row0, const real *X, real *M, real *Y, int64_t n) {
    const int64_t size = n * L->out, first = row0 * L->out;
    const uint64_t key = mix64(mix64(mix64(seed) + (uint64_t)iteration) + (uint64_t)layer);
    const uint64_t threshold = (uint64_t)(L->rate * TWO_POW_53);
    const real scale = (real)(1 / (1 - L->rate));
#pragma omp for schedule(static)
    for (int64_t e = 0; e < size; e++) {
        const uint64_t u = mix64(key + (uint64_t)(first + e + 1) * GOLDEN);
        M[e] = (u >> 11) >= threshold ? scale : 0;
        Y[e] = X[e] * M[e];
    }
}

// dY (n, c) ⊙ M (n, c) -> dX (n, c); nothing to do without dX (first layer)
void FN(mt_dropout_backward)(const mt_layer *L, const real *M, const real *dY, real *dX,
                             int64_t n) {
    if (!dX) return;
    const int64_t size = n * L->out;
#pragma omp for schedule(static)
    for (int64_t e = 0; e < size; e++) dX[e] = dY[e] * M[e];
}
