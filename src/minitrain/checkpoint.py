"""Checkpoints: a model and its training state in one ``.npz`` file that cannot run code.

The file is a NumPy zip archive read with ``allow_pickle=False``: a JSON header
(``__minitrain__``: architecture, optimizer config and update count, epoch and
iteration counters, the random generator's state, the history, the callbacks' state)
and plain numeric arrays (every ``*_flat`` buffer of the model, the per-iteration
losses, arrays held by callbacks). Writes go to a temporary file in the same directory
that is synced and then renamed over the target, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from . import layers as layers_module
from . import optimizers
from .history import History

if TYPE_CHECKING:  # models imports this module
    from .models import Sequential

FORMAT = "minitrain-checkpoint"
VERSION = 1
_HEADER = "__minitrain__"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def flat_arrays(model):
    """Every flat buffer of a built model (``params_flat``, ``state_flat``, ...), by name."""
    return {k: v for k, v in vars(model).items()
            if k.endswith("_flat") and isinstance(v, np.ndarray)}


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


def model_config(model):
    return {"class": type(model).__name__, "loss": model.loss, "dtype": model.dtype.name,
            "backend": model.backend, "seed": model.seed, "dropout_seed": model.dropout_seed,
            "n_features_in": model.n_features_in_,
            "layers": [layer.get_config() for layer in model.layers]}


def save(model, path):
    """Write `model` (built) and its training state to `path`, atomically. The state of
    the callbacks of the model's current (or last) fit goes with it."""
    model._require_built()
    callbacks = model._callbacks.get_states() if model._callbacks else model._saved_callback_states
    arrays = {f"model.{k}": v for k, v in flat_arrays(model).items()}
    history = model.history
    header = {
        "format": FORMAT, "version": VERSION,
        "model": model_config(model),
        "optimizer": {**model.optimizer.get_config(), "iterations": model.optimizer.iterations},
        "epoch": model.epoch, "iteration": model.iteration,
        "rng": model.rng.bit_generator.state,
        "history": None if history is None else _split_arrays(history.to_dict(), "history", arrays),
        "callbacks": _split_arrays(callbacks or {}, "callbacks", arrays),
    }
    arrays[_HEADER] = np.array(json.dumps(header, default=_json_default))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path, write):
    """Run ``write(file)`` on a temporary file next to `path`, sync it, and rename it to
    `path`: readers see the old file or the new one, never a part."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through someone else's file; mode 0o666 & umask as open() does
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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
    # make the rename itself durable where directories can be synced (POSIX)
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _read(path):
    """The header and arrays of a checkpoint file, fully read and checked for form."""
    bad = f"{os.fspath(path)} is not a minitrain checkpoint"
    damaged = (zipfile.BadZipFile, EOFError, OSError, ValueError)
    try:
        data = np.load(path, allow_pickle=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except damaged as err:
        raise ValueError(f"{bad}, or it is truncated or corrupted ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{bad} (it holds a single .npy array)")
    with data:
        if _HEADER not in data.files:
            raise ValueError(f"{bad} (no {_HEADER} header)")
        try:
            arrays = {k: data[k] for k in data.files}
        except damaged as err:
            raise ValueError(f"{bad}: it is truncated or corrupted ({err})") from None
    try:
        header = json.loads(str(arrays.pop(_HEADER)))
    except ValueError as err:
        raise ValueError(f"{bad}: unreadable header ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{bad} (header format {header.get('format')!r})"
                         if isinstance(header, dict) else f"{bad} (header is not an object)")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {header.get('version')!r} is not "
                         f"supported (this minitrain reads version {VERSION})")
    return header, arrays


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


def load(path: str | os.PathLike) -> Sequential:
    """The model saved at `path`, with its optimizer, counters, generator and history.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``Sequential.save`` or ``ModelCheckpoint`` (``.npz``, read
        with ``allow_pickle=False``: it cannot run code).

    Returns
    -------
    Sequential
        The model, built, ready to predict or to train on (``fit`` continues its
        optimizer, counters and history).

    Raises
    ------
    ValueError
        Before building anything visible, when the file is not a minitrain checkpoint,
        is truncated, or its arrays do not fit its architecture.

    Examples
    --------
    >>> import minitrain as mt
    >>> model.save("model.npz")          # doctest: +SKIP
    >>> same = mt.load("model.npz")      # doctest: +SKIP
    """
    from .models import Sequential

    header, arrays = _read(path)
    try:
        cfg = header["model"]
        if cfg["class"] != "Sequential":
            raise ValueError(f"model class {cfg['class']!r}")
        model = Sequential([_layer(c) for c in cfg["layers"]], loss=cfg["loss"],
                           seed=cfg["seed"], dtype=cfg["dtype"], backend=cfg["backend"])
        model.dropout_seed = cfg["dropout_seed"]
        model.build(cfg["n_features_in"])
        opt = dict(header["optimizer"])
        iterations = opt.pop("iterations")
        model.optimizer = optimizers.from_config(opt)
        model.optimizer.iterations = int(iterations)
        model.epoch, model.iteration = int(header["epoch"]), int(header["iteration"])
        model.rng = _rng(header["rng"])
        history = _join_arrays(header["history"], arrays)
        model.history = None if history is None else History.from_dict(history)
        model._saved_callback_states = _join_arrays(header["callbacks"], arrays)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed minitrain checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    buffers = flat_arrays(model)
    saved = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    if set(saved) != set(buffers):
        raise ValueError(f"{path}: the checkpoint holds the buffers {sorted(saved)}, its "
                         f"architecture has {sorted(buffers)}")
    for name, buf in buffers.items():
        if saved[name].shape != buf.shape or saved[name].dtype != buf.dtype:
            raise ValueError(f"{path}: {name} is {saved[name].dtype}{saved[name].shape}, the "
                             f"architecture needs {buf.dtype}{buf.shape}")
    for name, buf in buffers.items():
        buf[...] = saved[name]
    return model


def check_resumable(saved, model, optimizer):
    """Raise ValueError unless `model` (possibly unbuilt) has the architecture of the
    loaded checkpoint `saved` and `optimizer` (if given) its configuration."""
    mine, theirs = model_config(model), model_config(saved)
    if not model.built:
        mine["n_features_in"] = theirs["n_features_in"]
    for key in ("layers", "loss", "dtype", "n_features_in"):
        if mine[key] != theirs[key]:
            raise ValueError(f"resume_from: the checkpoint was saved from another architecture "
                             f"({key} {theirs[key]!r}, this model has {mine[key]!r})")
    if optimizer is not None and optimizer.get_config() != saved.optimizer.get_config():
        raise ValueError(f"resume_from: optimizer {optimizer!r} differs from the checkpoint's "
                         f"{saved.optimizer!r}; pass optimizer=None to continue with the saved one")


def transfer(saved, model, optimizer):
    """Give `model` the state of the loaded checkpoint `saved` (after check_resumable)."""
    model.seed = saved.seed
    # the dropout seed keys the C core's random streams: a net with another one is rebuilt
    if not model.built or model.dropout_seed != saved.dropout_seed:
        model.dropout_seed = saved.dropout_seed
        model.build(saved.n_features_in_)
    for name, buf in flat_arrays(model).items():
        buf[...] = getattr(saved, name)
    if optimizer is not None:
        optimizer.iterations = saved.optimizer.iterations
    model.optimizer = optimizer or saved.optimizer
    model._net_optimizer = None  # the saved state_flat belongs to this optimizer
    model.epoch, model.iteration = saved.epoch, saved.iteration
    model.rng = saved.rng
    model.history = saved.history
    model._saved_callback_states = saved._saved_callback_states
