"""Small finite fields GF(q), q = p^a, as add/mul lookup tables.

Needed for the projective and affine planes PG(2,q), AG(2,q) (Section VIII: the
paper's Fig. 3 uses PG(2,9), which needs GF(9)) and for Paley graphs over prime powers.

Element ``e`` ∈ {0, …, q−1} stands for the polynomial Σ_i c_i x^i over GF(p) whose base-p
digits are ``c_0 c_1 …`` (``e = Σ_i c_i p^i``); arithmetic is modulo the first monic
irreducible polynomial of degree a in that same order, found by brute force. So 0 and 1 are the
field's zero and one, and for prime q the field is plain arithmetic mod q.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from agc_pipeline.errors import ConfigError, require

#: Largest field order built (tables are q×q; planes of larger order are far beyond use here).
MAX_ORDER = 256


def is_prime_power(q: int) -> tuple[int, int] | None:
    """Return ``(p, a)`` with ``q = p**a`` (p prime, a ≥ 1), or None if q is not a prime power."""
    if isinstance(q, bool) or not isinstance(q, int | np.integer):
        return None
    q = int(q)
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)  # smallest divisor > 1 is prime
    a = 0
    while q % p == 0:
        q //= p
        a += 1
    return (p, a) if q == 1 else None


def _poly_rem(num: list[int], den: list[int], p: int) -> list[int]:
    """Remainder of ``num`` modulo the monic ``den`` over GF(p) (coefficient lists, low first)."""
    rem = list(num)
    deg = len(den) - 1
    for top in range(len(rem) - 1, deg - 1, -1):
        c = rem[top] % p
        if c:
            for i, d in enumerate(den):
                rem[top - deg + i] = (rem[top - deg + i] - c * d) % p
    return [c % p for c in rem[:deg]] + [0] * max(0, deg - len(rem))


def _monic_polys(p: int, degree: int) -> list[list[int]]:
    """All monic polynomials of ``degree`` over GF(p), in increasing lexicographic order."""
    polys = []
    for code in range(p**degree):
        coeffs = [(code // p**i) % p for i in range(degree)]
        polys.append(coeffs + [1])
    return polys


def irreducible_polynomial(p: int, a: int) -> tuple[int, ...]:
    """The first monic irreducible polynomial of degree ``a`` over GF(p) (coefficients, low first).

    Brute force: a candidate is irreducible iff no monic polynomial of degree 1..a//2 divides it.
    """
    require(is_prime_power(p) == (p, 1), f"irreducible_polynomial: p must be prime (got {p})")
    require(isinstance(a, int) and a >= 1, f"irreducible_polynomial: a must be ≥ 1 (got {a})")
    divisors = [d for deg in range(1, a // 2 + 1) for d in _monic_polys(p, deg)]
    for cand in _monic_polys(p, a):
        if all(any(_poly_rem(cand, d, p)) for d in divisors):
            return tuple(cand)
    raise AssertionError(f"no irreducible polynomial of degree {a} over GF({p})")  # unreachable


@dataclass(frozen=True, eq=False)
class GaloisField:
    """GF(q) as lookup tables: ``add[x, y]``, ``mul[x, y]``, ``neg[x]``, ``inv[x]`` (inv[0] = 0)."""

    q: int
    p: int
    a: int
    modulus: tuple[int, ...]
    add: np.ndarray
    mul: np.ndarray
    neg: np.ndarray
    inv: np.ndarray

    @property
    def elements(self) -> np.ndarray:
        """All elements 0..q−1."""
        return np.arange(self.q)

    def sub(self, x: np.ndarray | int, y: np.ndarray | int) -> np.ndarray:
        """x − y, elementwise."""
        return self.add[x, self.neg[y]]

    def squares(self) -> np.ndarray:
        """Boolean mask of the non-zero squares (quadratic residues) of GF(q)."""
        mask = np.zeros(self.q, dtype=bool)
        mask[np.diagonal(self.mul)[1:]] = True
        return mask


@cache
def galois_field(q: int) -> GaloisField:
    """Build GF(q) for a prime power q (≤ :data:`MAX_ORDER`); ConfigError otherwise."""
    pa = is_prime_power(q)
    if pa is None:
        raise ConfigError(f"GF(q) needs q to be a prime power (got {q})")
    require(q <= MAX_ORDER, f"GF(q) is limited to q ≤ {MAX_ORDER} (got {q})")
    p, a = pa
    modulus = irreducible_polynomial(p, a)
    digits = np.array([[(e // p**i) % p for i in range(a)] for e in range(q)], dtype=np.int64)
    weights = p ** np.arange(a, dtype=np.int64)

    add = ((digits[:, None, :] + digits[None, :, :]) % p) @ weights
    mul = np.zeros((q, q), dtype=np.int64)
    for x in range(q):
        for y in range(x, q):
            prod = np.convolve(digits[x], digits[y]) % p
            rem = _poly_rem([int(c) for c in prod], list(modulus), p)
            mul[x, y] = mul[y, x] = int(np.dot(rem, weights))
    neg = np.argmax(add == 0, axis=1)  # the unique y with x + y = 0
    inv = np.zeros(q, dtype=np.int64)
    inv[1:] = np.argmax(mul[1:] == 1, axis=1)
    for table in (add, mul, neg, inv):
        table.setflags(write=False)
    return GaloisField(q=q, p=p, a=a, modulus=modulus, add=add, mul=mul, neg=neg, inv=inv)
