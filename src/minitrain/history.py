"""The record of a training run."""

import numpy as np


class History:
    """What ``fit`` returns, with Keras' vocabulary.

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
    """

    def __init__(self, params):
        self.params = dict(params)
        self.iterations_per_epoch = params["iterations_per_epoch"]
        self.history = {}
        self.epoch = []
        self._iteration_losses = []
        self.threads = []
        self.stop_reason = "completed"

    @property
    def epochs(self):
        return len(self.epoch)

    @property
    def iteration_loss(self):
        if not self._iteration_losses:
            return np.empty(0)
        return np.concatenate(self._iteration_losses)

    def record_epoch(self, epoch, iteration_losses, logs):
        self.epoch.append(epoch)
        self._iteration_losses.append(np.asarray(iteration_losses, dtype=np.float64))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def to_dict(self):
        """The history as JSON values plus the per-iteration losses (an array)."""
        return {"params": self.params, "history": self.history, "epoch": self.epoch,
                "stop_reason": self.stop_reason, "iteration_loss": self.iteration_loss}

    @classmethod
    def from_dict(cls, state):
        history = cls(state["params"])
        history.history = {k: list(v) for k, v in state["history"].items()}
        history.epoch = [int(e) for e in state["epoch"]]
        history.stop_reason = state["stop_reason"]
        losses = np.asarray(state["iteration_loss"], dtype=np.float64)
        history._iteration_losses = [losses] if losses.size else []
        return history

    def plot(self, path=None, title=None):
        """Learning curves: loss, and the metrics, against the epoch, training and
        validation on the same axes. Writes a PNG to `path` when given; returns the
        matplotlib Figure (made without pyplot, so no global state changes). Needs
        matplotlib (``pip install "minitrain[plot]"``)."""
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
