"""BIBD assignment builders (agc_pipeline.codes.designs; the paper's Section III, Definition 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agc_pipeline.codes.designs import (
    affine_plane,
    bibd,
    projective_plane,
    steiner_triple_system,
    validate_bibd,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError

PLANE_ORDERS = [2, 3, 4, 5, 7, 8, 9]
STS_ORDERS = [v for v in range(3, 32) if v % 6 in (1, 3)]
CONF = CONFIG_DIR / "assignment"
#: the authors' PG(2,9) incidence matrix of Fig. 3, shipped with the tests (tests/data/README.md)
BIBD91 = Path(__file__).resolve().parent / "data" / "BIBD91.npy"


def _gram_identity(a: np.ndarray, r: int, lam: int) -> np.ndarray:
    return (r - lam) * np.eye(a.shape[1], dtype=np.int64) + lam


def _check_pairs(e: np.ndarray, lam: int) -> None:
    """Every pair of distinct points (rows of e) lies in exactly λ blocks, counted directly."""
    v = e.shape[0]
    for i in range(v):
        for j in range(i + 1, v):
            assert int((e[i] & e[j]).sum()) == lam


@pytest.mark.parametrize("q", PLANE_ORDERS)
def test_projective_plane(q: int) -> None:
    a = bibd("projective_plane", q=q)
    v = q * q + q + 1
    assert a.kind == "bibd" and a.name == f"PG(2,{q})"
    assert (a.k, a.n) == (v, v)
    assert a.params == {"design": "projective_plane", "points": v, "blocks": v,
                        "block_size": q + 1, "replication": q + 1, "lam": 1,
                        "transpose": True, "q": q}
    assert a.is_regular and a.delta == q + 1 and a.gamma == q + 1
    m = a.matrix
    assert (m.T @ m == _gram_identity(m, q + 1, 1)).all()  # any two points: one line
    assert (m @ m.T == _gram_identity(m.T, q + 1, 1)).all()  # any two lines: one point
    json.dumps(a.summary())


@pytest.mark.parametrize("q", PLANE_ORDERS)
def test_affine_plane(q: int) -> None:
    a = bibd("affine_plane", q=q)
    assert a.name == f"AG(2,{q})"
    assert (a.k, a.n) == (q * q + q, q * q)  # subsets = lines, workers = points
    assert a.params["block_size"] == q and a.params["replication"] == q + 1
    assert a.params["lam"] == 1 and a.params["q"] == q
    m = a.matrix
    assert (m.T @ m == _gram_identity(m, q + 1, 1)).all()
    # resolvable: lines fall into q + 1 parallel classes of q lines partitioning the points
    e = m.T
    for s in range(q + 1):
        assert (e[:, s * q:(s + 1) * q].sum(axis=1) == 1).all()
    # two lines meet in at most one point
    meets = m @ m.T
    assert meets[~np.eye(a.k, dtype=bool)].max() == 1


def test_fano_is_pg22() -> None:
    fano = bibd("fano")
    assert fano.name == "Fano" and fano.params["q"] == 2
    assert (fano.k, fano.n, fano.delta, fano.gamma, fano.params["lam"]) == (7, 7, 3, 3, 1)
    assert (fano.matrix == bibd("projective_plane", q=2).matrix).all()
    assert (bibd("fano", q=2).matrix == fano.matrix).all()
    _check_pairs(fano.matrix.T, 1)


@pytest.mark.parametrize("v", STS_ORDERS)
def test_steiner_triple_systems(v: int) -> None:
    b = v * (v - 1) // 6
    a = bibd("steiner_triple", v=v, transpose=False)
    assert a.name == f"STS({v})" and a.params["v"] == v
    assert (a.k, a.n) == (v, b)  # A = E: subsets = points, workers = blocks
    assert a.params["block_size"] == 3 and a.params["replication"] == (v - 1) // 2
    assert a.params["lam"] == 1 and a.params["transpose"] is False
    assert (a.loads == 3).all() and (a.replications == (v - 1) // 2).all()
    e = a.matrix
    assert (e @ e.T == _gram_identity(e.T, (v - 1) // 2, 1)).all()
    if v <= 15:
        _check_pairs(e, 1)
    t = bibd("steiner_triple", v=v)  # transpose=True: A = E^T
    assert (t.matrix == e.T).all() and (t.k, t.n) == (b, v)


def test_sts13_untransposed_has_n_equal_2k() -> None:
    a = bibd("steiner_triple", v=13, transpose=False)
    assert (a.k, a.n) == (13, 26)


def test_irrelevant_parameters_are_ignored() -> None:
    a = bibd("steiner_triple", q=2, v=7)  # q: 2 is the YAML default
    assert "q" not in a.params and a.params["v"] == 7
    assert bibd("projective_plane", q=3, v=11).params == bibd("projective_plane", q=3).params


# ---------------------------------------------------------------- validate_bibd


def test_validate_bibd_returns_parameters() -> None:
    assert validate_bibd(projective_plane(2)) == (7, 7, 3, 3, 1)
    assert validate_bibd(affine_plane(3)) == (9, 12, 4, 3, 1)
    # the complement of the Fano plane is a 2-(7, 4, 2) design
    assert validate_bibd(1 - projective_plane(2)) == (7, 7, 4, 4, 2)


@pytest.mark.parametrize(("matrix", "message"), [
    (np.ones(5), "2-D"),
    (np.ones((1, 3)), "≥ 2 points"),
    (np.full((3, 3), 2), "0/1"),
    (np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0]]), "unequal sizes"),
    (np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]),  # blocks {0,1}, {0,2}, {0,3}
     "unequal numbers of blocks"),
    (np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]]),
     "pairs of points share unequal"),
    (np.eye(3, dtype=int), "pairs of points share unequal"),  # λ = 0
])
def test_validate_bibd_rejects(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_bibd(matrix, label="mydesign")
    with pytest.raises(ConfigError, match="mydesign"):
        validate_bibd(matrix, label="mydesign")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"design": "biplane"}, r"assignment.design must be one of .*got 'biplane'"),
    ({"design": "projective_plane"}, "assignment.q is required for design=projective_plane"),
    ({"design": "affine_plane", "q": None}, "assignment.q is required for design=affine_plane"),
    ({"design": "projective_plane", "q": 6}, r"assignment.q must be a prime power \(got 6\)"),
    ({"design": "affine_plane", "q": 10}, r"assignment.q must be a prime power \(got 10\)"),
    ({"design": "projective_plane", "q": 1}, r"assignment.q must be a prime power \(got 1\)"),
    ({"design": "projective_plane", "q": "3"}, r"assignment.q must be an integer \(got '3'\)"),
    ({"design": "projective_plane", "q": 3.0}, "assignment.q must be an integer"),
    ({"design": "projective_plane", "q": True}, "assignment.q must be an integer"),
    ({"design": "fano", "q": 3}, "assignment.q must be 2 or null for design=fano"),
    ({"design": "steiner_triple"}, "assignment.v is required for design=steiner_triple"),
    ({"design": "steiner_triple", "v": 11},
     r"assignment.v must satisfy v ≡ 1 or 3 \(mod 6\) .*Steiner triple system \(got 11\)"),
    ({"design": "steiner_triple", "v": 1}, r"assignment.v must satisfy .*\(got 1\)"),
    ({"design": "steiner_triple", "v": 12}, r"assignment.v must satisfy .*\(got 12\)"),
    ({"design": "steiner_triple", "v": "7"}, "assignment.v must be an integer"),
    ({"design": "fano", "transpose": "yes"}, "assignment.transpose must be true or false"),
    ({"design": "file"}, "assignment.path is required for design=file"),
    ({"design": "file", "path": "/nonexistent/x.npy"}, "assignment.path: no such file"),
])
def test_bibd_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bibd(**kwargs)


def test_steiner_builder_rejects_bad_order() -> None:
    with pytest.raises(ConfigError, match=r"v ≡ 1 or 3 \(mod 6\)"):
        steiner_triple_system(5)


# ---------------------------------------------------------------- designs from files


def test_file_design_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sts9.npy"
    np.save(path, steiner_triple_system(9))
    a = bibd("file", path=str(path), transpose=False)
    assert a.name == "file:sts9" and a.params["path"] == str(path)
    assert (a.matrix == steiner_triple_system(9)).all()
    assert (a.params["points"], a.params["blocks"], a.params["lam"]) == (9, 12, 1)


def test_file_design_rejects_non_designs_and_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0]]))
    with pytest.raises(ConfigError, match="assignment file:bad: blocks have unequal sizes"):
        bibd("file", path=str(bad))
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    with pytest.raises(ConfigError, match="assignment.path: cannot read"):
        bibd("file", path=str(text))


def _join_meet(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """join[p, q] = the line through points p ≠ q; meet[l, m] = the point on lines l ≠ m."""
    v, b = e.shape
    join, meet = np.full((v, v), -1), np.full((b, b), -1)
    for line in range(b):
        pts = np.flatnonzero(e[:, line])
        join[np.ix_(pts, pts)] = line
    for p in range(v):
        lines = np.flatnonzero(e[p])
        meet[np.ix_(lines, lines)] = p
    return join, meet


def _closure(pmap: dict[int, int], t1: tuple, t2: tuple) -> tuple[dict, dict] | None:
    """Extend a partial point map of two planes by joins and meets; None on a contradiction."""
    (join1, meet1), (join2, meet2) = t1, t2
    pmap, lmap = dict(pmap), {}
    changed = True
    while changed:
        changed = False
        pts = list(pmap)
        for i, p in enumerate(pts):
            for q in pts[i + 1:]:
                image = join2[pmap[p], pmap[q]]
                if lmap.setdefault(join1[p, q], image) != image:
                    return None
        lines = list(lmap)
        for i, l1 in enumerate(lines):
            for l2 in lines[i + 1:]:
                p1, p2 = meet1[l1, l2], meet2[lmap[l1], lmap[l2]]
                if p1 not in pmap:
                    pmap[p1], changed = p2, True
                elif pmap[p1] != p2:
                    return None
    return pmap, lmap


def _frame(join: np.ndarray) -> list[int]:
    """Four points, no three collinear."""
    a, b = 0, 1
    c = next(x for x in range(2, len(join)) if join[a, x] != join[a, b] != join[b, x])
    d = next(x for x in range(len(join)) if x not in (a, b, c) and len(
        {join[a, b], join[a, c], join[b, c], join[a, x], join[b, x], join[c, x]}) == 6)
    return [a, b, c, d]


def _plane_isomorphism(e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Point and line permutations with ``e1 == e2[points][:, lines]`` when e2 is Desarguesian.

    PGL(3,q) is transitive on frames, so map a frame of e1 to one of e2, close under joins and
    meets (this reaches a subplane), then try every image of one more point.
    """
    t1, t2 = _join_meet(e1), _join_meet(e2)
    base = _closure(dict(zip(_frame(t1[0]), _frame(t2[0]), strict=True)), t1, t2)
    assert base is not None
    v, b = e1.shape
    extra = next(x for x in range(v) if x not in base[0])
    for y in sorted(set(range(v)) - set(base[0].values())):
        res = _closure({**base[0], extra: y}, t1, t2)
        if res is not None and len(res[0]) == v and len(res[1]) == b:
            pts = np.array([res[0][i] for i in range(v)])
            lines = np.array([res[1][i] for i in range(b)])
            if (e1 == e2[np.ix_(pts, lines)]).all():
                return pts, lines
    return None


