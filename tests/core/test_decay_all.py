"""decay_all=True: weight decay on every parameter, biases too, as PyTorch's optimizers
apply it to every parameter they are given. Checked against PyTorch's update rules
written in NumPy (float64, 300 steps) and against torch itself when it is installed."""

import numpy as np
import pytest

import minitrain as mt

STEPS, BATCH, LR, WD = 300, 32, 0.05, 0.05


@pytest.fixture(scope="module")
def data():
    X, y = mt.load_digits()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(X), BATCH, replace=False) for _ in range(STEPS)]
    return X / 16.0, y, batches


def _optimizer(name, decay_all):
    if name == "sgd":
        return mt.SGD(lr=LR, momentum=0.9, weight_decay=WD, decay_all=decay_all)
    if name == "adam":
        return mt.Adam(lr=LR / 10, weight_decay=WD, decay_all=decay_all)
    return mt.AdamW(lr=LR / 10, weight_decay=WD, decay_all=decay_all)


def _train(layers, data, opt, backend="c"):
    X, y, batches = data
    model = mt.Sequential(layers, seed=0, dtype="float64", backend=backend)
    model.build(X.shape[1])
    initial = model.params_flat.copy()
    for rows in batches:
        model.train_step(X[rows], y[rows], optimizer=opt)
    return model, initial


def _numpy_reference(model, initial, data, name, decay_all):
    """PyTorch's SGD (momentum), Adam (L2) and AdamW on a Dense-relu-Dense network,
    written out in NumPy; decay on every parameter, or on the weights only."""
    X, y, batches = data
    d1, d2 = model.layers
    saved = model.params_flat.copy()
    model.params_flat[...] = initial
    params = [d1.W.copy(), d1.b.copy(), d2.W.copy(), d2.b.copy()]
    model.params_flat[...] = saved
    decayed = [True, decay_all, True, decay_all]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    lr = LR if name == "sgd" else LR / 10
    for t, rows in enumerate(batches, 1):
        xb, yb = X[rows], y[rows]
        W1, b1, W2, b2 = params
        z1 = xb @ W1 + b1
        a1 = np.maximum(z1, 0)
        z2 = a1 @ W2 + b2
        p = np.exp(z2 - z2.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1
        dz2 = p / len(yb)
        dz1 = (dz2 @ W2.T) * (z1 > 0)
        grads = [xb.T @ dz1, dz1.sum(axis=0), a1.T @ dz2, dz2.sum(axis=0)]
        for i, (w, g) in enumerate(zip(params, grads)):
            if name == "sgd":  # torch.optim.SGD: g += wd*p; buf = mu*buf + g; p -= lr*buf
                if decayed[i]:
                    g = g + WD * w
                m[i] = 0.9 * m[i] + g
                w -= lr * m[i]
                continue
            if name == "adamw":  # torch.optim.AdamW: p *= 1 - lr*wd first
                if decayed[i]:
                    w *= 1 - lr * WD
            elif decayed[i]:  # torch.optim.Adam: L2 in the gradient
                g = g + WD * w
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            denom = np.sqrt(v[i]) / np.sqrt(1 - 0.999 ** t) + 1e-8
            w -= (lr / (1 - 0.9 ** t)) * m[i] / denom
    return params


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("decay_all", [True, False])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_matches_pytorch_update_rules_in_numpy(data, name, decay_all, backend):
    layers = [mt.Dense(32, activation="relu"), mt.Dense(10)]
    model, initial = _train(layers, data, _optimizer(name, decay_all), backend)
    ref = _numpy_reference(model, initial, data, name, decay_all)
    d1, d2 = model.layers
    for got, want in zip([d1.W, d1.b, d2.W, d2.b], ref):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_default_does_not_decay_biases(data):
    layers = [mt.Dense(32, activation="relu"), mt.Dense(10)]
    model, initial = _train(layers, data, _optimizer("sgd", False))
    ref = _numpy_reference(model, initial, data, "sgd", decay_all=True)
    # the gap PyTorch users met with the default: biases not decayed
    assert np.abs(model.layers[0].b - ref[1]).max() > 1e-4
    assert mt.SGD().decay_all is False and mt.AdamW().decay_all is False


def test_config_round_trip_and_bad_value(tmp_path, data):
    opt = mt.AdamW(weight_decay=0.1, decay_all=True)
    assert opt.get_config()["decay_all"] is True
    assert mt.optimizers.from_config(opt.get_config()).decay_all is True
    X, y, _ = data
    model = mt.Sequential([mt.Dense(4), mt.Dense(10)], seed=0)
    model.fit(X, y, epochs=1, optimizer=opt, verbose=0)
    model.save(tmp_path / "m.npz")
    assert mt.load(tmp_path / "m.npz").optimizer.decay_all is True
    with pytest.raises(TypeError, match="decay_all"):
        mt.SGD(decay_all="yes")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_matches_torch(data, name):
    torch = pytest.importorskip("torch")
    X, y, batches = data
    layers = [mt.Dense(32), mt.BatchNorm(), mt.Activation("relu"), mt.Dense(10)]
    model, initial = _train(layers, data, _optimizer(name, True))
    d1, bn, _, d2 = model.layers
    model.params_flat[...], final = initial, model.params_flat.copy()
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 10)).double()
    with torch.no_grad():
        for lin, dense in ((net[0], d1), (net[3], d2)):
            lin.weight.copy_(torch.from_numpy(dense.W.T.copy()))
            lin.bias.copy_(torch.from_numpy(dense.b.copy()))
    model.params_flat[...] = final
    if name == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=LR / 10, weight_decay=WD)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # products this small: threads only wait on a busy machine
    try:
        for rows in batches:
            idx = torch.from_numpy(rows)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    pairs = [(d1.W, net[0].weight.T), (d1.b, net[0].bias), (bn.gamma, net[1].weight),
             (bn.beta, net[1].bias), (d2.W, net[3].weight.T), (d2.b, net[3].bias),
             (bn.running_mean, net[1].running_mean), (bn.running_var, net[1].running_var)]
    # atol: the bias before the batch norm has an exact gradient of 0; both sides keep
    # only rounding noise there (about 1e-10)
    for got, want in pairs:
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-8, atol=1e-8)
