"""The Monte Carlo engine and the `analyze` app (results.json contract, figures, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.analysis.engine import ErrorStudy, paper_grid, straggler_masks
from agc_pipeline.analyze import build_study, run_analysis
from agc_pipeline.codes.designs import bibd
from agc_pipeline.codes.random_diagonal import RandomDiagonal
from agc_pipeline.codes.stack import Stack
from agc_pipeline.errors import ConfigError
from tests.conftest import ROOT, compose_config

POINT_KEYS = {"s", "straggler_fraction", "empirical_mean", "empirical_max", "baseline_mean",
              "upper_bound", "lower_bound", "realizations", "straggler_sets"}
TOP_KEYS = {"n", "k", "m", "delta", "gamma", "scheme", "assignment", "points", "seconds"}


def test_paper_grid_matches_authors_script() -> None:
    assert paper_grid(91) == [1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22]
    assert paper_grid(40, include_zero=True)[:3] == [0, 1, 2]
    assert len(paper_grid(40, include_zero=True)) == 11  # 16 grid values, repeats dropped


def test_straggler_masks_have_exactly_s_stragglers() -> None:
    masks = straggler_masks(20, 7, 500, np.random.default_rng(0))
    assert np.all((~masks).sum(axis=1) == 7)
    # every worker straggles with frequency s/n
    assert np.allclose((~masks).mean(axis=0), 7 / 20, atol=0.08)
    again = straggler_masks(20, 7, 500, np.random.default_rng(0))
    np.testing.assert_array_equal(masks, again)


def brute_force_mean(scheme, masks_by_s, realizations, seed):
    """Per-set lstsq errors averaged over the same draws and sets the engine uses."""
    from agc_pipeline.analysis.engine import encoder_rng

    out = {}
    for s, masks in masks_by_s.items():
        errs = []
        for r in range(realizations):
            b = scheme.encode(encoder_rng(seed, r, 0))
            for mk in masks:
                x = np.linalg.lstsq(b[:, mk], scheme.target, rcond=None)[0]
                errs.append(((b[:, mk] @ x - scheme.target) ** 2).sum())
        out[s] = (np.mean(errs), np.max(errs))
    return out


def test_engine_matches_brute_force_and_is_reproducible() -> None:
    a = bibd("projective_plane", q=3)
    study = ErrorStudy(RandomDiagonal(a, 2), [0, 2, 5], realizations=4, straggler_sets=30,
                       seed=3, baseline=Stack(a, 2))
    res = study.run()
    expected = brute_force_mean(study.scheme, study.survivor_masks(), 4, 3)
    for p in res["points"]:
        mean, mx = expected[p["s"]]
        assert p["empirical_mean"] == pytest.approx(mean, abs=1e-9)
        assert p["empirical_max"] == pytest.approx(mx, abs=1e-9)
        assert p["empirical_mean"] <= p["upper_bound"] + 1.0  # eq. (10) bounds the mean
        assert p["baseline_mean"] > p["empirical_mean"]
    again = ErrorStudy(RandomDiagonal(a, 2), [0, 2, 5], 4, 30, seed=3, baseline=Stack(a, 2)).run()
    assert [p["empirical_mean"] for p in again["points"]] == \
        [p["empirical_mean"] for p in res["points"]]


def test_engine_rejects_bad_study() -> None:
    from agc_pipeline.errors import ConfigError

    a = bibd("fano")
    with pytest.raises(ConfigError, match="analysis.s values must satisfy"):
        ErrorStudy(RandomDiagonal(a, 2), [8], 1, 1)
    with pytest.raises(ConfigError, match="analysis.realizations"):
        ErrorStudy(RandomDiagonal(a, 2), [1], 0, 1)


def small(overrides: list[str]) -> list[str]:
    return overrides + ["analysis.realizations=3", "analysis.straggler_sets=40",
                        "analysis.progress=false"]


def check_schema(res: dict) -> None:
    assert TOP_KEYS <= set(res)
    for p in res["points"]:
        assert POINT_KEYS <= set(p)


def test_fig3_preset_reduced(tmp_path: Path) -> None:
    cfg = compose_config("analyze", small(["experiment=fig3"]))
    assert (cfg.assignment.q, cfg.m, cfg.analysis.realizations) == (9, 2, 3)
    res = run_analysis(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    check_schema(on_disk)
    assert (on_disk["n"], on_disk["k"], on_disk["delta"], on_disk["gamma"]) == (91, 91, 10, 10)
    assert [p["s"] for p in res["points"]] == paper_grid(91)
    for p in res["points"]:
        # empirical (7) close to and below bound (10); baseline clearly worse
        assert p["empirical_mean"] < p["upper_bound"] < p["baseline_mean"]
        assert p["upper_bound"] - p["empirical_mean"] < 2.0
        assert p["bounds"]["eq10"] == pytest.approx(p["bounds"]["lemma1_mean"])
    assert (tmp_path / "error_vs_stragglers.png").stat().st_size > 10_000


def test_fig4_preset_zero_error_at_zero_stragglers(tmp_path: Path) -> None:
    cfg = compose_config("analyze", small(["experiment=fig4", "analysis.s=[0,3,9]"]))
    res = run_analysis(cfg, tmp_path)
    check_schema(res)
    assert (res["n"], res["k"], res["m"]) == (54, 27, 2)
    p0 = res["points"][0]
    assert p0["s"] == 0 and p0["empirical_max"] < 1e-9  # Proposition 1
    for p in res["points"]:
        assert p["empirical_mean"] <= p["bounds"]["lemma1_mean"] + 0.5
        assert p["bounds"]["lemma1_mean"] <= p["bounds"]["eq17"] + 1e-9
        assert p["upper_bound"] == p["bounds"]["eq17"]


def test_fig5_preset_both_variants(tmp_path: Path) -> None:
    cfg = compose_config("analyze", small(["experiment=fig5", "analysis.s=[0,4,10]"]))
    res = run_analysis(cfg, tmp_path)
    check_schema(res)
    p0 = res["points"][0]
    assert p0["empirical_max"] < 1e-9 and p0["compared"]["+-1"]["empirical_max"] < 1e-9
    for p in res["points"]:
        assert p["empirical_max"] <= p["bounds"]["eq20_max"] + 1e-9
        pm1 = p["compared"]["+-1"]
        assert pm1["empirical_max"] <= pm1["upper_bound"] + 1e-9
        assert p["baseline_mean"] > p["empirical_mean"]


@pytest.mark.parametrize("overrides", [
    ["assignment=srg", "assignment.graph=petersen", "analysis.s=[0,2]"],
    ["assignment=srg", "assignment.graph=paley", "assignment.q=13", "scheme=stack"],
    ["assignment=bibd", "assignment.design=steiner_triple", "assignment.v=13",
     "assignment.transpose=false", "scheme=hadamard_nullspace", "scheme.variant=pm1"],
    ["assignment=fractional", "assignment.n=12", "assignment.s=2", "scheme=ce_frc",
     "analysis.s=[0,1,2]"],
    ["assignment=cyclic", "assignment.n=8", "assignment.s=2", "m=1", "scheme=crc",
     "analysis.s=[2]"],
    ["assignment=identity", "assignment.n=10", "m=1", "scheme=stack", "decoder=fixed"],
])
def test_any_combination_runs(tmp_path: Path, overrides: list[str]) -> None:
    res = run_analysis(compose_config("analyze", small(overrides)), tmp_path)
    check_schema(res)
    if "scheme=ce_frc" in overrides or "scheme=crc" in overrides:
        assert all(p["empirical_max"] < 1e-9 for p in res["points"])  # exact codes


def test_wandb_offline_run_file(tmp_path: Path) -> None:
    cfg = compose_config("analyze", small(["assignment=bibd", "assignment.design=fano",
                                           "logger=wandb", "analysis.s=[1]"]))
    run_analysis(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "agc_pipeline.analyze", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["assignment=coset", "assignment.k=27", "assignment.delta=6"], "p ∤ delta"),
    (["assignment=bibd", "assignment.q=6"], "assignment.q must be a prime power"),
    (["scheme=hadamard_nullspace"], "needs n = m·k"),
    (["scheme.epsilon=1.5"], "scheme.epsilon must lie in [0, 1)"),
    (["analysis.realizations=0"], "analysis.realizations must be a positive integer"),
    (["m=abc"], "m must be a positive integer (got 'abc')"),
    (["scheme.epsilon=abc"], "scheme.epsilon must be a finite number (got 'abc')"),
    (["analysis.s=abc"], "analysis.s must be a list of integers (got 'abc')"),
    (["seed=abc"], "seed must be a non-negative integer (got 'abc')"),
])
def test_cli_bad_config_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli([*args, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("m=2.5", "m must be a positive integer (got 2.5)"),
    ("m=true", "m must be a positive integer (got True)"),
    ("m=0", "m must be a positive integer (got 0)"),
    ("analysis.s=[1.5]", "analysis.s[0] must be a non-negative integer (got 1.5)"),
    ("analysis.s=[1,true]", "analysis.s[1] must be a non-negative integer (got True)"),
    ("analysis.realizations=2.5", "analysis.realizations must be a positive integer (got 2.5)"),
    ("analysis.realizations=true", "analysis.realizations must be a positive integer"),
    ("analysis.straggler_sets=10.0", "analysis.straggler_sets must be a positive integer"),
    ("seed=1.5", "seed must be a non-negative integer (got 1.5)"),
    ("seed=true", "seed must be a non-negative integer (got True)"),
    ("analysis.grid_points=2.5", "analysis.grid_points must be a positive integer"),
    ("analysis.max_fraction=abc", "analysis.max_fraction must be a finite number"),
    ("analysis.include_zero=1", "analysis.include_zero must be true or false"),
    ("scheme.epsilon=nan", "scheme.epsilon must be a finite number"),
])
def test_non_integers_are_refused_where_an_integer_is_meant(override: str, message: str) -> None:
    """Hydra hands 2.5 or true through as they are: m = 2.5 must not run with m = 2."""
    cfg = compose_config("analyze", ["assignment.design=fano", override])
    with pytest.raises(ConfigError) as info:
        build_study(cfg)
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)


def test_fig4_preset_includes_zero_stragglers(tmp_path: Path) -> None:
    """The paper's Fig. 4 starts at s = 0, where B is invertible and the error is 0
    (Proposition 1, Remark 4)."""
    cfg = compose_config("analyze", ["experiment=fig4", "analysis.realizations=2",
                                     "analysis.straggler_sets=5", "analysis.progress=false",
                                     "analysis.plot=false"])
    study = build_study(cfg)
    assert study.s_values == paper_grid(54, include_zero=True) and study.s_values[0] == 0
    p0 = run_analysis(cfg, tmp_path)["points"][0]
    assert p0["s"] == 0 and p0["empirical_max"] < 1e-9 and p0["baseline_mean"] > 1.0


def test_cli_writes_results(tmp_path: Path) -> None:
    proc = run_cli(["assignment.design=fano", "analysis.realizations=2",
                    "analysis.straggler_sets=10", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    check_schema(res)
    assert res["assignment_params"]["design"] == "fano"


def test_cli_multirun(tmp_path: Path) -> None:
    proc = run_cli(["-m", "assignment.design=fano", "m=1,2", "analysis.realizations=2",
                    "analysis.straggler_sets=10", "analysis.progress=false",
                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ms = sorted(json.loads(p.read_text())["m"]
                for p in (tmp_path / "sweep").glob("*/results.json"))
    assert ms == [1, 2]
