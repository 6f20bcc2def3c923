"""Fractional repetition code (Tandon et al., "Gradient Coding", ICML 2017; the paper's Section II).

Exact gradient coding for m = 1: n workers in n/(s+1) groups of s+1; every worker of a group
holds the same s+1 subsets and sends the sum of their partial gradients, so B = A. Any s
stragglers leave at least one worker per group, and the PS adds one message per group.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.codes.repetition import fractional_group_size
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int


def check_fractional_assignment(scheme: str, assignment: Assignment, m: int) -> int:
    """Check that ``assignment`` (of kind fractional: :attr:`Scheme.assignments`) is a
    fractional repetition built for this ``m``; return r.

    The group size r = s + m fixes the tolerated stragglers s = r − m ≥ 0.
    """
    r = fractional_group_size(assignment)
    built_m = assignment.params.get("m", m)
    require(built_m == m,
            f"scheme {scheme}: assignment.m must equal m (got assignment.m={built_m}, m={m}); "
            "set assignment.m=${m}")
    s = assignment.params.get("s", r - m)
    require(r == s + m,
            f"scheme {scheme}: assignment group size must be s + m = {s + m} (got {r})")
    require(r >= m, f"scheme {scheme}: assignment group size must be at least m = {m} (got {r})")
    return r


class FractionalRepetitionCode(Scheme):
    """Tandon et al.'s fractional repetition code: B = A, tolerates s = r − 1 stragglers.

    Needs m = 1 and ``assignment=fractional`` (group size r = s + 1 dividing n, k = n).
    Deterministic; ``encode`` ignores its generator.
    """

    name: ClassVar[str] = "frc"
    paper_label: ClassVar[str] = "FRC (Tandon et al.)"
    exact: ClassVar[bool] = True
    assignments: ClassVar[tuple[str, ...]] = ("fractional",)
    randomized: ClassVar[bool] = False

    def __init__(self, assignment: Assignment, m: int = 1) -> None:
        m = require_int(m, "m", minimum=1)  # m first: the m = 1 rule precedes the kind's
        require(m == 1, f"scheme frc needs m = 1 (got m={m}); use ce_frc for m > 1")
        super().__init__(assignment, m)
        self.group_size = check_fractional_assignment(self.name, assignment, self.m)
        self.s = self.group_size - 1

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """B = A (k×n, float64)."""
        return self.assignment.matrix.astype(np.float64)

    def tolerates(self) -> int:
        """Any s = r − 1 stragglers are tolerated exactly."""
        return self.s

    def describe(self) -> dict[str, Any]:
        """Name, m, tolerated stragglers and group size."""
        return {**super().describe(), "s": self.s, "group_size": self.group_size}
