"""Delay models: a shifted-exponential compute time per worker and iteration, optionally in
proportion to the samples it processes, with random slow workers or a recorded trace; the PS
waits for the first n − s arrivals or until a deadline (:class:`Delay`, :class:`Slowdown`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.coding.stragglers.base import (
    SLOW_TAG,
    STREAM_TAG,
    StragglerContext,
    StragglerDraw,
    StragglerModel,
    _check_draw_args,
    _check_s,
    _nonneg_float,
    _nonneg_int,
)
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.validation import require_finite, require_interval


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
    * L_j = ``per_step`` + ``per_sample`` × the samples worker j processes in the iteration
      (its load δ_j subsets × the samples per subset, :attr:`StragglerContext.work`), so a
      load-δ coded worker pays δ× the per-sample compute of an uncoded one plus the same
      fixed cost of a step (``per_step``, default 0: compute ∝ load; a measured step at
      small batches is mostly fixed cost, ``bench/arena_compute.py``); ``per_sample: null``
      makes L_j = 1 (the compute time does not depend on the load).

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
                 per_sample: float | None = None, per_step: float = 0.0) -> None:
        self.shift = _nonneg_float(shift, "shift")
        super().__init__(seed, compute_time=self.shift, comm_per_unit=comm_per_unit)
        # rate null: no exponential part
        self.rate = None if rate is None else require_finite(rate, "straggler.rate", 0.0,
                                                             strict_minimum=True)
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
        self.deadline = None if deadline is None else require_finite(
            deadline, "straggler.deadline", 0.0, strict_minimum=True)
        self.trace_path = trace
        self.trace = None if trace is None else _load_trace(trace)
        self.time_scale = _nonneg_float(time_scale, "time_scale")
        self.p = require_interval(p, "straggler.p (probability that a worker is slow)", 0.0, 1.0)
        self.r = require_finite(r, "straggler.r (slow-down factor of a slow worker)", 1.0)
        # per_sample (time units per sample) null: compute time independent of the load
        self.per_sample = None if per_sample is None else require_finite(
            per_sample, "straggler.per_sample", 0.0, strict_minimum=True)
        self.per_step = require_finite(per_step, "straggler.per_step", 0.0)
        require(self.per_step == 0.0 or self.per_sample is not None,
                "straggler.per_step (fixed compute of a step) needs straggler.per_sample; "
                "with per_sample=null the compute time is shift alone")

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
            base = base * (self.per_step + self.per_sample * np.asarray(work, dtype=np.float64))
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
                "r": self.r, "per_sample": self.per_sample, "per_step": self.per_step}


class Slowdown(Delay):
    """:class:`Delay` with the defaults of the time-to-accuracy comparison
    (``straggler=slowdown``): compute ∝ the samples processed (``per_sample``), r = 10× slower
    with probability p = 0.1, no exponential part, no modelled communication."""

    name: ClassVar[str] = "slowdown"

    def __init__(self, per_sample: float | None = 0.01, p: float = 0.1, r: float = 10.0,
                 shift: float = 1.0, rate: float | None = None, comm_per_unit: float = 0.0,
                 wait_for: str = "first", s: int | None = 1, deadline: float | None = None,
                 trace: str | None = None, time_scale: float = 1.0, seed: int = 0,
                 per_step: float = 0.0) -> None:
        super().__init__(shift=shift, rate=rate, comm_per_unit=comm_per_unit,
                         wait_for=wait_for, s=s, deadline=deadline, trace=trace,
                         time_scale=time_scale, seed=seed, p=p, r=r, per_sample=per_sample,
                         per_step=per_step)


