"""The record of a training run."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class History:
    """What ``fit`` returns, with Keras' vocabulary.

    Parameters
    ----------
    params : dict
        The run's settings (see `params` below); ``fit`` makes the History.

    Attributes
    ----------
    history : dict of lists
        One entry per epoch: ``loss`` (mean training loss over the epoch's samples),
        the metrics (``accuracy`` or ``r2`` by default, on the training rows with the
        weights at the end of the epoch), their ``val_`` twins on the validation data,
        ``lr`` (learning rate of the epoch's last iteration) and ``time`` (wall seconds
        of the epoch, validation included).
    epoch : list of int
        The (1-based, cumulative over fits) number of each recorded epoch.
    iteration_loss : numpy.ndarray
        The loss of every iteration, in order.
    iterations_per_epoch : int
        ``ceil(N / batch_size)``, or ``floor`` with ``drop_last=True``.
    epochs : int
        Number of epochs run.
    params : dict
        The run's settings: ``epochs`` (the epoch number it trains up to, counted over
        fits), ``batch_size``, ``n_samples`` (training rows), ``iterations_per_epoch``.
        A resumed run continues the History saved in its checkpoint.
    threads : list
        The thread count most of each epoch's iterations ran on (``set_num_threads``;
        in "auto" mode the one the loop found faster at the time).
    stop_reason : str
        Why training stopped: ``"completed"`` (all its epochs), ``"early_stopping"``,
        ``"converged"`` (``tol``), ``"max_time"``, or ``"callback"`` (a callback set
        ``model.stop_training``).

    Examples
    --------
    >>> import minitrain as mt
    >>> X, y = mt.load_digits()
    >>> model = mt.Sequential([mt.Dense(32, activation="relu"), mt.Dense(10)], seed=0)
    >>> hist = model.fit(X / 16, y, epochs=2, batch_size=64, verbose=0)
    >>> hist.iterations_per_epoch, len(hist.history["loss"]), hist.iteration_loss.shape
    (29, 2, (58,))
    """

    def __init__(self, params: dict) -> None:
        self.params = dict(params)
        self.iterations_per_epoch = params["iterations_per_epoch"]
        self.history = {}
        self.epoch = []
        self._iteration_losses = []
        self.threads = []
        self.stop_reason = "completed"

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(self.epoch)

    @property
    def iteration_loss(self) -> np.ndarray:
        """The loss of every iteration, in order (float64, one entry per iteration)."""
        if not self._iteration_losses:
            return np.empty(0)
        return np.concatenate(self._iteration_losses)

    def record_epoch(self, epoch: int, iteration_losses: np.ndarray, logs: dict) -> None:
        """Append one epoch (called by ``fit`` at the end of every epoch).

        Parameters
        ----------
        epoch : int
            Its number (1-based, cumulative over fits).
        iteration_losses : numpy.ndarray
            The loss of each of its iterations.
        logs : dict
            Its ``loss``, metrics, ``val_*`` values, ``lr`` and ``time``.
        """
        self.epoch.append(epoch)
        self._iteration_losses.append(np.asarray(iteration_losses, dtype=np.float64))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def to_dict(self) -> dict[str, Any]:
        """The history as JSON values plus the per-iteration losses (what checkpoints
        store).

        Returns
        -------
        dict
            ``params``, ``history``, ``epoch``, ``stop_reason`` (JSON values) and
            ``iteration_loss`` (a numpy array).
        """
        return {"params": self.params, "history": self.history, "epoch": self.epoch,
                "stop_reason": self.stop_reason, "iteration_loss": self.iteration_loss}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> History:
        """The History that ``to_dict`` described.

        Parameters
        ----------
        state : dict
            As returned by ``to_dict``.

        Returns
        -------
        History
        """
        history = cls(state["params"])
        history.history = {k: list(v) for k, v in state["history"].items()}
        history.epoch = [int(e) for e in state["epoch"]]
        history.stop_reason = state["stop_reason"]
        losses = np.asarray(state["iteration_loss"], dtype=np.float64)
        history._iteration_losses = [losses] if losses.size else []
        return history

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None) -> Any:
        """Learning curves: loss, and the metrics, against the epoch, training and
        validation on the same axes.

        Needs matplotlib (``pip install "minitrain[plot]"``).

        Parameters
        ----------
        path : str or os.PathLike, optional
            Write the figure there as a PNG.
        title : str, optional
            The figure's title (default: epochs, iterations per epoch, stop reason).

        Returns
        -------
        matplotlib.figure.Figure
            Made without pyplot, so no global state changes.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install \"minitrain[plot]\" "
                              "(or pip install matplotlib)") from None
        if not self.epoch:
            raise ValueError("nothing to plot: the history has no epochs")
        names = [k for k in self.history if k not in ("lr", "time") and not k.startswith("val_")]
        fig = Figure(figsize=(5 * len(names), 3.6))
        for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
            ax.plot(self.epoch, self.history[name], marker=".", label="training")
            if "val_" + name in self.history:
                ax.plot(self.epoch, self.history["val_" + name], marker=".", label="validation")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title or f"{self.epochs} epochs · {self.iterations_per_epoch} "
                              f"iterations per epoch · stopped: {self.stop_reason}")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"
