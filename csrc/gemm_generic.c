// Portable micro-kernel: scalar C the compiler vectorizes for the baseline ISA.
#define MT_REAL_SOURCE
#include "gemm.h"

#define MR 4
#define NV 8
#define VL 1
typedef real vec;
typedef int vmask;
#define V_LOAD(p) (*(p))
#define V_LOADM(m, p) ((m) ? *(p) : (real)0)
#define V_STORE(p, v) (*(p) = (v))
#define V_STOREM(p, m, v) ((m) ? (void)(*(p) = (v)) : (void)0)
#define V_SET1(x) ((real)(x))
#define V_ZERO() ((real)0)
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MUL(a, b) ((a) * (b))
#define V_GT0(x) ((x) > 0)
#define V_SELECT(c, t, f) ((c) ? (t) : (f))
#define M_FIRST(n) ((n) > 0)

#include "gemm_kernel.h"

KERNEL_DESCRIPTOR(generic, 256, 144, 1024);
