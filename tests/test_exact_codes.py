"""Exact gradient-coding baselines (Section II): repetition assignments, frc, crc, ce_frc.

Every admissible straggler set (all sets of size ≤ s) is checked for exact recovery, both on
B (least squares: B R = F) and end to end on random partial gradients.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme, target_matrix
from agc_pipeline.codes.ce_frc import CommEfficientFRC, mds_coefficients, mds_nodes
from agc_pipeline.codes.crc import CyclicRepetitionCode, tandon_cyclic_matrix
from agc_pipeline.codes.frc import FractionalRepetitionCode
from agc_pipeline.codes.repetition import cyclic, fractional, identity
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError

CONF = CONFIG_DIR

FRC_CASES = [(6, 1), (6, 2), (8, 3), (10, 1), (12, 2), (12, 3)]  # (n, s), m = 1
CRC_CASES = [(6, 1), (8, 2), (10, 3), (12, 3)]  # (n, s), m = 1
CE_FRC_CASES = [(6, 0, 2), (6, 1, 2), (8, 2, 2), (10, 3, 2), (12, 1, 3), (12, 3, 3),
                (12, 2, 2), (12, 4, 2)]  # (n, s, m)


def straggler_sets(n: int, s: int) -> list[tuple[int, ...]]:
    """Every set of at most s stragglers."""
    return [c for t in range(s + 1) for c in itertools.combinations(range(n), t)]


def survivors_of(n: int, stragglers: tuple[int, ...]) -> np.ndarray:
    return np.setdiff1d(np.arange(n), np.asarray(stragglers, dtype=np.int64))


def lstsq_error(b: np.ndarray, survivors: np.ndarray, f: np.ndarray) -> tuple[float, np.ndarray]:
    """min_R ||B_𝓕 R − F||_F² and the optimal R (|𝓕|×m)."""
    r = np.linalg.lstsq(b[:, survivors], f, rcond=None)[0]
    return float(np.sum((b[:, survivors] @ r - f) ** 2)), r


def assert_exact_for_all_sets(scheme: Scheme, s: int, seed: int = 0) -> None:
    """Exact recovery on B and end to end with random gradients for every ≤ s stragglers."""
    b, f, k, m, n = scheme.encode(), scheme.target, scheme.k, scheme.m, scheme.n
    rng = np.random.default_rng(seed)
    d = 4 * m
    g = rng.standard_normal((k, d))  # partial gradients g_i (rows)
    z = np.hstack([g[:, u * d // m:(u + 1) * d // m].T for u in range(m)])  # (d/m)×mk
    messages = z @ b  # column j: what worker j sends
    full = g.sum(axis=0)
    for stragglers in straggler_sets(n, s):
        survivors = survivors_of(n, stragglers)
        err, r = lstsq_error(b, survivors, f)
        assert err < 1e-18 * f.size, (stragglers, err)
        decoded = (messages[:, survivors] @ r).T.reshape(-1)  # blocks 1..m concatenated
        assert np.linalg.norm(decoded - full) <= 1e-10 * np.linalg.norm(full), stragglers


def assert_support_matches(b: np.ndarray, a: Assignment, m: int) -> None:
    assert b.shape == (m * a.k, a.n)
    assert b.dtype == np.float64
    for u in range(m):
        np.testing.assert_array_equal(b[u * a.k:(u + 1) * a.k] != 0, a.matrix == 1)


# --- repetition assignments -------------------------------------------------------------


def test_identity_structure() -> None:
    a = identity(5)
    np.testing.assert_array_equal(a.matrix, np.eye(5))
    assert (a.kind, a.k, a.n, a.delta, a.gamma, a.params) == ("identity", 5, 5, 1, 1, {"n": 5})


@pytest.mark.parametrize(("n", "s", "m"), [(7, 0, 1), (7, 2, 1), (8, 1, 2), (10, 3, 3)])
def test_cyclic_structure(n: int, s: int, m: int) -> None:
    a = cyclic(n, s, m)
    assert (a.kind, a.k, a.n) == ("cyclic", n, n)
    assert a.params == {"n": n, "s": s, "m": m, "load": s + m}
    assert a.is_regular and a.delta == a.gamma == s + m
    for j in range(n):
        assert set(np.flatnonzero(a.matrix[:, j])) == {(j + t) % n for t in range(s + m)}


def test_cyclic_default_m_is_one() -> None:
    assert cyclic(6, 2).params["load"] == 3


@pytest.mark.parametrize(("n", "s", "m"), [(6, 1, 1), (12, 2, 1), (12, 1, 2), (12, 3, 3)])
def test_fractional_structure(n: int, s: int, m: int) -> None:
    a = fractional(n, s, m)
    r = s + m
    assert (a.kind, a.k, a.n) == ("fractional", n, n)
    assert a.params == {"n": n, "s": s, "m": m, "group_size": r}
    assert a.is_regular and a.delta == a.gamma == r
    for j in range(n):
        group = j // r
        assert set(np.flatnonzero(a.matrix[:, j])) == set(range(group * r, (group + 1) * r))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: identity(0), "assignment.n must be a positive integer (got n=0)"),
    (lambda: identity(2.5), "assignment.n must be a positive integer (got n=2.5)"),
    (lambda: cyclic(10, 10), "assignment.s must satisfy 0 ≤ s < n (got s=10, n=10)"),
    (lambda: cyclic(10, -1), "assignment.s must satisfy 0 ≤ s < n (got s=-1, n=10)"),
    (lambda: cyclic(10, 1, 0), "assignment.m must be a positive integer (got m=0)"),
    (lambda: cyclic(5, 3, 3), "assignment.s + assignment.m must be at most n"),
    (lambda: fractional(10, 2, 1),
     "assignment.n must be a multiple of s + m = 3 for fractional repetition (got n=10)"),
    (lambda: fractional(12, 2, 3),
     "assignment.n must be a multiple of s + m = 5 for fractional repetition (got n=12)"),
    (lambda: fractional(6, 6), "assignment.s must satisfy 0 ≤ s < n (got s=6, n=6)"),
])
def test_repetition_errors(call, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert message in str(info.value)


# --- frc -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "s"), FRC_CASES)
def test_frc_exact_for_every_straggler_set(n: int, s: int) -> None:
    a = fractional(n, s, 1)
    scheme = FractionalRepetitionCode(a, 1)
    assert scheme.tolerates() == s
    np.testing.assert_array_equal(scheme.encode(), a.matrix)
    assert_support_matches(scheme.encode(), a, 1)
    assert_exact_for_all_sets(scheme, s)


@pytest.mark.parametrize(("n", "s"), FRC_CASES)
def test_frc_breaks_with_one_more_straggler(n: int, s: int) -> None:
    scheme = FractionalRepetitionCode(fractional(n, s, 1), 1)
    err, _ = lstsq_error(scheme.encode(), survivors_of(n, tuple(range(s + 1))), scheme.target)
    assert err > 0.5  # the whole first group is gone: its s+1 subsets are lost


def test_frc_describe() -> None:
    scheme = FractionalRepetitionCode(fractional(6, 2), 1)
    assert scheme.describe() == {"name": "frc", "m": 1, "s": 2, "group_size": 3}
    assert not scheme.randomized


# --- crc -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "s"), CRC_CASES)
def test_crc_exact_for_every_straggler_set(n: int, s: int) -> None:
    a = cyclic(n, s, 1)
    scheme = CyclicRepetitionCode(a, 1)
    assert scheme.tolerates() == s
    b = scheme.encode()
    assert_support_matches(b, a, 1)
    np.testing.assert_array_equal(np.diag(b), np.ones(n))
    assert_exact_for_all_sets(scheme, s)
    # the construction: all columns lie in null(H) ∋ 1, of dimension n − s
    assert np.linalg.matrix_rank(b) == n - s


@pytest.mark.parametrize(("n", "s"), CRC_CASES)
def test_crc_breaks_with_one_more_straggler(n: int, s: int) -> None:
    scheme = CyclicRepetitionCode(cyclic(n, s, 1), 1)
    b, f = scheme.encode(), scheme.target
    errors = [lstsq_error(b, survivors_of(n, c), f)[0]
              for c in itertools.combinations(range(n), s + 1)]
    assert max(errors) > 1e-6


@pytest.mark.parametrize(("n", "s", "bound"), [(6, 1, 1e3), (8, 2, 1e6), (10, 3, 1e7)])
def test_crc_worst_case_condition_small_n(n: int, s: int, bound: float) -> None:
    cond = CyclicRepetitionCode(cyclic(n, s, 1), 1).worst_case_condition()
    assert 1.0 <= cond < bound


def test_crc_is_deterministic_and_seeded() -> None:
    a = cyclic(8, 2)
    one = CyclicRepetitionCode(a, 1, seed=3)
    np.testing.assert_array_equal(one.encode(), one.encode(np.random.default_rng(1)))
    np.testing.assert_array_equal(one.encode(), CyclicRepetitionCode(a, 1, seed=3).encode())
    assert not np.array_equal(one.encode(), CyclicRepetitionCode(a, 1, seed=4).encode())
    np.testing.assert_array_equal(one.encode(), tandon_cyclic_matrix(8, 2, 3))
    assert one.describe() == {"name": "crc", "m": 1, "s": 2, "seed": 3}
    assert not one.randomized


def test_crc_without_stragglers_is_uncoded() -> None:
    np.testing.assert_array_equal(CyclicRepetitionCode(cyclic(5, 0), 1).encode(), np.eye(5))


# --- ce_frc --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "s", "m"), CE_FRC_CASES)
def test_ce_frc_exact_for_every_straggler_set(n: int, s: int, m: int) -> None:
    a = fractional(n, s, m)
    scheme = CommEfficientFRC(a, m)
    assert scheme.tolerates() == s
    b = scheme.encode()
    assert_support_matches(b, a, m)
    np.testing.assert_array_equal(scheme.target, target_matrix(n, m))
    assert_exact_for_all_sets(scheme, s)


@pytest.mark.parametrize(("n", "s", "m"), CE_FRC_CASES)
def test_ce_frc_breaks_with_one_more_straggler(n: int, s: int, m: int) -> None:
    scheme = CommEfficientFRC(fractional(n, s, m), m)
    # s+1 stragglers in group 0 leave m − 1 messages for its m unknown block sums
    err, _ = lstsq_error(scheme.encode(), survivors_of(n, tuple(range(s + 1))), scheme.target)
    assert err > 0.1


def test_ce_frc_block_formula() -> None:
    n, s, m = 8, 2, 2
    r = s + m
    scheme = CommEfficientFRC(fractional(n, s, m), m)
    b, c = scheme.encode(), scheme.coefficients
    for u in range(m):
        for j in range(n):
            rows = np.arange((j // r) * r, (j // r + 1) * r)
            np.testing.assert_array_equal(b[u * n + rows, j], c[j % r, u])
    assert scheme.describe() == {"name": "ce_frc", "m": 2, "s": 2, "group_size": 4}


def test_ce_frc_with_m_one_is_frc() -> None:
    a = fractional(6, 2, 1)
    np.testing.assert_array_equal(CommEfficientFRC(a, 1).encode(),
                                  FractionalRepetitionCode(a, 1).encode())


@pytest.mark.parametrize("r", range(1, 13))
def test_mds_coefficients_nonzero_and_mds(r: int) -> None:
    x = mds_nodes(r)
    assert np.all(np.abs(x) > 1e-3) and np.all(np.abs(x) < 1)
    assert len(np.unique(np.round(x, 12))) == r
    for m in range(1, min(r, 4) + 1):
        c = mds_coefficients(r, m)
        assert c.shape == (r, m) and np.all(c != 0)
        for rows in itertools.combinations(range(r), m):
            assert np.linalg.cond(c[list(rows)]) < 1e6


def test_ce_frc_condition_depends_on_r_and_m_only() -> None:
    small = CommEfficientFRC(fractional(6, 1, 2), 2).worst_case_condition()
    large = CommEfficientFRC(fractional(60, 1, 2), 2).worst_case_condition()
    assert small == large < 10
    assert CommEfficientFRC(fractional(12, 3, 3), 3).worst_case_condition() < 100


# --- scheme error paths --------------------------------------------------------------------


def _bad_fractional(params: dict) -> Assignment:
    return Assignment(fractional(6, 1, 1).matrix, kind="fractional", name="hand", params=params)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: FractionalRepetitionCode(fractional(6, 1, 2), 2),
     "scheme frc needs m = 1 (got m=2); use ce_frc for m > 1"),
    (lambda: FractionalRepetitionCode(cyclic(6, 1), 1),
     "scheme frc needs assignment=fractional (got kind 'cyclic')"),
    (lambda: FractionalRepetitionCode(fractional(6, 1, 2), 1),
     "scheme frc: assignment.m must equal m (got assignment.m=2, m=1)"),
    (lambda: FractionalRepetitionCode(
        Assignment(cyclic(6, 1).matrix, kind="fractional", name="hand"), 1),
     "assignment hand: matrix is not a fractional repetition"),
    (lambda: FractionalRepetitionCode(_bad_fractional({"s": 2, "m": 1}), 1),
     "scheme frc: assignment group size must be s + m = 3 (got 2)"),
    (lambda: FractionalRepetitionCode(fractional(6, 1), 0), "m must be a positive integer"),
    (lambda: CommEfficientFRC(fractional(6, 1, 1), 2),
     "scheme ce_frc: assignment.m must equal m (got assignment.m=1, m=2)"),
    (lambda: CommEfficientFRC(identity(6), 2),
     "scheme ce_frc needs assignment=fractional (got kind 'identity')"),
    (lambda: CommEfficientFRC(_bad_fractional({}), 3),
     "scheme ce_frc: assignment group size must be at least m = 3 (got 2)"),
    (lambda: CyclicRepetitionCode(cyclic(6, 1, 2), 2),
     "scheme crc needs m = 1 (got m=2); use ce_frc for m > 1"),
    (lambda: CyclicRepetitionCode(fractional(6, 1), 1),
     "scheme crc needs assignment=cyclic (got kind 'fractional')"),
    (lambda: CyclicRepetitionCode(cyclic(6, 1, 2), 1),
     "scheme crc: assignment.m must be 1 (got assignment.m=2)"),
    (lambda: CyclicRepetitionCode(
        Assignment(fractional(6, 1).matrix, kind="cyclic", name="hand", params={"s": 1}), 1),
     "assignment hand: matrix is not the cyclic repetition"),
])
def test_scheme_errors(call, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert message in str(info.value)


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("assignment", "scheme", "m"), [
    ("fractional", "frc", 1), ("cyclic", "crc", 1), ("fractional", "ce_frc", 2),
    ("fractional", "ce_frc", 1),
])
def test_configs_instantiate(assignment: str, scheme: str, m: int) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"m": m,
                            "assignment": OmegaConf.load(CONF / f"assignment/{assignment}.yaml"),
                            "scheme": OmegaConf.load(CONF / f"scheme/{scheme}.yaml")})
    a = instantiate(cfg.assignment)
    # _partial_: passing the Assignment dataclass as an instantiate kwarg would make Hydra
    # convert it to a DictConfig
    code = instantiate(cfg.scheme, _partial_=True)(assignment=a, m=cfg.m)
    assert code.name == scheme and code.m == m and isinstance(code.assignment, Assignment)
    assert_exact_for_all_sets(code, code.tolerates())


def test_identity_config() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    a = instantiate(OmegaConf.load(CONF / "assignment" / "identity.yaml"))
    assert a.kind == "identity" and a.n == 12
