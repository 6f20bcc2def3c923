"""Straggler regimes of the baseline comparison (issue 18): random stalls and persistently slow
hosts. Both are :class:`~agc_pipeline.coding.stragglers.delay.Delay` models (arrival times;
the PS takes the first n − s arrivals), so every runtime that understands ``straggler=delay``
understands them; only the compute times differ.

Worker j's base compute time in iteration t is Delay's (``shift``, optionally
``+ Exponential(rate)``, × ``per_sample`` × the samples it processes); a regime then adds a
stall (:class:`Stall`) or multiplies by a fixed factor (:class:`Persistent`). Every draw is a
function of (seed, t) only — common random numbers, identical for every scheme, message length
and mitigation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from agc_pipeline.coding.stragglers.base import SLOW_TAG, STREAM_TAG
from agc_pipeline.coding.stragglers.delay import Delay
from agc_pipeline.errors import require
from agc_pipeline.validation import require_finite, require_int_list, require_interval

__all__ = ["Persistent", "Stall"]


class Stall(Delay):
    """Random stalls (``straggler=stall``): each worker, in each iteration, independently with
    probability ``p`` stalls for ``duration`` time units on top of its compute:

        c_{j,t} = base_{j,t} + duration · 1[U_{j,t} < p],   U_{j,t} ~ Uniform(0, 1)

    with U drawn from ``default_rng([seed, t, 0x57A6, 0x510])`` (the stream of Delay's slow
    workers: at the same seed and p the stalled workers are ``straggler=slowdown``'s slow ones).
    A message arrives at ``c_{j,t} + comm_per_unit · message_length``; the PS takes the first
    n − s. This is the setting of the PyTorch hierarchical-SGD post (a rank stalls 1 s with
    probability 1–2 % per step). ``duration`` is in time units: seconds × ``time_scale`` when
    the multi-process runtimes really sleep (seconds at the default ``time_scale: 1``).
    """

    name: ClassVar[str] = "stall"

    def __init__(self, p: float = 0.02, duration: float = 1.0, per_sample: float | None = 0.01,
                 s: int | None = 1, shift: float = 1.0, rate: float | None = None,
                 comm_per_unit: float = 0.0, wait_for: str = "first",
                 deadline: float | None = None, trace: str | None = None,
                 time_scale: float = 1.0, seed: int = 0,
                 per_step: float = 0.0) -> None:
        super().__init__(shift=shift, rate=rate, comm_per_unit=comm_per_unit,
                         wait_for=wait_for, s=s, deadline=deadline, trace=trace,
                         time_scale=time_scale, seed=seed, p=0.0, r=1.0,
                         per_sample=per_sample, per_step=per_step)
        self.p = require_interval(p, "straggler.p (probability that a worker stalls)", 0.0, 1.0)
        self.duration = require_finite(duration, "straggler.duration (stall length)", 0.0)

    def slowdowns(self, iteration: int, n: int) -> np.ndarray:
        """No multiplicative slow-down: a stall adds time (:meth:`stalls`)."""
        return np.ones(n)

    def stalled(self, iteration: int, n: int) -> np.ndarray:
        """Which workers stall in ``iteration``: bool mask, shape (n,)."""
        if self.p == 0.0:
            return np.zeros(n, dtype=bool)
        u = np.random.default_rng([self.seed, iteration, STREAM_TAG, SLOW_TAG]).random(n)
        return u < self.p

    def stalls(self, iteration: int, n: int) -> np.ndarray:
        """Per-worker stall time of ``iteration``: ``duration`` if stalled, else 0."""
        return np.where(self.stalled(iteration, n), self.duration, 0.0)

    def compute_times(self, iteration: int, n: int,
                      work: np.ndarray | None = None) -> np.ndarray:
        """Delay's compute times plus the stalls of ``iteration``, shape (n,)."""
        return super().compute_times(iteration, n, work) + self.stalls(iteration, n)

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in super().describe().items() if k != "r"}
        return {**params, "duration": self.duration}


class Persistent(Delay):
    """Persistently slow hosts (``straggler=persistent``): the workers in ``ranks`` (0-based
    indices) are ``factor``× slower in every iteration:

        c_{j,t} = base_{j,t} · (factor if j ∈ ranks, else 1)

    No randomness beyond Delay's base (none at the default ``rate: null``). The PS takes the
    first n − s arrivals (``s`` as in ``straggler=slowdown``), so with s ≥ |ranks| and a factor
    > 1 it always ignores the slow hosts — and their data subsets, unless a code covers them.
    ``ranks`` must lie in [0, n) at draw time.
    """

    name: ClassVar[str] = "persistent"

    def __init__(self, ranks: Any = (0,), factor: float = 4.0,
                 per_sample: float | None = 0.01, s: int | None = 1, shift: float = 1.0,
                 rate: float | None = None, comm_per_unit: float = 0.0,
                 wait_for: str = "first", deadline: float | None = None,
                 trace: str | None = None, time_scale: float = 1.0, seed: int = 0,
                 per_step: float = 0.0) -> None:
        super().__init__(shift=shift, rate=rate, comm_per_unit=comm_per_unit,
                         wait_for=wait_for, s=s, deadline=deadline, trace=trace,
                         time_scale=time_scale, seed=seed, p=0.0, r=1.0,
                         per_sample=per_sample, per_step=per_step)
        # an empty list is allowed: no slow host (a control run)
        self.ranks = require_int_list(ranks, "straggler.ranks", minimum=0)
        require(len(set(self.ranks)) == len(self.ranks),
                f"straggler.ranks must not repeat a worker (got {self.ranks})")
        self.factor = require_finite(factor, "straggler.factor (slow-down of the slow hosts)",
                                     1.0)

    def slowdowns(self, iteration: int, n: int) -> np.ndarray:
        """``factor`` for the workers in ``ranks``, 1 for the others, shape (n,)."""
        bad = [j for j in self.ranks if j >= n]
        require(not bad, f"straggler.ranks {bad} out of range for n = {n} workers "
                         f"(indices 0..{n - 1})")
        out = np.ones(n)
        out[self.ranks] = self.factor
        return out

    def describe(self) -> dict[str, Any]:
        params = {k: v for k, v in super().describe().items() if k not in ("p", "r")}
        return {**params, "ranks": list(self.ranks), "factor": self.factor}
