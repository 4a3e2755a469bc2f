"""Hostile checkpoints: truncated, bit-flipped, lying or oversized files and zip bombs are
refused with a ValueError naming the file, at a memory cost bounded by the file's own
size; temporaries left by killed writes are removed by the next write."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import minitrain as mt
from minitrain import checkpoint, models

from helpers import subprocess_path

MEMORY_LIMIT = 50 << 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small trained model with batch norm, Adam, a history and callback arrays."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    model = mt.Sequential([mt.Dense(6), mt.BatchNorm(), mt.Activation("relu"), mt.Dense(3)],
                          seed=0)
    model.fit(X, y, epochs=3, batch_size=16, optimizer=mt.Adam(lr=0.01), validation_split=0.2,
              callbacks=[mt.EarlyStopping(patience=5, restore_best_weights=True)], verbose=0)
    path = tmp_path_factory.mktemp("hostile") / "model.npz"
    model.save(path)
    return model, path, path.read_bytes()


def members(data):
    """The arrays and the header of checkpoint bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(str(arrays.pop("__minitrain__"))), arrays


def write(path, header, arrays):
    np.savez(path, __minitrain__=np.array(json.dumps(header)), **arrays)
    return path


def assert_refused(path, match=None):
    with pytest.raises(ValueError) as info:
        mt.load(path)
    assert str(path) in str(info.value)
    if match:
        assert any(m in str(info.value) for m in ([match] if isinstance(match, str) else match)), \
            str(info.value)
    return str(info.value)


@pytest.fixture
def bounded_memory():
    tracemalloc.start()
    yield
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.1f} MiB"


def test_truncation_at_many_offsets(saved, tmp_path, bounded_memory):
    _, _, data = saved
    path = tmp_path / "cut.npz"
    offsets = sorted(set(np.linspace(0, len(data) - 1, 150).astype(int)) | {1, 4, 22, 30})
    for n in offsets:
        path.write_bytes(data[:n])
        assert_refused(path, ["truncated or corrupted", "not a minitrain checkpoint"])


def test_bit_flips_at_many_offsets(saved, tmp_path, bounded_memory):
    model, _, data = saved
    path = tmp_path / "flip.npz"
    rng = np.random.default_rng(1)
    offsets = np.unique(np.r_[np.linspace(0, len(data) - 1, 250).astype(int),
                              rng.integers(0, len(data), 150), np.arange(len(data) - 120,
                                                                         len(data))])
    loaded = 0
    for i, offset in enumerate(offsets):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (i % 8)
        path.write_bytes(bytes(flipped))
        try:
            other = mt.load(path)
        except ValueError as err:
            assert str(path) in str(err)
            continue
        # a flip in bytes the zip format does not check (times, the local copy of a
        # CRC...) leaves the same model
        loaded += 1
        for name, buf in models.flat_arrays(model).items():
            np.testing.assert_array_equal(getattr(other, name), buf)
        assert (other.epoch, other.iteration) == (model.epoch, model.iteration)
    assert loaded < len(offsets) // 4


def _lie(key, value):
    def edit(h):
        target = h
        *parents, last = key.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[last] = value
    return edit


