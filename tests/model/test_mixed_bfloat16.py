"""dtype="mixed_bfloat16" through the model: float32 buffers, bfloat16 product inputs."""

import json

import numpy as np
import pytest

import minitrain as mt
from minitrain import functional as F

_core = pytest.importorskip("minitrain._core")
ISAS = _core.available_isas()
MIXED = "mixed_bfloat16"


@pytest.fixture(params=ISAS)
def isa(request):
    previous = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(previous)


def _digits():
    X, y = mt.load_digits()
    return (X / 16).astype(np.float32), y


def _model(backend="c", dtype=MIXED, seed=0):
    return mt.Sequential([mt.Dense(64), mt.BatchNorm(), mt.Activation("relu"),
                          mt.Dropout(0.1), mt.Dense(32, activation="tanh"), mt.Dense(10)],
                         seed=seed, dtype=dtype, backend=backend)


def test_buffers_stay_float32_and_the_policy_is_kept():
    model = _model().build(64)
    assert model.dtype == np.float32 and model.dtype_policy == MIXED
    for name in ("params_flat", "grads_flat", "state_flat", "buffers_flat"):
        assert getattr(model, name).dtype == np.float32
    assert model._net.bf16 and not _model(dtype="float32").build(64)._net.bf16
    assert _model(dtype=np.float64).dtype_policy == "float64"


def test_a_bad_dtype_names_the_choices():
    for bad in ("bfloat16", "float16", "mixed_float16", 3):
        with pytest.raises(TypeError, match="dtype must be one of .*mixed_bfloat16"):
            mt.Sequential([mt.Dense(3)], dtype=bad)


def test_one_iteration_matches_the_twin(isa):
    X, y = _digits()
    c, n = _model().build(64), _model("numpy").build(64)
    loss_c, g_c = c.loss_and_gradient(X[:200], y[:200])
    loss_n, g_n = n.loss_and_gradient(X[:200], y[:200])
    assert loss_c == pytest.approx(loss_n, rel=1e-6)
    np.testing.assert_allclose(g_c, g_n, rtol=0, atol=1e-6 * np.abs(g_n).max())
    # the rounding is applied: float32 products give another gradient
    g_32 = _model(dtype="float32").build(64).loss_and_gradient(X[:200], y[:200])[1]
    assert np.abs(g_32 - g_n).max() > 1e-4 * np.abs(g_n).max()


def test_a_fit_with_dropout_and_batchnorm_follows_the_twin(isa):
    # after 2 epochs the two differ by the rounding of the sums into bfloat16 (an input
    # within float32 rounding of a bfloat16 tie may round either way): float32's own
    # differences, amplified by 2^16 at such an element, then by training
    X, y = _digits()
    c, n = _model(), _model("numpy")
    for m in (c, n):
        m.fit(X, y, epochs=2, batch_size=64, verbose=0, optimizer=mt.Adam(1e-3))
    scale = np.abs(n.params_flat).max()
    assert np.abs(c.params_flat - n.params_flat).max() < 0.02 * scale
    np.testing.assert_allclose(c.predict_proba(X), n.predict_proba(X), atol=0.02)
    assert (c.predict(X) == n.predict(X)).mean() > 0.99


def test_predict_rounds_the_products_and_batches_alike():
    X, y = _digits()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    X = X[:1000]
    out = np.empty((len(X), 10), np.float32)
    twin = model._twin()
    twin.forward(X, out)
    logits = np.empty_like(out)
    model._net.forward(X, logits)
    np.testing.assert_allclose(logits, out, rtol=0, atol=1e-5 * np.abs(out).max())
    full = model.predict_proba(X)
    np.testing.assert_array_equal(model.predict_proba(X[:7]), full[:7])
    # the same weights in float32 products predict differently
    f32 = _model(dtype="float32").build(64)
    f32.params_flat[:] = model.params_flat
    f32.buffers_flat[:] = model.buffers_flat
    assert np.abs(f32.predict_proba(X) - full).max() > 1e-5


