"""Checkpoints: a model's state (``Sequential.get_state()``) in one ``.npz`` file that
cannot run code. This module is the file format only: it writes and reads a state, and
builds no model (``minitrain.load`` and ``fit(resume_from=...)`` do, through
``Sequential.set_state``).

The file is a NumPy zip archive read with ``allow_pickle=False``: a JSON header
(``__minitrain__``: architecture, optimizer config and update count, epoch and
iteration counters, the random generator's state, the history, the callbacks' state)
and plain numeric arrays (every ``*_flat`` buffer of the model, the per-iteration
losses, arrays held by callbacks). Writes go to a temporary file in the same directory
that is synced and then renamed over the target, so a crash mid-write leaves the
previous checkpoint intact; the next write of the same path removes such leftovers.
Reading trusts nothing in the file: sizes, shapes and values are checked against the
header before anything is built, and every damaged file raises ValueError.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import struct
import threading
import tokenize
import zipfile
import zlib

import numpy as np

from . import layers as layers_module
from . import optimizers
from .functional import DTYPES
from ._validation import check_int
from .history import History

FORMAT = "minitrain-checkpoint"
VERSION = 1
_HEADER = "__minitrain__"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint header")


def _split_arrays(value, prefix, arrays):
    """`value` with its numpy arrays moved into `arrays` (replaced by references)."""
    if isinstance(value, np.ndarray):
        arrays[prefix] = value
        return {"__array__": prefix}
    if isinstance(value, dict):
        return {k: _split_arrays(v, f"{prefix}.{k}", arrays) for k, v in value.items()}
    return value


def _join_arrays(value, arrays):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in value.items()}
    return value


def write(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (``Sequential.get_state()`` of a built model) to `path`, atomically:
    the JSON values in a header, the arrays apart."""
    arrays = {f"model.{k}": v for k, v in state["arrays"].items()}
    header = {
        "format": FORMAT, "version": VERSION,
        "model": state["config"],
        "optimizer": state["optimizer"],
        "epoch": state["epoch"], "iteration": state["iteration"],
        "rng": state["rng"],
        "history": _split_arrays(state["history"], "history", arrays),
        "callbacks": _split_arrays(state["callbacks"], "callbacks", arrays),
    }
    arrays[_HEADER] = np.array(json.dumps(header, default=_json_default))
    atomic_write(path, lambda f: np.savez(f, **arrays))


# temporaries of this process being written now: the same pid's other files are stale
_WRITING = set()
_WRITING_LOCK = threading.Lock()


def _temporary_re(name):
    return re.compile(rf"\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")