LIES = {
    "negative epoch": (_lie("epoch", -1), "epoch must be"),
    "negative iteration": (_lie("iteration", -4), "iteration must be"),
    "fewer iterations than epochs": (_lie("iteration", 2), "iteration must be in [3, "),
    "fractional epoch": (_lie("epoch", 2.5), "epoch must be an integer"),
    "negative optimizer iterations": (_lie("optimizer.iterations", -1), "iterations must be"),
    "negative learning rate": (_lie("optimizer.lr", -0.01), "lr must lie in"),
    "beta_2 above 1": (_lie("optimizer.beta_2", 1.5), "beta_2 must lie in"),
    "negative weight decay": (_lie("optimizer.weight_decay", -1.0), "weight_decay must lie in"),
    "more recorded epochs than run": (_lie("history.epoch", [1, 2, 3, 4]), "history holds 4"),
    "epochs out of order": (_lie("history.epoch", [2, 1, 3]), "history epoch must be"),
    "one metric too many": (_lie("history.history.loss", [0.5, 0.4, 0.3, 0.2]),
                            "holds more values than the 3 epochs"),
    "zero iterations per epoch": (_lie("history.params.iterations_per_epoch", 0),
                                  "iterations_per_epoch must be"),
    "another dtype": (_lie("model.dtype", "float64"), "architecture needs float64"),
    "a wider layer": (_lie("model.layers.0.units", 60), "architecture needs"),
    "10^7 input features": (_lie("model.n_features_in", 10**7), "architecture needs"),
    "a dropout seed that is text": (_lie("model.dropout_seed", "x"), "dropout_seed must be"),
    "no dropout seed": (_lie("model.dropout_seed", None), "dropout_seed must be"),
    "a seed that is a list": (_lie("model.seed", [1, 2]), "seed must be"),
    "an iteration count beyond int64": (_lie("iteration", 2**70), "iteration must be"),
    "a negative batch size in the history": (_lie("history.params.batch_size", -3),
                                             "history batch_size must be"),
    "version true": (_lie("version", True), "version True is not supported"),
    "batch-norm momentum 5": (_lie("model.layers.1.momentum", 5.0), "momentum must lie in"),
    "a stop reason that is a number": (_lie("history.stop_reason", 3), "stop_reason"),
    "a generator state that is not one": (
        _lie("rng.state", {"state": -1, "inc": "x"}), "malformed"),
    "a reference to a missing array": (
        _lie("callbacks.EarlyStopping.best_weights", {"__array__": "nope"}), "nope"),
    "a reference that is a list": (
        _lie("callbacks.EarlyStopping.best_weights", {"__array__": [1]}), "malformed"),
}


@pytest.mark.parametrize("lie", LIES)
def test_header_lies(saved, tmp_path, lie, bounded_memory):
    _, _, data = saved
    header, arrays = members(data)
    edit, match = LIES[lie]
    edit(header)
    path = write(tmp_path / "lie.npz", header, arrays)
    assert_refused(path, match)


def test_an_8_kb_file_claiming_ten_million_features_costs_nothing(saved, tmp_path,
                                                                   bounded_memory):
    _, _, data = saved
    header, arrays = members(data)
    header["model"]["n_features_in"] = 10**7
    header["model"]["layers"][0]["units"] = 10**3
    path = write(tmp_path / "huge.npz", header, arrays)
    assert path.stat().st_size < 16_000
    start = time.perf_counter()
    assert_refused(path, "architecture needs float32(10000006003,)")
    assert time.perf_counter() - start < 5  # a bound on work, not a timing benchmark


def test_deeply_nested_or_unreadable_headers(saved, tmp_path, bounded_memory):
    _, _, data = saved
    _, arrays = members(data)
    for text in ["[" * 100_000 + "]" * 100_000, '{"format": "minitrain-checkpoint"',
                 "\ud800", "1" * 5000]:
        path = tmp_path / "nested.npz"
        np.savez(path, __minitrain__=np.array(text), **arrays)
        assert_refused(path)


WRONG_ARRAYS = {
    "NaN parameters": ("model.params_flat", lambda a: np.where(np.arange(a.size) == 3, np.nan, a)
                       .astype(a.dtype), "params_flat holds NaN"),
    "infinite optimizer state": ("model.state_flat", lambda a: np.full_like(a, np.inf),
                                 "state_flat holds NaN"),
    "negative second moment": ("model.state_flat", lambda a: -np.abs(a) - 1,
                               "negative second moment"),
    "negative running variance": ("model.buffers_flat", lambda a: -np.abs(a) - 1,
                                  "negative running variance"),
    "infinite running mean": ("model.buffers_flat", lambda a: np.full_like(a, -np.inf),
                              "buffers_flat holds NaN"),
    "2-D iteration losses": ("history.iteration_loss", lambda a: a.reshape(1, -1),
                             "iteration_loss must be a 1-D array"),
    "NaN iteration losses": ("history.iteration_loss", lambda a: a * np.nan,
                             "iteration_loss must be"),
    "more iteration losses than iterations": ("history.iteration_loss",
                                              lambda a: np.r_[a, a], "iteration_loss must be"),
    "integer parameters": ("model.params_flat", lambda a: a.astype(np.int32),
                           "params_flat is int32"),
    "complex parameters": ("model.params_flat", lambda a: a.astype(np.complex64), "complex64"),
    "text parameters": ("model.params_flat", lambda a: a.astype(str), "dtype <U"),
}


