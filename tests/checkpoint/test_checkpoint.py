"""Checkpoints: round trip, bit-identical resume across processes and thread counts,
atomic writes, and every kind of bad file."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minitrain as mt
from minitrain import checkpoint

from helpers import cyclic_blobs, subprocess_path


def blobs(n=200, seed=0):
    return cyclic_blobs(n, seed, classes=4, features=6, spread=1.5)


def model_and_optimizer(widths=(12,), seed=0):
    model = mt.Sequential([mt.Dense(w, activation="relu") for w in widths] + [mt.Dense(4)],
                          seed=seed)
    opt = mt.Adam(lr=mt.schedules.CosineDecay(0.01, decay_steps=40, warmup_steps=5),
                  weight_decay=1e-4)
    return model, opt


def trained(tmp_path, epochs=2):
    X, y = blobs()
    model, opt = model_and_optimizer()
    model.fit(X, y, epochs=epochs, batch_size=32, optimizer=opt, validation_split=0.2,
              callbacks=[mt.EarlyStopping(patience=5, restore_best_weights=True)], verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def test_round_trip_restores_everything(tmp_path):
    model, path = trained(tmp_path)
    loaded = mt.load(path)
    for name in ("params_flat", "grads_flat", "state_flat"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert [la.get_config() for la in loaded.layers] == [la.get_config() for la in model.layers]
    assert (loaded.loss, loaded.dtype, loaded.seed) == (model.loss, model.dtype, model.seed)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 10
    assert (loaded.epoch, loaded.iteration) == (2, 10)
    assert loaded.rng.bit_generator.state == model.rng.bit_generator.state
    assert loaded.history.history == model.history.history
    np.testing.assert_array_equal(loaded.history.iteration_loss, model.history.iteration_loss)
    es = loaded._saved_callback_states["EarlyStopping"]
    assert es["best_epoch"] in (1, 2) and set(es["best_weights"]) == {"params_flat", "buffers_flat"}
    X, _ = blobs(20, seed=3)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # the layer views point into the restored flat buffer
    assert np.shares_memory(loaded.layers[0].W, loaded.params_flat)
    # plain arrays and a JSON header: readable without pickle
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype.kind in "fiuU" for k in data.files)
        assert json.loads(str(data["__minitrain__"]))["format"] == "minitrain-checkpoint"


RUN = textwrap.dedent("""
    import sys
    import numpy as np
    import minitrain as mt
    from test_checkpoint import blobs, model_and_optimizer
    mode, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mt.set_num_threads(threads)
    X, y = blobs(600)
    # large enough that the GEMMs, layers and update run on several threads when allowed
    model, opt = model_and_optimizer(widths=(256, 256))
    kwargs = dict(batch_size=128, validation_split=0.2, verbose=0, optimizer=opt,
                  callbacks=[mt.EarlyStopping(patience=50, restore_best_weights=True),
                             mt.ModelCheckpoint(path)], tol=1e-3, n_iter_no_change=20)
    if mode == "resume":
        kwargs["optimizer"] = None
        model.fit(X, y, epochs=6, resume_from=path, **kwargs)
    else:
        model.fit(X, y, epochs=int(mode), **kwargs)
    print(mt.get_num_threads())
