"""Repetition assignments: uncoded, cyclic and fractional repetition (the paper's Section II).

All three have k = n data subsets. Worker j is column j of the k×n matrix, subset i row i.

- ``identity(n)``: uncoded, worker j holds subset j (δ = γ = 1).
- ``cyclic(n, s, m)``: worker j holds subsets j, j+1, …, j+s+m−1 (mod n) (δ = γ = s+m).
  With m = 1 this is the cyclic repetition of Tandon et al. (ICML 2017); replication s+m is
  what a communication-efficient exact code needs (Ye & Abbe, ICML 2018).
- ``fractional(n, s, m)``: groups of r = s+m consecutive workers hold the same r consecutive
  subsets (block-diagonal with all-ones r×r blocks; Tandon et al. for m = 1, Kadhe et al.,
  ISIT 2020, for m > 1). Needs r | n.
"""

from __future__ import annotations

import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.errors import require
from agc_pipeline.validation import is_int


def _check_n(n: int) -> int:
    require(is_int(n) and n >= 1, f"assignment.n must be a positive integer (got n={n!r})")
    return int(n)


def _check_s_m(n: int, s: int, m: int) -> tuple[int, int]:
    require(is_int(m) and m >= 1, f"assignment.m must be a positive integer (got m={m!r})")
    require(is_int(s) and 0 <= s < n,
            f"assignment.s must satisfy 0 ≤ s < n (got s={s!r}, n={n})")
    require(s + m <= n,
            f"assignment.s + assignment.m must be at most n, the load s + m cannot exceed the "
            f"number of subsets (got s={s}, m={m}, n={n})")
    return int(s), int(m)


def identity(n: int) -> Assignment:
    """Uncoded assignment A = I_n: k = n, worker j holds subset j."""
    n = _check_n(n)
    return Assignment(np.eye(n, dtype=np.int64), kind="identity", name=f"identity_n{n}",
                      params={"n": n})


def cyclic(n: int, s: int, m: int = 1) -> Assignment:
    """Cyclic repetition: ``A[i, j] = 1`` iff ``(i − j) mod n < s + m`` (load s+m, k = n)."""
    n = _check_n(n)
    s, m = _check_s_m(n, s, m)
    load = s + m
    offsets = (np.arange(n)[:, None] - np.arange(n)[None, :]) % n
    matrix = (offsets < load).astype(np.int64)
    return Assignment(matrix, kind="cyclic", name=f"cyclic_n{n}_s{s}_m{m}",
                      params={"n": n, "s": s, "m": m, "load": load})


def fractional(n: int, s: int, m: int = 1) -> Assignment:
    """Fractional repetition: n/r groups of r = s+m workers, group t holds subsets tr..tr+r−1."""
    n = _check_n(n)
    s, m = _check_s_m(n, s, m)
    r = s + m
    require(n % r == 0,
            f"assignment.n must be a multiple of s + m = {r} for fractional repetition "
            f"(got n={n})")
    matrix = np.kron(np.eye(n // r, dtype=np.int64), np.ones((r, r), dtype=np.int64))
    return Assignment(matrix, kind="fractional", name=f"fractional_n{n}_s{s}_m{m}",
                      params={"n": n, "s": s, "m": m, "group_size": r})


def fractional_group_size(assignment: Assignment) -> int:
    """Group size r of a fractional-repetition matrix, after checking its block structure.

    Raises ConfigError unless the matrix equals ``kron(I_{n/r}, J_r)`` (k = n).
    """
    a = assignment.matrix
    r = int(a[:, 0].sum())
    ok = a.shape[0] == a.shape[1] and a.shape[1] % r == 0
    if ok:
        expected = np.kron(np.eye(a.shape[1] // r, dtype=np.int64), np.ones((r, r), np.int64))
        ok = bool(np.array_equal(a, expected))
    require(ok, f"assignment {assignment.name}: matrix is not a fractional repetition "
                "(block-diagonal all-ones groups of consecutive workers, k = n)")
    return r