@pytest.mark.parametrize("kind", WRONG_ARRAYS)
def test_wrong_arrays(saved, tmp_path, kind, bounded_memory):
    _, _, data = saved
    header, arrays = members(data)
    name, change, match = WRONG_ARRAYS[kind]
    arrays[name] = change(arrays[name])
    assert_refused(write(tmp_path / "wrong.npz", header, arrays), match)


def test_object_arrays_are_refused_unread(saved, tmp_path):
    _, _, data = saved
    header, arrays = members(data)
    arrays["callbacks.evil"] = np.array([{"a": 1}], dtype=object)
    assert_refused(write(tmp_path / "pickle.npz", header, arrays), "dtype object")


def _npy(array, extra=b""):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue() + extra


def _zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, payload in entries.items():
            zf.writestr(name + ".npy", payload)
    return path


def test_oversized_and_undersized_members(saved, tmp_path, bounded_memory):
    _, _, data = saved
    header, arrays = members(data)
    entries = {"__minitrain__": _npy(np.array(json.dumps(header)))}
    entries.update((k, _npy(v)) for k, v in arrays.items())
    assert isinstance(mt.load(_zip(tmp_path / "same.npz", entries)), mt.Sequential)
    # bytes after the array data
    longer = dict(entries, **{"model.params_flat": entries["model.params_flat"] + b"\0" * 4096})
    assert_refused(_zip(tmp_path / "longer.npz", longer), "its header implies")
    # a .npy header claiming 10^9 elements over the true data
    params = arrays["model.params_flat"]
    lying = _npy(params).replace(repr(params.shape).encode(), b"(1000000000,)", 1)
    assert_refused(_zip(tmp_path / "claims.npz", dict(entries, **{"model.params_flat": lying})),
                   "its header implies")
    # a zip directory claiming 2 GiB in a member of a small file, its .npy header agreeing
    big = np.lib.format.header_data_from_array_1_0(params)
    big["shape"] = ((2**31 - 1 - 128) // 4,)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, big)
    member = head.getvalue() + params.tobytes()
    claimed = len(head.getvalue()) + big["shape"][0] * 4
    path = _zip(tmp_path / "directory.npz", dict(entries, **{"model.params_flat": member}))
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")  # the central directory's entries
    name = b"model.params_flat.npy"
    while raw[central + 46:central + 46 + len(name)] != name:
        central = raw.index(b"PK\x01\x02", central + 4)
    raw[central + 20:central + 28] = claimed.to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    assert_refused(path, "model.params_flat.npy")
    # duplicate and foreign member names
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name + ".npy", payload)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("model.params_flat.npy", entries["model.params_flat"])
    assert_refused(tmp_path / "dup.npz", "model.params_flat.npy")
    foreign = _zip(tmp_path / "foreign.npz", entries)
    with zipfile.ZipFile(foreign, "a") as zf:
        zf.writestr("notes.txt", b"hi")
    assert_refused(foreign, "notes.txt")


