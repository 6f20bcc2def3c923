"""Straggler models with a fixed time window (the paper's Sections III and VIII): none, i.i.d.
Bernoulli(q), a fixed count s, and the adversarial choice of Claim 1."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from agc_pipeline.coding.stragglers.base import (
    StragglerContext,
    _check_s,
    _FixedWindow,
    _nonneg_int,
)
from agc_pipeline.errors import require
from agc_pipeline.validation import require_interval


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
        self.q = require_interval(q, "straggler.q", 0.0, 1.0, open_high=True)

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


