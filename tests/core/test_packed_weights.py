"""mixed_bfloat16 keeps copies of the weight matrices packed by the update pass: a step reads
them only when the weights are as the net's last update left them, so that a fit gives
the bits of one that packs the float32 weights in every product, whatever wrote them."""

import numpy as np
import pytest

import minitrain as mt
from minitrain import training

_core = pytest.importorskip("minitrain._core")

MIXED = "mixed_bfloat16"


@pytest.fixture
def reads(monkeypatch):
    """Whether each step of a fit read the copies (appended as the runner steps)."""
    seen = []
    step = training.Runner.step

    def recorded(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        seen.append(self.net.copies_read)
        return loss

    monkeypatch.setattr(training.Runner, "step", recorded)
    return seen


def _without_copies(monkeypatch):
    """From here on the runner never vouches for the weights: every product packs them."""
    run_epoch = training.Runner.run_epoch

    def never(self, epoch):
        self.policy.quiet = False
        return run_epoch(self, epoch)

    monkeypatch.setattr(training.Runner, "run_epoch", never)


def _data(n=192, d=1030, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 10, n)


def _model(widths=(515, 515)):
    # copies for the two first matrices (at least 2**18 weights each; the last has none):
    # odd widths (an odd k of both layouts, a last panel short of NR lanes), more than one
    # k block of 512 in each layout
    layers = [mt.Dense(w, activation=a) for w, a in zip(widths, ("relu", "tanh"))]
    return mt.Sequential(layers + [mt.Dense(10)], seed=0, dtype=MIXED)


def _fit(model, X, y, epochs=2, callbacks=(), optimizer=None):
    opt = optimizer or mt.Adam(lr=0.01, weight_decay=0.01, clip_norm=5.0)
    hist = model.fit(X, y, epochs=epochs, batch_size=48, optimizer=opt, verbose=0,
                     callbacks=list(callbacks))
    return model.params_flat.copy(), hist.history["loss"], list(hist.iteration_loss)


@pytest.mark.parametrize("optimizer", [lambda: mt.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                       lambda: mt.AdamW(lr=0.01, weight_decay=0.1,
                                                        clip_norm=5.0)])
def test_a_fit_reading_the_copies_gives_the_bits_of_packing_the_weights(
        isa, threads, reads, monkeypatch, optimizer):
    X, y = _data()
    with_copies = _fit(_model(), X, y, optimizer=optimizer())
    # 4 iterations per epoch: all but each epoch's first read the copies
    assert reads == [False, True, True, True] * 2
    reads.clear()
    _without_copies(monkeypatch)
    without = _fit(_model(), X, y, optimizer=optimizer())
    assert reads == [False] * 8
    np.testing.assert_array_equal(with_copies[0], without[0])
    assert with_copies[1:] == without[1:]


class _Writes(mt.Callback):
    """Halves the first layer's W at the end of epoch `epoch` (no batch hook: within an
    epoch the runner may still vouch for the weights)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.layers[0].W[...] *= 0.5


class _WritesAtIteration(mt.Callback):
    """Halves the first layer's W at the end of iteration `at` (a batch hook)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_iteration_end(self, iteration, logs=None):
        if iteration == self.at:
            self.model.layers[0].W[...] *= 0.5


@pytest.mark.parametrize("callback", [lambda: _Writes(epoch=2), lambda: _WritesAtIteration(6)],
                         ids=["epoch_hook", "batch_hook"])
def test_a_callback_writing_the_weights_gives_the_bits_of_packing_them(
        threads, reads, monkeypatch, callback):
    # (after the first epoch's metrics the workspace has its final size: from there on only
    # the runner's word decides whether a step reads the copies)
    X, y = _data()
    with_copies = _fit(_model(), X, y, epochs=3, callbacks=[callback()])
    used = list(reads)
    reads.clear()
    _without_copies(monkeypatch)
    without = _fit(_model(), X, y, epochs=3, callbacks=[callback()])
    np.testing.assert_array_equal(with_copies[0], without[0])
    assert with_copies[1:] == without[1:]
    # an epoch hook leaves the copies in use within each epoch; a batch hook, nowhere
    assert used == ([False, True, True, True] * 3 if isinstance(callback(), _Writes)
                    else [False] * 12)


def test_set_weights_set_state_and_train_step_between_fits(threads, reads, monkeypatch):
    X, y = _data()

    def run():
        model = _model()
        _fit(model, X, y, epochs=1)
        saved = model.get_state()
        _fit(model, X, y, epochs=2)
        model.set_weights({k: v * 0.75 for k, v in model.get_weights().items()})
        _fit(model, X, y, epochs=3)
        model.train_step(X[:48], y[:48])
        model.layers[1].W[...] = 0.01
        model.train_step(X[48:96], y[48:96])
        _fit(model, X, y, epochs=4)
        model.set_state(saved)  # what resume does too
        return _fit(model, X, y, epochs=2)

    with_copies = run()
    assert sum(reads) == (1 + 2 + 3 + 4 + 2) * 3  # all but the first of each epoch
    _without_copies(monkeypatch)
    without = run()
    np.testing.assert_array_equal(with_copies[0], without[0])
    assert with_copies[1:] == without[1:]


def _net_pair():
    """Two identical bf16 regression models with their core nets ready for step_rows on
    X, y, and a step whose gradient overflows (the loss finite, the update refused)."""
    X, _ = _data(96)
    y = np.random.default_rng(1).normal(size=(96, 1)).astype(np.float32)
    pair = []
    for _ in range(2):
        model = mt.Sequential([mt.Dense(515, activation="relu"),
                               mt.Dense(515, activation="tanh"), mt.Dense(1)], loss="mse",
                               seed=0, dtype=MIXED)
        model.build(X.shape[1])
        model._use_optimizer(mt.SGD(lr=0.01, momentum=0.9))
        net = model._net
        assert net.packs_weights
        net.reserve(48)
        net.set_data(X, y)
        pair.append((model, net))

    def refused(model, net, t, unchanged=False):
        before = model.params_flat.copy()
        net.set_data(X, np.full((96, 1), 3e38, dtype=np.float32))
        with pytest.raises(FloatingPointError, match="gradient is not finite"):
            net.step_rows(np.arange(48), 0, 48, 0.01, t, unchanged=unchanged,
                          pack=True)
        net.set_data(X, y)
        np.testing.assert_array_equal(model.params_flat, before)

    return pair, np.arange(96, dtype=np.int64), refused


def test_the_copies_are_not_read_after_an_unchecked_write_and_a_refused_update():
    [(a, net_a), (b, net_b)], idx, refused = _net_pair()
    # the same calls on both; only a's last step is told that nothing wrote the weights
    for model, net in ((a, net_a), (b, net_b)):
        net.step_rows(idx, 0, 48, 0.01, 1, pack=True)
        model.layers[0].W[...] *= 0.5  # behind the copies' back
        refused(model, net, 2)  # (not told either: the write came before it)
    # true for a: nothing wrote the weights since that (refused) update; but the copies
    # were not known to match the weights when it ran, and it wrote none
    net_a.step_rows(idx, 48, 96, 0.01, 2, unchanged=True, pack=True)
    assert not net_a.copies_read
    net_b.step_rows(idx, 48, 96, 0.01, 2, pack=True)
    np.testing.assert_array_equal(a.params_flat, b.params_flat)


def test_a_refused_update_leaves_copies_that_match_the_weights():
    [(a, net_a), (b, net_b)], idx, refused = _net_pair()
    for model, net, mark in ((a, net_a, True), (b, net_b, False)):
        net.step_rows(idx, 0, 48, 0.01, 1, pack=True)
        refused(model, net, 2, unchanged=mark)
        assert net.copies_read == mark
        net.step_rows(idx, 48, 96, 0.01, 2, unchanged=mark, pack=True)
        assert net.copies_read == mark
        net.step_rows(idx, 0, 48, 0.01, 3, unchanged=mark, pack=True)
        assert net.copies_read == mark
    np.testing.assert_array_equal(a.params_flat, b.params_flat)


def test_the_copies_are_not_read_after_a_new_workspace_or_another_isa():
    [(a, net), _], idx, _ = _net_pair()
    net.step_rows(idx, 0, 48, 0.05, 1, pack=True)
    net.reserve(96)  # a new workspace: no copies yet
    net.step_rows(idx, 0, 96, 0.05, 2, unchanged=True, pack=True)
    assert not net.copies_read
    net.step_rows(idx, 0, 96, 0.05, 3, unchanged=True)  # whose update writes no copies
    assert net.copies_read
    net.step_rows(idx, 0, 96, 0.05, 4, unchanged=True, pack=True)
    assert not net.copies_read  # they are older than the weights
    net.step_rows(idx, 0, 96, 0.05, 5, unchanged=True, pack=True)
    assert net.copies_read
    isas = _core.available_isas()
    if len(isas) > 1:  # copies in the layout of another ISA's products
        net.isa = isas[0] if net.isa != isas[0] else isas[1]
        net.step_rows(idx, 0, 96, 0.05, 6, unchanged=True, pack=True)
        assert not net.copies_read


def test_small_matrices_and_float32_nets_keep_no_copies():
    # below 2**18 weights a matrix is packed from the cache: its copies would not pay
    X, y = _data(64, 300)
    model = mt.Sequential([mt.Dense(256, activation="relu"), mt.Dense(10)], seed=0,
                          dtype=MIXED).build(300)
    model._use_optimizer(mt.SGD(lr=0.05))
    net = model._net
    net.reserve(32)
    net.set_data(X, y)
    idx = np.arange(64, dtype=np.int64)
    for t in (1, 2, 3):
        net.step_rows(idx, 0, 32, 0.05, t, unchanged=t > 1, pack=True)
        assert not net.copies_read
    assert not mt.Sequential([mt.Dense(8)], seed=0).build(4)._net.packs_weights


def test_the_update_of_a_distributed_fit_writes_the_copies(threads, reads, monkeypatch):
    # one rank: the gradient of the step, its all-reduce, then mt_update, which writes them
    MPI = pytest.importorskip("mpi4py.MPI")
    X, y = _data()

    def run(comm):
        model = _model()
        hist = model.fit(X, y, epochs=2, batch_size=48, optimizer=mt.SGD(lr=0.05, momentum=0.9),
                         verbose=0, comm=comm, metrics=None)
        return model.params_flat.copy(), hist.history["loss"]

    with_copies = run(MPI.COMM_SELF)
    assert reads == [False, True, True, True] * 2
    _without_copies(monkeypatch)
    for without in (run(MPI.COMM_SELF), run(None)):
        np.testing.assert_array_equal(with_copies[0], without[0])
        np.testing.assert_allclose(with_copies[1], without[1], rtol=1e-13)


def test_resume_on_a_model_that_trained_on_gives_the_bits_of_packing(tmp_path, reads,
                                                                     monkeypatch):
    X, y = _data()
    path = tmp_path / "run.mt"

    def run():
        model = _model()
        _fit(model, X, y, epochs=1)
        model.save(path)
        _fit(model, X, y, epochs=2)  # the copies now hold later weights than the file's
        hist = model.fit(X, y, epochs=3, batch_size=48, verbose=0, resume_from=path,
                         optimizer=mt.Adam(lr=0.01, weight_decay=0.01, clip_norm=5.0))
        return model.params_flat.copy(), hist.history["loss"]

    with_copies = run()
    assert reads[-8:] == [False, True, True, True] * 2  # the resumed epochs 2 and 3
    _without_copies(monkeypatch)
    without = run()
    np.testing.assert_array_equal(with_copies[0], without[0])
    assert with_copies[1] == without[1]


class _Halving(mt.schedules.Schedule):
    """A user's schedule: code of the user's between iterations (this one writes W)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, t):
        if t == 3:
            self.model.layers[0].W[...] *= 0.5
        return 0.01

    def get_config(self):
        return {}


def test_a_user_schedule_or_optimizer_class_is_user_code_between_iterations(reads):
    X, y = _data()

    class MySGD(mt.SGD):
        pass

    def run(make):
        model = _model()
        model.build(X.shape[1])
        _fit(model, X, y, epochs=1, optimizer=make(model))
        return model.params_flat.copy()

    for make in (lambda m: mt.SGD(lr=_Halving(m)), lambda m: MySGD(lr=0.01)):
        reads.clear()
        run(make)
        assert reads == [False] * 4
    reads.clear()
    run(lambda m: mt.SGD(lr=mt.schedules.ExponentialDecay(0.01, 10, 0.5)))
    assert reads == [False, True, True, True]  # the library's schedules are not
