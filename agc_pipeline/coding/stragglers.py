"""Straggler and delay models: which workers' messages reach the PS in each iteration.

A model's :meth:`StragglerModel.draw` returns a :class:`StragglerDraw` — the survivor mask
(the non-straggler set 𝓕 of Section III), each worker's arrival time at the PS and the time the
PS waits. Randomness comes only from ``numpy.random.default_rng([seed, iteration, 0x57A6])``:
common random numbers, so two schemes run with the same seed see the same straggler pattern
in every iteration, whatever their message lengths (the survivors of :class:`Bernoulli`,
:class:`FixedCount` and ``Delay(wait_for="first")`` never depend on the message length).

Timing: a worker computes for ``compute_time`` (default 1 time unit; :class:`Delay` draws it,
optionally in proportion to the samples the worker processes, with random slow workers) and
then sends a message of ``message_length`` scalars (d/m for a code with reduction factor
m) taking ``comm_per_unit · message_length``. Stragglers have arrival time ``inf``. Models
other than :class:`Delay` model a fixed time window: the PS waits ``compute_time + comm``.
:class:`VirtualClock` adds the waiting times (and a PS decode cost) into a simulated clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.errors import ConfigError, require

__all__ = [
    "Adversarial",
    "Bernoulli",
    "Delay",
    "FixedCount",
    "NoStragglers",
    "Slowdown",
    "StragglerContext",
    "StragglerDraw",
    "StragglerModel",
    "VirtualClock",
    "worker_samples",
]

#: third entry of every straggler RNG seed, separating these draws from other seeded streams
STREAM_TAG = 0x57A6
#: fourth entry of the seed of Delay's slow-worker draws (a stream of its own, so that the
#: shifted-exponential draws do not change when straggler.p is set)
SLOW_TAG = 0x510


@dataclass
class StragglerDraw:
    """One iteration's outcome."""

    survivors: np.ndarray  #: bool mask, shape (n,): True = the worker's message arrived
    finish_times: np.ndarray  #: arrival time at the PS per worker (inf = never), shape (n,)
    iteration_time: float  #: virtual time the PS waits in this iteration

    @property
    def num_survivors(self) -> int:
        """|𝓕|, the number of non-stragglers."""
        return int(self.survivors.sum())


@dataclass
class StragglerContext:
    """What adversarial models may look at (the other models ignore it)."""

    assignment: np.ndarray  #: the k×n 0/1 assignment matrix A
    m: int  #: communication reduction factor
    error_fn: Callable[[np.ndarray], float] | None = None  #: Err_𝓕(B) for a survivor mask
    #: samples each worker processes in the iteration, shape (n,) (:func:`worker_samples`);
    #: ``Delay(per_sample=…)`` scales its compute times by them
    work: np.ndarray | None = None


def worker_samples(assignment: np.ndarray, samples_per_subset: int) -> np.ndarray:
    """Samples each worker processes per iteration: its load (the subsets it holds, the
    column sums of the k×n assignment A) × the samples taken from each subset."""
    return np.asarray(assignment).sum(axis=0).astype(np.float64) * int(samples_per_subset)


def _nonneg_int(value: Any, name: str) -> int:
    require(isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0,
            f"straggler.{name} must be a non-negative integer (got {value!r})")
    return int(value)


def _nonneg_float(value: Any, name: str) -> float:
    require(isinstance(value, int | float | np.number) and np.isfinite(value) and value >= 0,
            f"straggler.{name} must be a finite number ≥ 0 (got {value!r})")
    return float(value)