""")


def run(mode, path, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": subprocess_path(__file__)}
    out = subprocess.run([sys.executable, "-c", RUN, mode, str(path), str(threads)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(threads)]


def test_resume_is_bit_identical_across_processes_and_thread_counts(tmp_path):
    straight, split = tmp_path / "straight.npz", tmp_path / "split.npz"
    run("6", straight, 1)
    run("3", split, 1)
    assert mt.load(split).epoch == 3
    run("resume", split, 2)
    a, b = mt.load(straight), mt.load(split)
    assert (a.epoch, a.iteration) == (b.epoch, b.iteration) == (6, 24)
    for name in ("params_flat", "state_flat"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.optimizer.iterations == b.optimizer.iterations == 24
    assert a.history.epoch == b.history.epoch == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert a.history.history[key] == b.history.history[key]
    np.testing.assert_array_equal(a.history.iteration_loss, b.history.iteration_loss)
    sa, sb = a._saved_callback_states, b._saved_callback_states
    assert sa["EarlyStopping"]["best_epoch"] == sb["EarlyStopping"]["best_epoch"]
    np.testing.assert_array_equal(sa["EarlyStopping"]["best_weights"]["params_flat"],
                                  sb["EarlyStopping"]["best_weights"]["params_flat"])
    assert sa["ConvergenceCheck"] == sb["ConvergenceCheck"]


def test_resume_in_process_continues_the_history(tmp_path):
    X, y = blobs()
    model, opt = model_and_optimizer()
    model.fit(X, y, epochs=2, batch_size=32, optimizer=opt, verbose=0)
    path = tmp_path / "two.npz"
    model.save(path)
    fresh, _ = model_and_optimizer()
    hist = fresh.fit(X, y, epochs=3, batch_size=32, resume_from=path, seed=123, verbose=0)
    assert hist.epoch == [1, 2, 3] and fresh.epoch == 3
    # the same optimizer configuration may be passed again; another one is refused
    again, opt2 = model_and_optimizer()
    again.fit(X, y, epochs=3, batch_size=32, optimizer=opt2, resume_from=path, verbose=0)
    np.testing.assert_array_equal(again.params_flat, fresh.params_flat)
    assert opt2.iterations == 21


def test_model_checkpoint_save_best_only(tmp_path):
    X, y = blobs()
    model, opt = model_and_optimizer()

    class Curve(mt.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = [1.0, 0.5, 0.7, 0.4, 0.6][epoch - 1]

    model.fit(X, y, epochs=5, batch_size=32, optimizer=opt, validation_split=0.2, verbose=0,
              callbacks=[Curve(), mt.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True),
                         mt.ModelCheckpoint(str(tmp_path / "ck-{epoch}.npz"),
                                            save_best_only=True)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "ck-1.npz", "ck-2.npz",
                                                           "ck-4.npz"]
    assert mt.load(tmp_path / "best.npz").epoch == 4


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, path = trained(tmp_path)
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(good[:len(good) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary left
    assert mt.load(path).epoch == 2


KILLED = textwrap.dedent("""
    import sys, time
    import minitrain as mt
    from minitrain import checkpoint
    model = mt.load(sys.argv[1])
    real = checkpoint.np.savez

    def slow_savez(f, **arrays):
        real(f, **arrays)
        f.truncate(f.tell() // 2)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    checkpoint.np.savez = slow_savez
    model.fit(*__import__("test_checkpoint").blobs(), epochs=1, verbose=0,
              callbacks=[mt.ModelCheckpoint(sys.argv[1])])
""")


def test_a_killed_writer_leaves_the_previous_checkpoint(tmp_path):
    _, path = trained(tmp_path)
    good = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": subprocess_path(__file__)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert path.read_bytes() == good
    assert mt.load(path).epoch == 2
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.npz"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".model.npz.")


def test_bad_files(tmp_path):
    _, path = trained(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a minitrain checkpoint, or it is truncated"):
        mt.load(cut)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        mt.load(empty)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="not a minitrain checkpoint"):
        mt.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, W=np.zeros(3))
    with pytest.raises(ValueError, match="not a minitrain checkpoint .no __minitrain__ header"):
        mt.load(other)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="a single .npy array"):
        mt.load(single)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a minitrain checkpoint"):
        mt.load(pickled)
    with pytest.raises(FileNotFoundError):
        mt.load(tmp_path / "missing.npz")


def rewrite(path, out, edit_header=None, drop=None):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != drop}
    header = json.loads(str(arrays["__minitrain__"]))
    if edit_header:
        edit_header(header)
    arrays["__minitrain__"] = np.array(json.dumps(header))
    np.savez(out, **arrays)
    return out


def test_inconsistent_checkpoints(tmp_path):
    _, path = trained(tmp_path)

    def wider(h):
        h["model"]["layers"][0]["units"] = 13

    with pytest.raises(ValueError, match="params_flat is float32.*architecture needs float32"):
        mt.load(rewrite(path, tmp_path / "wider.npz", wider))
    with pytest.raises(ValueError, match="holds the buffers"):
        mt.load(rewrite(path, tmp_path / "nostate.npz", drop="model.state_flat"))

    def future(h):
        h["version"] = 99

    with pytest.raises(ValueError, match="version 99 is not supported"):
        mt.load(rewrite(path, tmp_path / "future.npz", future))

    def no_rng(h):
        del h["rng"]

    with pytest.raises(ValueError, match="malformed minitrain checkpoint"):
        mt.load(rewrite(path, tmp_path / "norng.npz", no_rng))

    def bad_layer(h):
        h["model"]["layers"][0]["class"] = "os.system"

    with pytest.raises(ValueError, match="unknown layer"):
        mt.load(rewrite(path, tmp_path / "layer.npz", bad_layer))


def test_resume_refuses_another_architecture_and_changes_nothing(tmp_path):
    _, path = trained(tmp_path)
    X, y = blobs()
    other = mt.Sequential([mt.Dense(7, activation="relu"), mt.Dense(4)], seed=0)
    other.fit(X, y, epochs=1, verbose=0)
    before = other.params_flat.copy()
    with pytest.raises(ValueError, match=r"would not continue exactly: layers \[Dense\(12"):
        other.fit(X, y, epochs=4, resume_from=path, verbose=0)
    np.testing.assert_array_equal(other.params_flat, before)
    assert other.epoch == 1
    fresh = mt.Sequential([mt.Dense(12, activation="relu"), mt.Dense(4)], seed=0,
                          loss="mse")
    with pytest.raises(ValueError, match="loss 'cross_entropy' in the checkpoint, 'mse' here"):
        fresh.fit(X, np.eye(4)[y], epochs=4, resume_from=path, verbose=0)
    assert not fresh.built
    same, _ = model_and_optimizer()
    with pytest.raises(ValueError, match=r"optimizer Adam\(.*\) in the checkpoint, "
                                         r"SGD\(lr=0.1.*pass optimizer=None"):
        same.fit(X, y, epochs=4, optimizer=mt.SGD(lr=0.1), resume_from=path, verbose=0)
    with pytest.raises(ValueError, match="X has 5 features, the model expects 6"):
        same.fit(X[:, :5], y, epochs=4, resume_from=path, verbose=0)
    assert not same.built and same.epoch == 0
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        same.fit(X, y, epochs=4, resume_from=cut, verbose=0)
    assert not same.built


def test_resume_keeps_a_reduced_learning_rate_and_the_plateau_state(tmp_path):
    X, y = blobs()
    curve = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98]

    class Curve(mt.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = curve[epoch - 1]

    def run(epochs, resume_from=None):
        # the NumPy backend saves and resumes like the C one
        model = mt.Sequential([mt.Dense(8, activation="tanh"), mt.Dense(4)], seed=0,
                              backend="numpy", dtype="float64")
        cbs = [Curve(), mt.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0),
               mt.ModelCheckpoint(tmp_path / "plateau.npz")]
        hist = model.fit(X, y, epochs=epochs, batch_size=50, validation_split=0.2, verbose=0,
                         optimizer=None if resume_from else mt.SGD(lr=0.1, momentum=0.9),
                         callbacks=cbs, resume_from=resume_from)
        return model, hist

    straight, hist = run(6)
    assert hist.history["lr"] == [0.1] * 4 + [0.05] * 2
    run(3)
    resumed, hist_resumed = run(6, resume_from=tmp_path / "plateau.npz")
    assert hist_resumed.history["lr"] == hist.history["lr"]
    assert resumed.optimizer.lr == straight.optimizer.lr == 0.025
    np.testing.assert_array_equal(resumed.params_flat, straight.params_flat)


RUN_DROPOUT = textwrap.dedent("""
    import sys
    import minitrain as mt
    from test_checkpoint import blobs
    mode, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mt.set_num_threads(threads)
    X, y = blobs(600)
    # seed=None: initial weights, shuffling and the dropout seed are all drawn at random
    model = mt.Sequential([mt.Dense(256), mt.BatchNorm(), mt.Activation("relu"),
                           mt.Dropout(0.3), mt.Dense(256, activation="relu"), mt.Dropout(0.2),
                           mt.Dense(4)])
    kwargs = dict(batch_size=128, verbose=0, callbacks=[mt.ModelCheckpoint(path)])
    if mode == "resume":
        model.fit(X, y, epochs=6, resume_from=path.format(epoch=3), **kwargs)
    else:
        model.fit(X, y, epochs=6, optimizer=mt.SGD(lr=0.05, momentum=0.9), **kwargs)
""")


def test_resume_with_dropout_and_batchnorm_and_no_seed(tmp_path):
    path = str(tmp_path / "run-{epoch}.npz")
    for mode, threads in (("straight", 1), ("resume", 2)):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": subprocess_path(__file__)}
        out = subprocess.run([sys.executable, "-c", RUN_DROPOUT, mode, path, str(threads)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        if mode == "straight":
            straight = mt.load(path.format(epoch=6))
    resumed = mt.load(path.format(epoch=6))
    assert resumed.epoch == straight.epoch == 6 and resumed.seed is None
    assert resumed.dropout_seed == straight.dropout_seed
    for name in ("params_flat", "state_flat", "buffers_flat"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(straight, name))


def test_the_checkpoint_module_is_a_file_format_of_states(tmp_path):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(checkpoint))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert "models" not in imported and "Sequential" not in imported
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    model = mt.Sequential([mt.Dense(4, activation="relu"), mt.Dense(2)], seed=0)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    checkpoint.write(tmp_path / "m.npz", model.get_state())
    state, mine = checkpoint.read(tmp_path / "m.npz"), model.get_state()
    assert state["config"] == mine["config"] and state["optimizer"] == mine["optimizer"]
    assert (state["epoch"], state["iteration"]) == (2, 10)
    for name, array in mine["arrays"].items():
        np.testing.assert_array_equal(state["arrays"][name], array)
    again = mt.Sequential()
    again.set_state(state)
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
