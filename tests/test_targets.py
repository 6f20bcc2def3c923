"""Time to a target accuracy or loss (reporting/targets.py): hand cases of the definitions
(first logged row, smoothing, never reached, both clocks) and the aggregate over seeds."""

from __future__ import annotations

import math

import pytest

from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.targets import (
    TargetHit,
    aggregate,
    time_to_accuracy,
    time_to_loss,
    time_to_targets,
)

ROWS = [
    {"iteration": 0, "train_loss": 2.0, "test_accuracy": 0.1, "virtual_time": 0.0},
    {"iteration": 10, "train_loss": 1.0, "virtual_time": 5.0},  # no evaluation here
    {"iteration": 20, "train_loss": 0.6, "test_accuracy": 0.8, "virtual_time": 9.0},
    {"iteration": 30, "train_loss": 0.4, "test_accuracy": 0.7, "virtual_time": 14.0},
    {"iteration": 40, "train_loss": 0.5, "test_accuracy": 0.9, "virtual_time": 20.0},
]


def test_first_logged_row_reaching_the_target() -> None:
    assert time_to_accuracy(ROWS, "virtual", 0.8) == TargetHit(20, 9.0)  # ≥, not >
    assert time_to_accuracy(ROWS, "virtual", 0.85) == TargetHit(40, 20.0)
    assert time_to_loss(ROWS, "virtual", 1.0) == TargetHit(10, 5.0)  # ≤
    assert time_to_loss(ROWS, "virtual", 0.45) == TargetHit(30, 14.0)
    assert time_to_accuracy(ROWS, "virtual", 0.1) == TargetHit(0, 0.0)


def test_never_reached() -> None:
    hit = time_to_accuracy(ROWS, "virtual", 0.95)
    assert hit == TargetHit(None, None) and not hit.reached
    assert not time_to_loss(ROWS, "virtual", 0.1).reached
    assert not time_to_loss([], "virtual", 1.0).reached
    diverged = [{"iteration": 0, "train_loss": math.nan, "virtual_time": 1.0}]
    assert not time_to_loss(diverged, "virtual", 10.0).reached


def test_smoothed_variant() -> None:
    # accuracy means over the last 2 evaluations: (0.1+0.8)/2, (0.8+0.7)/2, (0.7+0.9)/2
    assert time_to_accuracy(ROWS, "virtual", 0.75, smooth=2) == TargetHit(30, 14.0)
    assert time_to_accuracy(ROWS, "virtual", 0.8, smooth=2) == TargetHit(40, 20.0)
    # losses over 3 rows: 1.2, 0.666…, 0.5: first ≤ 0.7 at iteration 30
    assert time_to_loss(ROWS, "virtual", 0.7, smooth=3) == TargetHit(30, 14.0)
    # a window is only defined from its w-th value on
    assert not time_to_loss(ROWS[:2], "virtual", 5.0, smooth=3).reached


def test_wall_clock_reads_wall_time() -> None:
    rows = [{"iteration": 1, "train_loss": 0.5, "wall_time": 3.5, "virtual_time": 99.0}]
    assert time_to_loss(rows, "wall", 0.5) == TargetHit(1, 3.5)
    with pytest.raises(ConfigError, match="no wall_time for clock=wall"):
        time_to_loss([{"iteration": 1, "train_loss": 0.5}], "wall", 1.0)


def test_both_targets_as_json() -> None:
    out = time_to_targets(ROWS, "virtual", accuracy=0.8, loss=0.45)
    assert out["accuracy"] == {"target": 0.8, "iteration": 20, "time": 9.0}
    assert out["loss"] == {"target": 0.45, "iteration": 30, "time": 14.0}
    assert "loss" not in time_to_targets(ROWS, "virtual", accuracy=0.8)


def test_aggregate_over_seeds() -> None:
    agg = aggregate([TargetHit(10, 2.0), TargetHit(30, 4.0), TargetHit(None, None)])
    assert agg == {"runs": 3, "reached": 2, "mean_time": 3.0,
                   "std_time": pytest.approx(math.sqrt(2.0)), "mean_iteration": 20.0,
                   "std_iteration": pytest.approx(math.sqrt(200.0))}
    one = aggregate([TargetHit(5, 1.5)])
    assert (one["reached"], one["mean_time"], one["std_time"]) == (1, 1.5, None)
    none = aggregate([TargetHit(None, None)] * 2)
    assert none == {"runs": 2, "reached": 0, "mean_time": None, "std_time": None,
                    "mean_iteration": None, "std_iteration": None}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: time_to_loss(ROWS, "cpu", 1.0), "clock must be one of virtual | wall"),
    (lambda: time_to_loss(ROWS, "virtual", True), "target train_loss must be a finite number"),
    (lambda: time_to_loss(ROWS, "virtual", 1.0, smooth=0), "smooth must be a positive"),
    (lambda: time_to_loss(ROWS, "virtual", 1.0, smooth=True), "smooth must be a positive"),
    (lambda: time_to_loss([{"iteration": 2, "train_loss": 1.0, "virtual_time": 1.0},
                           {"iteration": 1, "train_loss": 1.0, "virtual_time": 2.0}],
                          "virtual", 0.5), "row 1: iteration must be an integer, non-decr"),
    (lambda: time_to_loss([{"iteration": 0, "train_loss": False, "virtual_time": 1.0}],
                          "virtual", 0.5), "row 0: train_loss must be a number or null"),
])
def test_bad_inputs_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
