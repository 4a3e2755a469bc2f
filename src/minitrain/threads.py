"""Threads that never lose: the OpenMP wait policy, one BLAS pool at a time, and the
adaptive thread count of ``set_num_threads("auto")``.

minitrain's results do not depend on the thread count, so the count of a training loop
may change at any iteration without changing a bit of the weights. In "auto" mode (the
default) a `ThreadController` times the loop's iterations, compares the team sizes it may
use now and then, and keeps the faster: on a quiet machine every core, with a core taken
by another process one thread. What a comparison found is a property of the machine, not
of one model, so the controllers of a process share it: a new net (the next estimator
fit, a second model) starts at the team found recently for iterations of its size and
compares again when that finding expires. An explicit ``set_num_threads(n)``,
``OMP_NUM_THREADS`` or a threadpoolctl limit fixes the count and the controller steps
aside.
"""

import contextlib
import dataclasses
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


# What the controllers of this process learnt last, per size of iteration. The busy-ness
# of the machine is not a property of one model: a scikit-learn-style estimator makes a
# new net per fit, and an L-BFGS fit is about 50 iterations, so a fresh check per fit (two
# iterations on a team that waits for a taken core) would be a visible share of every
# fit. A new controller therefore starts from the latest finding for an iteration of its
# size while that finding is fresh (until the check that made it would have been redone),
# and checks again when it expires: the machine is looked at as often as by one long run.
_findings = []
_findings_lock = threading.Lock()


@dataclasses.dataclass
class Finding:
    """What one check found: `team` was the fastest for iterations of about `work`
    multiply-adds (`times`: the median seconds of each size timed), at clock time `at`,
    the `streak`-th check in a row to find it; worth trusting until clock time `until`."""

    work: float
    team: int
    times: dict
    at: float
    until: float
    streak: int = 0  # checks in a row that found the same team


def _similar(a, b):
    # the same choice holds within a factor of two in work; the re-check corrects the rest
    return 0.5 <= a / b <= 2.0


def recall(work, now):
    """The latest fresh finding for iterations of about `work` multiply-adds (None:
    none)."""
    if work <= 0:
        return None
    with _findings_lock:
        fresh = [f for f in _findings if f.at <= now < f.until and _similar(f.work, work)]
    return max(fresh, key=lambda f: f.at, default=None)


def learn(finding):
    """Keep `finding`; it replaces what was known for iterations of its size."""
    with _findings_lock:
        _findings[:] = [f for f in _findings if finding.at < f.until
                        and not _similar(f.work, finding.work)] + [finding]


def forget():
    """Drop every finding: the next controller checks afresh."""
    with _findings_lock:
        _findings.clear()


