"""The stack baseline, eq. (11): Bᵀ = [Aᵀ | … | Aᵀ] (the same A in every block)."""

from __future__ import annotations

import numpy as np

from agc_pipeline.codes.assignment import ASSIGNMENT_KINDS
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.bounds import bibd_stack_error


class Stack(Scheme):
    """B = [A; A; …; A] (mk×n): every block sends the same combination (eq. 11)."""

    name = "stack"
    paper_label = "Baseline construction (11)"
    exact = False
    assignments = ASSIGNMENT_KINDS

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.tile(self.assignment.matrix.astype(np.float64), (self.m, 1))

    def closed_form_bounds(self, s: int) -> dict[str, float]:
        balance = self.assignment.worker_balance()
        if balance is None:
            return {}
        delta, lam = balance
        return {"stack_exact": float(bibd_stack_error(self.n, self.k, self.m, delta, lam, s))}

    @property
    def primary_bound(self) -> str | None:
        return "stack_exact" if self.assignment.worker_balance() is not None else None
