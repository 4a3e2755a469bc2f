// Portable micro-kernel: 6 rows x 2 vectors of 16 bytes (SSE2 on any x86-64, NEON on
// ARM), written with the vector extensions of GCC and Clang.
#define MT_REAL_SOURCE
#include "gemm.h"
#include <string.h>

#define MR 6
#define NV 2
#define VL (int)(16 / sizeof(real))
typedef real vec __attribute__((vector_size(16)));
#if MT_DOUBLE
typedef int64_t vcond __attribute__((vector_size(16)));
#else
typedef int32_t vcond __attribute__((vector_size(16)));
#endif
typedef int vmask; // the number of leading lanes in use

static inline vec v_load(const real *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vec v_loadm(vmask m, const real *p) {
    vec v = {0};
    for (int i = 0; i < m && i < VL; i++) v[i] = p[i];
    return v;
}

static inline void v_storem(real *p, vmask m, vec v) {
    for (int i = 0; i < m && i < VL; i++) p[i] = v[i];
}

#define V_LOAD v_load
#define V_LOADM v_loadm
static inline void v_store(real *p, vec v) { memcpy(p, &v, sizeof v); }

#define V_STORE v_store
#define V_STOREM v_storem
#define V_SET1(x) ((vec){0} + (real)(x))
#define V_ZERO() ((vec){0})
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MUL(a, b) ((a) * (b))
#define V_GT0(x) ((x) > 0)
#define V_SELECT(c, t, f) ((vec)(((vcond)(t) & (c)) | ((vcond)(f) & ~(c))))
#define M_FIRST(n) ((vmask)(n))

#include "gemm_kernel.h"

KERNEL_DESCRIPTOR(generic, 256, 144, 1024);