def test_plane_isomorphism_helper_finds_relabelling() -> None:
    e = projective_plane(4)
    rng = np.random.default_rng(1)
    shuffled = e[np.ix_(rng.permutation(21), rng.permutation(21))]
    assert _plane_isomorphism(shuffled, e) is not None


def test_pg29_matches_authors_bibd91() -> None:
    theirs = bibd("file", path=str(BIBD91))
    assert theirs.matrix.shape == (91, 91) and theirs.params["lam"] == 1
    ours = bibd("projective_plane", q=9)
    for key in ("points", "blocks", "block_size", "replication", "lam"):
        assert theirs.params[key] == ours.params[key]
    assert (theirs.matrix.T @ theirs.matrix == ours.matrix.T @ ours.matrix).all()
    assert (theirs.matrix @ theirs.matrix.T == ours.matrix @ ours.matrix.T).all()
    # the authors' plane is (isomorphic to) the Desarguesian PG(2,9)
    assert _plane_isomorphism(np.load(BIBD91), projective_plane(9)) is not None


# ---------------------------------------------------------------- Hydra option


def test_bibd_yaml_instantiates() -> None:
    node = OmegaConf.load(CONF / "bibd.yaml")
    assert node._target_ == "agc_pipeline.codes.designs.bibd"
    assert node.design == "projective_plane" and node.q == 2 and node.v is None
    assert node.transpose is True
    a = instantiate(node)
    assert a.name == "PG(2,2)" and (a.k, a.n) == (7, 7)
    b = instantiate(OmegaConf.merge(node, {"q": 9}))
    assert (b.k, b.n, b.delta) == (91, 91, 10)
    c = instantiate(OmegaConf.merge(node, {"design": "steiner_triple", "v": 13,
                                           "transpose": False}))
    assert (c.k, c.n) == (13, 26)
