"""The encoder interface every scheme implements (Section III: B ∈ R^{mk×n}).

A scheme is built from an :class:`~agc_pipeline.codes.assignment.Assignment` and the
communication reduction factor ``m``. ``encode`` returns the encoding matrix B (mk×n, float64)
whose u-th k×n block A_u has ``supp(A_u) ⊆ supp(A)``; worker j sends ``Z B[:, j]`` (length
d/m). Randomised schemes draw from the generator they are given, so that every runtime that
passes the same generator gets the same B.

Bounds that apply to a scheme are exposed by the scheme itself, so that adding a scheme is one
module plus one YAML file: ``closed_form_bounds(s)`` gives bounds that depend only on the
number of stragglers, ``set_bounds(B, masks)`` gives bounds for each survivor set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int

#: the schemes' names as the paper writes them in its legends (Section VIII); the exact codes
#: of Section II are named after their authors
PAPER_LABELS = {"stack": "Baseline construction (11)", "random_diagonal": "Construction (7)",
                "hadamard_nullspace": "(19)", "frc": "FRC (Tandon et al.)",
                "crc": "CRC (Tandon et al.)", "ce_frc": "Exact CE-FRC"}
#: construction (19)'s choice of v_1 (Section VIII: Gaussian or ±1 entries)
VARIANT_LABELS = {"gaussian": "Gaussian", "pm1": "±1"}


def paper_label(name: str, variant: str | None = None) -> str:
    """A scheme's legend label, e.g. ``"Construction (7)"`` or ``"(19), ±1"``."""
    label = PAPER_LABELS.get(name, name)
    return f"{label}, {VARIANT_LABELS.get(variant, variant)}" if variant else label


def target_matrix(k: int, m: int) -> np.ndarray:
    """F = [f_1 … f_m] ∈ R^{mk×m}, f_u the indicator of the u-th block of k rows (Section III)."""
    return np.kron(np.eye(m), np.ones((k, 1)))


class Scheme(ABC):
    """A gradient code: an assignment, a reduction factor m and a rule that produces B."""

    #: short name used in configs, logs and legends
    name: ClassVar[str] = "scheme"
    #: True when ``encode`` draws fresh randomness on every call
    randomized: ClassVar[bool] = False

    def __init__(self, assignment: Assignment, m: int) -> None:
        self.assignment = assignment
        self.m = require_int(m, "m", minimum=1)

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
        """The scheme's name as the paper's legends write it (:func:`paper_label`)."""
        return paper_label(self.name, self.describe().get("variant"))

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description of the scheme's parameters."""
        return {"name": self.name, "m": self.m}

    def _require_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        require(rng is not None, f"scheme {self.name} is randomised: encode() needs a Generator")
        return rng  # type: ignore[return-value]
