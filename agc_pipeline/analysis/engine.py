"""Monte Carlo approximation-error engine (the paper's Figs. 3–5).

For each straggler count s and each of ``realizations`` draws of the (random) encoder, the
engine draws ``straggler_sets`` random survivor sets and evaluates Err_𝓕(B) (eq. 3) for the
scheme, the stack baseline (11) and any compared schemes on the *same* sets (common random
numbers), together with the per-set bounds the scheme exposes (e.g. Lemma 1, eq. 20), the
closed-form bounds (eqs. 10, 12, 17) and the lower bound (21).

Speed: one Gram matrix BᵀB per encoder draw, shared by every s; each survivor set is a
principal submatrix (see :class:`agc_pipeline.coding.decoding.PrincipalQuadraticForms`). The whole
study runs with BLAS on one thread (:func:`agc_pipeline.coding.decoding.one_blas_thread`): its
matrices are small, and BLAS threads made it 2.6–2.9× slower.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.bounds import lower_bound
from agc_pipeline.coding.decoding import Decoder, OptimalDecoder, SurvivorSets, one_blas_thread
from agc_pipeline.errors import require

ENCODER_STREAM = 0xE4C0
SETS_STREAM = 0x5E75


def paper_grid(n: int, points: int = 15, max_fraction: float = 0.25,
               include_zero: bool = False) -> list[int]:
    """The authors' grid: ``linspace(0, max_fraction·n, points+1)`` cast to int, s = 0 dropped
    unless ``include_zero`` (Fig. 5 keeps it). Repeated values (small n) are kept once."""
    grid = np.unique(np.linspace(0, max_fraction * n, points + 1).astype(int))
    return [int(s) for s in grid if include_zero or s > 0]


def straggler_masks(n: int, s: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` survivor masks (count, n), each with exactly s uniformly random stragglers."""
    masks = np.ones((count, n), dtype=bool)
    if s > 0:
        strag = np.argpartition(rng.random((count, n)), s - 1, axis=1)[:, :s]
        np.put_along_axis(masks, strag, False, axis=1)
    return masks


def encoder_rng(seed: int, realization: int, index: int = 0) -> np.random.Generator:
    """Generator for encoder draw ``realization`` of scheme number ``index`` in a study."""
    return np.random.default_rng([seed, realization, ENCODER_STREAM, index])


def sets_rng(seed: int, s: int) -> np.random.Generator:
    """Generator for the survivor sets with s stragglers, shared by all schemes and draws."""
    return np.random.default_rng([seed, s, SETS_STREAM])


class _Accumulator:
    """Running mean and max of a stream of arrays (one array per encoder draw)."""

    def __init__(self) -> None:
        self.total, self.count, self.max = 0.0, 0, -math.inf
        self.max_total, self.batches = 0.0, 0

    def add(self, values: np.ndarray) -> None:
        self.total += float(values.sum())
        self.count += int(values.size)
        self.max = max(self.max, float(values.max()))
        self.max_total += float(values.max())
        self.batches += 1

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def mean_of_max(self) -> float:
        """The max over one draw's survivor sets, averaged over draws."""
        return self.max_total / self.batches


@dataclass
class _Tracked:
    """One scheme under study: its errors and per-set bounds, accumulated per s."""

    label: str
    scheme: Scheme
    index: int
    with_bounds: bool = True
    errors: dict[int, _Accumulator] = field(default_factory=dict)
    set_bounds: dict[tuple[int, str], _Accumulator] = field(default_factory=dict)
    max_condition: float = 0.0

    def draws(self, realizations: int) -> int:
        """Encoder draws to evaluate: one for a deterministic scheme."""
        return realizations if self.scheme.randomized else 1

    def evaluate(self, decoder: Decoder, seed: int, realization: int,
                 masks_by_s: dict[int, SurvivorSets]) -> None:
        """Encode draw ``realization`` once, then evaluate it on every s's survivor sets."""
        b = self.scheme.encode(encoder_rng(seed, realization, self.index))
        errors_of = decoder.evaluator(b, self.scheme.target)
        cond = getattr(errors_of, "condition_number", None)
        if cond is not None:
            self.max_condition = max(self.max_condition, cond)
        bounds_now = self.with_bounds and (self.scheme.set_bounds_use_b or realization == 0)
        for s, masks in masks_by_s.items():
            self.errors.setdefault(s, _Accumulator()).add(errors_of(masks))
            if bounds_now:
                for name, values in self.scheme.set_bounds(b, masks).items():
                    self.set_bounds.setdefault((s, name), _Accumulator()).add(values)

    def point(self, s: int) -> dict[str, Any]:
        out: dict[str, Any] = {"empirical_mean": self.errors[s].mean,
                               "empirical_max": self.errors[s].max}
        bounds = dict(self.scheme.closed_form_bounds(s))
        for (s_key, name), acc in sorted(self.set_bounds.items()):
            if s_key == s:
                bounds[f"{name}_mean"] = acc.mean
                bounds[f"{name}_max"] = acc.mean_of_max
        out["bounds"] = bounds
        primary = self.scheme.primary_bound
        out["upper_bound"] = bounds.get(primary) if primary else None
        return out