class StragglerModel(ABC):
    """Base class: a seeded model whose :meth:`draw` gives one iteration's outcome."""

    #: short name for configs and logs
    name: ClassVar[str] = "straggler"

    def __init__(self, seed: int = 0, compute_time: float = 1.0,
                 comm_per_unit: float = 1e-6) -> None:
        self.seed = _nonneg_int(seed, "seed")
        self.compute_time = _nonneg_float(compute_time, "compute_time")
        self.comm_per_unit = _nonneg_float(comm_per_unit, "comm_per_unit")

    def rng(self, iteration: int) -> np.random.Generator:
        """The generator for ``iteration`` (the same for every scheme; Section VII)."""
        return np.random.default_rng([self.seed, iteration, STREAM_TAG])

    def comm_time(self, message_length: int) -> float:
        """Time to send ``message_length`` scalars to the PS."""
        return self.comm_per_unit * message_length

    @abstractmethod
    def draw(self, iteration: int, n: int, message_length: int,
             context: StragglerContext | None = None) -> StragglerDraw:
        """Survivors, arrival times and waiting time for ``iteration`` with n workers."""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly parameters."""
        return {"name": self.name, "seed": self.seed, "compute_time": self.compute_time,
                "comm_per_unit": self.comm_per_unit}


class _FixedWindow(StragglerModel):
    """Models with a fixed time window: survivors arrive at ``compute_time + comm``, the
    stragglers never, and the PS waits the whole window."""

    def draw(self, iteration: int, n: int, message_length: int,
             context: StragglerContext | None = None) -> StragglerDraw:
        _check_draw_args(iteration, n, message_length)
        survivors = np.asarray(self._survivors(iteration, n, context), dtype=bool)
        window = self.compute_time + self.comm_time(message_length)
        finish = np.where(survivors, window, np.inf)
        return StragglerDraw(survivors, finish, float(window))

    @abstractmethod
    def _survivors(self, iteration: int, n: int,
                   context: StragglerContext | None) -> np.ndarray:
        """The survivor mask, shape (n,)."""


def _check_draw_args(iteration: int, n: int, message_length: int) -> None:
    require(isinstance(iteration, int | np.integer) and iteration >= 0,
            f"iteration must be a non-negative integer (got {iteration!r})")
    require(isinstance(n, int | np.integer) and n >= 1,
            f"n (number of workers) must be a positive integer (got {n!r})")
    require(isinstance(message_length, int | np.integer) and message_length >= 0,
            f"message_length must be a non-negative integer (got {message_length!r})")


def _check_s(s: int, n: int) -> None:
    require(s < n, f"straggler.s must satisfy 0 ≤ s < n (got s={s}, n={n})")


class NoStragglers(_FixedWindow):
    """Every worker reports in every iteration."""

    name: ClassVar[str] = "none"

    def _survivors(self, iteration: int, n: int,
                   context: StragglerContext | None) -> np.ndarray:
        return np.ones(n, dtype=bool)


class Bernoulli(_FixedWindow):
    """Each worker independently fails to report with probability q (Section VII, the model of
    the convergence analysis and of Fig. 6, q = 0.25). The survivor set may be empty."""

    name: ClassVar[str] = "bernoulli"

    def __init__(self, q: float = 0.25, seed: int = 0, compute_time: float = 1.0,
                 comm_per_unit: float = 1e-6) -> None:
        super().__init__(seed, compute_time, comm_per_unit)
        require(isinstance(q, int | float | np.number) and 0.0 <= q < 1.0,
                f"straggler.q must lie in [0, 1) (got {q!r})")
        self.q = float(q)

    def _survivors(self, iteration: int, n: int,
                   context: StragglerContext | None) -> np.ndarray:
        return self.rng(iteration).random(n) >= self.q

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "q": self.q}


class FixedCount(_FixedWindow):
    """Exactly s stragglers, a uniformly random set each iteration (the setting of the
    paper's error figures, Figs. 3–5)."""

    name: ClassVar[str] = "fixed"

    def __init__(self, s: int = 1, seed: int = 0, compute_time: float = 1.0,
                 comm_per_unit: float = 1e-6) -> None:
        super().__init__(seed, compute_time, comm_per_unit)
        self.s = _nonneg_int(s, "s")

    def _survivors(self, iteration: int, n: int,
                   context: StragglerContext | None) -> np.ndarray:
        _check_s(self.s, n)
        survivors = np.ones(n, dtype=bool)
        survivors[self.rng(iteration).choice(n, size=self.s, replace=False)] = False
        return survivors

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "s": self.s}


def claim1_choice(k: int, n: int, delta: int, s: int, m: int) -> tuple[int, int, int]:
    """Claim 1 (eq. 21): ``(bound, u, t)`` with ``t = ⌊k(s+m−u)/(nδ)⌋`` and u ∈ [m]
    maximising ``bound = t·u`` (smallest such u on ties)."""
    best = (-1, 0, 0)
    for u in range(1, m + 1):
        t = (k * (s + m - u)) // (n * delta)
        if t * u > best[0]:
            best = (t * u, u, t)
    return best


