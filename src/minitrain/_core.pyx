# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to the C core: checks shapes, dtypes and contiguity, passes pointers,
turns status codes into exceptions. No maths here."""

import os
import warnings

import numpy as np
cimport numpy as cnp
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, PyThread_type_lock)
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.string cimport memcpy

cnp.import_array()

cdef extern from "minitrain.h":
    int MT_MAX_LAYERS
    int MT_FLOAT32, MT_FLOAT64
    int MT_ACT_IDENTITY, MT_ACT_RELU, MT_ACT_LEAKY_RELU, MT_ACT_TANH, MT_ACT_SIGMOID
    int MT_ACT_GELU
    int MT_LOSS_CROSS_ENTROPY, MT_LOSS_MSE, MT_LOSS_BINARY_CROSS_ENTROPY, MT_LOSS_POISSON
    int MT_REDUCE_MEAN, MT_REDUCE_SKLEARN
    int MT_LAYER_DENSE, MT_LAYER_DROPOUT, MT_LAYER_BATCHNORM, MT_LAYER_ACTIVATION
    int MT_OPT_SGD, MT_OPT_ADAM, MT_OPT_GRADIENT
    int MT_OPT_STYLE_TORCH, MT_OPT_STYLE_SKLEARN
    int MT_OK, MT_ERR_NONFINITE_LOSS, MT_ERR_BATCH_TOO_LARGE, MT_ERR_NO_MEMORY
    int MT_ERR_BAD_LABEL, MT_ERR_NONFINITE_GRADIENT, MT_ERR_REDUCE, MT_ERR_NO_GRADIENT
    ctypedef int (*mt_reduce_fn)(void *ctx, double *buf, int64_t n) noexcept
    int MT_ISA_GENERIC, MT_ISA_AVX2, MT_ISA_AVX512, MT_ISA_AVX512_BF16
    ctypedef struct mt_layer:
        int kind
        int act
        double act_param
        int64_t in_ "in"
        int64_t out
        int64_t w_off, b_off
        double rate, momentum, eps
        int64_t s_off
        int dact_above
    ctypedef struct mt_optim:
        int kind
        double lr, momentum
        int nesterov
        double weight_decay
        int decoupled
        double beta1, beta2, eps
        int64_t t
        double clip_norm
        int64_t n_decay
        int style
    ctypedef struct mt_net:
        int dtype, loss, reduction
        const void *sample_weight
        int nlayers
        mt_layer layers[64]
        int64_t n_params
        void *params
        void *grads
        void *state
        void *buffers
        uint64_t seed
        void *work
        int64_t max_batch
        double l2_term
        int isa
        int threads
        int bf16
        int weights_unchanged
        int copies_read
        int pack_copies
        int64_t shard_row0, shard_rows
        double shard_weight
        mt_reduce_fn reduce
        void *reduce_ctx
    size_t mt_workspace_bytes(const mt_net *net, int64_t max_batch) nogil
    int mt_step(mt_net *net, const void *X, const void *y, const int64_t *idx, int64_t n,
                int64_t iteration, const mt_optim *opt, double *loss) nogil
    int mt_update(mt_net *net, const mt_optim *opt) nogil
    int mt_forward(mt_net *net, const void *X, const int64_t *idx, int64_t n, void *out) nogil
    int mt_gemm(int dtype, int isa, int trans_a, int trans_b, int64_t M, int64_t N,
                int64_t K, const void *A, const void *B, void *C, int accumulate) nogil
    int mt_gemm_bf16(int isa, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                     const float *A, const float *B, float *C, int accumulate,
                     int prepack_b) nogil
    int mt_all_finite(int dtype, const void *x, int64_t n) nogil
    void mt_prepare(mt_net *net)
    void mt_lay_out(mt_net *net)
    void mt_set_num_threads(int n)
    int mt_get_num_threads()
    int mt_num_threads_fixed()
    int mt_max_threads()
    int mt_last_team()
    int mt_cpu_isa()
    int mt_get_isa()
    int mt_set_isa(int isa)

# The codes of minitrain.h's enums, by the names Python uses: the one table of them, read
# from the header when this module is compiled. Python passes names; only this binding
# turns them into codes.
CODES = {
    "dtype": {"float32": MT_FLOAT32, "float64": MT_FLOAT64},
    "activation": {"identity": MT_ACT_IDENTITY, "relu": MT_ACT_RELU,
                   "leaky_relu": MT_ACT_LEAKY_RELU, "tanh": MT_ACT_TANH,
                   "sigmoid": MT_ACT_SIGMOID, "gelu": MT_ACT_GELU},
    "loss": {"cross_entropy": MT_LOSS_CROSS_ENTROPY, "mse": MT_LOSS_MSE,
             "binary_cross_entropy": MT_LOSS_BINARY_CROSS_ENTROPY,
             "poisson": MT_LOSS_POISSON},
    "reduction": {"mean": MT_REDUCE_MEAN, "sklearn": MT_REDUCE_SKLEARN},
    "layer": {"dense": MT_LAYER_DENSE, "dropout": MT_LAYER_DROPOUT,
              "batchnorm": MT_LAYER_BATCHNORM, "activation": MT_LAYER_ACTIVATION},
    "optimizer": {"sgd": MT_OPT_SGD, "adam": MT_OPT_ADAM, "gradient": MT_OPT_GRADIENT},
    "style": {"torch": MT_OPT_STYLE_TORCH, "sklearn": MT_OPT_STYLE_SKLEARN},
    "status": {"ok": MT_OK, "nonfinite_loss": MT_ERR_NONFINITE_LOSS,
               "batch_too_large": MT_ERR_BATCH_TOO_LARGE, "no_memory": MT_ERR_NO_MEMORY,
               "bad_label": MT_ERR_BAD_LABEL, "nonfinite_gradient": MT_ERR_NONFINITE_GRADIENT,
               "reduce": MT_ERR_REDUCE, "no_gradient": MT_ERR_NO_GRADIENT},
    "isa": {"generic": MT_ISA_GENERIC, "avx2": MT_ISA_AVX2, "avx512": MT_ISA_AVX512,
            "avx512_bf16": MT_ISA_AVX512_BF16},
}

# the instruction sets of the GEMM micro-kernels, lowest first
ISAS = tuple(sorted(CODES["isa"], key=CODES["isa"].get))


def _code(table, name, what):
    try:
        return CODES[table][name]
    except (KeyError, TypeError):
        raise ValueError(f"{what} must be one of {sorted(CODES[table])}, got {name!r}") from None


cdef inline void *ptr(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


# the label dtype, made once: a comparison with the type np.int64 converts it every time
cdef object INT64 = np.dtype(np.int64)


cdef inline bint _has_dtype(cnp.ndarray a, dtype):
    # NumPy's built-in dtypes are single objects: identity first, equality for the others
    return <object>cnp.PyArray_DESCR(a) is dtype or a.dtype == dtype


cdef int _require(a, dtype, int ndim, str name) except -1:
    # C-level attribute access: this runs several times per iteration
    if not isinstance(a, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim \
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a) \
            or not _has_dtype(<cnp.ndarray>a, dtype):
        raise TypeError(f"{name} must be a C-contiguous {ndim}-D {np.dtype(dtype).name} "
                        f"array")


cdef int _require_writeable(a, str name) except -1:
    # the core writes through this pointer: a read-only array (a view of a bytes object, a
    # memory map opened "r") would be a segmentation fault rather than an error
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a):
        raise ValueError(f"{name} must be a writeable array")


def _check_status(int status, double loss=0, int64_t n_out=0):
    """Raise the exception of the core's mt_status `status` (nothing for MT_OK)."""
    if status == MT_OK:
        return
    if status == MT_ERR_NONFINITE_LOSS:
        raise FloatingPointError(f"the loss is not finite ({loss}); nothing was updated")
    if status == MT_ERR_NONFINITE_GRADIENT:
        raise FloatingPointError(f"the gradient is not finite (the loss is {loss}); the "
                                 f"parameters were not updated")
    if status == MT_ERR_BAD_LABEL:
        raise ValueError(f"y holds a label outside [0, {n_out}) in this batch (was it "
                         f"changed after it was passed in?); nothing was updated")
    if status == MT_ERR_BATCH_TOO_LARGE:
        raise ValueError("the batch has more rows than the workspace was sized for")
    if status == MT_ERR_NO_MEMORY:
        raise MemoryError("the C core could not allocate its packing buffer")
    if status == MT_ERR_NO_GRADIENT:
        raise ValueError("update() applies the gradient of a step(update=False); there is "
                         "none")
    raise RuntimeError(f"the C core returned the unknown status {status}")


