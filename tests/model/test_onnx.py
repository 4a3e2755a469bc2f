"""ONNX export: what ONNX Runtime computes from the exported graph is what minitrain's
predict / predict_proba compute."""

import math
import subprocess
import sys

import numpy as np
import pytest

import minitrain as mt
from minitrain import export

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu")
LOSSES = ("cross_entropy", "binary_cross_entropy", "mse", "poisson")
TOL = {"float32": 1e-5, "float64": 1e-12}


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def run(proto, X):
    s = session(proto)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"X": X})))


def targets(loss, n, k, rng):
    if loss == "cross_entropy":
        return rng.integers(0, k, n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, k)).astype(np.float64)
    if loss == "poisson":
        return rng.poisson(2.0, (n, k)).astype(np.float64)
    return rng.normal(size=(n, k))


def trained(layers, loss, dtype, k=3, n=240, epochs=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    model = mt.Sequential(layers, loss=loss, seed=seed, dtype=dtype)
    model.fit(X, targets(loss, n, k, rng), epochs=epochs, batch_size=32, verbose=0,
              metrics=None, optimizer=mt.SGD(lr=0.02, momentum=0.9))
    return model, X.astype(dtype)


def assert_close(got, want, dtype):
    """Equal within the tolerance relative to the output's scale (outputs near 0 carry
    the rounding of the sums that produced them)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = TOL[np.dtype(dtype).name]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def assert_same_outputs(model, X, proto, dtype):
    out = run(proto, X)
    if model.loss in ("cross_entropy", "binary_cross_entropy"):
        assert sorted(out) == ["label", "probabilities"]
        np.testing.assert_array_equal(out["label"], model.predict(X))
        assert out["label"].dtype == model.predict(X).dtype == np.int64
        assert_close(out["probabilities"], model.predict_proba(X), dtype)
    else:
        assert list(out) == ["predictions"]
        assert_close(out["predictions"], model.predict(X), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_layer_activation_and_loss_gives_predict(activation, loss, dtype):
    layers = [mt.Dense(16, activation=activation, negative_slope=0.2), mt.BatchNorm(),
              mt.Activation(activation, negative_slope=0.3), mt.Dropout(0.3), mt.Dense(3)]
    model, X = trained(layers, loss, dtype)
    bn = model.layers[1]
    assert np.abs(bn.running_mean).min() > 0 and np.abs(bn.running_var - 1).min() > 0
    proto = model.to_onnx()
    assert_same_outputs(model, X, proto, dtype)
    ops = {node.op_type for node in proto.graph.node}
    assert "Dropout" not in ops and "MatMul" in ops
    if activation == "leaky_relu" and dtype == "float32":
        alphas = [a.f for node in proto.graph.node if node.op_type == "LeakyRelu"
                  for a in node.attribute]
        np.testing.assert_allclose(alphas, [0.2, 0.3], rtol=1e-7)


def test_float64_batchnorm_keeps_its_epsilon_in_float64():
    """Small variances make epsilon count: as a float32 attribute (BatchNormalization's)
    it would move the outputs by ~1e-10."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(256, 4)) * 1e-3
    model = mt.Sequential([mt.Dense(8), mt.BatchNorm(momentum=0.0), mt.Dense(2)], loss="mse",
                          seed=0, dtype="float64")
    model.fit(X, rng.normal(size=(256, 2)), epochs=1, batch_size=256, verbose=0, metrics=None)
    assert model.layers[1].running_var.max() < 1e-4
    assert_same_outputs(model, X, model.to_onnx(), "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["binary_cross_entropy", "mse", "poisson"])
def test_one_output_is_one_dimensional_as_predict(loss, dtype):
    model, X = trained([mt.Dense(8, activation="tanh"), mt.Dense(1)], loss, dtype, k=1)
    assert model.predict(X).ndim == 1
    assert_same_outputs(model, X, model.to_onnx(), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss, output", [("cross_entropy", "softmax"),
                                          ("binary_cross_entropy", "sigmoid")])
def test_fused_softmax_or_sigmoid_output_is_applied_once(loss, output, dtype):
    model, X = trained([mt.Dense(8, activation="relu"), mt.Dense(3, activation=output)],
                       loss, dtype)
    assert_same_outputs(model, X, model.to_onnx(), dtype)


@pytest.mark.parametrize("dtype, opset", [("float32", 17), ("float32", 20), ("float64", 17),
                                          ("float64", 20)])
def test_gelu_is_exact_over_its_whole_range(dtype, opset):
    """gelu(x) = x Phi(x) elementwise against the C core, tails included; float64 computes
    erf without Erf (ONNX Runtime has no float64 kernel for it)."""
    model = mt.Sequential([mt.Dense(1), mt.Activation("gelu"), mt.Dense(1)], loss="mse",
                          dtype=dtype).build(1)
    for layer in (model.layers[0], model.layers[2]):
        layer.W[...] = 1
        layer.b[...] = 0
    x = np.linspace(-12, 12, 20001, dtype=dtype)[:, None]
    proto = model.to_onnx(opset=opset)
    got, want = run(proto, x)["predictions"], model.predict(x)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=16 * eps)
    np.testing.assert_allclose(want[-1], 12.0)
    ops = {node.op_type for node in proto.graph.node}
    if dtype == "float64":
        assert "Erf" not in ops and "Gelu" not in ops
    else:
        assert ("Gelu" in ops) == (opset >= 20) and ("Erf" in ops) == (opset < 20)


def test_float64_erf_pieces_match_math_erf():
    x = np.linspace(0, 6, 6001)
    c = export._erf_coefficients()
    piece = np.minimum(np.floor(x / export._ERF_WIDTH), export._ERF_PIECES - 1).astype(int)
    t = x - (piece + 0.5) * export._ERF_WIDTH
    p = np.polynomial.polynomial.polyval(t, c[piece].T, tensor=False)
    np.testing.assert_allclose(p, [math.erf(v) for v in x], rtol=0, atol=5 * 2.0**-52)


@pytest.mark.parametrize("dtype, elem", [("float32", onnx.TensorProto.FLOAT),
                                         ("float64", onnx.TensorProto.DOUBLE)])
def test_exports_in_the_model_dtype_with_a_dynamic_batch(dtype, elem):
    model, X = trained([mt.Dense(8, activation="relu"), mt.BatchNorm(), mt.Dense(3)],
                       "cross_entropy", dtype)
    proto = model.to_onnx()
    (inp,) = proto.graph.input
    assert inp.name == "X" and inp.type.tensor_type.elem_type == elem
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 6
    assert {t.data_type for t in proto.graph.initializer} <= {elem, onnx.TensorProto.INT64}
    for rows in (1, 7, 1000):
        Xr = np.resize(X, (rows, 6))
        np.testing.assert_array_equal(run(proto, Xr)["label"], model.predict(Xr))


def test_writes_the_file_it_returns(tmp_path):
    model, X = trained([mt.Dense(8, activation="gelu"), mt.Dense(3)], "cross_entropy",
                       "float32")
    path = tmp_path / "m.onnx"
    proto = model.to_onnx(path)
    assert isinstance(proto, onnx.ModelProto)
    assert path.read_bytes() == proto.SerializeToString()
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert proto.opset_import[0].version == export.DEFAULT_OPSET
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # no temporary left
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(s.run(["label"], {"X": X})[0], model.predict(X))


def test_standardisation_and_class_labels_in_the_graph():
    model, X = trained([mt.Dense(8, activation="relu"), mt.Dense(3)], "cross_entropy",
                       "float64")
    mean, scale = np.arange(6.0), np.linspace(0.5, 3.0, 6)
    raw = X * scale + mean
    out = run(model.to_onnx(mean=mean, scale=scale, classes=["a", "b", "c"]), raw)
    np.testing.assert_array_equal(out["label"], np.array(["a", "b", "c"])[model.predict(X)])
    assert_close(out["probabilities"], model.predict_proba(X), "float64")
    out = run(model.to_onnx(classes=[3, 5, 7]), X)
    np.testing.assert_array_equal(out["label"], np.array([3, 5, 7])[model.predict(X)])

    model, X = trained([mt.Dense(4), mt.Dense(1)], "binary_cross_entropy", "float32", k=1)
    out = run(model.to_onnx(classes=[-1.5, 2.5]), X)
    np.testing.assert_array_equal(out["label"], np.array([-1.5, 2.5])[model.predict(X)])


def test_bad_arguments_raise_and_name_the_argument():
    model = mt.Sequential([mt.Dense(4), mt.Dense(3)])
    with pytest.raises(ValueError, match="not trained yet"):
        model.to_onnx()
    assert not model.built
    model.build(6)
    before = model.params_flat.copy()
    for kwargs, err, match in [
            ({"opset": 12}, ValueError, "opset must be >= 13"),
            ({"opset": 17.0}, TypeError, "opset must be an integer"),
            ({"opset": 10_000}, ValueError, "opset must be <="),
            ({"mean": np.zeros(5)}, ValueError, r"mean must have shape \(6,\)"),
            ({"scale": np.zeros(6)}, ValueError, "scale must be non-zero"),
            ({"scale": [np.nan] * 6}, ValueError, "scale contains NaN"),
            ({"mean": [1e300] * 6}, ValueError, r"mean contains NaN or infinity \(in float32"),
            ({"mean": ["a"] * 6}, TypeError, "mean must hold numbers"),
            ({"classes": [1, 2]}, ValueError, "classes must be 3"),
            ({"bogus": 1}, TypeError, "bogus")]:
        with pytest.raises(err, match=match):
            model.to_onnx(**kwargs)
    regressor = mt.Sequential([mt.Dense(2)], loss="mse").build(3)
    with pytest.raises(ValueError, match="classes only apply"):
        regressor.to_onnx(classes=[0, 1])
    np.testing.assert_array_equal(model.params_flat, before)


def test_missing_onnx_names_the_extra(monkeypatch):
    model = mt.Sequential([mt.Dense(3)]).build(2)
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an uninstalled package raises
    with pytest.raises(ImportError, match=r'pip install "minitrain\[onnx\]"'):
        model.to_onnx()


# ------------------------------------------------------------------- the CLI
def test_cli_export_serves_the_raw_features(tmp_path, capsys):
    from minitrain.cli import main

    path = tmp_path / "digits.onnx"
    assert main(["--epochs", "3", "--export", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"ONNX model written to {path}" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    # the CLI's test split of the shipped digits, as raw pixel counts
    X, y = mt.load_digits()
    _, X_test, _, y_test = mt.train_test_split(X.astype(np.float64), y, test_size=0.2,
                                               seed=0, stratify=True)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, proba = s.run(None, {"X": X_test.astype(np.float32)})
    assert proba.shape == (len(y_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    # float32 standardisation in the graph may flip a borderline row at most
    assert abs((labels == y_test).mean() - accuracy) <= 1.5 / len(y_test)


@pytest.mark.parametrize("problem", ["directory", "onnx"])
def test_cli_export_problems_stop_before_training(tmp_path, capsys, monkeypatch, problem):
    from minitrain.cli import main

    target = tmp_path / "missing" / "m.onnx" if problem == "directory" else tmp_path / "m.onnx"
    if problem == "onnx":
        monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SystemExit) as exc:
        main(["--epochs", "1", "--export", str(target)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "--export" in captured.err and captured.out == ""
    assert ("no such directory" if problem == "directory" else "minitrain[onnx]") \
        in captured.err


# ----------------------------------------------------- the scikit-learn front
@pytest.fixture(scope="module")
def skl():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed")
    import minitrain.sklearn as mts
    from sklearn import neural_network as sk
    return skl2onnx, mts, sk


def _classification(kind, rng):
    X = rng.normal(size=(150, 5))
    if kind == "binary":
        return X, np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    if kind == "multiclass":
        return X, (X[:, 0] > 0) * 1 + (X[:, 1] > 0) * 2 + 3
    return X, (X[:, :3] > 0).astype(int)  # multilabel


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_skl2onnx_converts_minitrain_classifier(skl, kind, dtype):
    skl2onnx, mts, _ = skl
    if kind == "multilabel" and dtype == "float64":
        pytest.skip("skl2onnx's multilabel graph uses Binarizer, which ONNX Runtime only "
                    "runs in float32 (for scikit-learn's MLPClassifier too)")
    X, y = _classification(kind, np.random.default_rng(0))
    X = X.astype(dtype)
    clf = mts.MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, y)
    labels, proba = run(skl2onnx.to_onnx(clf, X[:1], options={"zipmap": False}), X).values()
    np.testing.assert_array_equal(labels, clf.predict(X))
    assert_close(proba, clf.predict_proba(X), dtype)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_skl2onnx_converts_minitrain_regressor(skl, n_outputs, dtype):
    skl2onnx, mts, _ = skl
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 5)).astype(dtype)
    y = X[:, :n_outputs] * 2 + 1 if n_outputs > 1 else X[:, 0] * 2 + 1
    reg = mts.MLPRegressor(hidden_layer_sizes=(8,), activation="tanh", max_iter=30,
                           random_state=0).fit(X, y)
    (pred,) = run(skl2onnx.to_onnx(reg, X[:1]), X).values()
    # skl2onnx shapes every MLPRegressor's output (-1, 1), scikit-learn's included
    assert pred.shape == (len(X) * n_outputs, 1)
    assert_close(pred.reshape(reg.predict(X).shape), reg.predict(X), dtype)


def _outputs(skl2onnx, est, X, options):
    """The output names and types of the converted `est`, or the error converting it."""
    try:
        s = session(skl2onnx.to_onnx(est, X[:1], options=options))
    except Exception as e:  # noqa: BLE001 - compared with scikit-learn's own failure
        return type(e).__name__
    return [(o.name, o.type) for o in s.get_outputs()]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("options", [{}, {"zipmap": False}, {"zipmap": "columns"},
                                     {"zipmap": False, "output_class_labels": True},
                                     {"zipmap": False, "nocl": True}])
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_skl2onnx_options_behave_as_for_scikit_learn(skl, kind, options):
    skl2onnx, mts, sk = skl
    X, y = _classification(kind, np.random.default_rng(2))
    X = X.astype(np.float32)
    ours = mts.MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X, y)
    theirs = sk.MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X, y)
    assert _outputs(skl2onnx, ours, X, options) == _outputs(skl2onnx, theirs, X, options)
    if options.get("zipmap", True) is True:  # a list of {class: probability} per row
        (label, proba), cls = run(skl2onnx.to_onnx(ours, X[:1]), X).values(), ours.classes_
        np.testing.assert_array_equal(label, ours.predict(X))
        want = ours.predict_proba(X)
        got = np.array([[row[c] for c in cls] for row in proba])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_skl2onnx_poisson_regressor_fails_as_scikit_learns(skl):
    skl2onnx, mts, sk = skl
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3))
    y = rng.poisson(2.0, 60)
    fitted = [cls(loss="poisson", hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, y)
              for cls in (mts.MLPRegressor, sk.MLPRegressor)]
    assert _outputs(skl2onnx, fitted[0], X, None) == _outputs(skl2onnx, fitted[1], X, None)


def test_minitrain_sklearn_imports_without_skl2onnx():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    code = ("import sys; sys.modules['skl2onnx'] = None\n"
            "from minitrain.sklearn import MLPClassifier\n"
            "print(MLPClassifier.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "MLPClassifier\n"