class Adversarial(_FixedWindow):
    """s worst-case stragglers, chosen deterministically from the code's structure.

    ``method="lower_bound"``: the constructive worst case behind Claim 1 (eq. 21). Subsets
    are ordered by replication (fewest holders first, ties by index) and their holders made
    stragglers in that order until s workers are chosen. The first t = ⌊k(s+m−u)/(nδ)⌋
    subsets (u maximising t·u) have at most s+m−u holders, so at most m−u of them survive and
    Err ≥ t·u for any code B. Needs ``context.assignment`` and ``context.m``.

    ``method="greedy"``: start from all survivors and remove, s times, the worker whose loss
    maximises ``context.error_fn`` (lowest index on ties).
    """

    name: ClassVar[str] = "adversarial"
    methods: ClassVar[tuple[str, ...]] = ("lower_bound", "greedy")

    def __init__(self, s: int = 1, method: str = "lower_bound", seed: int = 0,
                 compute_time: float = 1.0, comm_per_unit: float = 1e-6) -> None:
        super().__init__(seed, compute_time, comm_per_unit)
        self.s = _nonneg_int(s, "s")
        require(method in self.methods,
                f"straggler.method must be one of {', '.join(self.methods)} (got {method!r})")
        self.method = method

    def _survivors(self, iteration: int, n: int,
                   context: StragglerContext | None) -> np.ndarray:
        _check_s(self.s, n)
        require(context is not None,
                "straggler=adversarial needs a StragglerContext (assignment, m, error_fn)")
        assert context is not None
        if self.method == "lower_bound":
            return self._lower_bound(n, context)
        return self._greedy(n, context)

    def _lower_bound(self, n: int, context: StragglerContext) -> np.ndarray:
        a = np.asarray(context.assignment)
        require(a.ndim == 2 and a.shape[1] == n,
                f"context.assignment must be k×n with n = {n} (got shape {a.shape})")
        survivors = np.ones(n, dtype=bool)
        chosen = 0
        for i in np.argsort(a.sum(axis=1), kind="stable"):
            for j in np.flatnonzero(a[i]):
                if chosen == self.s:
                    return survivors
                if survivors[j]:
                    survivors[j] = False
                    chosen += 1
        return survivors

    def _greedy(self, n: int, context: StragglerContext) -> np.ndarray:
        require(context.error_fn is not None,
                "straggler.method=greedy needs context.error_fn (the decoding error of a "
                "survivor mask)")
        assert context.error_fn is not None
        survivors = np.ones(n, dtype=bool)
        for _ in range(self.s):
            best_j, best_err = -1, -np.inf
            for j in np.flatnonzero(survivors):
                trial = survivors.copy()
                trial[j] = False
                err = float(context.error_fn(trial))
                if err > best_err:
                    best_j, best_err = j, err
            survivors[best_j] = False
        return survivors

    def lower_bound(self, context: StragglerContext) -> int:
        """The Claim-1 value ``max_u ⌊k(s+m−u)/(nδ)⌋·u`` that the lower_bound set attains."""
        a = np.asarray(context.assignment)
        k, n = a.shape
        return claim1_choice(k, n, int(a.sum(axis=0).max()), self.s, context.m)[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "s": self.s, "method": self.method}


def _load_trace(trace: str) -> np.ndarray:
    path = Path(trace).expanduser()
    require(path.is_file(), f"straggler.trace file not found: {path}")
    suffix = path.suffix.lower()
    require(suffix in (".csv", ".npy"),
            f"straggler.trace must be a .csv or .npy file (got {path.name})")
    try:
        times = (np.load(path) if suffix == ".npy"
                 else np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"straggler.trace {path}: cannot read ({exc})") from exc
    times = np.asarray(times, dtype=np.float64)
    if times.ndim == 1:
        times = times[None, :]
    require(times.ndim == 2 and times.size > 0,
            f"straggler.trace {path}: need a 2-D table iterations × workers (got {times.shape})")
    require(not np.isnan(times).any() and (times >= 0).all(),
            f"straggler.trace {path}: times must be ≥ 0 (inf = never finishes), no NaN")
    return times