class ThreadController:
    """Chooses the team of a net's iterations in "auto" thread mode.

    Each call of a loop is wrapped as ``t0 = ctl.start(rows)`` ... ``ctl.stop(t0)``. The
    controller times a few iterations at every candidate team size (one, half the cores,
    all of them), keeps the fastest by median, and times the others again once as much
    time has passed as keeps that timing under `budget` of the time (at least
    `min_interval` iterations), or as soon as the chosen size slows down by half: it
    follows a machine that becomes busy or quiet. A candidate whose first timed iteration
    is already much slower than the best so far is dropped at once, so a core taken by
    another process costs two slow iterations per check, not `probe`. A size the core does
    not use (it keeps a small iteration on one thread) is never chosen.

    What a check found is shared (`recall`, `learn`): a new controller whose iterations
    are of a size checked recently starts at the team found then, without a check of its
    own, and checks when that finding expires. `row_work` is the net's multiply-adds per
    row of a forward pass (0: unknown, nothing shared).
    """

    probe = 5            # timed iterations per candidate (after one untimed)
    budget = 0.05        # share of the time that timing the other candidates may cost
    min_interval = 100   # iterations between two checks, at least
    max_interval = 5000
    slowdown = 1.5       # check again when the chosen size gets this much slower
    give_up = 1.5        # drop a candidate this much slower than the best so far
    serial_interval = 1000  # untimed iterations after a check in which only one thread ran

    def __init__(self, net, row_work=0):
        self.net = net
        self.enabled = _core is not None and isinstance(net, _core.Net)
        self.row_work = row_work
        self.work = 0.0        # multiply-adds of an iteration, as of the first call
        self.team = None       # the size in use; None until measured
        self.best_time = None  # its median when chosen (None: not timed on this net yet)
        self.inherited = None  # the finding the team was taken from, until timed here
        self._until = 0.0      # clock time of the next check
        self._plan = []        # sizes still to time, in order
        self._times = {}       # median per size timed in this check
        self._reference = None  # the chosen size's recent median, until it is timed again
        self._spent = {}       # (iterations, seconds) run at each size in this check
        self._streak = 0       # checks in a row that kept the team: each doubles the interval
        self._samples = []     # times at the size being timed
        self._recent = []      # times at the chosen size since it was chosen
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

    def start(self, rows=0):
        """Before an iteration on `rows` rows: set its team; returns the start time for
        `stop` (None when the iteration goes untimed). (The core ignores the net's team
        while the count is fixed.)"""
        if self._serial:  # one attribute read: iterations of 20 us feel every microsecond
            return None
        if self.enabled and (self._plan or self.team is None):
            with self._lock:
                if self.team is None and not self._plan:
                    self._begin(3.0 * rows * self.row_work)  # forward and two backward
                if self._plan:
                    self.net.threads = self._plan[0]
        return time.perf_counter()

    def _begin(self, work):
        self.work = work
        found = recall(work, time.perf_counter())
        if found is None:
            self._plan, self._times, self._samples = self._candidates(), {}, []
            return
        # this net's time at the team is not known yet: the first window measures it
        self.team, self.best_time, self.inherited = found.team, None, found
        self._until, self._recent, self._streak = found.until, [], found.streak
        self.net.threads = found.team

    def stop(self, t0):
        """After the iteration started at t0 (what `start` returned)."""
        if t0 is None:
            # the core ran every candidate on one thread (an iteration too small for a
            # team): nothing to choose, so nothing is timed for a while; this path costs
            # a tenth of the timed one, which matters on iterations of 20 us
            self._serial -= 1
            self._serial_used += 1
            return
        now = time.perf_counter()
        if self.enabled:
            team = _core.last_team()
            with self._lock:
                self._record(now - t0, team, now)

    def _record(self, elapsed, team, now):
        # while the count is fixed, a size other than the fixed one does not run (it is
        # "not a choice" below) and the one that does is timed: the next check after the
        # count is free again corrects what was learnt meanwhile
        self._used[team] = self._used.get(team, 0) + 1
        self._ran.add(team)
        if self._plan:
            self._timing(elapsed, team)
            return
        if self.inherited is not None and team != self.team:
            # the core did not run the team found for another net (the count is fixed,
            # or the iteration is one the core keeps serial): check this net's own
            self.team = self.inherited = None
            self._plan, self._times, self._samples = self._candidates(), {}, []
            return
        recent = self._recent
        recent.append(elapsed)
        if len(recent) < self.probe:
            return
        self._recent = []
        median = _median(recent)
        if self.best_time is None:  # the first window at an inherited team
            # slower by half than the finding's time, scaled to this net's work: the
            # machine changed since (a core taken after two threads were found faster)
            found = self.inherited
            expected = found.times[self.team] * self.work / found.work
            self.best_time, self.inherited = median, None
            if median > self.slowdown * expected:
                self._until = now
        # every `probe` iterations: has the chosen size slowed down, or is a check due?
        if now >= self._until or median > self.slowdown * self.best_time:
            # time the others, then the chosen size again: its recent median may hold a
            # passing slowdown (an epoch's end, the pages of a new array), against which a
            # size timed now would win until the next check; it only lets a size much
            # slower than it be dropped early
            others = [n for n in self._candidates() if n != self.team]
            self._plan = others + [self.team] if others else []
            self._times, self._reference = ({}, median) if others else ({self.team: median}, None)
            self._samples = []
            if not self._plan:
                self._choose()

    def _timing(self, elapsed, team):
        size = self._plan[0]
        if team != size:  # the core ran this iteration on another team: not a choice
            self._plan.pop(0)
            self._samples = []
        else:
            self._samples.append(elapsed)
            timed = self._samples[1:]  # the first after a change pays the change
            best = min(self._times.values(), default=self._reference)
            if len(timed) >= self.probe or (timed and best is not None
                                            and min(timed) > self.give_up * best):
                self._times[size] = _median(timed)
                # the untimed first iteration counts here: on a team that waits for a
                # taken core it can be the slowest of the check
                self._spent[size] = (len(self._samples), sum(self._samples))
                self._plan.pop(0)
                self._samples = []
        if not self._plan:
            self._choose()

    def _choose(self):
        if not self._times:  # every size ran on one thread
            self._times = {1: 0.0}
        team = min(self._times, key=lambda n: (self._times[n], n))
        self._reference = None
        self._streak = self._streak + 1 if team == self.team else 0
        self.team, self.best_time = team, self._times[team]
        self.inherited = None
        self.net.threads = self.team
        self._recent = []
        # the time spent at the other sizes, beyond what the chosen one would take
        extra = sum(max(seconds - count * self.best_time, 0)
                    for n, (count, seconds) in self._spent.items() if n != self.team)
        self._spent = {}
        interval = extra / (self.budget * max(self.best_time, 1e-9))
        # a machine found as it was is looked at less and less often, down to
        # `max_interval`; a change of team starts again from the budget's interval
        interval = min(max(interval, self.min_interval) * 2 ** min(self._streak, 20),
                       self.max_interval)
        now = time.perf_counter()
        self._until = now + interval * self.best_time
        if self._ran <= {1}:  # the core ran everything on one thread: look again later
            self._serial = self.serial_interval
        elif len(self._times) > 1 and self.work > 0:  # teams that ran, compared
            learn(Finding(self.work, self.team, dict(self._times), now, self._until,
                          self._streak))
        self._ran = set()

    def forward_team(self, rows):
        """Before an inference pass on `rows` rows outside a loop: the team found for
        iterations of its size when this net has none yet (a fresh net predicting)."""
        if self.enabled and self.team is None and not self._plan:
            found = recall(rows * self.row_work, time.perf_counter())
            if found is not None:
                self.net.threads = found.team

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
        ctl = model._thread_control = ThreadController(model._net, model._n_decay)
    return ctl


def _median(values):
    s = sorted(values)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])
