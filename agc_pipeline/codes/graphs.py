"""Graph-based assignment matrices (Section III: Definitions 3 and 4, Section III-A).

- :func:`srg` — adjacency matrices of strongly regular graphs (n, δ, λ, μ), k = n, used by
  construction (7) and Corollary 2 (eq. 12).
- :func:`biregular` — random bi-regular bipartite graphs (rows degree γ, columns degree δ),
  used by construction (19) (Fig. 5: (n, k, δ, γ) = (40, 20, 3, 6)).
- :func:`coset` — coset bipartite graphs (k, m, δ) on Z_{mk}, used by construction (7) with
  Proposition 1 and Corollary 3 (eq. 17) (Fig. 4: k = 27, m = 2, δ = 5).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import networkx as nx
import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.galois import galois_field, is_prime_power
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int

SRG_GRAPHS = ("petersen", "paley", "lattice", "triangular", "clebsch", "shrikhande", "schlafli")


def srg_parameters(adjacency: np.ndarray, label: str = "graph") -> tuple[int, int, int, int]:
    """Check that ``adjacency`` is a strongly regular graph; return ``(n, δ, λ, μ)``.

    Requires a symmetric 0/1 matrix with zero diagonal and ``A² = δI + λA + μ(J−I−A)``
    with ``0 < δ ≠ μ`` (Definition 3, Corollary 2); ConfigError otherwise.
    """
    a = np.asarray(adjacency)
    require(a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] >= 2,
            f"{label}: adjacency must be a square matrix with ≥ 2 vertices, got shape {a.shape}")
    require(bool(np.isin(a, (0, 1)).all()), f"{label}: adjacency must be 0/1")
    a = a.astype(np.int64)
    n = a.shape[0]
    require(bool((a == a.T).all()) and not a.diagonal().any(),
            f"{label}: adjacency must be symmetric with a zero diagonal")
    degrees = a.sum(axis=1)
    delta = int(degrees[0])
    require(bool((degrees == delta).all()), f"{label}: graph is not regular")
    sq = a @ a
    off = ~np.eye(n, dtype=bool)
    on_edges, on_non_edges = sq[(a == 1) & off], sq[(a == 0) & off]
    require(on_edges.size > 0 and bool((on_edges == on_edges[0]).all()),
            f"{label}: adjacent vertices do not share a constant number λ of neighbours")
    require(on_non_edges.size > 0 and bool((on_non_edges == on_non_edges[0]).all()),
            f"{label}: non-adjacent vertices do not share a constant number μ of neighbours")
    lam, mu = int(on_edges[0]), int(on_non_edges[0])
    require(0 < delta != mu, f"{label}: a strongly regular graph needs 0 < δ ≠ μ "
            f"(got δ={delta}, μ={mu})")
    return n, delta, lam, mu


def srg_eigenvalues(delta: int, lam: int, mu: int) -> tuple[float, float]:
    """The non-trivial eigenvalues r̃ ≥ s̃ = ½[(λ−μ) ± sqrt((λ−μ)² + 4(δ−μ))] (Corollary 2)."""
    root = math.sqrt((lam - mu) ** 2 + 4 * (delta - mu))
    return 0.5 * ((lam - mu) + root), 0.5 * ((lam - mu) - root)


def _adjacency(graph: nx.Graph) -> np.ndarray:
    """Adjacency matrix with the nodes in sorted order (deterministic)."""
    return nx.to_numpy_array(graph, nodelist=sorted(graph.nodes), dtype=np.int64)


def _cayley(elements: list[tuple[int, ...]], moduli: tuple[int, ...],
            connection: set[tuple[int, ...]]) -> np.ndarray:
    """Adjacency of the Cayley graph on Z_{m1} × … with a symmetric connection set."""
    n = len(elements)
    a = np.zeros((n, n), dtype=np.int64)
    for i, x in enumerate(elements):
        for j, y in enumerate(elements):
            diff = tuple((yi - xi) % m for xi, yi, m in zip(x, y, moduli, strict=True))
            a[i, j] = diff in connection
    return a


def paley(q: int) -> np.ndarray:
    """Paley graph on GF(q), q ≡ 1 (mod 4): x ~ y iff x − y is a non-zero square.

    Parameters (q, (q−1)/2, (q−5)/4, (q−1)/4).
    """
    f = galois_field(q)
    x = f.elements
    return f.squares()[f.sub(x[:, None], x[None, :])].astype(np.int64)


def clebsch() -> np.ndarray:
    """Clebsch graph (16, 5, 0, 2): the folded 5-cube, Cayley graph on Z_2^4 with connection
    set {e_1, e_2, e_3, e_4, 1111}."""
    elements = list(itertools.product(range(2), repeat=4))
    connection = {(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 1, 1, 1)}
    return _cayley(elements, (2, 2, 2, 2), connection)


def shrikhande() -> np.ndarray:
    """Shrikhande graph (16, 6, 2, 2): Cayley graph on Z_4 × Z_4 with ±(1,0), ±(0,1), ±(1,1)."""
    elements = list(itertools.product(range(4), repeat=2))
    connection = {(1, 0), (3, 0), (0, 1), (0, 3), (1, 1), (3, 3)}
    return _cayley(elements, (4, 4), connection)


def schlafli() -> np.ndarray:
    """Schläfli graph (27, 16, 10, 8): the 27 lines on a cubic surface, adjacent iff skew.

    Lines a_i, b_i (i = 1..6) and c_ij (i < j); a_i meets b_j (i ≠ j), a_i and b_i meet
    c_jk iff i ∈ {j, k}, c_ij meets c_kl iff {i,j} ∩ {k,l} = ∅; other pairs are skew.
    """
    lines = [("a", (i,)) for i in range(6)] + [("b", (i,)) for i in range(6)]
    lines += [("c", pair) for pair in itertools.combinations(range(6), 2)]

    def meet(x: tuple[str, tuple[int, ...]], y: tuple[str, tuple[int, ...]]) -> bool:
        (kx, ix), (ky, iy) = sorted((x, y))
        if kx == ky:
            return kx == "c" and not set(ix) & set(iy)
        if ky == "b":  # a_i, b_j
            return ix != iy
        return ix[0] in iy  # a_i or b_i with c_jk

    n = len(lines)
    a = np.zeros((n, n), dtype=np.int64)
    for i, j in itertools.combinations(range(n), 2):
        a[i, j] = a[j, i] = not meet(lines[i], lines[j])
    return a


def srg(graph: str, q: int | None = None, a: int | None = None) -> Assignment:
    """Adjacency of a strongly regular graph as a k = n assignment (the ``assignment=srg`` option).

    ``graph`` ∈ petersen (10,3,0,1) | paley (prime power ``q`` ≡ 1 mod 4) | lattice
    (K_a □ K_a: (a², 2(a−1), a−2, 2), ``a`` ≥ 3) | triangular (T(a) = L(K_a):
    (a(a−1)/2, 2(a−2), a−2, 4), ``a`` ≥ 5) | clebsch (16,5,0,2) | shrikhande (16,6,2,2) |
    schlafli (27,16,10,8). Parameters a graph does not use are ignored. (K_2 □ K_2 and T(4)
    have δ = μ, which the paper's bounds exclude.)
    """
    require(graph in SRG_GRAPHS,
            f"assignment.graph must be one of {', '.join(SRG_GRAPHS)} (got {graph!r})")
    extra: dict[str, int] = {}
    if graph == "petersen":
        adj, name = _adjacency(nx.petersen_graph()), "Petersen"
    elif graph == "paley":
        require(q is not None, "assignment.q is required for graph=paley")
        q = require_int(q, "assignment.q")
        require(is_prime_power(q) is not None and q % 4 == 1,
                f"assignment.q must be a prime power with q ≡ 1 (mod 4) for graph=paley "
                f"(got {q})")
        adj, name, extra = paley(q), f"Paley({q})", {"q": q}
    elif graph in ("lattice", "triangular"):
        require(a is not None, f"assignment.a is required for graph={graph}")
        lowest = 3 if graph == "lattice" else 5
        a = require_int(a, "assignment.a")
        require(a >= lowest, f"assignment.a must be ≥ {lowest} for graph={graph} (got {a})")
        if graph == "lattice":
            g = nx.cartesian_product(nx.complete_graph(a), nx.complete_graph(a))
            adj, name = _adjacency(g), f"Lattice({a})"
        else:
            adj, name = _adjacency(nx.line_graph(nx.complete_graph(a))), f"T({a})"
        extra = {"a": a}
    elif graph == "clebsch":
        adj, name = clebsch(), "Clebsch"
    elif graph == "shrikhande":
        adj, name = shrikhande(), "Shrikhande"
    else:
        adj, name = schlafli(), "Schläfli"
    n, delta, lam, mu = srg_parameters(adj, label=f"assignment {name}")
    r_eig, s_eig = srg_eigenvalues(delta, lam, mu)
    params = {"graph": graph, "n": n, "delta": delta, "lam": lam, "mu": mu,
              "r_eig": r_eig, "s_eig": s_eig, **extra}
    return Assignment(adj, kind="srg", name=name, params=params)


def biregular(n: int, k: int, delta: int, gamma: int, seed: int = 0) -> Assignment:
    """A random bi-regular bipartite graph: k×n bi-adjacency, rows degree γ, columns degree δ.

    Deterministic in ``seed``: start from the structured matrix with row i on columns
    iγ, …, iγ+γ−1 (mod n), then apply 20·(edges) random degree-preserving double-edge swaps
    (i1,j1),(i2,j2) → (i1,j2),(i2,j1), rejecting any that would create a multi-edge.
    Requires k·γ = n·δ, 1 ≤ δ ≤ k, 1 ≤ γ ≤ n (Definition 4; Fig. 5 uses (40, 20, 3, 6)).
    """
    n = require_int(n, "assignment.n", minimum=1)
    k = require_int(k, "assignment.k", minimum=1)
    delta = require_int(delta, "assignment.delta", minimum=1)
    gamma = require_int(gamma, "assignment.gamma", minimum=1)
    seed = require_int(seed, "assignment.seed", minimum=0)
    require(delta <= k, f"assignment.delta must be ≤ assignment.k (got delta={delta}, k={k})")
    require(gamma <= n, f"assignment.gamma must be ≤ assignment.n (got gamma={gamma}, n={n})")
    require(k * gamma == n * delta,
            f"assignment.k * assignment.gamma must equal assignment.n * assignment.delta "
            f"(edges counted from both sides; got k*gamma={k * gamma}, n*delta={n * delta})")

    slots = np.arange(k * gamma)
    rows, cols = slots // gamma, slots % n
    mat = np.zeros((k, n), dtype=np.int64)
    mat[rows, cols] = 1
    rng = np.random.default_rng(seed)
    for e1, e2 in rng.integers(0, rows.size, size=(20 * rows.size, 2)):
        r1, c1, r2, c2 = rows[e1], cols[e1], rows[e2], cols[e2]
        if r1 == r2 or c1 == c2 or mat[r1, c2] or mat[r2, c1]:
            continue
        mat[r1, c1] = mat[r2, c2] = 0
        mat[r1, c2] = mat[r2, c1] = 1
        cols[e1], cols[e2] = c2, c1
    require(bool((mat.sum(axis=1) == gamma).all() and (mat.sum(axis=0) == delta).all()),
            "biregular: degree check failed (bug)")
    params = {"n": n, "k": k, "delta": delta, "gamma": gamma, "seed": seed}
    return Assignment(mat, kind="biregular", name=f"biregular({n},{k},{delta},{gamma})",
                      params=params)


def coset(k: int, m: int, delta: int, generating_set: Sequence[int] | None = None,
          require_invertible: bool = True) -> Assignment:
    """The (k, m, δ) coset bipartite graph (Section III-A), the ``assignment=coset`` option.

    Workers x ∈ Z_{mk} (n = mk); subsets = cosets i + H, H = {0, k, …, (m−1)k}; with the
    generating set 𝔅 ⊆ {0..k−1}, |𝔅| = δ (default {0..δ−1}) and S = ∪_{b∈𝔅} (b + H), worker
    x holds subset i iff x ∈ i + S (mod mk). Rows have degree mδ, columns δ, and
    A = [C … C] with C the k×k circulant C(i, j) = [(j − i) mod k ∈ 𝔅].
    ``require_invertible`` enforces Proposition 1's condition (k = p^a, p ∤ δ), under which
    construction (7) with ε > 0 gives an almost surely invertible B.
    """
    k = require_int(k, "assignment.k", minimum=1)
    m = require_int(m, "m", minimum=1)
    delta = require_int(delta, "assignment.delta", minimum=1)
    require(delta <= k, f"assignment.delta must be ≤ assignment.k (got delta={delta}, k={k})")
    require(isinstance(require_invertible, bool | np.bool_),
            f"assignment.require_invertible must be true or false (got {require_invertible!r})")
    if generating_set is None:
        gens = list(range(delta))
    else:
        require(hasattr(generating_set, "__iter__") and not isinstance(generating_set, str),
                f"assignment.generating_set must be a list of integers (got {generating_set!r})")
        gens = [require_int(b, "assignment.generating_set entry") for b in generating_set]
        require(len(set(gens)) == len(gens),
                f"assignment.generating_set must have distinct entries (got {gens})")
        require(all(0 <= b < k for b in gens),
                f"assignment.generating_set entries must lie in 0..k-1 = 0..{k - 1} (got {gens})")
        require(len(gens) == delta,
                f"assignment.generating_set must have delta={delta} entries (got {len(gens)})")
    pa = is_prime_power(k)
    if require_invertible:
        ok = pa is not None and delta % pa[0] != 0
        got = f"k={k}={pa[0]}^{pa[1]}" if pa is not None else f"k={k} (not a prime power)"
        require(ok, f"coset graph needs k = p^a (prime power) and p ∤ delta for an invertible "
                    f"B (Proposition 1): got {got}, delta={delta}; set "
                    f"assignment.require_invertible=false to use it anyway")

    n = m * k
    s_set = {(b + h * k) % n for b in gens for h in range(m)}
    x = np.arange(n)
    mat = np.array([[(xi - i) % n in s_set for xi in x] for i in range(k)], dtype=np.int64)
    circulant = np.array([[(j - i) % k in gens for j in range(k)] for i in range(k)],
                         dtype=np.int64)
    require(bool((mat.sum(axis=1) == m * delta).all() and (mat.sum(axis=0) == delta).all()
                 and (mat == np.tile(circulant, (1, m))).all()),
            "coset: structure check failed (bug)")
    params: dict[str, object] = {"k": k, "m": m, "delta": delta, "generating_set": sorted(gens),
                                 "require_invertible": bool(require_invertible)}
    if pa is not None:
        params.update(p=pa[0], a=pa[1])
    return Assignment(mat, kind="coset", name=f"coset({k},{m},{delta})", params=params)
