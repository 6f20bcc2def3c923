"""The paper's bounds against Monte Carlo and each other (eqs. 8, 10, 11, 12, 17, 20, 21)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agc_pipeline.analysis.engine import straggler_masks
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.graphs import biregular, coset, srg
from agc_pipeline.codes.hadamard_nullspace import HadamardNullspace
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.stack import Stack
from agc_pipeline.coding import bounds
from agc_pipeline.coding.decoding import optimal_errors


def monte_carlo_mean(scheme: RandomDiagonal, masks: np.ndarray, draws: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over encoder draws of Err_𝓕(B), per mask."""
    rng = np.random.default_rng(seed)
    errs = np.array([optimal_errors(scheme.encode(rng), scheme.target, masks)
                     for _ in range(draws)])
    return errs.mean(axis=0), errs.std(axis=0, ddof=1) / np.sqrt(draws)


def test_c_constant_matches_numerical_expectation() -> None:
    assert bounds.c_constant(0.0) == 1.0
    eps = 0.4
    x = np.random.default_rng(0).uniform(1 - eps, 1 + eps, 400_000)
    assert bounds.c_constant(eps) == pytest.approx(np.mean(x**2) * np.mean(1 / x**2), rel=2e-3)
    with pytest.raises(ValueError, match="epsilon"):
        bounds.c_constant(1.0)


@pytest.mark.parametrize(("name", "assignment", "m", "eps"), [
    ("fano", lambda: bibd("fano"), 2, 0.0),
    ("fano_m3_eps", lambda: bibd("fano"), 3, 0.3),
    ("petersen", lambda: srg("petersen"), 2, 0.0),
    ("biregular", lambda: biregular(12, 6, 2, 4, seed=1), 2, 0.5),
])
def test_lemma1_bounds_monte_carlo(name: str, assignment, m: int, eps: float) -> None:
    """Eq. (8): the mean error over D is below the bound for every survivor set."""
    a = assignment()
    scheme = RandomDiagonal(a, m, epsilon=eps)
    masks = np.vstack([straggler_masks(a.n, s, 4, np.random.default_rng(s))
                       for s in (0, 1, 2, 3)])
    mean, se = monte_carlo_mean(scheme, masks, draws=1500)
    bound = bounds.lemma1(a.matrix, m, eps, masks)
    assert np.all(mean <= bound + 4 * se + 1e-9), (mean - bound) / np.maximum(se, 1e-12)