def _process_start(pid):
    """When process `pid` started (seconds since the epoch), where /proc tells it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _stale(path, pid):
    """True if the temporary `path`, named after the process `pid` that writes it, has
    no writer any more: its process is gone, or started after the file was last written
    (the pid was reused), or it is this process and no thread of it is writing it."""
    if pid == os.getpid():
        with _WRITING_LOCK:
            return path not in _WRITING
    if os.name == "nt":  # os.kill would end the process there: keep what might be live
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    start = _process_start(pid)
    try:
        return start is not None and os.stat(path).st_mtime < start - 1.0
    except OSError:
        return False


def _remove_stale_temporaries(path):
    """Delete the temporaries that writes of `path` killed mid-way left next to it; a
    write in progress in a live process keeps its file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = _temporary_re(os.path.basename(path))
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = pattern.fullmatch(entry.name)
            if match and _stale(entry.path, int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def atomic_write(path, write):
    """Run ``write(file)`` on a temporary file next to `path`, sync it, and rename it to
    `path`: readers see the old file or the new one, never a part. Temporaries that
    killed writes of `path` left behind are removed first."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    # named after the writing process, so a later write can tell a dead writer's file
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                  f"{secrets.token_hex(4)}.tmp")
    with _WRITING_LOCK:
        _WRITING.add(tmp)
    try:
        # O_EXCL: never write through someone else's file; mode 0o666 & umask as open() does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        with _WRITING_LOCK:
            _WRITING.discard(tmp)
    # make the rename itself durable where directories can be synced (POSIX)
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# what reading untrusted bytes can raise, beyond ValueError: a damaged file is one of these
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, IndexError, TypeError,
            OverflowError, NotImplementedError, SyntaxError, RecursionError, UnicodeError,
            RuntimeError, struct.error, tokenize.TokenError)
_NPY_HEADER_MAX = 10_000  # numpy's own bound on a .npy header


class _Member:
    """One .npy member of the archive, described by its own header (its data unread)."""

    def __init__(self, archive, info, fail):
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise fail(f"{info.filename} has .npy version {version}")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            self.shape, fortran, self.dtype = read_header(f, max_header_size=_NPY_HEADER_MAX)
            offset = f.tell()
        self.name, self.info = info.filename[:-len(".npy")], info
        if self.dtype.hasobject or self.dtype.fields is not None or self.dtype.subdtype \
                or self.dtype.kind not in ("biuf" if self.name != _HEADER else "U"):
            raise fail(f"{info.filename} holds dtype {self.dtype}")
        # zip bombs and lying headers: the member holds exactly what its header implies
        expected = offset + math.prod(self.shape) * self.dtype.itemsize
        if info.file_size != expected:
            raise fail(f"{info.filename} holds {info.file_size} bytes, its header implies "
                       f"{expected}")

    def read(self, archive):
        with archive.open(self.info) as f:
            return np.lib.format.read_array(f, allow_pickle=False,
                                            max_header_size=_NPY_HEADER_MAX)


@contextlib.contextmanager
def _archive(path):
    """The open archive at `path` and its members by name, checked for form (sizes,
    dtypes, names) from the zip directory and the .npy headers alone."""
    path = os.fspath(path)
    bad = f"{path} is not a minitrain checkpoint"

    def fail(why):
        return ValueError(f"{bad}, or it is truncated or corrupted ({why})")

    with open(path, "rb") as f:  # a missing or unreadable file raises as open() does
        size = os.fstat(f.fileno()).st_size
        if f.read(6).startswith(np.lib.format.MAGIC_PREFIX):
            raise ValueError(f"{bad} (it holds a single .npy array)")
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
            infos = archive.infolist()
            names = [i.filename for i in infos]
            if _HEADER + ".npy" not in names:
                raise ValueError(f"{bad} (no {_HEADER} header)")
            for info in infos:
                # minitrain writes stored members: a compressed one is not its file, and
                # refusing it bounds what reading costs by the file's size
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(
                        ".npy") or names.count(info.filename) != 1 or \
                        info.compress_size != info.file_size or \
                        info.header_offset + info.compress_size > size:
                    raise fail(f"member {info.filename!r}: method {info.compress_type}, "
                               f"{info.compress_size} of {info.file_size} bytes")
            members = {m.name: m for m in (_Member(archive, i, fail) for i in infos)}
        except ValueError as err:
            if str(err).startswith(bad):
                raise
            raise fail(err) from None
        except _DAMAGED as err:
            raise fail(f"{type(err).__name__}: {err}") from None
        with archive:
            try:
                yield archive, members, fail
            except _DAMAGED as err:
                raise fail(f"{type(err).__name__}: {err}") from None


def _read_header(archive, members, fail, path):
    member = members[_HEADER]
    if member.shape != ():
        raise fail(f"{_HEADER} has shape {member.shape}")
    try:
        header = json.loads(str(member.read(archive)))
    except (ValueError, RecursionError) as err:
        raise fail(f"unreadable header: {type(err).__name__}: {err}") from None
    bad = f"{os.fspath(path)} is not a minitrain checkpoint"
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{bad} (header format {header.get('format')!r})"
                         if isinstance(header, dict) else f"{bad} (header is not an object)")
    if header.get("version") != VERSION or isinstance(header.get("version"), bool):
        raise ValueError(f"{path}: checkpoint version {header.get('version')!r} is not "
                         f"supported (this minitrain reads version {VERSION})")
    return header


def _layer(config):
    config = dict(config)
    cls = getattr(layers_module, str(config.pop("class", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, layers_module.Layer)):
        raise ValueError(f"unknown layer in checkpoint: {config!r}")
    return cls(**config)


def _rng(state):
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown random generator in checkpoint: {name!r}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _flat_sizes(cfg, layers):
    """The length of every flat buffer the architecture `cfg` implies, computed without
    allocating them (Sequential.build's layout)."""
    width = check_int("n_features_in", cfg["n_features_in"], 1)
    for layer in layers:
        width = layer.build(width)
    n_params = sum(layer.n_params for layer in layers)
    return {"params_flat": n_params, "grads_flat": n_params, "state_flat": 2 * n_params,
            "buffers_flat": sum(layer.n_buffers for layer in layers)}


def _check_shapes(members, cfg, layers):
    """Every model.* member has the shape and dtype the header's architecture implies."""
    name = cfg["dtype"]  # mixed_bfloat16 keeps float32 buffers
    dtype = DTYPES[name] if isinstance(name, str) and name in DTYPES else np.dtype(name)
    sizes = _flat_sizes(cfg, layers)
    saved = {k[len("model."):]: m for k, m in members.items() if k.startswith("model.")}
    if set(saved) != set(sizes):
        raise ValueError(f"the checkpoint holds the buffers {sorted(saved)}, its "
                         f"architecture has {sorted(sizes)}")
    for name, n in sizes.items():
        m = saved[name]
        if m.shape != (n,) or m.dtype != dtype:
            raise ValueError(f"{name} is {m.dtype}{m.shape}, the architecture needs "
                             f"{dtype}{(n,)}")


_COUNT_MAX = 2**63 - 1  # the core counts in int64


def _check_counters(header):
    """The counters, seeds and history as a run can leave them."""
    epoch = check_int("epoch", header["epoch"], 0, _COUNT_MAX)
    check_int("iteration", header["iteration"], epoch, _COUNT_MAX)  # an epoch has >= 1
    check_int("optimizer iterations", header["optimizer"]["iterations"], 0, _COUNT_MAX)
    if header["model"]["seed"] is not None:
        check_int("seed", header["model"]["seed"], 0)
    check_int("dropout_seed", header["model"]["dropout_seed"], -2**63)  # used mod 2^64
    history = header["history"]
    if history is None:
        return
    epochs = history["epoch"]
    if not isinstance(epochs, list) or len(epochs) > epoch:
        raise ValueError(f"history holds {len(epochs) if isinstance(epochs, list) else epochs!r} "
                         f"epochs, the model has run {epoch}")
    for e, previous in zip(epochs, [0] + epochs):
        check_int("history epoch", e, previous + 1, epoch)
    for key, values in history["history"].items():
        # at most: a resumed run may log what the first part did not (validation)
        if not isinstance(values, list) or len(values) > len(epochs):
            raise ValueError(f"history {key!r} holds more values than the {len(epochs)} "
                             f"epochs")
    params = history["params"]
    for key, low in (("epochs", 0), ("batch_size", 1), ("n_samples", 1),
                     ("iterations_per_epoch", 1)):
        check_int(f"history {key}", params[key], low, _COUNT_MAX)
    if not isinstance(history["stop_reason"], str):
        raise ValueError(f"history stop_reason {history['stop_reason']!r}")


def _check_values(state, layers, history):
    """Values a run cannot produce: non-finite parameters or optimizer state, a negative
    second moment or running variance, iteration losses that are not one finite row."""
    arrays = state["arrays"]
    for name in ("params_flat", "state_flat", "buffers_flat"):
        if not np.isfinite(arrays[name]).all():
            raise ValueError(f"{name} holds NaN or infinity")
    n = arrays["params_flat"].size
    config = {k: v for k, v in state["optimizer"].items() if k != "iterations"}
    if optimizers.from_config(config).kind == optimizers.ADAM_KIND \
            and (arrays["state_flat"][n:] < 0).any():
        raise ValueError("state_flat holds a negative second moment")
    offset = 0
    for layer in layers:
        if isinstance(layer, layers_module.BatchNorm):  # running mean, then variance
            c = layer.units
            if (arrays["buffers_flat"][offset + c:offset + 2 * c] < 0).any():
                raise ValueError("buffers_flat holds a negative running variance")
        offset += layer.n_buffers
    if history is not None:
        losses = history["iteration_loss"]
        if not isinstance(losses, np.ndarray) or losses.ndim != 1 \
                or losses.size > state["iteration"] or not np.isfinite(losses).all():
            raise ValueError(f"history iteration_loss must be a 1-D array of at most "
                             f"{state['iteration']} finite losses, got {np.shape(losses)}")


def read(path: str | os.PathLike) -> dict:
    """The state saved at `path`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``write`` (``Sequential.save``, ``ModelCheckpoint``).

    Returns
    -------
    dict
        The state as ``Sequential.get_state()`` gives it: the architecture, arrays,
        optimizer, counters, generator, history and callbacks' state.

    Raises
    ------
    ValueError
        When the file is not a minitrain checkpoint, is truncated, or its arrays or
        values do not fit its architecture; the architecture is checked against the
        arrays' own headers before anything as large is allocated or read.
    """
    def malformed(err):
        return ValueError(f"{path}: malformed minitrain checkpoint ({type(err).__name__}: "
                          f"{err})")

    with _archive(path) as (archive, members, fail):
        header = _read_header(archive, members, fail, path)
        try:
            cfg = header["model"]
            if cfg["class"] != "Sequential":
                raise ValueError(f"model class {cfg['class']!r}")
            layers = [_layer(c) for c in cfg["layers"]]
            _check_counters(header)
            _check_shapes(members, cfg, layers)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise malformed(err) from None
        arrays = {name: m.read(archive) for name, m in members.items() if name != _HEADER}
    try:
        state = {
            "config": cfg,
            "arrays": {k[len("model."):]: v for k, v in arrays.items()
                       if k.startswith("model.")},
            "optimizer": header["optimizer"],
            "epoch": int(header["epoch"]), "iteration": int(header["iteration"]),
            "rng": header["rng"],
            "history": _join_arrays(header["history"], arrays),
            "callbacks": _join_arrays(header["callbacks"], arrays),
        }
        _rng(state["rng"])
        _check_values(state, layers, state["history"])
        if state["history"] is not None:
            History.from_dict(state["history"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise malformed(err) from None
    return state
