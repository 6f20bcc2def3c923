"""The planner's iterations from measured arena runs (issue 18): I_0, the ratios and their
spread, κ fitted to the arena's (ē, ratio) points, local SGD's measured ratio, the labels,
the app's keys, and one-line refusals of a bad arena file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.cluster.planner import load_arena_convergence, run_plan
from agc_pipeline.errors import ConfigError
from agc_pipeline.plan import build_plan
from tests.conftest import compose_config
from tests.test_plan_baselines import _cluster, _settings


def _cell(mitigation: str, mean: float | None, std: float | None = 5.0, error: float = 0.0,
          regime: str = "slowdown", reached: int = 2) -> dict:
    return {"setting": "cnn / mnist", "regime": regime, "placement": "iid",
            "mitigation": mitigation, "normalised_error": error,
            "accuracy": {"runs": 2, "reached": reached, "mean_iteration": mean,
                         "std_iteration": std, "mean_time": None, "std_time": None}}


def _arena(tmp_path: Path, cells: list[dict]) -> Path:
    path = tmp_path / "arena.json"
    path.write_text(json.dumps({"targets": {"accuracy": 0.8, "loss": 0.6}, "cells": cells}))
    return path


CELLS = [_cell("ddp", 50.0), _cell("backup_workers", 60.0, error=0.2),
         _cell("code7_m2", 55.0, error=0.2), _cell("code7_m4", 62.5, error=0.2),
         _cell("frc", 50.0), _cell("local_sgd", 70.0, std=10.0),
         _cell("ddp", 10.0, regime="stall"), _cell("code19_m2", None, std=None, error=0.5,
                                                   reached=1)]


def test_iterations_ratios_and_kappa_from_the_arena(tmp_path: Path) -> None:
    conv = load_arena_convergence(_arena(tmp_path, CELLS), "slowdown", "iid", None)
    assert conv.iterations_exact == 50.0  # DDP of the chosen regime only
    assert conv.measured["backup_workers"]["ratio"] == pytest.approx(1.2)
    assert conv.measured["local_sgd"]["std_ratio"] == pytest.approx(0.2)
    assert conv.measured["code19_m2"]["ratio"] is None  # 1 of 2 seeds: not a point
    assert conv.local_sgd_factor == pytest.approx(1.4)
    # points (ē/(1−ē) = 0.25 each): ratios − 1 = 0.2, 0.1, 0.25 -> κ = mean / 0.25
    assert [p["label"] for p in conv.points] == ["backup_workers", "code7_m2", "code7_m4"]
    assert conv.kappa == pytest.approx(np.mean([0.2, 0.1, 0.25]) / 0.25)
    assert load_arena_convergence(_arena(tmp_path, CELLS), "slowdown", "iid", 1.0).kappa == 1.0


def test_a_plan_from_the_arena_scales_local_sgd_and_labels_every_row(tmp_path: Path) -> None:
    conv = load_arena_convergence(_arena(tmp_path, CELLS), "slowdown", "iid", None)
    result = run_plan(_cluster(), _settings(families=["uncoded_wait", "frc"], p=[0.0],
                                           s_fractions=[0.0, 0.67]), conv)
    rows = {r["family"]: r for r in result["results"]}
    local = rows["local_sgd"]
    assert local["time_to_loss"] == pytest.approx(50.0 * 1.4 * local["iteration_time"])
    assert rows["ddp"]["time_to_loss"] == pytest.approx(50.0 * rows["ddp"]["iteration_time"])
    assert rows["backup"]["iterations"]["measured"]["ratio"] == pytest.approx(1.2)
    assert "code7_m2" in rows["frc"]["iterations"]["measured"]
    assert all(r["iterations"]["extrapolated"] for r in result["results"] if "iterations" in r)
    assert "applied unchanged" in result["convergence"]["extrapolation"]


@pytest.mark.parametrize("cells, regime, message", [
    (CELLS, "persistent", "no runs of regime 'persistent'"),
    ([_cell("ddp", None, reached=1), _cell("frc", 50.0)], "slowdown", "DDP did not reach"),
])
def test_a_bad_arena_is_refused_in_one_line(tmp_path: Path, cells: list, regime: str,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_arena_convergence(_arena(tmp_path, cells), regime, "iid", None)
    assert "\n" not in str(info.value)


def test_a_missing_or_garbled_arena_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plan.arena: no such file"):
        load_arena_convergence(tmp_path / "missing.json", "slowdown", "iid", None)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ConfigError, match="plan.arena .*bad.json"):
        load_arena_convergence(tmp_path / "bad.json", "slowdown", "iid", None)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="not an arena.json"):
        load_arena_convergence(tmp_path / "other.json", "slowdown", "iid", None)


def test_the_plan_app_reads_the_packaged_arena_by_default() -> None:
    _, _, conv = build_plan(compose_config("plan", []))
    assert conv.measured is not None and "arena_mnist_cnn.json" in conv.source
    assert conv.iterations_exact > 0 and "ddp" in conv.measured
    _, _, curves = build_plan(compose_config("plan", ["plan.iterations=curves"]))
    assert curves.measured is None
    with pytest.raises(ConfigError, match="plan.iterations"):
        build_plan(compose_config("plan", ["plan.iterations=guess"]))


def test_a_local_sgd_that_missed_the_target_counts_at_least_its_runs_length(
        tmp_path: Path) -> None:
    missed = {**_cell("local_sgd", None, std=None, reached=1), "iterations": 100}
    conv = load_arena_convergence(_arena(tmp_path, [_cell("ddp", 50.0), missed]),
                                  "slowdown", "iid", None)
    assert conv.measured["local_sgd"]["censored"] is True
    assert conv.local_sgd_factor == pytest.approx(2.0)  # ≥ 100 of DDP's 50 iterations
    result = run_plan(_cluster(), _settings(families=["uncoded_wait"], p=[0.0]), conv)
    local = next(r for r in result["results"] if r["family"] == "local_sgd")
    assert "lower bound" in local["iterations"]["model"]
