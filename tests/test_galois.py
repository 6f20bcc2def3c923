"""GF(q) arithmetic tables (agc_pipeline.codes.galois)."""

from __future__ import annotations

import numpy as np
import pytest

from agc_pipeline.codes.galois import (
    MAX_ORDER,
    galois_field,
    irreducible_polynomial,
    is_prime_power,
)
from agc_pipeline.errors import ConfigError

FIELD_ORDERS = [2, 3, 4, 5, 7, 8, 9, 11, 16, 25, 27, 32]


def _factor(q: int) -> dict[int, int]:
    out: dict[int, int] = {}
    d = 2
    while q > 1:
        while q % d == 0:
            out[d] = out.get(d, 0) + 1
            q //= d
        d += 1
    return out


def test_is_prime_power_matches_factorisation() -> None:
    for q in range(2, 300):
        f = _factor(q)
        expected = next(iter(f.items())) if len(f) == 1 else None
        assert is_prime_power(q) == expected, q
    assert is_prime_power(np.int64(27)) == (3, 3)


@pytest.mark.parametrize("bad", [0, 1, -4, True, 2.0, "4", None])
def test_is_prime_power_rejects_non_prime_powers(bad: object) -> None:
    assert is_prime_power(bad) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("q", FIELD_ORDERS)
def test_field_axioms(q: int) -> None:
    f = galois_field(q)
    add, mul, x = f.add, f.mul, f.elements
    assert f.p ** f.a == q
    # closure, commutativity
    for t in (add, mul):
        assert t.shape == (q, q) and t.min() >= 0 and t.max() < q
        assert (t == t.T).all()
    # associativity and distributivity over all triples
    a, b, c = np.meshgrid(x, x, x, indexing="ij")
    assert (add[add[a, b], c] == add[a, add[b, c]]).all()
    assert (mul[mul[a, b], c] == mul[a, mul[b, c]]).all()
    assert (mul[a, add[b, c]] == add[mul[a, b], mul[a, c]]).all()
    # identities and inverses
    assert (add[0] == x).all() and (mul[1] == x).all() and (mul[0] == 0).all()
    assert (add[x, f.neg] == 0).all()
    assert (mul[x[1:], f.inv[1:]] == 1).all()
    assert (f.sub(x[:, None], x[None, :]) == add[x[:, None], f.neg[None, :]]).all()
    # (x, +) and (x \ 0, ·) are groups: every row is a permutation, no zero divisors
    assert all(sorted(row) == list(range(q)) for row in add)
    assert all(sorted(row) == list(range(1, q)) for row in mul[1:, 1:])
    # characteristic p: 1 + 1 + … (p times) = 0
    s = 0
    for _ in range(f.p):
        s = add[s, 1]
    assert s == 0


@pytest.mark.parametrize("q", [3, 5, 7, 11])
def test_prime_field_is_integers_mod_p(q: int) -> None:
    f = galois_field(q)
    x = np.arange(q)
    assert (f.add == (x[:, None] + x[None, :]) % q).all()
    assert (f.mul == (x[:, None] * x[None, :]) % q).all()


def test_known_irreducible_polynomials() -> None:
    assert galois_field(4).modulus == (1, 1, 1)  # x² + x + 1
    assert galois_field(8).modulus == (1, 1, 0, 1)  # x³ + x + 1
    assert galois_field(9).modulus == (1, 0, 1)  # x² + 1
    assert irreducible_polynomial(2, 4) == (1, 1, 0, 0, 1)  # x⁴ + x + 1
    # GF(9) is not Z_9: the element x (= 3) has x·x = −1 = 2, not 0
    assert galois_field(9).mul[3, 3] == 2


@pytest.mark.parametrize("q", [5, 9, 13, 25, 27])
def test_squares(q: int) -> None:
    sq = galois_field(q).squares()
    assert not sq[0] and sq[1] and sq.sum() == (q - 1) // 2


def test_tables_are_read_only_and_cached() -> None:
    f = galois_field(9)
    assert galois_field(9) is f
    with pytest.raises(ValueError):
        f.mul[1, 1] = 0


@pytest.mark.parametrize("q", [6, 10, 12, 1, 0])
def test_non_prime_power_is_a_config_error(q: int) -> None:
    with pytest.raises(ConfigError, match=rf"q to be a prime power \(got {q}\)"):
        galois_field(q)


def test_order_limit_and_bad_irreducible_args() -> None:
    with pytest.raises(ConfigError, match=f"q ≤ {MAX_ORDER}"):
        galois_field(512)
    with pytest.raises(ConfigError, match="p must be prime"):
        irreducible_polynomial(4, 2)
    with pytest.raises(ConfigError, match="a must be ≥ 1"):
        irreducible_polynomial(3, 0)
