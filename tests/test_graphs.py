"""Graph assignment builders: SRGs, bi-regular and coset bipartite graphs (Section III)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agc_pipeline.codes.graphs import (
    biregular,
    coset,
    srg,
    srg_eigenvalues,
    srg_parameters,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError

CONF = CONFIG_DIR / "assignment"

SRG_CASES = [
    ({"graph": "petersen"}, (10, 3, 0, 1)),
    ({"graph": "paley", "q": 5}, (5, 2, 0, 1)),
    ({"graph": "paley", "q": 9}, (9, 4, 1, 2)),
    ({"graph": "paley", "q": 13}, (13, 6, 2, 3)),
    ({"graph": "paley", "q": 17}, (17, 8, 3, 4)),
    ({"graph": "paley", "q": 25}, (25, 12, 5, 6)),
    ({"graph": "lattice", "a": 3}, (9, 4, 1, 2)),
    ({"graph": "lattice", "a": 4}, (16, 6, 2, 2)),
    ({"graph": "triangular", "a": 5}, (10, 6, 3, 4)),
    ({"graph": "triangular", "a": 6}, (15, 8, 4, 4)),
    ({"graph": "clebsch"}, (16, 5, 0, 2)),
    ({"graph": "shrikhande"}, (16, 6, 2, 2)),
    ({"graph": "schlafli"}, (27, 16, 10, 8)),
]


# ---------------------------------------------------------------- strongly regular graphs


@pytest.mark.parametrize(("kwargs", "expected"), SRG_CASES,
                         ids=[f"{c[0]['graph']}{c[0].get('q', c[0].get('a', ''))}"
                              for c in SRG_CASES])
def test_srg(kwargs: dict, expected: tuple[int, int, int, int]) -> None:
    a = srg(**kwargs)
    n, delta, lam, mu = expected
    assert a.kind == "srg" and (a.k, a.n) == (n, n)
    assert (a.params["n"], a.params["delta"], a.params["lam"], a.params["mu"]) == expected
    assert a.params["graph"] == kwargs["graph"]
    for key in ("q", "a"):
        assert a.params.get(key) == kwargs.get(key)
    m = a.matrix
    assert (m == m.T).all() and not m.diagonal().any()
    assert a.is_regular and a.delta == delta
    eye, ones = np.eye(n, dtype=np.int64), np.ones((n, n), dtype=np.int64)
    assert (m @ m == delta * eye + lam * m + mu * (ones - eye - m)).all()
    # the spectrum is {δ, r̃, s̃} with the paper's closed form for r̃, s̃
    r_eig, s_eig = a.params["r_eig"], a.params["s_eig"]
    assert isinstance(r_eig, float) and isinstance(s_eig, float)
    eigs = np.linalg.eigvalsh(m.astype(float))
    targets = np.array([delta, r_eig, s_eig])
    assert np.abs(eigs[:, None] - targets[None, :]).min(axis=1).max() < 1e-8
    assert abs(eigs.max() - delta) < 1e-8 and abs(eigs.min() - s_eig) < 1e-8
    assert (srg(**kwargs).matrix == m).all()  # deterministic ordering
    json.dumps(a.summary())


def test_shrikhande_is_not_the_4x4_rook_graph() -> None:
    """Same parameters (16,6,2,2), different local structure: C6 vs 2K3 neighbourhoods."""
    for graph, triangles in (("shrikhande", 0), ("lattice", 2)):
        m = srg(graph, a=4).matrix
        nbrs = np.flatnonzero(m[0])
        local = m[np.ix_(nbrs, nbrs)]
        assert int(np.trace(local @ local @ local)) // 6 == triangles


def test_srg_eigenvalue_formula() -> None:
    assert srg_eigenvalues(3, 0, 1) == (1.0, -2.0)  # Petersen
    assert srg_eigenvalues(16, 10, 8) == (4.0, -2.0)  # Schläfli
    r, s = srg_eigenvalues(2, 0, 1)  # C5
    assert r == pytest.approx((5**0.5 - 1) / 2) and s == pytest.approx(-(5**0.5 + 1) / 2)


def _cycle(n: int) -> np.ndarray:
    return np.roll(np.eye(n, dtype=int), 1, axis=1) + np.roll(np.eye(n, dtype=int), -1, axis=1)


@pytest.mark.parametrize(("matrix", "message"), [
    (np.ones((2, 3)), "square"),
    (np.full((3, 3), 2), "0/1"),
    (np.triu(np.ones((3, 3), dtype=int), 1), "symmetric"),
    (np.ones((3, 3), dtype=int), "zero diagonal"),
    (np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]), "not regular"),
    (_cycle(6), "constant number μ"),  # C6: distance-2 pairs share 1, antipodes 0
    (np.ones((4, 4), dtype=int) - np.eye(4, dtype=int), "constant number μ"),  # K4
    (np.kron([[0, 1], [1, 0]], np.ones((3, 3), dtype=int)), "0 < δ ≠ μ"),  # K_{3,3}
])
def test_srg_parameters_rejects(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        srg_parameters(matrix, label="g")


def test_srg_parameters_accepts_what_the_paper_allows() -> None:
    assert srg_parameters(_cycle(5)) == (5, 2, 0, 1)
    # 2K3 (disconnected, μ = 0) satisfies the identity with 0 < δ ≠ μ
    assert srg_parameters(np.kron(np.eye(2, dtype=int), 1 - np.eye(3, dtype=int))) == (6, 2, 1, 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"graph": "hoffman_singleton"}, r"assignment.graph must be one of .*'hoffman_singleton'"),
    ({"graph": "paley"}, "assignment.q is required for graph=paley"),
    ({"graph": "paley", "q": 7}, r"assignment.q must be a prime power with q ≡ 1 \(mod 4\) "
                                 r"for graph=paley \(got 7\)"),
    ({"graph": "paley", "q": 21}, r"q ≡ 1 \(mod 4\) for graph=paley \(got 21\)"),
    ({"graph": "paley", "q": 13.0}, "assignment.q must be an integer"),
    ({"graph": "lattice"}, "assignment.a is required for graph=lattice"),
    ({"graph": "triangular"}, "assignment.a is required for graph=triangular"),
    ({"graph": "lattice", "a": 2}, r"assignment.a must be ≥ 3 for graph=lattice \(got 2\)"),
    ({"graph": "triangular", "a": 4},
     r"assignment.a must be ≥ 5 for graph=triangular \(got 4\)"),
    ({"graph": "lattice", "a": "4"}, "assignment.a must be an integer"),
])
def test_srg_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        srg(**kwargs)


def test_srg_ignores_unused_parameters() -> None:
    assert (srg("petersen", q=5, a=3).matrix == srg("petersen").matrix).all()
    assert "a" not in srg("paley", q=13, a=3).params


# ---------------------------------------------------------------- bi-regular graphs


@pytest.mark.parametrize(("n", "k", "delta", "gamma"),
                         [(40, 20, 3, 6), (12, 8, 2, 3), (30, 30, 4, 4), (7, 7, 1, 1),
                          (10, 5, 5, 10), (26, 13, 3, 6)])
def test_biregular_degrees(n: int, k: int, delta: int, gamma: int) -> None:
    a = biregular(n, k, delta, gamma, seed=3)
    assert a.kind == "biregular" and (a.k, a.n) == (k, n)
    assert (a.replications == gamma).all() and (a.loads == delta).all()
    assert a.params == {"n": n, "k": k, "delta": delta, "gamma": gamma, "seed": 3}
    json.dumps(a.summary())


def test_biregular_fig5_is_random_and_deterministic() -> None:
    a = biregular(40, 20, 3, 6, seed=0)
    assert a.name == "biregular(40,20,3,6)"
    assert (a.matrix == biregular(40, 20, 3, 6, seed=0).matrix).all()
    others = [biregular(40, 20, 3, 6, seed=s).matrix for s in (1, 2)]
    assert not (others[0] == a.matrix).all() and not (others[1] == others[0]).all()
    # the swaps moved it away from the structured start (row i on columns 6i..6i+5 mod 40)
    start = np.zeros((20, 40), dtype=np.int64)
    for i in range(20):
        start[i, (6 * i + np.arange(6)) % 40] = 1
    assert (a.matrix != start).sum() > 40


def test_biregular_complete_graph() -> None:
    assert (biregular(10, 5, 5, 10).matrix == 1).all()


@pytest.mark.parametrize(("args", "message"), [
    ((40, 20, 3, 5), r"assignment.k \* assignment.gamma must equal assignment.n \* "
                     r"assignment.delta .*got k\*gamma=100, n\*delta=120"),
    ((10, 5, 6, 12), r"assignment.delta must be ≤ assignment.k \(got delta=6, k=5\)"),
    ((5, 10, 2, 6), r"assignment.gamma must be ≤ assignment.n \(got gamma=6, n=5\)"),
    ((40, 20, 0, 6), r"assignment.delta must be a positive integer \(got 0\)"),
    ((40, 20, 3, 0), r"assignment.gamma must be a positive integer \(got 0\)"),
    ((0, 20, 3, 6), r"assignment.n must be a positive integer \(got 0\)"),
    ((40, 20.0, 3, 6), r"assignment.k must be a positive integer \(got 20.0\)"),
])
def test_biregular_errors(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        biregular(*args)
    with pytest.raises(ConfigError,
                       match=r"assignment.seed must be a non-negative integer \(got -1\)"):
        biregular(40, 20, 3, 6, seed=-1)


# ---------------------------------------------------------------- coset bipartite graphs


def _check_coset(a_matrix: np.ndarray, k: int, m: int, gens: list[int]) -> None:
    n = m * k
    s_set = {(b + h * k) % n for b in gens for h in range(m)}
    for i in range(k):  # edge (i + H, x) iff x ∈ i + S (mod mk), straight from the definition
        assert [int(a_matrix[i, x]) for x in range(n)] == [int((x - i) % n in s_set)
                                                           for x in range(n)]
    c = a_matrix[:, :k]
    assert (a_matrix == np.tile(c, (1, m))).all()  # A = [C … C]
    for i in range(k):  # C circulant
        assert (c[i] == np.roll(c[0], i)).all()
    assert sorted(np.flatnonzero(c[0]).tolist()) == sorted(gens)


@pytest.mark.parametrize(("k", "m", "delta", "p", "a"), [(27, 2, 5, 3, 3), (25, 3, 2, 5, 2),
                                                          (7, 4, 3, 7, 1), (16, 1, 3, 2, 4)])
def test_coset(k: int, m: int, delta: int, p: int, a: int) -> None:
    g = coset(k, m, delta)
    assert g.kind == "coset" and g.name == f"coset({k},{m},{delta})"
    assert (g.k, g.n) == (k, m * k)
    assert (g.replications == m * delta).all() and (g.loads == delta).all()
    assert g.params == {"k": k, "m": m, "delta": delta, "generating_set": list(range(delta)),
                        "require_invertible": True, "p": p, "a": a}
    _check_coset(g.matrix, k, m, list(range(delta)))
    json.dumps(g.summary())


def test_coset_custom_generating_set() -> None:
    gens = [12, 0, 7, 1, 3]
    g = coset(27, 2, 5, generating_set=gens)
    assert g.params["generating_set"] == [0, 1, 3, 7, 12]
    _check_coset(g.matrix, 27, 2, gens)
    listconfig = OmegaConf.create({"gs": gens}).gs
    assert (coset(27, 2, 5, generating_set=listconfig).matrix == g.matrix).all()
    assert (coset(27, 2, 5, generating_set=np.array(gens)).matrix == g.matrix).all()


def test_coset_invertibility_condition() -> None:
    with pytest.raises(ConfigError) as err:
        coset(27, 2, 6)
    assert str(err.value) == (
        "coset graph needs k = p^a (prime power) and p ∤ delta for an invertible B "
        "(Proposition 1): got k=27=3^3, delta=6; set assignment.require_invertible=false "
        "to use it anyway")
    with pytest.raises(ConfigError, match=r"got k=12 \(not a prime power\), delta=5"):
        coset(12, 2, 5)
    g = coset(27, 2, 6, require_invertible=False)
    assert g.params["require_invertible"] is False and (g.loads == 6).all()
    h = coset(12, 2, 5, require_invertible=False)
    assert "p" not in h.params and "a" not in h.params
    _check_coset(h.matrix, 12, 2, list(range(5)))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"generating_set": [0, 1, 1, 2, 3]}, r"generating_set must have distinct entries"),
    ({"generating_set": [0, 1, 2, 3, 27]},
     r"generating_set entries must lie in 0..k-1 = 0..26 \(got \[0, 1, 2, 3, 27\]\)"),
    ({"generating_set": [-1, 1, 2, 3, 4]}, "must lie in 0..k-1"),
    ({"generating_set": [0, 1, 2, 3]}, r"generating_set must have delta=5 entries \(got 4\)"),
    ({"generating_set": [0, 1, 2, 3, 4.5]}, r"generating_set entry must be an integer \(got 4.5\)"),
    ({"generating_set": "01234"}, "generating_set must be a list of integers"),
    ({"generating_set": 5}, "generating_set must be a list of integers"),
    ({"delta": 28}, r"assignment.delta must be ≤ assignment.k \(got delta=28, k=27\)"),
    ({"delta": 0}, r"assignment.delta must be a positive integer"),
    ({"m": 0}, r"m must be a positive integer \(got 0\)"),
    ({"k": 0}, r"assignment.k must be a positive integer"),
    ({"require_invertible": "no"}, "assignment.require_invertible must be true or false"),
])
def test_coset_errors(kwargs: dict, message: str) -> None:
    args = {"k": 27, "m": 2, "delta": 5, **kwargs}
    with pytest.raises(ConfigError, match=message):
        coset(**args)


# ---------------------------------------------------------------- Hydra options


def test_graph_yamls_instantiate() -> None:
    srg_node = OmegaConf.load(CONF / "srg.yaml")
    assert srg_node._target_ == "agc_pipeline.codes.graphs.srg"
    assert instantiate(srg_node).name == "Petersen"
    assert instantiate(OmegaConf.merge(srg_node, {"graph": "paley", "q": 13})).n == 13

    bi_node = OmegaConf.load(CONF / "biregular.yaml")
    assert bi_node._target_ == "agc_pipeline.codes.graphs.biregular"
    bi = instantiate(bi_node)
    assert (bi.matrix == biregular(40, 20, 3, 6, seed=0).matrix).all()

    root = OmegaConf.create({"m": 2, "assignment": OmegaConf.load(CONF / "coset.yaml")})
    assert root.assignment._target_ == "agc_pipeline.codes.graphs.coset"
    g = instantiate(root.assignment)
    assert (g.k, g.n, g.delta, g.params["m"]) == (27, 54, 5, 2)
    root.m = 3
    root.assignment.generating_set = [0, 2, 4, 6, 8]
    h = instantiate(root.assignment)
    assert h.n == 81 and h.params["generating_set"] == [0, 2, 4, 6, 8]