cdef bint _labels_below(cnp.ndarray y, int64_t n_out):
    """All labels of the checked int64 array y in [0, n_out): a loop over its pointer,
    cheaper than two NumPy reductions (or a typed memoryview) on a batch."""
    cdef const int64_t *labels = <const int64_t *>ptr(y)
    cdef int64_t i
    for i in range(cnp.PyArray_SIZE(y)):
        if labels[i] < 0 or labels[i] >= n_out:
            return False
    return True


def labels_below(y, int64_t n_out):
    """Whether every label of the C-contiguous int64 array y lies in [0, n_out)."""
    _require(y, INT64, 1, "y")
    return _labels_below(y, n_out)


def checked_as_is(a, dtype, int64_t rows, int64_t cols, int64_t n_labels=0):
    """Whether the input checks would accept `a` and return it unchanged: an ndarray
    itself (not a subclass) of the NumPy dtype `dtype`, C-contiguous, with `rows` rows
    (any number >= 1 when rows < 0) and, when cols >= 0, 2-D with cols columns (any
    number >= 1 when cols == 0), else 1-D; finite for a float dtype, int64 labels in
    [0, n_labels). One call and one pass over the data for what train_step checks on
    every batch; False only means that the full checks must run (and say what is wrong)."""
    if type(a) is not cnp.ndarray or not cnp.PyArray_DescrCheck(dtype):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int ndim = 2 if cols >= 0 else 1
    if cnp.PyArray_NDIM(arr) != ndim or not cnp.PyArray_IS_C_CONTIGUOUS(arr) \
            or <object>cnp.PyArray_DESCR(arr) is not dtype:
        return False
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(arr)
    if shape[0] < 1 or (rows >= 0 and shape[0] != rows):
        return False
    if ndim == 2 and (shape[1] < 1 or (cols > 0 and shape[1] != cols)):
        return False
    cdef int num = cnp.PyArray_TYPE(arr)
    cdef const void *p = ptr(arr)
    cdef int64_t n = cnp.PyArray_SIZE(arr)
    cdef int dt = MT_FLOAT64 if num == cnp.NPY_FLOAT64 else MT_FLOAT32
    cdef int ok
    if num == cnp.NPY_FLOAT32 or num == cnp.NPY_FLOAT64:
        if n < 1 << 16:  # a batch: releasing the GIL would cost more than the pass
            return bool(mt_all_finite(dt, p, n))
        with nogil:  # a training set: other Python threads run meanwhile
            ok = mt_all_finite(dt, p, n)
        return bool(ok)
    if num == cnp.NPY_INT64 and n_labels > 0:
        return _labels_below(arr, n_labels)
    return False


