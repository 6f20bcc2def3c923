"""Encoders (7), (11) and (19): structure, randomness, exactness (Lemma 2, Proposition 1)."""

from __future__ import annotations

import numpy as np
import pytest

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.graphs import biregular, coset
from agc_pipeline.codes.hadamard_nullspace import HadamardNullspace, pm1_null_vector
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.stack import Stack
from agc_pipeline.coding.decoding import optimal_errors
from agc_pipeline.errors import ConfigError


def blocks(b: np.ndarray, m: int) -> list[np.ndarray]:
    return np.split(b, m, axis=0)


def test_stack_is_tiled_assignment() -> None:
    a = bibd("fano")
    b = Stack(a, 3).encode()
    assert b.shape == (21, 7) and b.dtype == np.float64
    for blk in blocks(b, 3):
        np.testing.assert_array_equal(blk, a.matrix)


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_random_diagonal_structure(eps: float) -> None:
    a = bibd("projective_plane", q=3)
    scheme = RandomDiagonal(a, 2, epsilon=eps)
    b = scheme.encode(np.random.default_rng(0))
    assert b.shape == (2 * a.k, a.n)
    for blk in blocks(b, 2):
        # block u = A·D_u: same support as A, column j scaled by one value
        np.testing.assert_array_equal(blk != 0, a.matrix == 1)
        scale = blk.sum(axis=0) / a.matrix.sum(axis=0)
        np.testing.assert_allclose(blk, a.matrix * scale[None, :])
        mags = np.abs(scale)
        assert np.all((mags >= 1 - eps - 1e-12) & (mags <= 1 + eps + 1e-12))
    assert (b < 0).any() and (b > 0).any()


def test_random_diagonal_draws_are_reproducible_and_fresh() -> None:
    scheme = RandomDiagonal(bibd("fano"), 2, epsilon=0.1)
    b1 = scheme.encode(np.random.default_rng(7))
    b2 = scheme.encode(np.random.default_rng(7))
    np.testing.assert_array_equal(b1, b2)
    rng = np.random.default_rng(7)
    assert not np.array_equal(scheme.encode(rng), scheme.encode(rng))
    with pytest.raises(ConfigError, match="Generator"):
        scheme.encode(None)


def test_random_diagonal_sign_distribution() -> None:
    scheme = RandomDiagonal(bibd("fano"), 2)
    d = scheme.draw_diagonals(np.random.default_rng(0))
    assert set(np.unique(d)) == {-1.0, 1.0}
    many = np.stack([scheme.draw_diagonals(np.random.default_rng(i)) for i in range(2000)])
    assert abs(many.mean()) < 0.02  # ±1 equally likely: sd of the mean ≈ 0.0085


def test_random_diagonal_rejects_bad_epsilon() -> None:
    with pytest.raises(ConfigError, match=r"scheme.epsilon must lie in \[0, 1\)"):
        RandomDiagonal(bibd("fano"), 2, epsilon=1.0)
    with pytest.raises(ConfigError, match="m must be a positive integer"):
        RandomDiagonal(bibd("fano"), 0)


def test_coset_proposition1_invertible_with_continuous_entries() -> None:
    """Prop. 1: k = p^a, p ∤ δ, ε > 0 ⇒ B (mk×mk) invertible a.s. ⇒ zero error at s = 0."""
    a = coset(27, 2, 5)
    scheme = RandomDiagonal(a, 2, epsilon=0.1)
    rng = np.random.default_rng(0)
    full = np.ones((1, a.n), dtype=bool)
    for _ in range(5):
        b = scheme.encode(rng)
        assert np.linalg.matrix_rank(b) == 54
        assert optimal_errors(b, scheme.target, full)[0] < 1e-9


def test_coset_random_signs_are_often_singular() -> None:
    """Proposition 1 needs continuous entries: k = 25, m = 3, δ = 2, 𝔅 = {0, 1} with ε = 0
    loses rank; ε > 0 does not (the paper's Fig. 4 uses ε = 0.1, Section VIII)."""
    a = coset(25, 3, 2, generating_set=[0, 1])
    rng = np.random.default_rng(0)
    signs = [np.linalg.matrix_rank(RandomDiagonal(a, 3).encode(rng)) for _ in range(5)]
    cont = [np.linalg.matrix_rank(RandomDiagonal(a, 3, 0.1).encode(rng)) for _ in range(5)]
    assert max(signs) < 75
    assert min(cont) == 75