class Delay(StragglerModel):
    """Random compute times; the PS waits for the first n−s messages or until a deadline.

    Worker j's compute time in iteration t is

        c_{j,t} = L_j · f_{j,t} · (r if worker j is slow in iteration t, else 1)

    * f_{j,t} = ``shift + Exponential(rate)`` (the shifted-exponential model of the
      gradient-coding literature, e.g. ErasureHead; ``rate: null`` drops the exponential
      part, f = shift) — or the value in column j of row ``t mod rows`` of ``trace`` (CSV/NPY,
      iterations × workers, ≥ n columns, the first n used; ``shift``/``rate`` are then unused);
    * a worker is slow with probability ``p``, independently per worker and iteration, and
      then ``r`` times slower (the straggler model of the time-to-accuracy comparison);
    * L_j = ``per_sample`` × the samples worker j processes in the iteration (its load δ_j
      subsets × the samples per subset, :attr:`StragglerContext.work`), so a load-δ coded
      worker pays δ× the compute of an uncoded one; ``per_sample: null`` makes L_j = 1 (the
      compute time does not depend on the load).

    Every draw is a function of (seed, t) only — the same for every scheme and runtime.
    A message arrives at ``c_{j,t} + comm_per_unit · message_length``.

    ``wait_for="first"``: the PS takes the first n−s arrivals (ties by worker index) and waits
    until the (n−s)-th; ``deadline`` is ignored. ``wait_for="deadline"``: survivors are the
    workers arrived by ``deadline``; the PS waits until the deadline or the last arrival,
    whichever is first; ``s`` is ignored. Shorter messages (larger m) thus shorten the wait,
    and under a deadline let more workers through. (``trainer.wait_for_all`` waits for all.)

    ``time_scale`` (seconds per time unit) is stored for the multi-process runtimes, whose
    workers really sleep; the simulation itself does not use it.
    """

    name: ClassVar[str] = "delay"
    wait_modes: ClassVar[tuple[str, ...]] = ("first", "deadline")

    def __init__(self, shift: float = 1.0, rate: float | None = 1.0,
                 comm_per_unit: float = 1e-6, wait_for: str = "first", s: int | None = None,
                 deadline: float | None = None, trace: str | None = None,
                 time_scale: float = 1.0, seed: int = 0, p: float = 0.0, r: float = 1.0,
                 per_sample: float | None = None) -> None:
        self.shift = _nonneg_float(shift, "shift")
        super().__init__(seed, compute_time=self.shift, comm_per_unit=comm_per_unit)
        require(rate is None or (isinstance(rate, int | float | np.number)
                                 and np.isfinite(rate) and rate > 0),
                f"straggler.rate must be > 0 or null (no exponential part) (got {rate!r})")
        self.rate = None if rate is None else float(rate)
        require(wait_for in self.wait_modes,
                f"straggler.wait_for must be one of {', '.join(self.wait_modes)} "
                f"(got {wait_for!r})")
        self.wait_for = wait_for
        if wait_for == "first":
            require(s is not None, "straggler.wait_for=first needs straggler.s (the PS waits "
                                   "for the first n − s workers)")
            self.s: int | None = _nonneg_int(s, "s")
        else:
            self.s = None if s is None else _nonneg_int(s, "s")
        if wait_for == "deadline":
            require(deadline is not None, "straggler.wait_for=deadline needs straggler.deadline")
        if deadline is not None:
            require(isinstance(deadline, int | float | np.number) and deadline > 0,
                    f"straggler.deadline must be > 0 (got {deadline!r})")
        self.deadline = None if deadline is None else float(deadline)
        self.trace_path = trace
        self.trace = None if trace is None else _load_trace(trace)
        require(isinstance(time_scale, int | float | np.number) and time_scale >= 0,
                f"straggler.time_scale must be ≥ 0 (got {time_scale!r})")
        self.time_scale = float(time_scale)
        require(isinstance(p, int | float | np.number) and 0.0 <= p <= 1.0,
                f"straggler.p (probability that a worker is slow) must lie in [0, 1] "
                f"(got {p!r})")
        self.p = float(p)
        require(isinstance(r, int | float | np.number) and np.isfinite(r) and r >= 1.0,
                f"straggler.r (slow-down factor of a slow worker) must be a finite number "
                f"≥ 1 (got {r!r})")
        self.r = float(r)
        require(per_sample is None or (isinstance(per_sample, int | float | np.number)
                                       and np.isfinite(per_sample) and per_sample > 0),
                f"straggler.per_sample (time units per sample) must be > 0 or null "
                f"(got {per_sample!r})")
        self.per_sample = None if per_sample is None else float(per_sample)

    def slowdowns(self, iteration: int, n: int) -> np.ndarray:
        """Per-worker slow-down factors of ``iteration``: r with probability p, else 1."""
        if self.p == 0.0:
            return np.ones(n)
        slow = np.random.default_rng([self.seed, iteration, STREAM_TAG, SLOW_TAG]).random(n)
        return np.where(slow < self.p, self.r, 1.0)

    def compute_times(self, iteration: int, n: int,
                      work: np.ndarray | None = None) -> np.ndarray:
        """Per-worker compute times c_{j,t} for ``iteration``, shape (n,); ``work``: the
        samples each worker processes (required with ``per_sample``)."""
        if self.trace is not None:
            require(self.trace.shape[1] >= n,
                    f"straggler.trace has {self.trace.shape[1]} worker columns, need n = {n}")
            base = self.trace[iteration % self.trace.shape[0], :n].copy()
        elif self.rate is None:
            base = np.full(n, self.shift)
        else:
            base = self.shift + self.rng(iteration).exponential(1.0 / self.rate, size=n)
        if self.per_sample is not None:
            require(work is not None and np.shape(work) == (n,),
                    "straggler.per_sample needs the samples each worker processes (the "
                    "trainers pass them); use per_sample=null outside training")
            base = base * (self.per_sample * np.asarray(work, dtype=np.float64))
        return base * self.slowdowns(iteration, n)

    def draw(self, iteration: int, n: int, message_length: int,
             context: StragglerContext | None = None) -> StragglerDraw:
        _check_draw_args(iteration, n, message_length)
        work = None if context is None else context.work
        finish = self.compute_times(iteration, n, work) + self.comm_time(message_length)
        if self.wait_for == "first":
            assert self.s is not None
            _check_s(self.s, n)
            order = np.argsort(finish, kind="stable")[: n - self.s]
            wait = float(finish[order[-1]])
            require(np.isfinite(wait),
                    f"straggler.trace: fewer than n − s = {n - self.s} workers finish in "
                    f"iteration {iteration}; the PS would wait forever")
            survivors = np.zeros(n, dtype=bool)
            survivors[order] = True
        else:
            assert self.deadline is not None
            survivors = finish <= self.deadline
            wait = min(self.deadline, float(finish.max()))
        return StragglerDraw(survivors, finish, wait)

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in super().describe().items() if k != "compute_time"}
        return {**params, "shift": self.shift, "rate": self.rate,
                "wait_for": self.wait_for, "s": self.s, "deadline": self.deadline,
                "trace": self.trace_path, "time_scale": self.time_scale, "p": self.p,
                "r": self.r, "per_sample": self.per_sample}


