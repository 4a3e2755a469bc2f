"""Fixtures of the core tests: every instruction set the machine runs, 1 and 2 threads."""

import pytest

import minitrain as mt

try:
    from minitrain import _core
except ImportError:  # the NumPy backend only: the core tests skip themselves
    _core = None


@pytest.fixture(params=_core.available_isas() if _core is not None else [])
def isa(request):
    """The test runs on the micro-kernels of each instruction set, then the ISA is restored."""
    previous = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(previous)


@pytest.fixture(params=[1, 2])
def threads(request):
    """The test runs on 1 and on 2 threads, then the thread setting is restored."""
    previous = mt.get_num_threads()
    mt.set_num_threads(request.param)
    yield request.param
    mt.set_num_threads(previous)
