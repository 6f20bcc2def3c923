"""The codes the planner compares at a given n: for each family (DDP's uncoded baseline,
construction (7) on BIBDs, strongly regular and coset graphs, stack (11), FRC and the
communication-efficient exact FRC) the members that exist at n, with a grid of s, and their
normalised decoding error ē by Monte Carlo (optimal decoding, eq. 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from agc_pipeline.analysis.engine import ErrorStudy
from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.codes.ce_frc import CommEfficientFRC
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.frc import FractionalRepetitionCode
from agc_pipeline.codes.galois import is_prime_power
from agc_pipeline.codes.graphs import coset, srg
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.repetition import fractional, identity
from agc_pipeline.codes.stack import Stack
from agc_pipeline.errors import ConfigError, require

#: coset graph (k, m, δ) used for construction (7): δ = 3, ε = 0.1 (Proposition 1 needs
#: ε > 0; k = n/m is a power of two for n ∈ {16, 64, 256}, and 2 ∤ 3)
COSET_DELTA, COSET_EPSILON = 3, 0.1


@dataclass
class Code:
    """One code at one n: the scheme, the straggler counts it may wait past, and whether it
    is coded (False: the uncoded PS baselines) and exact (ē = 0 at its s; None: the scheme
    class's ``exact``)."""

    family: str
    construction: str
    scheme: Scheme
    s_values: list[int]
    coded: bool
    exact: bool | None = None

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = self.scheme.exact

    @property
    def n(self) -> int:
        return self.scheme.n

    @property
    def m(self) -> int:
        return self.scheme.m

    @property
    def load(self) -> float:
        """The largest share of the global batch a worker processes: δ/k."""
        a = self.scheme.assignment
        return float(a.loads.max()) / a.k


def _square_root(n: int) -> int | None:
    q = math.isqrt(n)
    return q if q * q == n else None


def _grid(n: int, fractions: list[float], positive: bool = False) -> list[int]:
    values = sorted({int(round(f * n)) for f in fractions})
    return [s for s in values if s < n and (s > 0 or not positive)]


def _affine(n: int) -> tuple[Assignment | None, str]:
    q = _square_root(n)
    if q is None or is_prime_power(q) is None:
        return None, f"AG(2,q) has n = q² points for a prime power q; {n} is not such a q²"
    a = bibd("affine_plane", q=q)
    return a, f"AG(2,{q}) BIBD, workers = points (k = {a.k} lines, load {q + 1})"


def _projective(n: int) -> tuple[Assignment | None, str]:
    q = next((q for q in range(2, math.isqrt(n) + 1) if q * q + q + 1 == n), None)
    if q is None or is_prime_power(q) is None:
        return None, (f"PG(2,q) has n = q² + q + 1 points for a prime power q; no q gives "
                      f"n = {n}")
    a = bibd("projective_plane", q=q)
    return a, f"PG(2,{q}) BIBD (load {q + 1})"


def _lattice(n: int) -> tuple[Assignment | None, str]:
    a_side = _square_root(n)
    if a_side is None or a_side < 3:
        return None, f"the lattice graph K_a □ K_a has n = a² (a ≥ 3); {n} is not such an a²"
    a = srg("lattice", a=a_side)
    return a, f"lattice SRG K_{a_side} □ K_{a_side} ({n}, {2 * (a_side - 1)}, {a_side - 2}, 2)"


def family_codes(family: str, n: int, m: int, s_fractions: list[float],
                 ) -> tuple[list[Code], str | None]:
    """The codes of ``family`` at n workers with reduction m (their s candidates from
    ``s_fractions``), or ``([], why)`` when the family has no design there (``why`` None: the
    family simply has no member with this m, e.g. FRC with m > 1)."""
    grid = _grid(n, s_fractions)
    top = max(grid) if grid else 0
    if family in ("uncoded_wait", "uncoded_ignore"):
        if m != 1:
            return [], None
        a = identity(n)
        if family == "uncoded_wait":
            # waits for every worker: nothing is missing, ē = 0
            return [Code(family, "A = I, wait for all", Stack(a, 1), [0], False, True)], None
        positive = [s for s in grid if s > 0]
        return [Code(family, "A = I, first n - s", Stack(a, 1), positive, False)], None
    if family in ("frc", "ce_frc"):
        if (family == "frc") != (m == 1):
            return [], None
        codes = []
        for s in range(1, top + 1):
            if n % (s + m) or s + m > n:
                continue
            a = fractional(n, s, m)
            scheme = (FractionalRepetitionCode(a, 1) if family == "frc"
                      else CommEfficientFRC(a, m))
            codes.append(Code(family, f"fractional repetition, groups of {s + m}", scheme, [s],
                              True))
        return codes, (None if codes else f"no s ≤ {top} with s + m dividing n = {n}")
    if family == "coset_rd":
        if n % m:
            return [], f"the coset graph has n = m·k; m = {m} does not divide n = {n}"
        k = n // m
        try:
            a = coset(k, m, COSET_DELTA)
        except ConfigError as exc:
            return [], str(exc)
        label = f"coset graph (k={k}, m={m}, δ={COSET_DELTA}), construction (7) ε={COSET_EPSILON}"
        return [Code(family, label, RandomDiagonal(a, m, COSET_EPSILON), grid, True)], None
    builders: dict[str, Callable[[int], tuple[Assignment | None, str]]] = {
        "affine_rd": _affine, "affine_stack": _affine, "lattice_rd": _lattice,
        "projective_rd": _projective}
    require(family in builders, f"plan.families: unknown family {family!r} (choose from "
                                f"{', '.join(FAMILIES)})")
    a, text = builders[family](n)
    if a is None:
        return [], text
    if family == "affine_stack":
        return [Code(family, f"{text}, stack (11)", Stack(a, m), grid, True)], None
    return [Code(family, f"{text}, construction (7) ε=0", RandomDiagonal(a, m, 0.0), grid,
                 True)], None


def backup_code(n: int, s_fractions: list[float]) -> Code | None:
    """Backup workers (synchronous SGD taking the first n − s of n and averaging what came):
    A = I, m = 1, the positive s of the grid; None if the grid has none."""
    positive = _grid(n, s_fractions, positive=True)
    if not positive:
        return None
    return Code("backup", "A = I, first n - s (backup workers)", Stack(identity(n), 1),
                positive, False)


#: the families the planner knows, with a one-line description
FAMILIES = {
    "uncoded_wait": "uncoded PS, A = I, waits for all n (m = 1)",
    "uncoded_ignore": "uncoded PS, A = I, takes the first n - s (m = 1)",
    "frc": "Tandon et al.'s exact fractional repetition code (m = 1)",
    "ce_frc": "communication-efficient exact FRC (m > 1)",
    "affine_rd": "construction (7), eps = 0, on the affine plane AG(2, sqrt n)",
    "affine_stack": "stack baseline (11) on the affine plane AG(2, sqrt n)",
    "lattice_rd": "construction (7), eps = 0, on the lattice SRG K_a x K_a, n = a^2",
    "coset_rd": "construction (7), eps = 0.1, on the coset graph (n/m, m, 3)",
    "projective_rd": "construction (7), eps = 0, on the projective plane PG(2, q)",
}


def code_errors(code: Code, realizations: int, sets: int, seed: int,
                ) -> tuple[dict[int, float], dict[int, float | None]]:
    """Normalised mean decoding error ē(s) = E[Err_𝓕(B)]/(mk) per s (Monte Carlo, optimal
    decoding) and the normalised closed-form bound where the paper gives one."""
    if code.family in ("uncoded_wait", "uncoded_ignore"):
        # A = I, optimal decoding: Err = s exactly (the s missing subsets)
        return {s: s / code.n for s in code.s_values}, {s: None for s in code.s_values}
    draws = 1 if not code.scheme.randomized or code.exact else realizations
    study = ErrorStudy(scheme=code.scheme, s_values=code.s_values, realizations=draws,
                       straggler_sets=sets, seed=seed)
    results = study.run()
    mk = code.m * code.scheme.k
    errors = {int(p["s"]): max(float(p["empirical_mean"]), 0.0) / mk for p in results["points"]}
    bounds = {int(p["s"]): (None if p["upper_bound"] is None else float(p["upper_bound"]) / mk)
              for p in results["points"]}
    return errors, bounds


# ------------------------------------------------------------------------------------------
# the study
