"""minitrain: mini-batch training of multi-layer perceptrons, with a C/OpenMP hot path.

>>> import minitrain as mt
>>> X, y = mt.load_digits()
>>> model = mt.Sequential([mt.Dense(128, activation="relu"), mt.Dense(10)],
...                       loss="cross_entropy", seed=0)
>>> hist = model.fit(X / 16, y, epochs=10, batch_size=32, verbose=0,
...                  optimizer=mt.SGD(lr=0.1, momentum=0.9))

The API reference lists every public name; ``minitrain.sklearn`` holds the
scikit-learn estimators (the ``sklearn`` extra).
"""

from . import threads  # first: the OpenMP wait policy is read when the extension loads
from . import evaluation, schedules
from .backends import cpu_info, get_num_threads, set_num_threads
from .callbacks import (Callback, CSVLogger, EarlyStopping, JSONLogger, ModelCheckpoint,
                        ProgressBar, ReduceLROnPlateau)
from .datasets import load_digits, train_test_split
from .history import History
from .layers import Activation, BatchNorm, Dense, Dropout, Layer
from .models import Sequential, load
from .optimizers import SGD, Adam, AdamW, Optimizer

__version__ = "0.1.0"

__all__ = [
    "Activation", "Adam", "AdamW", "BatchNorm", "CSVLogger", "Callback", "Dense", "Dropout",
    "EarlyStopping", "History", "JSONLogger", "Layer", "ModelCheckpoint", "Optimizer",
    "ProgressBar", "ReduceLROnPlateau", "SGD", "Sequential", "cpu_info", "evaluation",
    "get_num_threads", "load", "load_digits", "schedules", "set_num_threads",
    "train_test_split",
]