class Slowdown(Delay):
    """:class:`Delay` with the defaults of the time-to-accuracy comparison
    (``straggler=slowdown``): compute ∝ the samples processed (``per_sample``), r = 10× slower
    with probability p = 0.1, no exponential part, no modelled communication."""

    name: ClassVar[str] = "slowdown"

    def __init__(self, per_sample: float | None = 0.01, p: float = 0.1, r: float = 10.0,
                 shift: float = 1.0, rate: float | None = None, comm_per_unit: float = 0.0,
                 wait_for: str = "first", s: int | None = 1, deadline: float | None = None,
                 trace: str | None = None, time_scale: float = 1.0, seed: int = 0) -> None:
        super().__init__(shift=shift, rate=rate, comm_per_unit=comm_per_unit,
                         wait_for=wait_for, s=s, deadline=deadline, trace=trace,
                         time_scale=time_scale, seed=seed, p=p, r=r, per_sample=per_sample)


@dataclass
class VirtualClock:
    """Simulated wall clock: the sum of the PS's waiting times plus its decode costs."""

    decode_cost: float = 0.0  #: default PS time per iteration to decode
    virtual_time: float = 0.0

    def after(self, draw: StragglerDraw, decode_cost: float | None = None) -> float:
        """The time after one more iteration (waiting time plus decode cost), without
        advancing: a trainer commits it only once the whole iteration has succeeded."""
        extra = self.decode_cost if decode_cost is None else decode_cost
        step = draw.iteration_time + extra
        require(bool(np.isfinite(step)) and step >= 0,
                f"iteration time must be finite and ≥ 0 (got {draw.iteration_time} + {extra})")
        return self.virtual_time + float(step)

    def advance(self, draw: StragglerDraw, decode_cost: float | None = None) -> float:
        """Add one iteration's waiting time (and decode cost); return the new time."""
        self.virtual_time = self.after(draw, decode_cost)
        return self.virtual_time
