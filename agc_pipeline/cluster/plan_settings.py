"""The ``plan`` section of the config as validated settings of the planner
(:mod:`agc_pipeline.cluster.planner`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agc_pipeline.cluster.costmodel import BROADCASTS
from agc_pipeline.cluster.mitigations import Averaging, averaging_spec
from agc_pipeline.cluster.plan_codes import FAMILIES
from agc_pipeline.errors import require
from agc_pipeline.validation import (
    require_choice,
    require_finite,
    require_int,
    require_int_list,
    require_list,
    require_memory,
)


def plan_bytes(n: int, m: int, draws: int) -> int:
    """Bytes of the planner's largest arrays at n workers (float64/int64): the assignments
    and a code's B (k ≈ n subsets: (m + 2)·n²) and the Monte Carlo draws (4 × draws × n)."""
    return 8 * ((m + 2) * n * n + 4 * draws * n)


@dataclass
class PlanSettings:
    """The ``plan`` section of the config, validated on construction (each key by the rule of
    :mod:`agc_pipeline.validation`: booleans are never numbers)."""

    n: list[int]
    d: list[int]
    m: list[int]
    p: list[float]
    slowdown: float
    samples_per_iteration: float
    flops_per_sample: float
    grad_bytes: float
    param_bytes: float
    broadcast: list[str]
    families: list[str]
    s_fractions: list[float]
    draws: int
    error_realizations: int
    error_sets: int
    seed: int = 0
    #: seconds a hit worker stalls on top of its (slowdown×) compute: additive stalls
    stall: float = 0.0
    #: samples per worker and step (weak scaling: global batch = n × this); None: the fixed
    #: global batch samples_per_iteration
    samples_per_worker: float | None = None
    #: plain local SGD ({period}) and hierarchical SGD ({group_size, period, global_period});
    #: None: not evaluated
    local_sgd: Any = None
    hierarchical_sgd: Any = None

    def __post_init__(self) -> None:
        def ints(values: Any, name: str, minimum: int) -> list[int]:
            return require_int_list(require_list(values, f"plan.{name}"), f"plan.{name}",
                                    minimum)

        def floats(values: Any, name: str, low: float, high: float) -> list[float]:
            return [require_finite(v, f"plan.{name}[{i}]", low, high)
                    for i, v in enumerate(require_list(values, f"plan.{name}"))]

        def choices(values: Any, name: str, allowed: tuple[str, ...]) -> list[str]:
            return [require_choice(v, f"plan.{name}[{i}]", allowed)
                    for i, v in enumerate(require_list(values, f"plan.{name}"))]

        def positive(value: Any, name: str) -> float:
            return require_finite(value, f"plan.{name}", 0.0, strict_minimum=True)

        self.n, self.d, self.m = ints(self.n, "n", 2), ints(self.d, "d", 1), ints(self.m, "m", 1)
        self.p = floats(self.p, "p", 0.0, 1.0)
        self.slowdown = require_finite(self.slowdown, "plan.slowdown", 1.0)
        self.samples_per_iteration = positive(self.samples_per_iteration,
                                              "samples_per_iteration")
        self.flops_per_sample = positive(self.flops_per_sample, "flops_per_sample")
        self.grad_bytes = positive(self.grad_bytes, "grad_bytes")
        self.param_bytes = positive(self.param_bytes, "param_bytes")
        self.broadcast = choices(self.broadcast, "broadcast", BROADCASTS)
        self.families = choices(self.families, "families", tuple(FAMILIES))
        self.s_fractions = floats(self.s_fractions, "s_fractions", 0.0, 0.99)
        self.draws = require_int(self.draws, "plan.draws", minimum=1)
        self.error_realizations = require_int(self.error_realizations,
                                              "plan.error_realizations", minimum=1)
        self.error_sets = require_int(self.error_sets, "plan.error_sets", minimum=1)
        self.seed = require_int(self.seed, "seed", minimum=0)
        self.stall = require_finite(self.stall, "plan.stall", 0.0)
        if self.samples_per_worker is not None:
            self.samples_per_worker = positive(self.samples_per_worker, "samples_per_worker")
        self.local_sgd = averaging_spec(self.local_sgd, "local_sgd")
        self.hierarchical_sgd = averaging_spec(self.hierarchical_sgd, "hierarchical_sgd")
        for n in self.n:  # before any array: the codes' matrices, the Monte Carlo draws
            require_memory(f"plan.n={n} (with plan.m up to {max(self.m)} and plan.draws="
                           f"{self.draws})", plan_bytes(n, max(self.m), self.draws),
                           "the planner's arrays grow as n² (assignments, codes) and "
                           "draws × n: use a smaller plan.n")
        for spec in self.averaging:
            top = spec.global_period or spec.period
            require(self.draws >= top, f"plan.draws must be ≥ {top}, the averaging period of "
                                       f"plan.{spec.kind} (got {self.draws})")

    @property
    def averaging(self) -> list[Averaging]:
        """The local-SGD schedules to evaluate."""
        return [s for s in (self.local_sgd, self.hierarchical_sgd) if s is not None]

    def global_batch(self, n: int) -> float:
        """Samples per step at n workers: n × samples_per_worker, else samples_per_iteration."""
        if self.samples_per_worker is None:
            return self.samples_per_iteration
        return n * self.samples_per_worker

    def describe(self) -> dict[str, Any]:
        """JSON-friendly settings."""
        out = dict(self.__dict__)
        for key in ("local_sgd", "hierarchical_sgd"):
            out[key] = None if out[key] is None else out[key].describe()
        return out