def test_a_zip_bomb_is_refused_unread(saved, tmp_path, bounded_memory):
    _, _, data = saved
    header, arrays = members(data)
    path = tmp_path / "bomb.npz"
    n = 16 << 20  # float64 zeros: 128 MiB deflated to an eighth of a MiB
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
    header["callbacks"]["bomb"] = {"__array__": "callbacks.bomb"}
    # the bomb deflated and streamed, so the test itself stays small
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("__minitrain__.npy", _npy(np.array(json.dumps(header))))
        for k, v in arrays.items():
            zf.writestr(k + ".npy", _npy(v))
        info = zipfile.ZipInfo("callbacks.bomb.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(head.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(n * 8 >> 20):
                f.write(zeros)
    assert path.stat().st_size < 4 << 20
    assert_refused(path, "callbacks.bomb.npy")
    # the same array deflated in a small honest file: refused too, as minitrain writes
    # stored members only
    entries = {"__minitrain__": _npy(np.array(json.dumps(members(data)[0])))}
    entries.update((k, _npy(v)) for k, v in arrays.items())
    assert_refused(_zip(tmp_path / "deflated.npz", entries, zipfile.ZIP_DEFLATED), "method 8")


def test_a_clean_file_still_loads_exactly(saved):
    model, path, _ = saved
    loaded = mt.load(path)
    for name, buf in models.flat_arrays(model).items():
        np.testing.assert_array_equal(getattr(loaded, name), buf)
    assert loaded.history.history == model.history.history


# ------------------------------------------------------------------ temporaries
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_save_removes_stale_temporaries_and_keeps_live_ones(saved, tmp_path):
    model, _, _ = saved
    path = tmp_path / "model.npz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f".model.npz.{_dead_pid()}.0123abcd.tmp",
                 f".model.npz.{os.getpid()}.89abcdef.tmp"]  # this process writes no such file
        live = f".model.npz.{sleeper.pid}.deadbeef.tmp"
        old_of_live_pid = f".model.npz.{sleeper.pid}.feedf00d.tmp"
        others = [".other.npz.1.0123abcd.tmp", "model.npz.bak", f".model.npz.{os.getpid()}.tmp"]
        for name in stale + [live, old_of_live_pid] + others:
            (tmp_path / name).write_bytes(b"partial")
        # written before the process named in it started: that pid was reused
        hour_ago = time.time() - 3600
        os.utime(tmp_path / old_of_live_pid, (hour_ago, hour_ago))
        model.save(path)
        left = sorted(p.name for p in tmp_path.iterdir())
        expected = sorted(["model.npz", live] + others + (
            [] if sys.platform.startswith("linux") else [old_of_live_pid]))
        assert left == expected
        assert (tmp_path / live).read_bytes() == b"partial"
        assert mt.load(path).iteration == model.iteration
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_write_in_progress_in_another_thread_keeps_its_temporary(saved, tmp_path,
                                                                   monkeypatch):
    import threading

    model, _, _ = saved
    path = tmp_path / "model.npz"
    real = checkpoint.np.savez
    started, release = threading.Event(), threading.Event()

    def slow_savez(f, **arrays):
        if threading.current_thread().name == "slow":
            started.set()
            release.wait(30)
        real(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", slow_savez)
    slow = threading.Thread(target=model.save, args=(path,), name="slow")
    slow.start()
    try:
        assert started.wait(30)
        pending = [p.name for p in tmp_path.iterdir()]
        assert len(pending) == 1 and pending[0].startswith(f".model.npz.{os.getpid()}.")
        model.save(path)  # the same path from this thread, meanwhile
        assert pending[0] in [p.name for p in tmp_path.iterdir()]
    finally:
        release.set()
        slow.join(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert mt.load(path).iteration == model.iteration


def test_the_temporary_of_a_writer_killed_mid_save_is_removed_by_the_next_save(tmp_path):
    import test_checkpoint

    _, path = test_checkpoint.trained(tmp_path)
    env = {**os.environ, "PYTHONPATH": subprocess_path(__file__)}
    proc = subprocess.Popen([sys.executable, "-c", test_checkpoint.KILLED, str(path)],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    orphans = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.npz.")]
    assert orphans == [p for p in orphans if f".{proc.pid}." in p] and len(orphans) == 1
    mt.load(path).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
