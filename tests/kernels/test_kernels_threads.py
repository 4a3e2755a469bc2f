"""Training through the public API on every GEMM micro-kernel this CPU runs, and
thread-count independence: the same seed gives bit-identical weights on 1 and 2 threads."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minitrain as mt
from minitrain import _core

from helpers import relative_error

ISAS = _core.available_isas()


@pytest.fixture
def isa(request):
    """Run the test with the micro-kernels of request.param, then restore the ISA."""
    chosen = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(chosen)


@pytest.fixture
def threads():
    """Give the test the thread count to set; restore the default afterwards."""
    default = mt.get_num_threads()
    yield mt.set_num_threads
    mt.set_num_threads(default)


def train_wide(backend, dtype, loss):
    """Layers wide enough for every GEMM path: several k blocks (600 inputs > KC), packed
    and in-place operands, every activation in an epilogue (and outside one, next to
    batchnorm and dropout layers), 2 epochs of 2 iterations."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(320, 600))
    if loss == "cross_entropy":
        y, last = rng.integers(0, 7, 320), "identity"
    else:
        y, last = rng.normal(scale=0.5, size=(320, 7)), "tanh"
    layers = [mt.Dense(150, activation="relu"), mt.Dense(40, activation="gelu"),
              mt.Dense(33, activation="sigmoid"), mt.BatchNorm(),
              mt.Dense(20, activation="leaky_relu"), mt.Dense(16, activation="tanh"),
              mt.Dropout(0.2), mt.Dense(7, activation=last)]
    model = mt.Sequential(layers, loss=loss, seed=1, dtype=dtype, backend=backend)
    hist = model.fit(X, y, epochs=2, batch_size=160, verbose=0,
                     optimizer=mt.SGD(lr=0.05, momentum=0.9))
    return model, hist


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_every_isa_trains_like_the_numpy_backend(isa, loss, dtype, tol):
    c, hc = train_wide("c", dtype, loss)
    n, hn = train_wide("numpy", dtype, loss)
    assert _core.isa() == isa
    assert relative_error(c.params_flat, n.params_flat) < tol
    np.testing.assert_allclose(hc.iteration_loss, hn.iteration_loss, rtol=10 * tol)
    assert hc.iteration_loss[-1] < hc.iteration_loss[0]


@pytest.mark.parametrize("name", ISAS)
def test_environment_variable_forces_the_isa(name):
    code = ("import minitrain as mt\n"
            "X, y = mt.load_digits()\n"
            "m = mt.Sequential([mt.Dense(64, activation='relu'), mt.Dense(10)], seed=0)\n"
            "m.fit(X / 16, y, epochs=5, batch_size=32, optimizer=mt.SGD(lr=0.1, momentum=0.9),"
            " verbose=0)\n"
            "print(mt.cpu_info()['isa'], m.evaluate(X / 16, y)['accuracy'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "MINITRAIN_ISA": name}).stdout.split()
    assert out[0] == name
    assert float(out[1]) > 0.95


def test_unknown_isa_in_environment_warns_and_keeps_the_best():
    code = "import minitrain as mt; print(mt.cpu_info()['isa'])"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, check=True, env={**os.environ, "MINITRAIN_ISA": "sse9"})
    assert run.stdout.strip() == ISAS[-1]
    assert "MINITRAIN_ISA='sse9' is not one of" in run.stderr


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_gemm_is_bit_identical_on_one_two_and_three_threads(isa, threads):
    rng = np.random.default_rng(0)
    for trans_a, trans_b, (M, N, K) in [(False, False, (300, 1100, 300)),
                                        (True, False, (290, 200, 520)),
                                        (False, True, (160, 300, 150)),
                                        (False, False, (40, 700, 90))]:
        A = rng.normal(size=(K, M) if trans_a else (M, K)).astype(np.float32)
        B = rng.normal(size=(N, K) if trans_b else (K, N)).astype(np.float32)
        threads(1)
        one = _core.gemm(A, B, trans_a, trans_b)
        for n in (2, 3):
            threads(n)
            np.testing.assert_array_equal(_core.gemm(A, B, trans_a, trans_b), one)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [False, True])
def test_two_epochs_give_bit_identical_weights_on_one_and_two_threads(dtype, dropout, threads):
    X, y = mt.load_digits()
    X = (X / 16).astype(dtype)
    params = []
    for n in (1, 2):
        threads(n)
        layers = [mt.Dense(256, activation="relu"), mt.Dense(256, activation="tanh"),
                  mt.Dense(10)]
        if dropout:
            layers.insert(1, mt.Dropout(0.25))
        model = mt.Sequential(layers, seed=3, dtype=dtype)
        model.fit(X, y, epochs=2, batch_size=128, optimizer=mt.SGD(lr=0.1, momentum=0.9),
                  verbose=0)
        assert mt.get_num_threads() == n
        params.append(model.params_flat.copy())
    np.testing.assert_array_equal(params[0], params[1])
    assert model.evaluate(X, y)["accuracy"] > 0.9


def test_loss_over_many_blocks_of_rows_is_bit_identical_on_one_and_two_threads(threads):
    # 2048 rows of 64 logits: threads split 128 blocks of 16 rows
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(2048, 16)), rng.integers(0, 64, 2048)
    results = []
    for n in (1, 2):
        threads(n)
        model = mt.Sequential([mt.Dense(64)], seed=0, dtype="float64").build(16)
        results.append(model.loss_and_gradient(X, y))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("bf16,dtype", [(False, np.float32), (False, np.float64),
                                        (True, np.float32)])
def test_products_give_the_same_bits_on_any_thread_count(threads, bf16, dtype):
    # tiles that start on the panels already packed while other panels are being packed
    # (packed A and B, several rows of macro-tiles), and a product with more packing jobs
    # than the workspace has ready flags (1084 A panels: packing, a barrier, then tiles)
    rng = np.random.default_rng(6)
    cases = [(700, 300, 530, 1, 0), (300, 500, 200, 0, 1), (13000, 64, 16, 1, 0)]
    for M, N, K, ta, tb in cases:
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        threads(1)
        ref = _core.gemm(A, B, bool(ta), bool(tb), bf16=bf16)
        exact = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
        np.testing.assert_allclose(ref, exact, rtol=0, atol=(0.05 if bf16 else 1e-3) * K)
        for n in (2, 3, 2):
            threads(n)
            np.testing.assert_array_equal(_core.gemm(A, B, bool(ta), bool(tb), bf16=bf16), ref)
