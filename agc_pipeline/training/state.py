"""The state of a run that the shared loop commits (:func:`~agc_pipeline.training.loop.fit`):
iteration, running totals, optimizer and, for runtimes with a virtual clock, the clock.

A runtime's :meth:`step` changes none of it: it returns a :class:`StepResult` (the gradient
to step with, the metrics row, the totals' increments), and :meth:`RunState.commit` applies
it — the optimizer step with the one divergence check, then totals, clock and iteration
together, so that a checkpoint never holds half an iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from agc_pipeline.coding.stragglers import VirtualClock
from agc_pipeline.training.coded_step import TrainingDiverged, check_finite
from agc_pipeline.training.optim import Optimizer

__all__ = ["RunState", "StepResult", "Totals", "apply_gradient"]


@dataclass
class Totals:
    """Running totals over the completed iterations (checkpointed): the shared counters and
    the runtime's own (``extra``, declared by the runtime class's ``counters``)."""

    iterations: int = 0
    survivors: int = 0
    bytes_to_ps: int = 0
    skipped: int = 0
    grad_error: float = 0.0  #: sum over iterations
    seconds: float = 0.0  #: wall-clock seconds spent training (all sessions)
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def shared(cls) -> tuple[str, ...]:
        """The names of the shared counters."""
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    @classmethod
    def declare(cls, counters: Mapping[str, float]) -> Totals:
        """Zero totals with the runtime's ``counters`` (name → initial value)."""
        return cls(extra=dict(counters))

    def __getitem__(self, name: str) -> float:
        return self.extra[name] if name in self.extra else getattr(self, name)

    def add(self, increments: Mapping[str, float]) -> None:
        """Add ``increments`` (shared or declared counters; an undeclared name is a bug)."""
        shared = self.shared()
        for name, value in increments.items():
            if name in shared:
                setattr(self, name, getattr(self, name) + value)
            elif name in self.extra:
                self.extra[name] += value
            else:
                raise KeyError(f"counter {name!r} is not declared by the runtime")

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}`` (the checkpoint's ``totals``)."""
        return {**{name: getattr(self, name) for name in self.shared()}, **self.extra}

    def load(self, values: Mapping[str, float]) -> None:
        """Restore :meth:`as_dict` (the declared counters keep their names)."""
        for name in self.shared():
            setattr(self, name, values[name])
        for name in self.extra:
            self.extra[name] = values[name]


@dataclass
class StepResult:
    """What one iteration produced, before anything is committed."""

    row: dict[str, Any]  #: the metrics row (at the parameters before the update)
    #: the gradient to step with; None: no update (no survivor) or already applied
    gradient: torch.Tensor | None = None
    increments: dict[str, float] = field(default_factory=dict)  #: added to the totals
    virtual_time: float | None = None  #: the clock after this iteration (virtual clocks)


def apply_gradient(optimizer: Optimizer, gradient: torch.Tensor, iteration: int) -> None:
    """The optimizer step; a step that would overflow the parameters to NaN/Inf is not taken
    and raises :class:`TrainingDiverged` (the one place that does)."""
    if not optimizer.step(gradient):
        check_finite(gradient, iteration)  # names NaN/Inf gradient entries
        raise TrainingDiverged(
            f"iteration {iteration}: the SGD step would overflow the parameters to NaN/Inf "
            "(diverged: lower trainer.lr)")


class RunState:
    """Iteration, totals, optimizer and (virtual-clock runtimes) the clock of one run."""

    def __init__(self, optimizer: Optimizer, totals: Totals,
                 clock: VirtualClock | None = None) -> None:
        self.optimizer = optimizer
        self.totals = totals
        self.clock = clock
        self.iteration = 0

    @property
    def virtual_time(self) -> float | None:
        """The simulated clock (None without one)."""
        return None if self.clock is None else self.clock.virtual_time

    def commit(self, result: StepResult) -> None:
        """Apply one iteration's result (see the module docstring)."""
        if result.gradient is not None:
            apply_gradient(self.optimizer, result.gradient, self.iteration)
        if self.clock is not None:
            assert result.virtual_time is not None, "a virtual-clock runtime sets virtual_time"
            self.clock.virtual_time = result.virtual_time
        self.totals.add(result.increments)
        self.iteration += 1
        self.totals.iterations = self.iteration

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``iteration``, ``optimizer``, ``virtual_time`` and ``totals``."""
        return {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                "virtual_time": 0.0 if self.clock is None else self.clock.virtual_time,
                "totals": self.totals.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.clock is not None:
            self.clock.virtual_time = float(state["virtual_time"])
        self.totals.load(state["totals"])
        self.iteration = int(state["iteration"])
