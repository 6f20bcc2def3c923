"""The assignment matrix A ∈ {0,1}^{k×n} (Section II) and its structural checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agc_pipeline.errors import ConfigError

#: the assignment families (``Assignment.kind``; the options of ``conf/assignment/``)
ASSIGNMENT_KINDS = ("bibd", "srg", "biregular", "coset", "cyclic", "fractional", "identity")


@dataclass(frozen=True)
class Assignment:
    """A k×n 0/1 matrix: ``matrix[i, j] = 1`` iff worker j holds data subset i.

    ``kind`` names the family (``bibd``, ``srg``, ``biregular``, ``coset``, ``cyclic``,
    ``fractional``, ``identity``); ``params`` holds the family's parameters that the bounds
    need (e.g. ``lam`` for a BIBD, ``lam``/``mu`` for an SRG, ``m``/``generating_set`` for a
    coset graph).
    """

    matrix: np.ndarray
    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.matrix)
        if a.ndim != 2 or a.size == 0:
            raise ConfigError(f"assignment {self.name}: matrix must be a non-empty 2-D array")
        if not np.isin(a, (0, 1)).all():
            raise ConfigError(f"assignment {self.name}: matrix must be 0/1")
        if (a.sum(axis=0) == 0).any():
            raise ConfigError(f"assignment {self.name}: every worker must hold a subset")
        if (a.sum(axis=1) == 0).any():
            raise ConfigError(f"assignment {self.name}: every data subset must sit on a worker")
        a = a.astype(np.int64)
        a.setflags(write=False)
        object.__setattr__(self, "matrix", a)

    @property
    def k(self) -> int:
        """Number of data subsets (rows)."""
        return int(self.matrix.shape[0])

    @property
    def n(self) -> int:
        """Number of workers (columns)."""
        return int(self.matrix.shape[1])

    @property
    def loads(self) -> np.ndarray:
        """Subsets per worker (column sums)."""
        return self.matrix.sum(axis=0)

    @property
    def replications(self) -> np.ndarray:
        """Workers per subset (row sums)."""
        return self.matrix.sum(axis=1)

    @property
    def delta(self) -> int:
        """Computation load δ: the largest number of subsets any worker holds."""
        return int(self.loads.max())

    @property
    def gamma(self) -> int:
        """Replication γ: the largest number of workers any subset sits on."""
        return int(self.replications.max())

    @property
    def is_regular(self) -> bool:
        """Every worker holds δ subsets and every subset sits on γ workers."""
        return bool((self.loads == self.delta).all() and (self.replications == self.gamma).all())

    def worker_balance(self) -> tuple[int, int] | None:
        """(δ, λ) when AᵀA = (δ−λ)I + λJ (every worker holds δ subsets, every pair of workers
        shares λ), as for a BIBD with workers = points; None otherwise."""
        gram = self.matrix.T @ self.matrix
        diag = np.diag(gram)
        off = gram[~np.eye(self.n, dtype=bool)]
        if self.n < 2 or (diag != diag[0]).any() or (off != off[0]).any():
            return None
        return int(diag[0]), int(off[0])

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (for logs and results files)."""
        return {"name": self.name, "kind": self.kind, "n": self.n, "k": self.k,
                "delta": self.delta, "gamma": self.gamma, **self.params}
