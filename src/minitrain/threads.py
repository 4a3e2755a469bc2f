"""Threads that never lose: the OpenMP wait policy, one BLAS pool at a time, and the
adaptive thread count of ``set_num_threads("auto")``.

minitrain's results do not depend on the thread count, so the count of a training loop
may change at any iteration without changing a bit of the weights. In "auto" mode (the
default) a `ThreadController` times the loop's iterations, compares the team sizes it may
use now and then, and keeps the faster: on a quiet machine every core, with a core taken
by another process one thread. An explicit ``set_num_threads(n)``, ``OMP_NUM_THREADS`` or
a threadpoolctl limit fixes the count and the controller steps aside.
"""

import contextlib
import os
import sys
import threading
import time

# The wait policy must be in the environment before libgomp initialises, that is before
# the extension loads: minitrain/__init__.py imports this module first. libgomp's
# default spins 300 000 times (about 14 ms on a Zen 4 core, 47 ns a pause) before
# sleeping, which takes a core from every other process between our iterations; passive
# (no spin) pays a futex sleep and wake at each of an iteration's barriers, which
# doubles the iteration on a quiet machine. 2000 spins (about 0.1 ms there) outlast the
# waits within an iteration and between two iterations of a loop; then the waiting
# threads sleep. Measured on an oversubscribed 2-core machine, MNIST-shaped iteration at
# 2 threads, median: 300 000 spins 7.6-26 ms, 10 000 5.3-7.3 ms, 2000 3.0-4.0 ms,
# 1000 1.8-3.9 ms, passive 1.5-2.4 ms (1 thread: 1.6 ms).
SPIN_COUNT = "2000"
if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT

try:
    from . import _core
except ImportError:  # the NumPy backend only
    _core = None

try:
    import threadpoolctl
except ImportError:  # optional: then BLAS pools keep their own settings
    threadpoolctl = None


_blas = {"modules": -1, "controller": None}


def _blas_controller():
    # finding the loaded libraries takes milliseconds, limiting them microseconds: the
    # search is redone only when modules were imported since (they may load a BLAS)
    if len(sys.modules) != _blas["modules"]:
        _blas["modules"] = len(sys.modules)
        _blas["controller"] = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _blas["controller"]


@contextlib.contextmanager
def blas_single_thread():
    """NumPy's and SciPy's BLAS on one thread inside the block (with threadpoolctl; a
    no-op without it): inside minitrain's loops their pool would spin against ours."""
    if threadpoolctl is None:
        yield
        return
    with _blas_controller().limit(limits=1):
        yield


