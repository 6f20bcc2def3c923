"""Construction I, eq. (7): Bᵀ = [D_1Aᵀ | … | D_mAᵀ] with random diagonal D_u."""

from __future__ import annotations

import logging

import numpy as np

from agc_pipeline.codes.assignment import ASSIGNMENT_KINDS, Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding import bounds
from agc_pipeline.errors import require
from agc_pipeline.validation import require_finite

log = logging.getLogger(__name__)


class RandomDiagonal(Scheme):
    """Block u of B is A·D_u, D_u diagonal with i.i.d. entries uniform on
    𝒮 = [1−ε, 1+ε] ∪ [−1−ε, −1+ε] (ε = 0: random signs). A fresh D per ``encode`` call.
    """

    name = "random_diagonal"
    paper_label = "Construction (7)"
    exact = False
    assignments = ASSIGNMENT_KINDS
    randomized = True
    set_bounds_use_b = False

    def __init__(self, assignment: Assignment, m: int, epsilon: float = 0.0) -> None:
        super().__init__(assignment, m)
        self.epsilon = require_finite(epsilon, "scheme.epsilon")
        require(0.0 <= self.epsilon < 1.0, f"scheme.epsilon must lie in [0, 1) (got {epsilon})")
        self._lemma1: bounds.Lemma1Bound | None = None
        if assignment.kind == "coset" and self.epsilon == 0.0 and self.m > 1:
            log.warning("coset graph with epsilon = 0: B is often singular (Proposition 1 "
                        "needs continuous diagonal entries); the paper's Fig. 4 uses 0.1")

    def draw_diagonals(self, rng: np.random.Generator) -> np.ndarray:
        """The m×n diagonal entries: a random sign times a uniform magnitude in [1−ε, 1+ε]."""
        signs = rng.choice(np.array([-1.0, 1.0]), size=(self.m, self.n))
        if self.epsilon == 0.0:
            return signs
        return signs * rng.uniform(1.0 - self.epsilon, 1.0 + self.epsilon, size=(self.m, self.n))

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        d = self.draw_diagonals(self._require_rng(rng))
        a = self.assignment.matrix.astype(np.float64)
        return (a[None] * d[:, None, :]).reshape(self.m * self.k, self.n)  # block u: A D_u

    def closed_form_bounds(self, s: int) -> dict[str, float]:
        a, out = self.assignment, {}
        balance = a.worker_balance()
        if balance is not None and self.epsilon == 0.0:
            out["eq10"] = float(bounds.bibd_bound(self.n, self.k, self.m, *balance, s))
        if a.kind == "srg" and self.epsilon == 0.0:
            p = a.params
            out["eq12"] = float(bounds.srg_bound(self.n, self.m, p["delta"], p["lam"],
                                                 p["mu"], s))
        if a.kind == "coset" and a.params.get("m") == self.m:
            out["eq17"] = float(bounds.coset_bound(self.k, self.m, a.params["delta"],
                                                   self.epsilon, s))
        return out

    def set_bounds(self, b: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
        if self._lemma1 is None:
            self._lemma1 = bounds.Lemma1Bound(self.assignment.matrix, self.m, self.epsilon)
        return {"lemma1": self._lemma1(masks)}

    @property
    def primary_bound(self) -> str | None:
        closed = self.closed_form_bounds(0)
        return next(iter(closed)) if closed else "lemma1_mean"

    def describe(self) -> dict:
        return {**super().describe(), "epsilon": self.epsilon,
                "c": bounds.c_constant(self.epsilon)}
