"""Cyclic repetition code (Tandon et al., "Gradient Coding", ICML 2017, Alg. 2; Section II).

Exact gradient coding for m = 1 on the cyclic assignment (worker j holds subsets j..j+s mod n).
Draw H ∈ R^{s×n} with Gaussian entries and H·1 = 0. Column j of B is supported on the window
{j, …, j+s}, has B[j, j] = 1 and solves H[:, window] b = 0 (s equations, s+1 unknowns). Every
column then lies in null(H), which has dimension n − s and contains 1, and almost surely any
n − s columns span it, so 1 = B r for some r supported on any n − s survivors.

Numerics: Tandon's random construction is usable for n ≲ 30 and degrades beyond.
Worst-case cond(B_𝓕) over all sets of s stragglers (3 seeds): 10¹–10⁵ for n ≤ 12, s ≤ 3
(least-squares residual ≈ 10⁻²³); 10⁵–10⁹ for n = 20–30, s ≤ 3; 10⁷–10⁸ at n = 50, s = 3,
so decoding loses up to half the float64 digits there. Check a given code with
:func:`worst_case_condition` (it enumerates all C(n, s) straggler sets: small n only).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.codes.repetition import cyclic
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int


def tandon_cyclic_matrix(n: int, s: int, seed: int = 0) -> np.ndarray:
    """The n×n cyclic-repetition encoding matrix (columns = workers) from a seeded H."""
    b = np.zeros((n, n))
    if s == 0:
        np.fill_diagonal(b, 1.0)
        return b
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((s, n))
    h[:, -1] = -h[:, :-1].sum(axis=1)  # H·1 = 0
    for j in range(n):
        window = (j + np.arange(s + 1)) % n
        b[j, j] = 1.0
        b[window[1:], j] = np.linalg.solve(h[:, window[1:]], -h[:, j])
    return b


def worst_case_condition(b: np.ndarray, s: int) -> float:
    """max over all sets of s stragglers of cond(B[:, survivors]) (2-norm).

    Fewer stragglers cannot do worse (singular values of a column submatrix interlace), so
    sets of exactly s suffice. Enumerates C(n, s) sets: for small n only.
    """
    n = b.shape[1]
    worst = 0.0
    for stragglers in itertools.combinations(range(n), s):
        survivors = np.setdiff1d(np.arange(n), stragglers)
        worst = max(worst, float(np.linalg.cond(b[:, survivors])))
    return worst


class CyclicRepetitionCode(Scheme):
    """Tandon et al.'s cyclic repetition code, m = 1, tolerating s stragglers.

    Needs ``assignment=cyclic`` built with m = 1 (load s + 1). Deterministic: B is drawn once
    from ``seed`` held by the scheme, and ``encode`` ignores its generator.
    """

    name: ClassVar[str] = "crc"
    paper_label: ClassVar[str] = "CRC (Tandon et al.)"
    exact: ClassVar[bool] = True
    assignments: ClassVar[tuple[str, ...]] = ("cyclic",)
    randomized: ClassVar[bool] = False

    def __init__(self, assignment: Assignment, m: int = 1, seed: int = 0) -> None:
        m = require_int(m, "m", minimum=1)  # m first: the m = 1 rule precedes the kind's
        require(m == 1, f"scheme crc needs m = 1 (got m={m}); use ce_frc for m > 1")
        super().__init__(assignment, m)
        built_m = assignment.params.get("m", 1)
        require(built_m == 1,
                f"scheme crc: assignment.m must be 1 (got assignment.m={built_m}); "
                "set assignment.m=1")
        self.s = int(assignment.params["s"])
        require(np.array_equal(assignment.matrix, cyclic(assignment.n, self.s, 1).matrix),
                f"assignment {assignment.name}: matrix is not the cyclic repetition "
                f"(worker j holds subsets j..j+s mod n with s={self.s})")
        self.seed = require_int(seed, "scheme.seed", minimum=0)
        self._b = tandon_cyclic_matrix(self.n, self.s, self.seed)
        self._b.setflags(write=False)

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """B (n×n, float64), the same on every call."""
        return self._b.copy()

    def tolerates(self) -> int:
        """Any s stragglers are tolerated exactly."""
        return self.s

    def worst_case_condition(self) -> float:
        """Worst cond(B_𝓕) over all sets of s stragglers (enumerates C(n, s) sets)."""
        return worst_case_condition(self._b, self.s)

    def describe(self) -> dict[str, Any]:
        """Name, m, tolerated stragglers and seed."""
        return {**super().describe(), "s": self.s, "seed": self.seed}
