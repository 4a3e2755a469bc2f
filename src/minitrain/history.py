"""The record of a training run."""

import numpy as np


class History:
    """What ``fit`` returns, with Keras' vocabulary.

    Attributes
    ----------
    history : dict of lists
        One entry per epoch: ``loss`` (mean training loss over the epoch's samples),
        ``time`` (wall seconds of the epoch), ``lr`` (learning rate at its end).
    epoch : list of int
        The (1-based, cumulative over fits) number of each recorded epoch.
    iteration_loss : numpy.ndarray
        The loss of every iteration, in order.
    iterations_per_epoch : int
        ``ceil(N / batch_size)``, or ``floor`` with ``drop_last=True``.
    epochs : int
        Number of epochs run.
    params : dict
        The run's settings: ``epochs``, ``batch_size``, ``n_samples``, ``iterations_per_epoch``.
    stop_reason : str
        Why training stopped (``"completed"`` when it ran all its epochs).
    """

    def __init__(self, params):
        self.params = dict(params)
        self.iterations_per_epoch = params["iterations_per_epoch"]
        self.history = {}
        self.epoch = []
        self._iteration_losses = []
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

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"
