"""Construction II, Algorithm 1 / eq. (19): random Hadamard products with null-space constraints.

A is k×n with n = mk. For vectors v_1, …, v_m, block A_j of B has row i equal to
v_j(H_i)ᵀ/‖v_j(H_i)‖² on the support H_i of A(i,:), zero elsewhere; v_j (j ≥ 2) lies in the
null space of [A_1; …; A_{j−1}]. Lemma 2: A_j v_j = 1 and A_i v_j = 0 (i ≠ j), so B v_u = f_u
and the code is exact with no stragglers.

Variants (Fig. 5):
- ``gaussian``: v_1 ~ N(0, I); v_j a Gaussian combination of an orthonormal basis of the null
  space (a fresh draw per ``encode``).
- ``pm1``: v_1 = 1 and v_j ∈ {±1}ⁿ found by an exact integer feasibility search (MILP); B is
  then deterministic. With v_1 = 1 the constraint A_1 v_2 = 0 asks every subset's holders to
  split evenly between +1 and −1, so e.g. every replication must be even.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import null_space
from scipy.optimize import Bounds, LinearConstraint, milp

from agc_pipeline.codes.assignment import ASSIGNMENT_KINDS, Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.bounds import hadamard_bound
from agc_pipeline.errors import ConfigError, require

VARIANTS = ("pm1", "gaussian")


def block_from_vector(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row i: v(H_i)ᵀ/‖v(H_i)‖² on the support H_i of A(i,:) (Algorithm 1)."""
    masked = a * v[None, :]
    norms = (masked**2).sum(axis=1)
    if (norms <= 0).any():
        raise ConfigError("hadamard_nullspace: v vanishes on the support of a subset")
    return masked / norms[:, None]


def pm1_null_vector(constraints: np.ndarray) -> np.ndarray | None:
    """A ±1 vector v with ``constraints @ v = 0`` (integer rows), or None if none exists.

    Solved exactly as a 0/1 feasibility MILP in z with v = 2z − 1.
    """
    c = np.asarray(constraints, dtype=np.float64)
    n = c.shape[1]
    rhs = c.sum(axis=1)
    res = milp(np.zeros(n), constraints=LinearConstraint(2.0 * c, rhs, rhs),
               integrality=np.ones(n), bounds=Bounds(0, 1))
    if res.status != 0 or res.x is None:
        return None
    v = 2.0 * np.round(res.x) - 1.0
    return v if np.allclose(c @ v, 0.0) else None


class HadamardNullspace(Scheme):
    """Construction (19) with ``variant`` ∈ {pm1, gaussian}; requires n = mk."""

    name = "hadamard_nullspace"
    paper_label = "(19)"
    #: the choice of v_1 (Section VIII: Gaussian or ±1 entries)
    variant_labels = {"gaussian": "Gaussian", "pm1": "±1"}
    exact = False
    assignments = ASSIGNMENT_KINDS  # any A with n = m·k (checked when built)

    def __init__(self, assignment: Assignment, m: int, variant: str = "gaussian") -> None:
        super().__init__(assignment, m)
        require(variant in VARIANTS,
                f"scheme.variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
        require(self.n == self.m * self.k,
                f"scheme hadamard_nullspace needs n = m·k workers (got n={self.n}, "
                f"m={self.m}, k={self.k}); for a BIBD use assignment.transpose=false")
        self.variant = variant
        self._fixed: np.ndarray | None = self._pm1_encoding() if variant == "pm1" else None

    @property
    def randomized(self) -> bool:  # type: ignore[override]
        return self.variant == "gaussian"

    def _pm1_encoding(self) -> np.ndarray:
        a = self.assignment.matrix.astype(np.float64)
        v = np.ones(self.n)
        blocks = [block_from_vector(a, v)]
        for j in range(2, self.m + 1):
            # integer form of [A_1; …; A_{j−1}] v = 0: each row of A_i times ‖v_i(H_r)‖² = |H_r|
            integer_rows = np.vstack([blk * a.sum(axis=1)[:, None] for blk in blocks])
            v = pm1_null_vector(np.round(integer_rows))
            if v is None:
                raise ConfigError(
                    f"scheme.variant=pm1: no ±1 vector v_{j} satisfies the null-space constraint "
                    f"[A_1; …; A_{j - 1}] v_{j} = 0 for assignment {self.assignment.name} "
                    "(with v_1 = 1 every subset's holders must split evenly into ±1, so every "
                    "replication must be even); use scheme.variant=gaussian")
            blocks.append(block_from_vector(a, v))
        return np.vstack(blocks)

    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        if self._fixed is not None:
            return self._fixed.copy()
        rng = self._require_rng(rng)
        a = self.assignment.matrix.astype(np.float64)
        blocks = [block_from_vector(a, rng.standard_normal(self.n))]
        for _ in range(2, self.m + 1):
            basis = null_space(np.vstack(blocks))
            blocks.append(block_from_vector(a, basis @ rng.standard_normal(basis.shape[1])))
        return np.vstack(blocks)

    def set_bounds(self, b: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
        return {"eq20": hadamard_bound(b, self.k, self.m, masks)}

    @property
    def primary_bound(self) -> str | None:
        return "eq20_max"

    def describe(self) -> dict:
        return {**super().describe(), "variant": self.variant}