def _inside(name, off, size, total):
    # Python ints: an offset plus a size near 2**63 must not wrap around into the buffer
    off, size = int(off), int(size)
    if off < 0 or off + size > total:
        raise ValueError(f"{name}: [{off}, {off + size}) outside the flat buffer of {total}")


cdef _set_layer(mt_layer *L, int l, spec, int64_t n_params, int64_t n_buffers):
    """Fill L from the dict `spec` (the mt_layer fields; absent ones are 0), checking
    every offset against the flat buffers so the core cannot read outside them."""
    L.kind = _code("layer", spec["kind"], f"layer {l}: kind")
    L.in_, L.out = spec["in"], spec["out"]
    L.act = _code("activation", spec.get("act", "identity"), f"layer {l}: act")
    L.act_param = spec.get("act_param", 0)
    L.w_off, L.b_off, L.s_off = spec.get("w_off", 0), spec.get("b_off", 0), spec.get("s_off", 0)
    L.rate, L.momentum, L.eps = spec.get("rate", 0), spec.get("momentum", 0), spec.get("eps", 0)
    if L.in_ < 1 or L.out < 1 or (L.kind != MT_LAYER_DENSE and L.in_ != L.out):
        raise ValueError(f"layer {l}: bad widths {L.in_} -> {L.out}")
    if L.kind == MT_LAYER_DENSE:
        _inside(f"layer {l} W", L.w_off, <object>L.in_ * <object>L.out, n_params)
        _inside(f"layer {l} b", L.b_off, L.out, n_params)
    elif L.kind == MT_LAYER_DROPOUT:
        if not 0 <= L.rate < 1:
            raise ValueError(f"layer {l}: rate must lie in [0, 1), got {L.rate}")
    elif L.kind == MT_LAYER_BATCHNORM:
        _inside(f"layer {l} gamma", L.w_off, L.out, n_params)
        _inside(f"layer {l} beta", L.b_off, L.out, n_params)
        _inside(f"layer {l} running statistics", L.s_off, 2 * <object>L.out, n_buffers)
        if not (0 <= L.momentum <= 1 and L.eps > 0):
            raise ValueError(f"layer {l}: momentum must lie in [0, 1] and eps be > 0")
    elif L.kind != MT_LAYER_ACTIVATION:
        raise ValueError(f"layer {l}: unknown kind {L.kind}")


cdef int _call_reduce(void *ctx, double *buf, int64_t n) noexcept with gil:
    # net->reduce of a Net given a reduce function: called by the core, in the thread that
    # called mt_step, whose Net holds its lock; an exception is kept for that call to raise
    cdef Net net = <Net>ctx
    try:
        net._reduce(np.asarray(<double[:n]>buf))
        return 0
    except BaseException as err:
        net._reduce_error = err
        return 1