@pytest.mark.parametrize(("make", "m", "variant"), [
    (lambda: biregular(40, 20, 3, 6, seed=0), 2, "gaussian"),
    (lambda: biregular(40, 20, 3, 6, seed=0), 2, "pm1"),
    (lambda: bibd("steiner_triple", v=13, transpose=False), 2, "gaussian"),
    (lambda: bibd("steiner_triple", v=13, transpose=False), 2, "pm1"),
    (lambda: biregular(24, 8, 2, 6, seed=3), 3, "gaussian"),
])
def test_hadamard_lemma2_exact_at_zero_stragglers(make, m: int, variant: str) -> None:
    """Lemma 2: A_j v_j = 1, A_i v_j = 0 (i ≠ j) ⇒ B v_u = f_u ⇒ Err = 0 with no stragglers."""
    a = make()
    scheme = HadamardNullspace(a, m, variant=variant)
    b = scheme.encode(np.random.default_rng(0))
    assert b.shape == (m * a.k, a.n)
    for blk in blocks(b, m):
        assert np.all((blk != 0) <= (a.matrix == 1))  # supp(A_u) ⊆ supp(A)
    # the v_u are the least-squares solution of B v = f_u, exact
    v = np.linalg.lstsq(b, scheme.target, rcond=None)[0]
    np.testing.assert_allclose(b @ v, scheme.target, atol=1e-9)
    assert optimal_errors(b, scheme.target, np.ones((1, a.n), dtype=bool))[0] < 1e-9


def test_hadamard_pm1_is_deterministic_and_gaussian_is_random() -> None:
    a = biregular(40, 20, 3, 6, seed=0)
    pm1 = HadamardNullspace(a, 2, "pm1")
    assert not pm1.randomized
    np.testing.assert_array_equal(pm1.encode(), pm1.encode(np.random.default_rng(1)))
    b = pm1.encode()
    # v_1 = 1 ⇒ block 1 = A/γ; block 2 entries ±1/γ
    np.testing.assert_allclose(blocks(b, 2)[0], a.matrix / 6)
    assert set(np.round(np.abs(blocks(b, 2)[1][a.matrix == 1]) * 6, 12)) == {1.0}
    gauss = HadamardNullspace(a, 2, "gaussian")
    assert gauss.randomized
    rng = np.random.default_rng(0)
    assert not np.allclose(gauss.encode(rng), gauss.encode(rng))


def test_hadamard_errors() -> None:
    with pytest.raises(ConfigError, match=r"needs n = m·k"):
        HadamardNullspace(bibd("fano"), 2)
    with pytest.raises(ConfigError, match="scheme.variant must be one of"):
        HadamardNullspace(biregular(40, 20, 3, 6), 2, variant="sobol")
    # odd replication γ = 3: the holders of a subset cannot split evenly into ±1
    a = biregular(30, 10, 1, 3, seed=0)
    with pytest.raises(ConfigError, match="no ±1 vector"):
        HadamardNullspace(a, 3, "pm1")


def test_pm1_null_vector_search() -> None:
    c = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    v = pm1_null_vector(c)
    assert v is not None and set(np.abs(v)) == {1.0} and np.all(c @ v == 0)
    assert pm1_null_vector(np.array([[1, 1, 1]])) is None


def test_assignment_validation() -> None:
    with pytest.raises(ConfigError, match="0/1"):
        Assignment(np.array([[2, 0], [0, 1]]), "x", "bad")
    with pytest.raises(ConfigError, match="every worker"):
        Assignment(np.array([[1, 0], [1, 0]]), "x", "bad")
    a = bibd("fano")
    assert a.worker_balance() == (3, 1)
    assert biregular(40, 20, 3, 6).worker_balance() is None