def test_bibd_bound_equals_lemma1_and_holds() -> None:
    """Eq. (10) is eq. (8) specialised to a BIBD: equal for every survivor set."""
    for q in (2, 3, 4):
        a = bibd("projective_plane", q=q)
        delta, lam = a.params["replication"], a.params["lam"]
        for s in range(0, a.n // 3):
            masks = straggler_masks(a.n, s, 5, np.random.default_rng(s))
            np.testing.assert_allclose(bounds.lemma1(a.matrix, 2, 0.0, masks),
                                       bounds.bibd_bound(a.n, a.k, 2, delta, lam, s), rtol=1e-12)
    a = bibd("affine_plane", q=3)  # 9 points, 12 lines: k ≠ n
    masks = straggler_masks(a.n, 2, 5, np.random.default_rng(0))
    np.testing.assert_allclose(bounds.lemma1(a.matrix, 3, 0.0, masks),
                               bounds.bibd_bound(a.n, a.k, 3, a.params["replication"], 1, 2))


def test_bibd_stack_error_is_exact() -> None:
    """The stack baseline (11) on a BIBD has the same error for every 𝓕."""
    a = bibd("projective_plane", q=3)
    for m in (1, 2, 3):
        st = Stack(a, m)
        for s in (0, 2, 5):
            masks = straggler_masks(a.n, s, 8, np.random.default_rng(s))
            np.testing.assert_allclose(
                optimal_errors(st.encode(), st.target, masks),
                bounds.bibd_stack_error(a.n, a.k, m, a.params["replication"], 1, s), atol=1e-9)


@pytest.mark.parametrize(("graph", "kw"), [("petersen", {}), ("paley", {"q": 13}),
                                           ("lattice", {"a": 3}), ("triangular", {"a": 5}),
                                           ("clebsch", {}), ("shrikhande", {})])
def test_srg_bound_dominates_lemma1_and_monte_carlo(graph: str, kw: dict) -> None:
    """Eq. (12) ≥ eq. (8) on every survivor set, hence ≥ the Monte Carlo mean."""
    a = srg(graph, **kw)
    p = a.params
    scheme = RandomDiagonal(a, 2)
    for s in (0, 1, a.n // 4):
        masks = straggler_masks(a.n, s, 6, np.random.default_rng(s))
        closed = bounds.srg_bound(a.n, 2, p["delta"], p["lam"], p["mu"], s)
        lem = bounds.lemma1(a.matrix, 2, 0.0, masks)
        assert np.all(lem <= closed + 1e-9)
        mean, se = monte_carlo_mean(scheme, masks[:2], draws=300)
        assert np.all(mean <= closed + 4 * se + 1e-9)


def test_coset_bound_dominates_lemma1_and_monte_carlo() -> None:
    """Eq. (17) ≥ eq. (8) for the coset graph, and the Monte Carlo mean is below it."""
    for k, m, delta, eps in [(27, 2, 5, 0.1), (25, 3, 2, 0.2), (9, 2, 2, 0.0)]:
        a = coset(k, m, delta)
        for s in (0, 3, 7):
            masks = straggler_masks(a.n, s, 6, np.random.default_rng(s))
            closed = bounds.coset_bound(k, m, delta, eps, s)
            assert np.all(bounds.lemma1(a.matrix, m, eps, masks) <= closed + 1e-9)
    a = coset(9, 2, 2)
    masks = straggler_masks(a.n, 3, 3, np.random.default_rng(1))
    mean, se = monte_carlo_mean(RandomDiagonal(a, 2, epsilon=0.3), masks, draws=800)
    assert np.all(mean <= bounds.coset_bound(9, 2, 2, 0.3, 3) + 4 * se)


@pytest.mark.parametrize("variant", ["gaussian", "pm1"])
def test_hadamard_bound_holds_for_every_set(variant: str) -> None:
    """Eq. (20) bounds the error of construction (19) for each B and 𝓕 (deterministically)."""
    a = biregular(40, 20, 3, 6, seed=0)
    scheme = HadamardNullspace(a, 2, variant=variant)
    rng = np.random.default_rng(3)
    for _ in range(3):
        b = scheme.encode(rng)
        for s in (0, 2, 6, 10):
            masks = straggler_masks(a.n, s, 50, rng)
            err = optimal_errors(b, scheme.target, masks)
            assert np.all(err <= bounds.hadamard_bound(b, 20, 2, masks) + 1e-9)


def test_lower_bound_values_and_worst_case() -> None:
    """Eq. (21): the paper's example, and the worst survivor set reaches it for any B."""
    assert bounds.lower_bound(12, 12, 2, 4, 5) == 2
    assert bounds.lower_bound(12, 12, 2, 4, 3) == 1
    np.testing.assert_array_equal(bounds.lower_bound(12, 12, 2, 4, np.array([0, 3, 5])),
                                  [0, 1, 2])
    a = bibd("fano")
    rng = np.random.default_rng(0)
    for m, s in [(2, 3), (2, 4), (3, 3)]:
        lb = bounds.lower_bound(a.n, a.k, m, a.delta, s)
        assert lb > 0
        masks = np.ones((35, a.n), dtype=bool)
        for i, strag in enumerate(itertools.combinations(range(a.n), s)):
            masks[i, list(strag)] = False
        for scheme in (RandomDiagonal(a, m, epsilon=0.2), Stack(a, m)):
            for _ in range(3):
                b = scheme.encode(rng)
                worst = optimal_errors(b, scheme.target, masks[: len(masks)]).max()
                assert worst >= lb - 1e-9