@dataclass
class ErrorStudy:
    """Configuration of one approximation-error study (see module docstring).

    For each s, ``straggler_sets`` survivor sets are drawn once and shared by every encoder
    draw and every scheme (as in the authors' scripts, whose seeded sets coincide across
    draws): the empirical mean is over realizations × straggler_sets pairs, deterministic
    schemes (the stack baseline) are evaluated once per set. Per-set bounds are reported as
    ``<name>_mean`` (over draws and sets) and ``<name>_max`` (the max over the survivor sets
    of one draw, as in the paper's figures, averaged over draws).
    """

    scheme: Scheme
    s_values: list[int]
    realizations: int
    straggler_sets: int
    seed: int = 0
    decoder: Decoder = field(default_factory=OptimalDecoder)
    baseline: Scheme | None = None
    compare: Mapping[str, Scheme] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.scheme.n
        require(self.realizations >= 1,
                f"analysis.realizations must be ≥ 1 (got {self.realizations})")
        require(self.straggler_sets >= 1,
                f"analysis.straggler_sets must be ≥ 1 (got {self.straggler_sets})")
        require(len(self.s_values) > 0, "analysis.s must list at least one straggler count")
        for s in self.s_values:
            require(0 <= s <= n, f"analysis.s values must satisfy 0 ≤ s ≤ n = {n} (got {s})")
        for label, other in [("baseline", self.baseline), *self.compare.items()]:
            if other is not None:
                require(other.n == n and other.k == self.scheme.k and other.m == self.scheme.m,
                        f"analysis.compare.{label}: compared schemes need the same n, k and m")

    def survivor_masks(self) -> dict[int, np.ndarray]:
        """The shared survivor sets: ``straggler_sets`` masks per s."""
        return {s: straggler_masks(self.scheme.n, s, self.straggler_sets, sets_rng(self.seed, s))
                for s in self.s_values}

    def run(self, progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, Any]:
        """Run the study; returns a dict in the ``results.json`` schema (see the README)."""
        with one_blas_thread():
            return self._run(progress)

    def _run(self, progress: Callable[[Iterable], Iterable] | None) -> dict[str, Any]:
        start = time.perf_counter()
        tracked = [_Tracked("scheme", self.scheme, 0)]
        if self.baseline is not None:
            tracked.append(_Tracked("baseline", self.baseline, 1, with_bounds=False))
        tracked += [_Tracked(label, sch, i + 2)
                    for i, (label, sch) in enumerate(self.compare.items())]
        masks_by_s = {s: SurvivorSets(masks) for s, masks in self.survivor_masks().items()}
        jobs = [(t, r) for t in tracked for r in range(t.draws(self.realizations))]
        for t, r in progress(jobs) if progress is not None else jobs:
            t.evaluate(self.decoder, self.seed, r, masks_by_s)
        return self._results(tracked, time.perf_counter() - start)

    def _results(self, tracked: list[_Tracked], seconds: float) -> dict[str, Any]:
        sch, a = self.scheme, self.scheme.assignment
        points = []
        for s in self.s_values:
            main = tracked[0].point(s)
            base = next((t for t in tracked if t.label == "baseline"), None)
            point = {
                "s": s,
                "straggler_fraction": s / sch.n,
                "empirical_mean": main["empirical_mean"],
                "empirical_max": main["empirical_max"],
                "baseline_mean": base.errors[s].mean if base else None,
                "baseline_max": base.errors[s].max if base else None,
                "upper_bound": main["upper_bound"],
                "lower_bound": float(lower_bound(sch.n, sch.k, sch.m, a.delta, s)),
                "realizations": tracked[0].draws(self.realizations),
                "straggler_sets": self.straggler_sets,
                "bounds": main["bounds"],
                "compared": {t.label: t.point(s) for t in tracked[2:]},
            }
            points.append(point)
        return {
            "n": sch.n, "k": sch.k, "m": sch.m, "delta": a.delta, "gamma": a.gamma,
            "scheme": sch.name, "scheme_label": sch.label, "scheme_params": sch.describe(),
            "baseline_label": self.baseline.label if self.baseline is not None else None,
            "compared_schemes": {t.label: {"label": t.scheme.label,
                                           "primary_bound": t.scheme.primary_bound}
                                 for t in tracked[2:]},
            "assignment": a.name, "assignment_params": a.summary(),
            "decoder": self.decoder.name, "seed": self.seed,
            "primary_bound": sch.primary_bound,
            "max_gram_condition": {t.label: t.max_condition for t in tracked},
            "points": points, "seconds": seconds,
        }