class ThreadController:
    """Chooses the team of a net's iterations in "auto" thread mode.

    Each call of a loop is wrapped as ``t0 = ctl.start()`` ... ``ctl.stop(t0)``. The
    controller times a few iterations at every candidate team size (one, half the cores,
    all of them), keeps the fastest by median, and times the others again after as many
    iterations as keep that timing under `budget` of the time (at least `min_interval`),
    or as soon as the chosen size slows down by half: it follows a machine that becomes
    busy or quiet. A candidate whose first timed iteration is already much slower than
    the best so far is dropped at once, so a core taken by another process costs two
    slow iterations per check, not `probe`. A size the core does not use (it keeps a
    small iteration on one thread) is never chosen.
    """

    probe = 5            # timed iterations per candidate (after one untimed)
    budget = 0.05        # share of the time that timing the other candidates may cost
    min_interval = 100   # iterations between two checks, at least
    max_interval = 5000
    slowdown = 1.5       # check again when the chosen size gets this much slower
    give_up = 1.5        # drop a candidate this much slower than the best so far
    serial_interval = 1000  # untimed iterations after a check in which only one thread ran

    def __init__(self, net):
        self.net = net
        self.enabled = _core is not None and isinstance(net, _core.Net)
        self.team = None       # the size in use; None until measured
        self.best_time = None  # its median when chosen
        self._plan = []        # sizes still to time, in order
        self._times = {}       # median per size timed in this check
        self._spent = {}       # iterations run at each size in this check
        self._samples = []     # times at the size being timed
        self._recent = []      # times at the chosen size since it was chosen
        self._countdown = 0
        self._used = {}        # iterations per team size, since the last `used()`
        self._ran = set()      # the teams the core ran since the last choice
        self._serial = 0       # iterations left untimed: the core keeps them serial
        self._serial_used = 0  # of them, run since the last `used()` (on one thread)
        self._lock = threading.Lock()  # a model shared between threads shares this

    def _candidates(self):
        # one thread first: it never loses by more than the core count, while a team
        # with a core taken can be many times slower, and is then dropped at once
        m = _core.max_threads()
        return sorted({1, max(1, m // 2), m})

    def start(self):
        """Before an iteration: set its team; returns the start time for `stop` (None
        when the iteration goes untimed). (The core ignores the net's team while the count
        is fixed.)"""
        if self._serial:  # one attribute read: iterations of 20 us feel every microsecond
            return None
        if self.enabled and (self._plan or self.team is None):
            with self._lock:
                if self.team is None and not self._plan:
                    self._plan, self._times, self._samples = self._candidates(), {}, []
                if self._plan:
                    self.net.threads = self._plan[0]
        return time.perf_counter()

    def stop(self, t0):
        """After the iteration started at t0 (what `start` returned)."""
        if t0 is None:
            # the core ran every candidate on one thread (an iteration too small for a
            # team): nothing to choose, so nothing is timed for a while; this path costs
            # a tenth of the timed one, which matters on iterations of 20 us
            self._serial -= 1
            self._serial_used += 1
            return
        elapsed = time.perf_counter() - t0
        if self.enabled:
            team = _core.last_team()
            with self._lock:
                self._record(elapsed, team)

    def _record(self, elapsed, team):
        # while the count is fixed, a size other than the fixed one does not run (it is
        # "not a choice" below) and the one that does is timed: the next check after the
        # count is free again corrects what was learnt meanwhile
        self._used[team] = self._used.get(team, 0) + 1
        self._ran.add(team)
        if self._plan:
            self._timing(elapsed, team)
            return
        recent = self._recent
        recent.append(elapsed)
        self._countdown -= 1
        if len(recent) < self.probe:
            return
        # every `probe` iterations: has the chosen size slowed down?
        slowed = _median(recent) > self.slowdown * self.best_time
        if self._countdown <= 0 or slowed:
            # time the others again; the chosen size keeps its recent median
            self._plan = [n for n in self._candidates() if n != self.team]
            self._times = {self.team: _median(recent)}
            self._samples = []
            if not self._plan:
                self._choose()
        self._recent = []

    def _timing(self, elapsed, team):
        size = self._plan[0]
        if team != size:  # the core ran this iteration on another team: not a choice
            self._plan.pop(0)
            self._samples = []
        else:
            self._samples.append(elapsed)
            timed = self._samples[1:]  # the first after a change pays the change
            best = min(self._times.values(), default=None)
            if len(timed) >= self.probe or (timed and best is not None
                                            and min(timed) > self.give_up * best):
                self._times[size] = _median(timed)
                self._spent[size] = len(self._samples)
                self._plan.pop(0)
                self._samples = []
        if not self._plan:
            self._choose()

    def _choose(self):
        if not self._times:  # every size ran on one thread
            self._times = {1: 0.0}
        self.team = min(self._times, key=lambda n: (self._times[n], n))
        self.best_time = self._times[self.team]
        self.net.threads = self.team
        self._recent = []
        # the time spent at the other sizes, beyond what the chosen one would take
        extra = sum(self._spent.get(n, 0) * max(t - self.best_time, 0)
                    for n, t in self._times.items() if n != self.team)
        self._spent = {}
        interval = extra / (self.budget * max(self.best_time, 1e-9))
        self._countdown = int(min(max(interval, self.min_interval), self.max_interval))
        if self._ran <= {1}:  # the core ran everything on one thread: look again later
            self._serial = self.serial_interval
        self._ran = set()

    def used(self):
        """The team size most iterations used since the last call (None: none ran)."""
        if self._serial_used:
            self._used[1] = self._used.get(1, 0) + self._serial_used
            self._serial_used = 0
        if not self._used:
            return None
        team = max(self._used, key=self._used.get)
        self._used = {}
        return team


def controller(model):
    """The model's controller, made on first use (for its current net)."""
    ctl = model.__dict__.get("_thread_control")
    if ctl is None or ctl.net is not model._net:
        ctl = model._thread_control = ThreadController(model._net)
    return ctl


def _median(values):
    s = sorted(values)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])