cdef class Net:
    """A network description over Python-owned flat buffers.

    loss: a name of CODES["loss"]. layers: sequence of dicts with the fields of mt_layer
    (minitrain.h): ``kind`` (a name of CODES["layer"]), ``in``, ``out`` and, by kind,
    ``act`` (a name of CODES["activation"]; default identity), ``act_param``, ``w_off``,
    ``b_off``, ``rate``, ``momentum``, ``eps``, ``s_off`` (absent fields are 0).
    dtype: float32, float64, or "mixed_bfloat16": float32 buffers, the dense layers'
    products with inputs rounded to bfloat16 (``bf16``).
    params, grads: flat arrays of n_params; state: the optimizer's flat state;
    buffers: non-trainable state (batchnorm running statistics), None when no layer
    has any; seed: keys the dropout masks (with the iteration, layer and element).

    A Net may be shared between threads: every method that reads or writes the workspace,
    the flat buffers or the description holds the Net's lock, waited for with the GIL
    released, so calls on one Net run one at a time and separate Nets run in parallel.
    """
    cdef mt_net net
    cdef mt_optim opt
    cdef readonly object dtype
    cdef readonly bint bf16
    cdef object _params, _grads, _state, _buffers, _work
    cdef cnp.ndarray _X, _y  # typed: step_rows reads their shape and data from the structs
    cdef object _w
    cdef int64_t n_out
    cdef PyThread_type_lock _lock
    cdef object _reduce, _reduce_error

    def __cinit__(self, *args, **kwargs):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("no memory for the lock of a Net")
        self.net.nlayers = 0
        self.net.max_batch = 0
        self.net.work = NULL
        self.net.weights_unchanged = self.net.copies_read = self.net.pack_copies = 0
        self.net.reduce = NULL
        self.net.reduce_ctx = NULL
        self.net.shard_row0 = self.net.shard_rows = 0
        self.net.shard_weight = 0
        self.opt.kind = -1

    def __dealloc__(self):
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    cdef inline void _acquire(self) noexcept:
        # uncontended: one atomic operation with the GIL held; else wait without it, so
        # that the thread inside the core can take the GIL back when it returns
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)

    cdef inline void _release(self) noexcept:
        PyThread_release_lock(self._lock)

    def __init__(self, dtype, loss, layers, params, grads, state, buffers=None,
                 seed=0):
        bf16 = isinstance(dtype, str) and dtype == "mixed_bfloat16"
        dtype = np.dtype(np.float32 if bf16 else dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError("dtype must be float32, float64 or \"mixed_bfloat16\"")
        if not 0 < len(layers) <= MT_MAX_LAYERS:
            raise ValueError(f"a network has 1 to {MT_MAX_LAYERS} layers")
        cdef int loss_code = _code("loss", loss, "loss")
        if buffers is None:
            buffers = np.zeros(0, dtype=dtype)
        for name, a in (("params", params), ("grads", grads), ("state", state),
                        ("buffers", buffers)):
            _require(a, dtype, 1, name)
            _require_writeable(a, name)
        if grads.size != params.size:
            raise ValueError("grads must have the size of params")
        # checked into a copy first: a rejected description leaves the Net as it was
        cdef mt_layer checked[64]
        for l, spec in enumerate(layers):
            _set_layer(&checked[l], l, spec, params.size, buffers.size)
            if l > 0 and checked[l].in_ != checked[l - 1].out:
                raise ValueError(f"layer {l}: widths do not chain")
        self._acquire()
        try:
            self.dtype = dtype
            self.bf16 = bf16
            self.net.bf16 = bf16
            self.net.dtype = MT_FLOAT64 if dtype == np.float64 else MT_FLOAT32
            self.net.loss = loss_code
            self.net.reduction = MT_REDUCE_MEAN
            self.net.nlayers = len(layers)
            memcpy(self.net.layers, checked, len(layers) * sizeof(mt_layer))
            mt_prepare(&self.net)
            self.n_out = self.net.layers[len(layers) - 1].out
            self.net.n_params = params.size
            self._params, self._grads, self._state = params, grads, state
            self._buffers = buffers
            self.net.params = ptr(params)
            self.net.grads = ptr(grads)
            self.net.state = ptr(state)
            self.net.buffers = ptr(buffers)
            self.net.seed = <uint64_t>(int(seed) % 2**64)
            self.net.max_batch = 0
            self.net.work = NULL
            self._work = None
            self.net.sample_weight = NULL
            self._X = self._y = self._w = None
            self.net.l2_term = 0
            self.net.isa = mt_get_isa()
            self.net.threads = 0
            self.net.shard_row0 = self.net.shard_rows = 0
            self.net.shard_weight = 0
            self.net.reduce = NULL
            self.net.reduce_ctx = NULL
            self._reduce = self._reduce_error = None
            self.opt.kind = -1
        finally:
            self._release()

    @property
    def max_batch(self):
        return self.net.max_batch

    @property
    def packs_weights(self):
        """True when updates can keep bfloat16 copies of the weight matrices, packed as
        the products take them (mixed_bfloat16): see ``step_rows``' pack and unchanged."""
        return bool(self.bf16)

    @property
    def copies_read(self):
        """True when the last step's products read the weights' packed copies."""
        return bool(self.net.copies_read)

    @property
    def isa(self):
        """The instruction set of this net's GEMM micro-kernels: the default (isa()) when
        it was made; fixed for the net, whatever other threads set."""
        return ISAS[self.net.isa]

    @isa.setter
    def isa(self, name):
        cdef int code = _isa_code(name)
        self._acquire()  # never between two products of a call in another thread
        self.net.isa = code
        self._release()

    @property
    def threads(self):
        """The team of this net's calls in "auto" thread mode (0: every core); ignored
        when the count is fixed (set_num_threads(n), OMP_NUM_THREADS, threadpoolctl)."""
        return self.net.threads

    @threads.setter
    def threads(self, int n):
        if n < 0:
            raise ValueError(f"threads must be >= 0, got {n}")
        self.net.threads = n

    @property
    def l2_term(self):
        """After an update (or a step of the "gradient" kind) in scikit-learn's style: the
        L2 term of its batch loss, 0.5 weight_decay ||params[:n_decay]||² / batch weight,
        from the parameters before the update (read in the update's pass); else 0."""
        return self.net.l2_term

    def _workspace_bound(self, max_batch):
        """More bytes than the workspace for max_batch rows takes, in Python ints."""
        widths = [self.net.layers[l].out for l in range(self.net.nlayers)]
        per_row = self.net.layers[0].in_ + 2 * sum(widths) + 2 * max(widths) + 1
        return int(max_batch) * per_row * 8 + 3 * sum(widths) * 8 + 2**32

    def reserve(self, int64_t max_batch):
        """Size the workspace for batches of up to max_batch rows (grows, never shrinks)."""
        if max_batch <= self.net.max_batch:
            return
        self._acquire()
        try:
            if max_batch <= self.net.max_batch:  # another thread grew it meanwhile
                return
            if self.net.nlayers == 0:
                raise ValueError("reserve: the Net has no layers")
            # the core lays the workspace out in 64-bit sizes: refuse what would wrap around
            if self._workspace_bound(max_batch) >= 2**62:
                raise MemoryError(f"reserve: a workspace for {max_batch} rows is too large")
            nbytes = mt_workspace_bytes(&self.net, max_batch)
            raw = np.empty(nbytes + 64, dtype=np.uint8)
            shift = (-<uintptr_t>ptr(raw)) % 64
            self._work = raw[shift:shift + nbytes]
            self.net.work = ptr(self._work)
            self.net.max_batch = max_batch
            mt_lay_out(&self.net)
        finally:
            self._release()

    def set_optimizer(self, kind, double momentum=0, bint nesterov=False,
                      double weight_decay=0, bint decoupled=False, double beta1=0.9,
                      double beta2=0.999, double eps=1e-8, double clip_norm=0,
                      int64_t n_decay=0, style="torch"):
        """kind: a name of CODES["optimizer"]; style: of CODES["style"]."""
        cdef int code = _code("optimizer", kind, "kind")
        cdef int style_code = _code("style", style, "style")
        self._acquire()
        try:
            # SGD keeps a momentum (or velocity) buffer; Adam its two moments
            needed = self.net.n_params * (2 if code == MT_OPT_ADAM else 1)
            if self._state.size < needed:
                raise ValueError(f"optimizer state needs {needed} elements, has "
                                 f"{self._state.size}")
            if not 0 <= n_decay <= self.net.n_params:
                raise ValueError("n_decay outside the parameters")
            self.opt.kind = code
            self.opt.momentum = momentum
            self.opt.nesterov = nesterov
            self.opt.weight_decay = weight_decay
            self.opt.decoupled = decoupled
            self.opt.beta1, self.opt.beta2, self.opt.eps = beta1, beta2, eps
            self.opt.clip_norm = clip_norm
            self.opt.n_decay = n_decay
            self.opt.style = style_code
        finally:
            self._release()

    def set_shard(self, int64_t row0=0, int64_t rows=0, double weight=0, reduce=None):
        """Make the next steps' rows the rows [row0, row0 + n) of a global batch of `rows`
        rows and weight `weight` (0: the step's own), as one rank's part of a data-parallel
        iteration: dropout draws those rows' masks, the loss and gradient are scaled by the
        global weight, and `reduce(buf)` (a float64 array to sum over the ranks in place)
        makes batch normalisation's statistics the global batch's. All defaults: one
        process."""
        if row0 < 0 or rows < 0 or (rows and row0 >= rows) or not weight >= 0:
            raise ValueError(f"set_shard: row0 must lie in [0, rows) and weight be >= 0, got "
                             f"row0={row0}, rows={rows}, weight={weight}")
        if reduce is not None and not callable(reduce):
            raise TypeError("set_shard: reduce must be callable or None")
        self._acquire()
        self.net.shard_row0, self.net.shard_rows, self.net.shard_weight = row0, rows, weight
        self._reduce = reduce
        if reduce is None:
            self.net.reduce, self.net.reduce_ctx = NULL, NULL
        else:
            self.net.reduce, self.net.reduce_ctx = _call_reduce, <void *>self
        self._release()

    def set_reduction(self, reduction):
        """How element losses become the batch loss: "mean" (minitrain) or "sklearn"."""
        cdef int code = _code("reduction", reduction, "reduction")
        self._acquire()
        self.net.reduction = code
        self._release()

    cdef int _check_xy(self, X, y) except -1:
        # cdef, and shapes read from the array structs: this runs on every train_step
        _require(X, self.dtype, 2, "X")
        cdef cnp.npy_intp *xs = cnp.PyArray_DIMS(<cnp.ndarray>X)
        cdef cnp.npy_intp *ys
        if xs[1] != self.net.layers[0].in_:
            raise ValueError(f"X must have {self.net.layers[0].in_} columns")
        if self.net.loss == MT_LOSS_CROSS_ENTROPY:
            _require(y, INT64, 1, "y")
            if not _labels_below(y, self.n_out):
                raise ValueError(f"labels must lie in [0, {self.n_out})")
        else:
            _require(y, self.dtype, 2, "y")
            if cnp.PyArray_DIMS(<cnp.ndarray>y)[1] != self.n_out:
                raise ValueError(f"y must have {self.n_out} columns")
        ys = cnp.PyArray_DIMS(<cnp.ndarray>y)
        if ys[0] != xs[0]:
            raise ValueError("X and y must have the same number of rows")
        return 0

    cdef int _check_weight(self, X, sample_weight) except -1:
        if sample_weight is not None:
            _require(sample_weight, self.dtype, 1, "sample_weight")
            if cnp.PyArray_DIMS(<cnp.ndarray>sample_weight)[0] != \
                    cnp.PyArray_DIMS(<cnp.ndarray>X)[0]:
                raise ValueError("sample_weight must have one value per row of X")
        return 0

    def set_data(self, X, y, sample_weight=None):
        """Keep X, y and the row weights (None: all 1) for step_rows (checked once, not
        per iteration; the core checks each batch's labels again)."""
        self._acquire()
        try:
            self._check_xy(X, y)
            self._check_weight(X, sample_weight)
            self._X, self._y, self._w = X, y, sample_weight
        finally:
            self._release()

    def clear_data(self):
        """Forget the data given to set_data, so that the Net does not keep it alive."""
        self._acquire()
        self._X = self._y = self._w = None
        self._release()

    cdef double _run(self, const void *X, const void *y, object w, const int64_t *idx,
                     int64_t n, double lr, int64_t t, bint update,
                     int64_t iteration, bint unchanged=False, bint pack=False) except? -1:
        # with the lock held
        cdef double loss = 0
        cdef int status
        cdef const mt_optim *opt = NULL
        if n < 1 or n > self.net.max_batch:
            raise ValueError(f"batch of {n} rows: reserve() was sized for "
                             f"{self.net.max_batch}")
        if self.net.shard_rows and self.net.shard_row0 + n > self.net.shard_rows:
            raise ValueError(f"batch of {n} rows from row {self.net.shard_row0} of a global "
                             f"batch of {self.net.shard_rows} (set_shard)")
        if update:
            if self.opt.kind < 0:
                raise ValueError("set_optimizer() was not called")
            self.opt.lr = lr
            self.opt.t = t
            opt = &self.opt
        self.net.sample_weight = NULL if w is None else ptr(w)
        # for this step only: mt_step clears both
        self.net.weights_unchanged, self.net.pack_copies = unchanged, pack
        with nogil:
            status = mt_step(&self.net, X, y, idx, n, iteration, opt, &loss)
        if status == MT_ERR_REDUCE:
            err, self._reduce_error = self._reduce_error, None
            raise err
        if status != MT_OK:
            _check_status(status, loss, self.n_out)
        return loss

    def update(self, double lr, int64_t t):
        """Apply the update of the last ``step(..., update=False)`` from grads as they are
        now (all-reduced, in a distributed fit): parameters, optimizer state and batch-norm
        running statistics, as the step would have."""
        cdef int status
        self._acquire()
        try:
            if self.opt.kind < 0:
                raise ValueError("set_optimizer() was not called")
            self.opt.lr = lr
            self.opt.t = t
            with nogil:
                status = mt_update(&self.net, &self.opt)
        finally:
            self._release()
        _check_status(status)

    def step_rows(self, idx, int64_t start, int64_t stop, double lr, int64_t t,
                  bint update=True, int64_t iteration=0, bint unchanged=False,
                  bint pack=False):
        """One iteration on the rows idx[start:stop] of the data given to set_data;
        `iteration` keys the dropout masks. With ``packs_weights``: pack, the step's update
        (here, or in ``update``) writes the packed copies of the weights, for a next step
        given unchanged: the caller's word that nothing has written the parameters since
        this Net's last update, which then reads the copies if that update wrote them;
        when in doubt, False."""
        _require(idx, INT64, 1, "idx")
        if not 0 <= start < stop <= cnp.PyArray_DIMS(<cnp.ndarray>idx)[0]:
            raise ValueError("start:stop outside idx")
        # the pointer, not a typed memoryview: no Python object made per iteration
        cdef const int64_t *chosen = <const int64_t *>ptr(idx) + start
        cdef int64_t i, rows
        self._acquire()
        try:  # the data are read under the lock: set_data may run in another thread
            if self._X is None:
                raise ValueError("set_data() was not called")
            rows = cnp.PyArray_DIMS(self._X)[0]
            for i in range(stop - start):
                if chosen[i] < 0 or chosen[i] >= rows:
                    raise ValueError(f"idx holds row {chosen[i]} outside [0, {rows})")
            return self._run(ptr(self._X), ptr(self._y), self._w, chosen, stop - start, lr,
                             t, update, iteration, unchanged, pack)
        finally:
            self._release()

    def step(self, X, y, double lr=0, int64_t t=0, bint update=True, int64_t iteration=0,
             sample_weight=None):
        """One iteration on all rows of X, y (rows weighted by sample_weight);
        `iteration` keys the dropout masks."""
        self._acquire()
        try:
            self._check_xy(X, y)
            self._check_weight(X, sample_weight)
            return self._run(ptr(X), ptr(y), sample_weight, NULL,
                             cnp.PyArray_DIMS(<cnp.ndarray>X)[0], lr, t, update, iteration)
        finally:
            self._release()

    def forward(self, X, out):
        """out (n, n_out) = network output for X (n, in), n <= max_batch, in inference
        mode (no dropout, batchnorm on running statistics)."""
        cdef int64_t n
        cdef const void *xp
        cdef void *op
        cdef int status
        self._acquire()
        try:
            _require(X, self.dtype, 2, "X")
            _require(out, self.dtype, 2, "out")
            _require_writeable(out, "out")
            n = X.shape[0]
            if X.shape[1] != self.net.layers[0].in_ or out.shape[0] != n \
                    or out.shape[1] != self.n_out:
                raise ValueError("forward: X or out has the wrong shape")
            xp, op = ptr(X), ptr(out)
            if n < 1 or n > self.net.max_batch:
                raise ValueError(f"forward: {n} rows, workspace sized for "
                                 f"{self.net.max_batch}")
            with nogil:
                status = mt_forward(&self.net, xp, NULL, n, op)
        finally:
            self._release()
        _check_status(status)


def gemm(A, B, bint trans_a=False, bint trans_b=False, C=None, isa=None, bint bf16=False,
         bint prepack_b=False):
    """C = op(A) · op(B) with the core's GEMM (C accumulated into when given), with the
    micro-kernels of `isa` (default: isa()), for this call only. bf16: float32 operands
    rounded to bfloat16, products accumulated in float32 (mixed_bfloat16's); with
    prepack_b, op(B) is packed on its own first and the product reads that copy (as
    pre-packed weights are). For tests and benchmarks: the packing buffer is allocated per
    call."""
    dtype = A.dtype if isinstance(A, np.ndarray) else None
    if dtype not in (np.float32, np.float64):
        raise TypeError("A must be a float32 or float64 array")
    if bf16 and dtype != np.float32:
        raise TypeError("A must be a float32 array for bf16 products")
    _require(A, dtype, 2, "A")
    _require(B, dtype, 2, "B")
    cdef int64_t M = A.shape[1] if trans_a else A.shape[0]
    cdef int64_t K = A.shape[0] if trans_a else A.shape[1]
    cdef int64_t KB = B.shape[1] if trans_b else B.shape[0]
    cdef int64_t N = B.shape[0] if trans_b else B.shape[1]
    if K != KB:
        raise ValueError(f"inner dimensions differ: {K} and {KB}")
    accumulate = C is not None
    if C is None:
        C = np.empty((M, N), dtype=dtype)
    _require(C, dtype, 2, "C")
    _require_writeable(C, "C")
    if C.shape != (M, N):
        raise ValueError(f"C must have shape {(M, N)}")
    cdef int code = mt_get_isa() if isa is None else _isa_code(isa)
    cdef int dt = MT_FLOAT64 if dtype == np.float64 else MT_FLOAT32
    cdef const void *a = ptr(A)
    cdef const void *b = ptr(B)
    cdef void *c = ptr(C)
    if prepack_b and not bf16:
        raise ValueError("prepack_b must be False unless bf16 is True")
    cdef int ta = trans_a, tb = trans_b, acc = accumulate, pb = prepack_b, status
    with nogil:
        if bf16:
            status = mt_gemm_bf16(code, ta, tb, M, N, K, <const float *>a, <const float *>b,
                                  <float *>c, acc, pb)
        else:
            status = mt_gemm(dt, code, ta, tb, M, N, K, a, b, c, acc)
    _check_status(status)
    return C


def all_finite(a):
    """Whether every element of the C-contiguous float32/float64 array `a` is finite: one
    pass, no temporary (the input checks run it on every batch)."""
    dtype = a.dtype if isinstance(a, np.ndarray) else None
    if dtype not in (np.float32, np.float64):
        raise TypeError("a must be a float32 or float64 array")
    _require(a, dtype, cnp.PyArray_NDIM(<cnp.ndarray>a), "a")
    cdef int dt = MT_FLOAT64 if dtype == np.float64 else MT_FLOAT32
    cdef const void *p = ptr(a)
    cdef int64_t n = a.size
    cdef int ok
    with nogil:
        ok = mt_all_finite(dt, p, n)
    return bool(ok)


def _isa_code(name):
    if name not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {name!r}")
    code = CODES["isa"][name]
    if code > mt_cpu_isa():
        raise ValueError(f"isa {name!r} is not supported by this CPU "
                         f"(it supports {available_isas()})")
    return code


def available_isas():
    """The instruction sets this CPU runs, lowest first."""
    return tuple(name for name in ISAS if CODES["isa"][name] <= mt_cpu_isa())


def isa():
    """The instruction set of the GEMM micro-kernels that new nets (and gemm) use."""
    return next(name for name in ISAS if CODES["isa"][name] == mt_get_isa())


def set_isa(name):
    """Nets made from now on (and gemm calls without `isa`) use the micro-kernels of
    `name` (one of available_isas()); a net keeps the ones it was made with."""
    mt_set_isa(_isa_code(name))


def _isa_from_environment():
    """MINITRAIN_ISA=generic|avx2|avx512 lowers the instruction set chosen at import."""
    name = os.environ.get("MINITRAIN_ISA", "").strip().lower()
    if not name:
        return
    if name not in ISAS:
        warnings.warn(f"MINITRAIN_ISA={name!r} is not one of {ISAS}; using {isa()!r}",
                      RuntimeWarning)
        return
    if CODES["isa"][name] > mt_cpu_isa():
        warnings.warn(f"MINITRAIN_ISA={name!r} is not supported by this CPU; "
                      f"using {isa()!r}", RuntimeWarning)
        return
    mt_set_isa(CODES["isa"][name])


_isa_from_environment()


def set_num_threads(int n):
    """Process-wide: n >= 1 fixes every call's team, from any thread; 0 is "auto"."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    mt_set_num_threads(n)


def get_num_threads():
    """The fixed count, or in auto mode the team of the last iteration (as lowered by a
    threadpoolctl limit in the calling thread)."""
    return mt_get_num_threads()


def last_team():
    """The team of the last iteration (or gemm) called from this thread."""
    return mt_last_team()


def num_threads_fixed():
    """Whether the count is fixed (set_num_threads(n >= 1), OMP_NUM_THREADS when the
    module loaded, or a threadpoolctl limit in the calling thread)."""
    return bool(mt_num_threads_fixed())


def max_threads():
    """The most threads "auto" mode uses: OMP_NUM_THREADS' count or the cores'."""
    return mt_max_threads()
