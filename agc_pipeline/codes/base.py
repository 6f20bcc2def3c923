"""The encoder interface every scheme implements (Section III: B ∈ R^{mk×n}).

A scheme is built from an :class:`~agc_pipeline.codes.assignment.Assignment` and the
communication reduction factor ``m``. ``encode`` returns the encoding matrix B (mk×n, float64)
whose u-th k×n block A_u has ``supp(A_u) ⊆ supp(A)``; worker j sends ``Z B[:, j]`` (length
d/m). Randomised schemes draw from the generator they are given, so that every runtime that
passes the same generator gets the same B.

Everything about a scheme is declared by its class, so that adding a scheme is one module here
plus one YAML file in ``conf/scheme/``: its legend label (``paper_label``, ``variant_labels``),
whether it is exact (``exact``), the assignment kinds it runs on (``assignments``, checked when
it is built), and its bounds: ``closed_form_bounds(s)`` gives bounds that depend only on the
number of stragglers, ``set_bounds(B, masks)`` gives bounds for each survivor set. Readers that
have only a scheme's name (a run's summary) find its class with :func:`scheme_classes`.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from functools import cache
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.codes.assignment import ASSIGNMENT_KINDS, Assignment
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int


@cache
def _import_codes() -> None:
    """Import every module of :mod:`agc_pipeline.codes` (so each scheme class is defined)."""
    import agc_pipeline.codes as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def scheme_classes() -> dict[str, type[Scheme]]:
    """Every scheme class by its ``name``: the subclasses of :class:`Scheme` that declare a
    name, those of :mod:`agc_pipeline.codes` and any defined elsewhere (the first class to
    declare a name keeps it)."""
    _import_codes()
    found: dict[str, type[Scheme]] = {}
    queue = list(Scheme.__subclasses__())
    while queue:
        cls = queue.pop(0)
        if "name" in vars(cls):
            found.setdefault(cls.name, cls)
        queue.extend(cls.__subclasses__())
    return found


def paper_label(name: str, variant: str | None = None) -> str:
    """The legend label of the scheme called ``name`` (its class's ``paper_label``, with its
    ``variant_labels`` of ``variant``), e.g. ``"Construction (7)"`` or ``"(19), ±1"``; an
    unknown scheme is labelled by its name."""
    cls = scheme_classes().get(name)
    return cls.legend(variant) if cls is not None else name


def target_matrix(k: int, m: int) -> np.ndarray:
    """F = [f_1 … f_m] ∈ R^{mk×m}, f_u the indicator of the u-th block of k rows (Section III)."""
    return np.kron(np.eye(m), np.ones((k, 1)))


class Scheme(ABC):
    """A gradient code: an assignment, a reduction factor m and a rule that produces B."""

    #: short name used in configs, logs and legends
    name: ClassVar[str] = "scheme"
    #: the name as the paper's legends write it (Section VIII); empty: ``name``. The exact
    #: codes of Section II are named after their authors.
    paper_label: ClassVar[str] = ""
    #: legend text of each ``variant`` of ``describe()`` (e.g. (19)'s choice of v_1)
    variant_labels: ClassVar[dict[str, str]] = {}
    #: True when the code is exact: any set of its ``tolerates()`` stragglers gives Err = 0
    exact: ClassVar[bool] = False
    #: the assignment kinds (``Assignment.kind``, ``assignment=<kind>``) it runs on
    assignments: ClassVar[tuple[str, ...]] = ASSIGNMENT_KINDS
    #: True when ``encode`` draws fresh randomness on every call
    randomized: ClassVar[bool] = False

    def __init__(self, assignment: Assignment, m: int) -> None:
        self.assignment = assignment
        self.m = require_int(m, "m", minimum=1)
        require(assignment.kind in self.assignments,
                f"scheme {self.name} needs assignment={' | '.join(self.assignments)} "
                f"(got kind {assignment.kind!r})")

    @classmethod
    def legend(cls, variant: str | None = None) -> str:
        """The class's legend label, with the text of ``variant`` if it has one."""
        label = cls.paper_label or cls.name
        return f"{label}, {cls.variant_labels.get(variant, variant)}" if variant else label

    @property
    def n(self) -> int:
        """Number of workers."""
        return self.assignment.n

    @property
    def k(self) -> int:
        """Number of data subsets."""
        return self.assignment.k

    @property
    def target(self) -> np.ndarray:
        """The decoding target F (mk×m)."""
        return target_matrix(self.k, self.m)

    @abstractmethod
    def encode(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Return B (mk×n, float64). Randomised schemes require ``rng``."""

    def tolerates(self) -> int | None:
        """Stragglers this code tolerates *exactly* (any set of that size), or None."""
        return None

    def closed_form_bounds(self, s: int) -> dict[str, float]:
        """Upper bounds on E[Err] that depend only on s (e.g. eq. 10, 12, 17)."""
        return {}

    def set_bounds(self, b: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
        """Upper bounds for each survivor set (rows of the boolean ``masks``, shape (N, n))."""
        return {}

    #: False when ``set_bounds`` ignores B (e.g. Lemma 1 bounds an expectation over B), so
    #: the analysis evaluates them once per survivor set instead of once per encoder draw
    set_bounds_use_b: ClassVar[bool] = True

    @property
    def primary_bound(self) -> str | None:
        """Which bound the analysis reports as ``upper_bound``: a key of
        ``closed_form_bounds``, or ``<key>_mean`` / ``<key>_max`` of ``set_bounds``."""
        return None

    @property
    def label(self) -> str:
        """The scheme's name as the paper's legends write it, e.g. ``"(19), ±1"``."""
        return self.legend(self.describe().get("variant"))

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description of the scheme's parameters."""
        return {"name": self.name, "m": self.m}

    def _require_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        require(rng is not None, f"scheme {self.name} is randomised: encode() needs a Generator")
        return rng  # type: ignore[return-value]
