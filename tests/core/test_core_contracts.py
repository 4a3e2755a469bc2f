"""The binding's contracts, called directly: whatever minitrain._core is given, it raises
an exception and the core writes nowhere it should not."""

import numpy as np
import pytest

from minitrain import _core

DENSE = "dense"
CE, MSE = "cross_entropy", "mse"


def _net(n_in=3, n_out=4, loss=CE, state_factor=2, **arrays):
    n = n_in * n_out + n_out
    rng = np.random.default_rng(0)
    a = {"params": rng.normal(size=n), "grads": np.zeros(n),
         "state": np.zeros(state_factor * n), **arrays}
    layers = [{"kind": DENSE, "in": n_in, "out": n_out, "w_off": 0, "b_off": n_in * n_out}]
    return _core.Net(np.float64, loss, layers, a["params"], a["grads"], a["state"]), a


def _batch(n=5, n_in=3, n_out=4):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def test_forward_refuses_a_read_only_out():
    net, _ = _net()
    net.reserve(5)
    X, _ = _batch()
    out = _read_only(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="out must be a writeable"):
        net.forward(X, out)
    assert not out.any()
    good = np.zeros((5, 4))
    net.forward(X, good)
    assert np.isfinite(good).all() and good.any()


@pytest.mark.parametrize("name", ["params", "grads", "state"])
def test_net_refuses_read_only_flat_buffers(name):
    n = 16
    arrays = {"params": np.zeros(n), "grads": np.zeros(n), "state": np.zeros(2 * n)}
    arrays[name] = _read_only(arrays[name])
    with pytest.raises(ValueError, match=f"{name} must be a writeable"):
        _net(**arrays)


def test_gemm_refuses_a_read_only_c():
    A, B = np.ones((4, 3)), np.ones((3, 2))
    C = _read_only(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="C must be a writeable"):
        _core.gemm(A, B, C=C)
    np.testing.assert_array_equal(_core.gemm(A, B), np.full((4, 2), 3.0))


@pytest.mark.parametrize("kind", [2, 3, 7, -1])
def test_set_optimizer_refuses_unknown_kinds(kind):
    # every kind but SGD's ran Adam's update, reading and writing two state blocks
    net, _ = _net(state_factor=1)
    with pytest.raises(ValueError, match="kind must be"):
        net.set_optimizer(kind)


def test_set_optimizer_checks_the_state_each_kind_needs():
    net, a = _net(state_factor=1)
    net.set_optimizer("sgd", momentum=0.9)  # SGD: one buffer
    with pytest.raises(ValueError, match="optimizer state needs 32 elements, has 16"):
        net.set_optimizer("adam")  # Adam: two moments
    with pytest.raises(ValueError, match="style must be"):
        net.set_optimizer("sgd", style=2)
    # the rejected calls left SGD in place: a step updates with momentum
    X, y = _batch()
    net.reserve(5)
    before = a["params"].copy()
    net.step(X, y, lr=0.1, t=1)
    np.testing.assert_allclose(a["params"], before - 0.1 * a["grads"], rtol=1e-12)
    np.testing.assert_array_equal(a["state"], a["grads"])


@pytest.mark.parametrize("n_in, n_out", [(2**62, 4), (2**61, 8), (2**60 + 2**59, 16)])
def test_width_products_that_overflow_are_refused(n_in, n_out):
    # in * out wraps around 64 bits to a size that fits; the bias fits too
    params = np.zeros(64)
    layers = [{"kind": DENSE, "in": n_in, "out": n_out, "w_off": 0, "b_off": 0}]
    with pytest.raises(ValueError, match="outside the flat buffer"):
        _core.Net(np.float64, MSE, layers, params, np.zeros(64), np.zeros(128))


@pytest.mark.parametrize("loss", [-1, 4, 99])
def test_unknown_loss_codes_are_refused(loss):
    with pytest.raises(ValueError, match="loss must be one of"):
        _net(loss=loss)


def test_a_workspace_whose_size_wraps_around_is_refused():
    net, _ = _net()
    with pytest.raises(MemoryError, match="too large"):
        net.reserve(2**60)
    assert net.max_batch == 0
    net.reserve(5)
    assert net.max_batch == 5


def test_a_rejected_description_leaves_the_net_as_it_was():
    net, a = _net()
    net.reserve(5)
    X, y = _batch()
    loss = net.step(X, y, update=False)
    bad = [{"kind": DENSE, "in": 3, "out": 2, "w_off": 0, "b_off": 6},
           {"kind": DENSE, "in": 2, "out": 4, "w_off": 0, "b_off": 10**6}]
    with pytest.raises(ValueError, match="layer 1 b"):
        net.__init__(np.float64, CE, bad, a["params"], a["grads"], a["state"])
    assert net.max_batch == 5
    assert net.step(X, y, update=False) == loss


def test_labels_changed_after_set_data_become_a_value_error():
    net, a = _net()
    net.set_optimizer("sgd")
    net.reserve(5)
    X, y = _batch()
    net.set_data(X, y)
    before = a["params"].copy()
    for label in (4, -1, 2**62):
        y[2] = label
        with pytest.raises(ValueError, match=r"y holds a label outside \[0, 4\)"):
            net.step_rows(np.arange(5), 0, 5, 0.1, 1)
        np.testing.assert_array_equal(a["params"], before)
        assert not a["grads"].any() and not a["state"].any()


def test_a_non_finite_gradient_becomes_a_floating_point_error():
    net, a = _net(loss=MSE)
    net.set_optimizer("adam")
    net.reserve(1)
    before = a["params"].copy()
    X, y = np.ones((1, 3)), np.full((1, 4), 1e300)  # the loss overflows first
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        net.step(X, y, lr=0.1, t=1)
    a["params"][:] = 0  # the output is 0 whatever X: a finite loss of 1e20
    before = a["params"].copy()
    X, y = np.full((1, 3), 1e300), np.full((1, 4), 1e10)  # dW = X^T dP overflows
    with pytest.raises(FloatingPointError, match="gradient is not finite"):
        net.step(X, y, lr=0.1, t=1)
    np.testing.assert_array_equal(a["params"], before)
    assert not a["state"].any()


@pytest.mark.parametrize("status, error", [
    (1, FloatingPointError), (2, ValueError), (3, MemoryError), (4, ValueError),
    (5, FloatingPointError), (6, RuntimeError), (-1, RuntimeError)])
def test_every_status_of_the_core_is_an_exception(status, error):
    with pytest.raises(error):
        _core._check_status(status)
    _core._check_status(0)
