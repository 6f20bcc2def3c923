"""Time to a target: when a run first reaches a test accuracy or a training loss, and the
aggregate over seeds (the measure of the baseline comparison, issue 18).

Definitions. A run's metrics are its logged rows in logging order, each a dict with
``iteration`` (int), ``train_loss``, optionally ``test_accuracy`` (absent or None where not
evaluated), and the clock's time: ``virtual_time`` for ``clock="virtual"`` (the simulated
runtime), ``wall_time`` for ``clock="wall"`` (the measured runtimes; see
:data:`~agc_pipeline.reporting.summary.CLOCKS`).

* time to accuracy a: the time and iteration of the **first logged row** whose
  ``test_accuracy ≥ a``;
* time to loss ℓ: the same with ``train_loss ≤ ℓ``;
* smoothed variant (``smooth = w > 1``): the value compared is the mean of the metric over the
  last w rows that logged it, defined from the w-th such row on (one lucky evaluation does not
  count);
* never reached: ``iteration = time = None``. Rows without the metric, or with NaN (a diverged
  loss), never reach it.

Over seeds (:func:`aggregate`): how many runs reached the target, and the mean and sample
standard deviation (ddof = 1; None below two) of time and iteration over the runs that
reached it — conditional on reaching it, so always read them with ``reached``/``runs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agc_pipeline.errors import require
from agc_pipeline.validation import is_int, is_number, require_choice, require_finite, require_int

__all__ = ["TIME_KEYS", "TargetHit", "aggregate", "first_reached", "time_to_accuracy",
           "time_to_loss", "time_to_targets"]

#: the row key holding each clock's time
TIME_KEYS = {"virtual": "virtual_time", "wall": "wall_time"}


@dataclass(frozen=True)
class TargetHit:
    """When a run first reached a target (both None: never)."""

    iteration: int | None
    time: float | None

    @property
    def reached(self) -> bool:
        return self.iteration is not None


def _value(row: dict[str, Any], key: str, index: int) -> float | None:
    """``row[key]`` as a float, None where absent or null (booleans and strings refused)."""
    value = row.get(key)
    if value is None:
        return None
    require(is_number(value), f"metrics row {index}: {key} must be a number or null "
                              f"(got {value!r})")
    return float(value)


def first_reached(rows: Sequence[dict[str, Any]], clock: str, metric: str, target: float,
                  higher_is_better: bool, smooth: int = 1) -> TargetHit:
    """The first logged row whose ``metric`` (its mean over the last ``smooth`` logged values)
    is ≥ ``target`` (``higher_is_better``) or ≤ ``target``; see the module docstring."""
    time_key = TIME_KEYS[require_choice(clock, "clock", tuple(TIME_KEYS))]
    target = require_finite(target, f"target {metric}")
    smooth = require_int(smooth, "smooth", minimum=1)
    window: list[float] = []
    last = -1
    for index, row in enumerate(rows):
        iteration = row.get("iteration")
        require(is_int(iteration) and iteration >= last,
                f"metrics row {index}: iteration must be an integer, non-decreasing "
                f"(got {iteration!r} after {last})")
        last = int(iteration)
        value = _value(row, metric, index)
        if value is None:
            continue
        window = (window + [value])[-smooth:]
        if len(window) < smooth:
            continue
        level = float(np.mean(window))
        if math.isnan(level) or not (level >= target if higher_is_better else level <= target):
            continue
        time = _value(row, time_key, index)
        require(time is not None, f"metrics row {index}: no {time_key} for clock={clock}")
        return TargetHit(iteration=last, time=time)
    return TargetHit(iteration=None, time=None)


def time_to_accuracy(rows: Sequence[dict[str, Any]], clock: str, target: float,
                     smooth: int = 1) -> TargetHit:
    """First logged row with ``test_accuracy ≥ target``."""
    return first_reached(rows, clock, "test_accuracy", target, True, smooth)


def time_to_loss(rows: Sequence[dict[str, Any]], clock: str, target: float,
                 smooth: int = 1) -> TargetHit:
    """First logged row with ``train_loss ≤ target``."""
    return first_reached(rows, clock, "train_loss", target, False, smooth)


def time_to_targets(rows: Sequence[dict[str, Any]], clock: str,
                    accuracy: float | None = None, loss: float | None = None,
                    smooth: int = 1) -> dict[str, Any]:
    """Both targets of one run as a JSON-friendly dict (a target given as None is skipped)."""
    out: dict[str, Any] = {"clock": clock, "smooth": smooth}
    if accuracy is not None:
        out["accuracy"] = {"target": accuracy,
                           **asdict(time_to_accuracy(rows, clock, accuracy, smooth))}
    if loss is not None:
        out["loss"] = {"target": loss, **asdict(time_to_loss(rows, clock, loss, smooth))}
    return out


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return float(np.mean(values)), std


def aggregate(hits: Iterable[TargetHit]) -> dict[str, Any]:
    """Over seeds: ``runs``, ``reached``, and mean/std (ddof = 1) of time and iteration over
    the runs that reached the target (None where no run, or for std fewer than two, did)."""
    hits = list(hits)
    done = [h for h in hits if h.reached]
    mean_time, std_time = _stats([float(h.time) for h in done if h.time is not None])
    mean_it, std_it = _stats([float(h.iteration) for h in done if h.iteration is not None])
    return {"runs": len(hits), "reached": len(done), "mean_time": mean_time,
            "std_time": std_time, "mean_iteration": mean_it, "std_iteration": std_it}
