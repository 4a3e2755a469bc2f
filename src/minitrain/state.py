"""A model as plain values: the state API behind pickling, ``copy.deepcopy``, ``save``,
``load`` and resuming a fit; ``checkpoint`` is the file format that stores it."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from . import checkpoint, optimizers
from .history import History

if TYPE_CHECKING:
    from .models import Sequential


def flat_arrays(model):
    """Every flat buffer of a built model (``params_flat``, ``state_flat``, ...), by name."""
    return {k: v for k, v in vars(model).items()
            if k.endswith("_flat") and isinstance(v, np.ndarray)}



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
        is truncated, or its arrays do not fit its architecture; the architecture is
        checked against the arrays' own headers before anything as large is allocated
        or read.

    Examples
    --------
    >>> import minitrain as mt
    >>> model.save("model.npz")          # doctest: +SKIP
    >>> same = mt.load("model.npz")      # doctest: +SKIP
    """
    from .models import Sequential  # which imports this module
    state = checkpoint.read(path)
    try:
        return Sequential._from_state(state)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed minitrain checkpoint ({type(err).__name__}: "
                         f"{err})") from None


class Stateful:
    """``get_state`` / ``set_state`` and what is built on them (weights, pickling, copies,
    ``save``) for a model: its ``_config``, flat buffers, optimizer, counters,
    generator, history and callbacks' state."""

    def get_weights(self) -> dict[str, np.ndarray]:
        """The arrays that define the function the model computes.

        Returns
        -------
        dict of numpy.ndarray
            ``params_flat`` and every other flat buffer but the gradients and the
            optimizer state (``buffers_flat``), by name; the model's own arrays, not
            copies.
        """
        return {k: v for k, v in flat_arrays(self).items()
                if k not in ("grads_flat", "state_flat")}

    def set_weights(self, weights: Mapping[str, ArrayLike]) -> None:
        """Copy arrays shaped as ``get_weights()`` into the model (all checked first).

        Parameters
        ----------
        weights : dict of array-like
            The names and shapes of ``get_weights()``.
        """
        mine = self.get_weights()
        if set(weights) != set(mine) or any(np.shape(weights[k]) != v.shape
                                            for k, v in mine.items()):
            raise ValueError(f"weights must hold the arrays {sorted(mine)} with the shapes "
                             f"of this model's")
        for k, v in mine.items():
            v[...] = weights[k]

    def get_state(self) -> dict:
        """The whole model as plain values: what pickling, ``copy.deepcopy`` and
        checkpoints are made of.

        Returns
        -------
        dict
            JSON-able values and NumPy arrays (copies), described below.

        Notes
        -----
        The keys: ``config`` (architecture,
        loss, dtype, backend, seeds, input width), ``arrays`` (every flat buffer:
        ``params_flat``, ``grads_flat``, ``state_flat`` (the optimizer's moments),
        ``buffers_flat``; empty before the model is built), ``optimizer`` (its config and
        update count), ``epoch``, ``iteration``, ``rng`` (the generator's state),
        ``history`` and ``callbacks`` (the state of the last fit's callbacks).
        ``set_state`` of it gives a model that predicts the same and trains on
        bit-identically.
        """
        callbacks = self._callbacks.get_states() if self._callbacks else \
            self._saved_callback_states
        return {
            "config": self._config(),
            "arrays": {k: v.copy() for k, v in flat_arrays(self).items()},
            "optimizer": {**self.optimizer.get_config(), "iterations": self.optimizer.iterations},
            "epoch": self.epoch, "iteration": self.iteration,
            "rng": self.rng.bit_generator.state,
            "history": None if self.history is None else copy.deepcopy(self.history.to_dict()),
            "callbacks": copy.deepcopy(callbacks or {}),
            # the workspace size sets predict's default batch: kept so the copy batches alike
            "max_batch": self._net.max_batch if self.built else 0,
        }

    def _config(self):
        """The architecture and settings that define the model, as JSON values."""
        return {"class": type(self).__name__, "loss": self.loss, "dtype": self.dtype_policy,
                "backend": self.backend, "seed": self.seed, "dropout_seed": self.dropout_seed,
                "n_features_in": self.n_features_in_,
                "layers": [layer.get_config() for layer in self.layers]}

    def set_state(self, state: dict) -> None:
        """Make this model the one `state` describes: its layers, weights, optimizer,
        counters, generator and history.

        Parameters
        ----------
        state : dict
            From ``get_state``. It is checked whole before anything changes; a
            ValueError leaves the model as it was.
        """
        fresh = vars(type(self)._from_state(state))  # carries a lock of its own
        lock = vars(self).get("_lock")
        if lock is None:  # unpickling or deepcopy: nothing else can hold this model yet
            vars(self).update(fresh)
            return
        with lock:  # a thread inside a call of this model finishes on the old state
            fresh["_lock"] = lock
            vars(self).update(fresh)

    @classmethod
    def _from_state(cls, state):
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from get_state(), got {type(state).__name__}")
        try:
            cfg = state["config"]
            model = cls([checkpoint._layer(c) for c in cfg["layers"]], loss=cfg["loss"],
                        seed=cfg["seed"], dtype=cfg["dtype"], backend=cfg["backend"])
            model.dropout_seed = cfg["dropout_seed"]
            if cfg["n_features_in"] is not None:
                model.build(cfg["n_features_in"])
            opt = dict(state["optimizer"])
            iterations = int(opt.pop("iterations"))
            model.optimizer = optimizers.from_config(opt)
            model.optimizer.iterations = iterations
            model.epoch, model.iteration = int(state["epoch"]), int(state["iteration"])
            model.rng = checkpoint._rng(state["rng"])
            history = state["history"]
            model.history = None if history is None else History.from_dict(copy.deepcopy(history))
            model._saved_callback_states = copy.deepcopy(state["callbacks"])
            arrays = dict(state["arrays"])
            max_batch = int(state.get("max_batch", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"state is not a minitrain model state ({type(err).__name__}: "
                             f"{err})") from None
        buffers = flat_arrays(model)
        if set(arrays) != set(buffers):
            raise ValueError(f"state holds the arrays {sorted(arrays)}, its architecture has "
                             f"{sorted(buffers)}")
        for name, buf in buffers.items():
            if np.shape(arrays[name]) != buf.shape:
                raise ValueError(f"state: {name} has shape {np.shape(arrays[name])}, the "
                                 f"architecture needs {buf.shape}")
        for name, buf in buffers.items():
            buf[...] = arrays[name]
        if model.built:
            model._net.reserve(max_batch)
            # the saved state_flat belongs to this optimizer: bind it, as a trained model is
            model._use_optimizer(model.optimizer)
        return model

    def __getstate__(self):
        # never the C core's network (a pointer): it is rebuilt from the arrays
        return self.get_state()

    def __setstate__(self, state):
        self.set_state(state)

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.set_state(self.get_state())
        return new

    def save(self, path: str | os.PathLike) -> None:
        """Write the model and its training state (optimizer, counters, random
        generator, history, callbacks' state) to a checkpoint.

        Read it back with ``minitrain.load`` or ``fit(resume_from=path)``.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file (no pickle inside), written atomically: a temporary
            file, synced, then renamed over `path`.
        """
        self._require_built()
        checkpoint.write(path, self.get_state())