def test_bit_identical_on_one_and_two_threads():
    X, y = _digits()
    previous = mt.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1):
            mt.set_num_threads(n)
            model = _model()
            model.fit(X, y, epochs=1, batch_size=256, verbose=0, optimizer="adam")
            results.append(model.params_flat.copy())
    finally:
        mt.set_num_threads(previous)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_checkpoint_round_trip_and_resume(tmp_path):
    X, y = _digits()
    whole = _model()
    whole.fit(X, y, epochs=4, batch_size=64, verbose=0, optimizer="adam")
    first = _model()
    first.fit(X, y, epochs=2, batch_size=64, verbose=0, optimizer="adam")
    first.save(tmp_path / "run.npz")
    loaded = mt.load(tmp_path / "run.npz")
    assert loaded.dtype_policy == MIXED and loaded._net.bf16
    np.testing.assert_array_equal(loaded.predict_proba(X), first.predict_proba(X))
    again = _model()
    again.fit(X, y, epochs=4, batch_size=64, verbose=0, resume_from=tmp_path / "run.npz")
    np.testing.assert_array_equal(again.params_flat, whole.params_flat)
    header = np.load(tmp_path / "run.npz", allow_pickle=False)["__minitrain__"]
    assert json.loads(str(header))["model"]["dtype"] == MIXED
    # a float32 run cannot resume it: the dtype is part of the architecture
    with pytest.raises(ValueError, match="dtype"):
        _model(dtype="float32").fit(X, y, epochs=4, batch_size=64, verbose=0,
                                    resume_from=tmp_path / "run.npz")
    plain = _model(dtype="float32")
    plain.fit(X, y, epochs=1, batch_size=64, verbose=0)
    plain.save(tmp_path / "f32.npz")
    assert mt.load(tmp_path / "f32.npz").dtype_policy == "float32"


def test_get_state_and_pickling_keep_the_policy():
    import pickle
    X, y = _digits()
    model = _model()
    model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    same = pickle.loads(pickle.dumps(model))
    assert same.dtype_policy == MIXED
    np.testing.assert_array_equal(same.predict_proba(X), model.predict_proba(X))
    assert model.get_state()["config"]["dtype"] == MIXED


def test_callbacks_see_the_float32_weights(tmp_path):
    X, y = _digits()
    model = _model()
    hist = model.fit(X, y, epochs=6, batch_size=64, verbose=0, validation_split=0.2,
                     callbacks=[mt.EarlyStopping(patience=1, restore_best_weights=True),
                                mt.ModelCheckpoint(tmp_path / "best.npz",
                                                   save_best_only=True)])
    best = mt.load(tmp_path / "best.npz")
    assert best.dtype_policy == MIXED
    assert len(hist.history["val_loss"]) >= 2
    np.testing.assert_array_equal(best.predict(X), model.predict(X))


def test_the_digits_fit_learns():
    X, y = mt.load_digits()
    Xtr, Xte, ytr, yte = mt.train_test_split(X / 16, y, test_size=0.2, seed=0)
    model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)], seed=0,
                          dtype=MIXED)
    model.fit(Xtr, ytr, epochs=30, batch_size=32, verbose=0,
              optimizer=mt.SGD(lr=0.05, momentum=0.9))
    assert model.evaluate(Xte, yte)["accuracy"] >= 0.95


def test_onnx_exports_the_float32_master_weights(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    X, y = _digits()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    proto = model.to_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: X})
    proba = [o for o in got if o.ndim == 2][0]
    f32 = _model(dtype="float32").build(64)
    f32.params_flat[:] = model.params_flat
    f32.buffers_flat[:] = model.buffers_flat
    np.testing.assert_allclose(proba, f32.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(proba, model.predict_proba(X), atol=0.05)


def test_the_cli_flag(capsys):
    from minitrain.cli import main
    assert main(["--epochs", "30", "--dtype", MIXED]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test accuracy ")[1].split()[0]) >= 0.95
