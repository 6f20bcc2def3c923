"""Balanced incomplete block designs (BIBDs) as assignment matrices (Section III, Definition 2).

A 2-(v, k, λ) design has v points and b blocks of size k; every point lies in r blocks and
every pair of points in λ blocks. Its incidence matrix E ∈ {0,1}^{points×blocks} satisfies
``E E^T = (r−λ) I + λ J``. Construction (7) uses ``A = E^T`` (data subsets = blocks, workers =
points, so ``A^T A = (r−λ) I + λ J``); construction (19) uses ``A = E`` (e.g. STS(13):
13 subsets × 26 workers, n = 2k).

Families: the Fano plane PG(2,2); projective planes PG(2,q) and affine planes AG(2,q) for any
prime power q (GF(q) from :mod:`agc_pipeline.codes.galois`); Steiner triple systems STS(v) for
every v ≡ 1, 3 (mod 6) by the Skolem and Bose constructions; or an incidence matrix from a
``.npy`` file (rows = points).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.galois import galois_field, is_prime_power
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.validation import require_int

DESIGNS = ("fano", "projective_plane", "affine_plane", "steiner_triple", "file")


def validate_bibd(incidence: np.ndarray, label: str = "design") -> tuple[int, int, int, int, int]:
    """Check that ``incidence`` (points × blocks, 0/1) is a BIBD; return ``(v, b, r, k, lam)``.

    Every block has the same size k, every point lies in the same number r of blocks and every
    pair of distinct points lies in exactly λ ≥ 1 blocks (Definition 2). ConfigError otherwise.
    """
    e = np.asarray(incidence)
    require(e.ndim == 2 and e.shape[0] >= 2 and e.shape[1] >= 1,
            f"{label}: incidence must be a 2-D array with ≥ 2 points (rows), got shape {e.shape}")
    require(bool(np.isin(e, (0, 1)).all()), f"{label}: incidence must be 0/1")
    e = e.astype(np.int64)
    v, b = e.shape
    sizes, reps = e.sum(axis=0), e.sum(axis=1)
    require(bool((sizes == sizes[0]).all()),
            f"{label}: blocks have unequal sizes {sorted(set(sizes.tolist()))}")
    require(bool((reps == reps[0]).all()),
            f"{label}: points lie in unequal numbers of blocks {sorted(set(reps.tolist()))}")
    pairs = (e @ e.T)[~np.eye(v, dtype=bool)]
    require(bool((pairs == pairs[0]).all()) and pairs[0] >= 1,
            f"{label}: pairs of points share unequal numbers of blocks "
            f"{sorted(set(pairs.tolist()))} (a BIBD needs one λ ≥ 1)")
    return v, b, int(reps[0]), int(sizes[0]), int(pairs[0])


def projective_plane(q: int) -> np.ndarray:
    """Incidence of PG(2,q): points/lines = 1-dim subspaces of GF(q)^3, incident iff x·y = 0.

    A 2-(q²+q+1, q+1, 1) design with b = v and r = q+1. Points (and lines) are the
    normalised vectors (first non-zero coordinate 1) in lexicographic order.
    """
    f = galois_field(q)
    vecs = [(0, 0, 1)] + [(0, 1, y) for y in range(q)]
    vecs += [(1, x, y) for x in range(q) for y in range(q)]
    pts = np.array(vecs, dtype=np.int64)
    prods = [f.mul[pts[:, i][:, None], pts[:, i][None, :]] for i in range(3)]
    dot = f.add[f.add[prods[0], prods[1]], prods[2]]
    return (dot == 0).astype(np.int64)


def affine_plane(q: int) -> np.ndarray:
    """Incidence of AG(2,q): points (x, y) ∈ GF(q)², lines y = s·x + c and x = c.

    A 2-(q², q, 1) design with b = q²+q and r = q+1. Point (x, y) has index q·x + y; lines are
    ordered by slope s = 0..q−1 then intercept c, followed by the q vertical lines.
    """
    f = galois_field(q)
    e = np.zeros((q * q, q * q + q), dtype=np.int64)
    xs = np.arange(q)
    for s in range(q):
        for c in range(q):
            ys = f.add[f.mul[s, xs], c]
            e[q * xs + ys, s * q + c] = 1
    for c in range(q):
        e[q * c + xs, q * q + c] = 1
    return e


def _triples_to_incidence(v: int, triples: list[tuple[int, int, int]]) -> np.ndarray:
    """Points × blocks incidence of a list of triples on points 0..v−1."""
    e = np.zeros((v, len(triples)), dtype=np.int64)
    for j, block in enumerate(triples):
        e[list(block), j] = 1
    return e


def steiner_triple_system(v: int) -> np.ndarray:
    """Incidence of a Steiner triple system STS(v), v ≡ 1 or 3 (mod 6), v ≥ 3.

    A 2-(v, 3, 1) design with b = v(v−1)/6, r = (v−1)/2. Point (x, i) ∈ Z_t × Z_3 has index
    3x + i.

    - Bose (v = 6n+3, t = 2n+1): with the idempotent commutative quasigroup x∘y = (x+y)/2
      mod t, blocks {(x,0),(x,1),(x,2)} and {(x,i),(y,i),(x∘y,i+1)} for x < y.
    - Skolem (v = 6n+1, t = 2n, plus ∞ = index v−1): with the half-idempotent commutative
      quasigroup x∘y = σ(x+y mod 2n), σ(2j) = j, σ(2j+1) = n+j, blocks
      {(x,0),(x,1),(x,2)} for x < n, {∞,(n+x,i),(x,i+1)} for x < n, and
      {(x,i),(y,i),(x∘y,i+1)} for x < y.
    """
    v = require_int(v, "STS(v): v")
    require(v >= 3 and v % 6 in (1, 3),
            f"STS(v) needs v ≡ 1 or 3 (mod 6) and v ≥ 3 (got {v})")

    def pt(x: int, i: int) -> int:
        return 3 * x + i % 3

    triples: list[tuple[int, int, int]] = []
    if v % 6 == 3:
        t = v // 3
        half = (t + 1) // 2  # inverse of 2 mod t (t odd)

        def op(x: int, y: int) -> int:
            return (x + y) * half % t

        triples += [(pt(x, 0), pt(x, 1), pt(x, 2)) for x in range(t)]
    else:
        n = (v - 1) // 6
        t, inf = 2 * n, v - 1

        def op(x: int, y: int) -> int:
            s = (x + y) % t
            return s // 2 if s % 2 == 0 else n + s // 2

        triples += [(pt(x, 0), pt(x, 1), pt(x, 2)) for x in range(n)]
        triples += [(inf, pt(n + x, i), pt(x, i + 1)) for x in range(n) for i in range(3)]
    triples += [(pt(x, i), pt(y, i), pt(op(x, y), i + 1))
                for i in range(3) for x in range(t) for y in range(x + 1, t)]
    return _triples_to_incidence(v, triples)


def _prime_power_param(q: Any, design: str) -> int:
    """Validate ``assignment.q`` for a plane: required, an integer, a prime power."""
    require(q is not None, f"assignment.q is required for design={design}")
    q = require_int(q, "assignment.q")
    require(is_prime_power(q) is not None, f"assignment.q must be a prime power (got {q})")
    return q


def bibd(design: str, q: int | None = None, v: int | None = None, transpose: bool = True,
         path: str | None = None) -> Assignment:
    """The assignment of a BIBD (Definition 2), the ``assignment=bibd`` Hydra option.

    ``design`` ∈ fano | projective_plane (needs prime power ``q``) | affine_plane (needs ``q``)
    | steiner_triple (needs ``v`` ≡ 1, 3 mod 6) | file (needs ``path`` to a points × blocks
    ``.npy``). Parameters a design does not use are ignored. ``transpose=True`` gives
    ``A = E^T`` (k = blocks, n = points: construction (7)); ``False`` gives ``A = E``
    (k = points, n = blocks: construction (19)).
    """
    require(design in DESIGNS,
            f"assignment.design must be one of {', '.join(DESIGNS)} (got {design!r})")
    require(isinstance(transpose, bool | np.bool_),
            f"assignment.transpose must be true or false (got {transpose!r})")
    extra: dict[str, Any]
    if design == "fano":
        require(q is None or q == 2,
                f"assignment.q must be 2 or null for design=fano (the Fano plane is PG(2,2)); "
                f"got {q!r}")
        e, name, extra = projective_plane(2), "Fano", {"q": 2}
    elif design == "projective_plane":
        q = _prime_power_param(q, design)
        e, name, extra = projective_plane(q), f"PG(2,{q})", {"q": q}
    elif design == "affine_plane":
        q = _prime_power_param(q, design)
        e, name, extra = affine_plane(q), f"AG(2,{q})", {"q": q}
    elif design == "steiner_triple":
        require(v is not None, f"assignment.v is required for design={design}")
        v = require_int(v, "assignment.v")
        require(v >= 3 and v % 6 in (1, 3),
                f"assignment.v must satisfy v ≡ 1 or 3 (mod 6) and v ≥ 3 for a Steiner triple "
                f"system (got {v})")
        e, name, extra = steiner_triple_system(v), f"STS({v})", {"v": v}
    else:
        require(path is not None, f"assignment.path is required for design={design}")
        file = Path(str(path)).expanduser()
        require(file.is_file(), f"assignment.path: no such file {str(file)!r}")
        try:
            e = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"assignment.path: cannot read {str(file)!r} as .npy ({exc})") from exc
        name, extra = f"file:{file.stem}", {"path": str(file)}
    points, blocks, r, size, lam = validate_bibd(e, label=f"assignment {name}")
    params = {"design": design, "points": points, "blocks": blocks, "block_size": size,
              "replication": r, "lam": lam, "transpose": bool(transpose), **extra}
    return Assignment(e.T if transpose else e, kind="bibd", name=name, params=params)
