"""The per-epoch lines of verbose=1/2 look the same whatever the application's logging
set-up, and appear once."""

import io
import logging
import subprocess
import sys

import numpy as np
import pytest

import minitrain as mt


@pytest.fixture
def logging_setup():
    """Lets a test configure logging as an application would; restores it after."""
    root, lib = logging.getLogger(), logging.getLogger("minitrain")
    saved = (root.level, root.handlers[:], lib.level, lib.handlers[:], lib.propagate)
    root.handlers = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    yield root, lib
    root.setLevel(saved[0])
    root.handlers = saved[1]
    lib.setLevel(saved[2])
    lib.handlers = saved[3]
    lib.propagate = saved[4]


def _fit(verbose):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    model = mt.Sequential([mt.Dense(4), mt.Dense(2)], seed=0)
    model.fit(X, (X[:, 0] > 0).astype(int), epochs=2, batch_size=16, verbose=verbose)
    return model


def _handler(logger, level=logging.NOTSET, fmt=logging.BASIC_FORMAT):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)
    return stream


CONFIGS = {
    "none": lambda root, lib: [],
    # logging.basicConfig(level=...): a root handler, the root logger's level
    "basicConfig WARNING": lambda root, lib: [_handler(root), root.setLevel(logging.WARNING)],
    "basicConfig INFO": lambda root, lib: [_handler(root), root.setLevel(logging.INFO)],
    "basicConfig DEBUG": lambda root, lib: [_handler(root), root.setLevel(logging.DEBUG)],
    "a handler on minitrain": lambda root, lib: [_handler(lib), lib.setLevel(logging.INFO)],
    "minitrain at ERROR": lambda root, lib: [_handler(root), lib.setLevel(logging.ERROR)],
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("verbose", [1, 2])
def test_epoch_lines_the_same_under_any_logging_setup(logging_setup, capsys, caplog, config,
                                                      verbose):
    root, lib = logging_setup
    streams = [s for s in CONFIGS[config](root, lib) if isinstance(s, io.StringIO)]
    caplog.set_level(logging.DEBUG)
    handlers = root.handlers[:], lib.handlers[:]
    _fit(verbose)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and err == ""
    assert lines[0].startswith("Epoch 1/2 · 3 it · loss ") and lines[1].startswith("Epoch 2/2")
    assert all(s.getvalue() == "" for s in streams)  # nothing through logging
    assert not [r for r in caplog.records if r.getMessage().startswith("Epoch")]
    assert (root.handlers, lib.handlers) == handlers  # the set-up is the application's
    assert lib.level == {"a handler on minitrain": logging.INFO,
                         "minitrain at ERROR": logging.ERROR}.get(config, logging.NOTSET)


def test_verbose_0_prints_and_logs_nothing(logging_setup, capsys, caplog):
    root, _ = logging_setup
    stream = _handler(root)
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    _fit(0)
    assert capsys.readouterr() == ("", "") and stream.getvalue() == ""
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_basic_config_warning_in_a_fresh_process():
    code = ("import logging, numpy as np, minitrain as mt\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "X = np.random.default_rng(0).normal(size=(40, 3))\n"
            "mt.Sequential([mt.Dense(2)], seed=0).fit(X, (X[:, 0] > 0).astype(int), "
            "epochs=2, batch_size=16, verbose=1)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert [line[:12] for line in run.stdout.splitlines()] == ["Epoch 1/2 · ", "Epoch 2/2 · "]
    assert "INFO" not in run.stderr and "Epoch" not in run.stderr
