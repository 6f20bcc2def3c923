"""What every straggler model shares: one iteration's outcome (:class:`StragglerDraw`), what
adversarial and load-proportional models may look at (:class:`StragglerContext`), the seeded
base class (common random numbers, Section VII), the fixed-window models' draw, and the
simulated clock (:class:`VirtualClock`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.errors import require
from agc_pipeline.validation import require_finite, require_int

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
    """``straggler.<name>`` as an integer ≥ 0 (booleans refused)."""
    return require_int(value, f"straggler.{name}", minimum=0)


def _nonneg_float(value: Any, name: str) -> float:
    """``straggler.<name>`` as a finite float ≥ 0 (booleans refused)."""
    return require_finite(value, f"straggler.{name}", 0.0)


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
    require_int(iteration, "iteration", minimum=0)
    require_int(n, "n (number of workers)", minimum=1)
    require_int(message_length, "message_length", minimum=0)


def _check_s(s: int, n: int) -> None:
    require(s < n, f"straggler.s must satisfy 0 ≤ s < n (got s={s}, n={n})")


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
