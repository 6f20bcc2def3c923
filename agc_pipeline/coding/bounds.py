"""The paper's closed-form bounds on the approximation error Err_𝓕(B) (eqs. 8–21).

All functions are pure numpy. ``s`` is the number of stragglers, so |𝓕| = n − s. Conventions
follow Section III: A is k×n (rows = data subsets, columns = workers), δ the load per worker,
λ/μ the design or graph parameters, m the communication reduction factor.
"""

from __future__ import annotations

import math

import numpy as np

from agc_pipeline.coding.decoding import PrincipalQuadraticForms, SurvivorSets


def c_constant(epsilon: float) -> float:
    """c = E[X²]·E[1/X²] for X uniform on [1−ε, 1+ε] ∪ [−1−ε, −1+ε] (Lemma 1).

    E[X²] = 1 + ε²/3 and E[1/X²] = 1/((1−ε)(1+ε)); c = 1 at ε = 0.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must lie in [0, 1) (got {epsilon})")
    return (1.0 + epsilon**2 / 3.0) / ((1.0 - epsilon) * (1.0 + epsilon))


def lemma1_matrices(a: np.ndarray, m: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The n×n matrix K = Δ + c(m−1)Δ^diag (Δ = AᵀA) and the vector A^T 1 of eq. (8).

    For a survivor set 𝓕, K_𝓕 is the principal submatrix of K, so eq. (8) for many sets is
    a batch of quadratic forms over principal submatrices of one matrix.
    """
    a = np.asarray(a, dtype=np.float64)
    delta_full = a.T @ a
    k_mat = delta_full + c * (m - 1) * np.diag(np.diag(delta_full))
    return k_mat, a.sum(axis=0)


class Lemma1Bound:
    """Eq. (8): E[Err_𝓕(B)] ≤ mk − m·1ᵀA_𝓕 K⁻¹ A_𝓕ᵀ1 for survivor masks (rows of ``masks``).

    K = Δ_𝓕 + c(m−1)Δ_𝓕^diag with Δ_𝓕 = A_𝓕ᵀA_𝓕 and c = ``c_constant(epsilon)``. The n×n
    matrix is factored once; each call evaluates a batch of survivor sets.
    """

    def __init__(self, a: np.ndarray, m: int, epsilon: float) -> None:
        self.mk = m * np.asarray(a).shape[0]
        self.m = m
        k_mat, ones_a = lemma1_matrices(a, m, c_constant(epsilon))
        self._forms = PrincipalQuadraticForms(k_mat, ones_a[:, None])

    def __call__(self, masks: np.ndarray | SurvivorSets) -> np.ndarray:
        return self.mk - self.m * self._forms(masks)


def lemma1(a: np.ndarray, m: int, epsilon: float, masks: np.ndarray) -> np.ndarray:
    """Eq. (8) for each survivor mask; see :class:`Lemma1Bound`."""
    return Lemma1Bound(a, m, epsilon)(masks)


def bibd_bound(n: int, k: int, m: int, delta: int, lam: int, s: int | np.ndarray) -> np.ndarray:
    """Eq. (10), Corollary 1 (BIBD, ε = 0): mk − mδ²(n−s)/(mδ + (n−s−1)λ)."""
    r = n - np.asarray(s, dtype=np.float64)
    return m * k - m * delta**2 * r / (m * delta + (r - 1) * lam)


def bibd_stack_error(
    n: int, k: int, m: int, delta: int, lam: int, s: int | np.ndarray
) -> np.ndarray:
    """Exact error of the stack baseline (11) on a BIBD, for every 𝓕.

    mk − δ²(n−s)/(δ + (n−s−1)λ) (Kadhe et al.'s m = 1 result carried over).
    """
    r = n - np.asarray(s, dtype=np.float64)
    return m * k - delta**2 * r / (delta + (r - 1) * lam)


def srg_eigenvalues(delta: int, lam: int, mu: int) -> tuple[float, float]:
    """The non-trivial eigenvalues r̃ ≥ s̃ of an SRG(n, δ, λ, μ) (Corollary 2, Section IV)."""
    disc = math.sqrt((lam - mu) ** 2 + 4 * (delta - mu))
    return 0.5 * ((lam - mu) + disc), 0.5 * ((lam - mu) - disc)


def srg_bound(
    n: int, m: int, delta: int, lam: int, mu: int, s: int | np.ndarray
) -> np.ndarray:
    """Eq. (12), Corollary 2 (SRG, k = n, ε = 0).

    mk − mδ²(n−s) / ((mδ − μ) + μ(n−s) + (λ−μ)θ), θ = δ if λ ≥ μ else s̃.
    """
    theta = float(delta) if lam >= mu else srg_eigenvalues(delta, lam, mu)[1]
    r = n - np.asarray(s, dtype=np.float64)
    return m * n - m * delta**2 * r / ((m * delta - mu) + mu * r + (lam - mu) * theta)


def coset_bound(k: int, m: int, delta: int, epsilon: float, s: int | np.ndarray) -> np.ndarray:
    """Eq. (17), Corollary 3 (coset graph): mk − mδ²(mk−s) / (mδ² + c(m−1)δ)."""
    c = c_constant(epsilon)
    s = np.asarray(s, dtype=np.float64)
    return m * k - m * delta**2 * (m * k - s) / (m * delta**2 + c * (m - 1) * delta)


def hadamard_bound(b: np.ndarray, k: int, m: int, masks: np.ndarray) -> np.ndarray:
    """Eq. (20): Err_𝓕(B) ≤ mk − Σ_i 1ᵀA_{i,𝓕} Σ̃_𝓕⁻¹ A_{i,𝓕}ᵀ1 for each survivor mask.

    Σ_𝓕 = B_𝓕ᵀB_𝓕 and Σ̃_𝓕 is diagonal with Σ̃(u,u) = Σ(u,u) + Σ_{j∈𝓕, j≠u} |Σ(u,j)|.
    ``b`` is the mk×n encoding matrix whose i-th k×n block is A_i.
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    b = np.asarray(b, dtype=np.float64)
    abs_gram = np.abs(b.T @ b)
    col_sums = b.reshape(m, k, -1).sum(axis=1)  # (m, n): A_iᵀ1 for each block i
    weights = (col_sums**2).sum(axis=0)  # Σ_i (A_iᵀ1)_j²
    fm = masks.astype(np.float64)
    tilde = fm @ abs_gram  # (N, n): Σ_{j'∈𝓕} |Σ(j, j')|
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(masks & (tilde > 0), weights / tilde, 0.0)
    return m * k - terms.sum(axis=1)


def lower_bound(n: int, k: int, m: int, delta: int, s: int | np.ndarray) -> np.ndarray:
    """Eq. (21), Claim 1: some survivor set has Err ≥ max_u ⌊k(s+m−u)/(nδ)⌋·u."""
    s_arr = np.atleast_1d(np.asarray(s, dtype=np.int64))
    us = np.arange(1, m + 1)
    vals = np.floor(k * (s_arr[:, None] + m - us[None, :]) / (n * delta)) * us[None, :]
    out = np.maximum(vals.max(axis=1), 0.0)
    return out if np.ndim(s) else out[0]
