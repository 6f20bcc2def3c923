"""The planner's baselines (issue 18): backup workers, local and hierarchical SGD — hand cases
of each formula at n = 2 or 3 without randomness —, additive stalls, the winner per setting
("don't code" allowed), the honest iterations label, and experiment=hsgd_blog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.build import build_cluster
from agc_pipeline.cluster.costmodel import ClusterModel
from agc_pipeline.cluster.mitigations import Averaging, averaging_step_times, local_sgd_row
from agc_pipeline.cluster.plan_summary import best_per_setting
from agc_pipeline.cluster.planner import Convergence, PlanSettings, run_plan
from agc_pipeline.errors import ConfigError
from agc_pipeline.plan import build_plan
from tests.conftest import ROOT, compose_config

CONV = Convergence("x", 1.0, 100, kappa=0.0, fitted_kappa=0.0)


def _cluster() -> ClusterModel:
    cluster = build_cluster(compose_config("plan", ["cluster=ib_100g"]))
    assert cluster is not None
    return cluster


def _settings(**kw: object) -> PlanSettings:
    base = dict(n=[3], d=[1_000_000], m=[1], p=[0.0, 1.0], slowdown=1.0,
                samples_per_iteration=3 * 2**14, flops_per_sample=6, grad_bytes=4,
                param_bytes=2, broadcast=["pipelined"], families=["uncoded_wait"],
                s_fractions=[0.0, 0.34], draws=8, error_realizations=1, error_sets=4,
                local_sgd={"period": 4}, hierarchical_sgd=None)
    base.update(kw)
    return PlanSettings(**base)  # type: ignore[arg-type]


def _ring(cluster: ClusterModel, n: int, d: int) -> float:
    """2(n−1)·α + 2(n−1)/n · 4d/β, by hand."""
    return 2 * (n - 1) * cluster.latency + 2 * (n - 1) / n * 4 * d / cluster.bandwidth


# ------------------------------------------------------------------------------------------
# the formulas, by hand


def test_local_sgd_pays_the_slowest_worker_once_per_period() -> None:
    # n = 2, H = 2: periods (1+3, 2+1) -> max 4 and (1+1, 1+5) -> max 6, plus t = 1 each
    compute = np.array([[1.0, 2.0], [3.0, 1.0], [1.0, 1.0], [1.0, 5.0], [9.0, 9.0]])
    times = averaging_step_times(compute, group_size=2, period=2, global_period=2,
                                 t_group=0.0, t_global=1.0)
    np.testing.assert_allclose(times, [(4 + 1) / 2, (6 + 1) / 2])  # the 5th draw unused
    # synchronous SGD on the same draws would pay max per step: 2, 3, 1, 5
    assert np.mean(times) < np.mean(compute[:4].max(axis=1) + 1.0)


def test_hierarchical_sgd_by_hand() -> None:
    # n = 4, groups {0,1} {2,3}, group average every step, global every 2 steps
    compute = np.array([[1.0, 2.0, 3.0, 1.0], [2.0, 2.0, 1.0, 1.0]])
    times = averaging_step_times(compute, group_size=2, period=1, global_period=2,
                                 t_group=0.5, t_global=1.0)
    # group A: max(1,2) + 0.5 + max(2,2) = 4.5; group B: max(3,1) + 0.5 + max(1,1) = 4.5
    np.testing.assert_allclose(times, [(4.5 + 1.0) / 2])
    with pytest.raises(ConfigError, match="group size 3 must divide n = 4"):
        averaging_step_times(compute, 3, 1, 2, 0.0, 0.0)
    with pytest.raises(ConfigError, match="plan.draws = 2 must be ≥ the averaging period 4"):
        averaging_step_times(compute, 2, 2, 4, 0.0, 0.0)


def test_local_sgd_row_uses_the_ring_all_reduce() -> None:
    cluster, d, c = _cluster(), 1_000_000, 0.01
    row = local_sgd_row(cluster, Averaging("local_sgd", 4), np.full((8, 3), c), d, 4)
    assert row["available"] and row["scheme"] == "local SGD H=4"
    assert row["iteration_time"] == pytest.approx(c + _ring(cluster, 3, d) / 4, rel=1e-12)
    hier = Averaging("hierarchical_sgd", 1, group_size=2, global_period=2)
    missing = local_sgd_row(cluster, hier, np.full((8, 3), c), d, 4)
    assert not missing["available"] and "does not divide n = 3" in missing["why"]


def test_plan_rows_by_hand_with_additive_stalls() -> None:
    """n = 3, p ∈ {0, 1} (no randomness): DDP, backup workers (s = 1) and local SGD (H = 4),
    with a 2 s stall on every worker at p = 1."""
    cluster, d = _cluster(), 1_000_000
    result = run_plan(cluster, _settings(stall=2.0), CONV)
    # the PS's and DDP's rows (backup workers also has a sharded row: test_plan_sharded.py)
    rows = {(r["p"], r["family"]): r for r in result["results"] if r["runtime"] != "sharded"}
    c = 2**14 * 6 * d / cluster.worker_flops  # B/n samples per worker
    ring = _ring(cluster, 3, d)
    for p, stall in ((0.0, 0.0), (1.0, 2.0)):
        assert rows[(p, "ddp")]["iteration_time"] == pytest.approx(c + stall + ring, rel=1e-12)
        assert rows[(p, "local_sgd")]["iteration_time"] == pytest.approx(
            c + stall + ring / 4, rel=1e-12)
        assert rows[(p, "local_sgd")]["time_to_loss"] == pytest.approx(
            100 * rows[(p, "local_sgd")]["iteration_time"])
    # backup workers, pipelined broadcast: worker j holds the parameters at (j+1)α + τ_b;
    # the 4d-byte messages (τ_u) queue on the PS link; the PS takes the 2nd delivery, decodes
    alpha, tau_b, tau_u = cluster.latency, 2 * d / cluster.bandwidth, 4 * d / cluster.bandwidth
    first = alpha + tau_b + c + alpha + tau_u
    second = max(2 * alpha + tau_b + c + alpha, first) + tau_u
    backup = rows[(0.0, "backup")]
    assert backup["s"] == 1 and backup["scheme"] == "backup workers" and not backup["coded"]
    assert backup["iteration_time"] == pytest.approx(
        second + cluster.decode_time(2, 1, 3, d, 4), rel=1e-12)
    assert backup["normalised_error"] == pytest.approx(1 / 3)  # Err = s of k = n subsets


def test_iterations_are_labelled_with_their_source() -> None:
    result = run_plan(_cluster(), _settings(families=["uncoded_wait", "frc"], p=[0.0],
                                           s_fractions=[0.0, 0.67]), CONV)
    labels = {r["family"]: r["iterations"] for r in result["results"]}
    assert all(label["extrapolated"] is True for label in labels.values())
    assert labels["ddp"]["source"] == "x" and labels["frc"]["kappa"] == 0.0
    assert labels["local_sgd"]["source"].startswith("assumed")


# ------------------------------------------------------------------------------------------
# the winner per setting


def _row(family: str, t: float, coded: bool = False, **kw: object) -> dict:
    return {"n": 4, "d": 10, "p": 0.1, "scheme": kw.pop("scheme", family), "family": family,
            "coded": coded, "broadcast": kw.pop("broadcast", None), "iteration_time": t,
            "time_to_loss": 10 * t, "time_to_loss_isotropic": 10 * t, "s_isotropic": 0,
            "s": 0, **kw}


@pytest.mark.parametrize(("times", "winner", "kind"), [
    ({"ddp": 3.0, "backup": 2.0, "local_sgd": 1.5, "code": 1.0}, "code", "code"),
    ({"ddp": 3.0, "backup": 2.0, "local_sgd": 1.5, "code": 1.6}, "local_sgd", "baseline"),
    ({"ddp": 1.0, "backup": 2.0, "local_sgd": 1.5, "code": 1.2}, "ddp", "baseline"),
    ({"ddp": 3.0, "backup": 1.0, "local_sgd": 1.5, "code": 1.0}, "backup", "baseline"),  # tie
])
def test_winner_among_ddp_backup_local_sgd_and_the_best_code(times: dict, winner: str,
                                                             kind: str) -> None:
    rows = [_row("ddp", times["ddp"]),
            _row("backup", times["backup"], broadcast="unicast"),
            _row("local_sgd", times["local_sgd"], available=True),
            _row("hierarchical_sgd", 0.1, available=False),  # not available: ignored
            _row("frc", times["code"] + 1, coded=True, broadcast="unicast"),
            _row("ce_frc", times["code"], coded=True, broadcast="unicast")]
    st = _settings(n=[4], d=[10], p=[0.1], broadcast=["unicast"])
    (best,) = best_per_setting(rows, st)
    assert best["winner"]["kind"] == kind
    assert best["winner"]["family"] == ("ce_frc" if winner == "code" else winner)
    base = min(times[k] for k in ("ddp", "backup", "local_sgd"))
    assert best["best_baseline"]["time_to_loss"] == pytest.approx(10 * base)
    assert best["speedup_vs_best_baseline"] == pytest.approx(base / times["code"])
    assert set(best["baselines"]) == {"ddp", "backup", "local_sgd"}
    assert best["step_speedup_vs_ddp"]["local_sgd"] == pytest.approx(
        times["ddp"] / times["local_sgd"])


def test_without_codes_a_baseline_wins() -> None:
    rows = [_row("ddp", 2.0), _row("local_sgd", 1.0, available=True)]
    st = _settings(n=[4], d=[10], p=[0.1], broadcast=["unicast"])
    (best,) = best_per_setting(rows, st)
    assert best["winner"]["family"] == "local_sgd" and best["best_coded"] is None
    assert best["speedup_vs_best_baseline"] is None


# ------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(("kw", "message"), [
    ({"stall": -1.0}, "plan.stall must be ≥ 0.0"),
    ({"stall": True}, "plan.stall must be a finite number (got True)"),
    ({"samples_per_worker": 0}, "plan.samples_per_worker must be > 0.0"),
    ({"local_sgd": {"period": 0}}, "plan.local_sgd.period must be a positive integer"),
    ({"local_sgd": {"period": True}}, "plan.local_sgd.period must be a positive integer"),
    ({"local_sgd": {"period": 2, "every": 3}}, "plan.local_sgd: unknown key(s) every"),
    ({"local_sgd": 8}, "plan.local_sgd must be a mapping or null"),
    ({"hierarchical_sgd": {"group_size": 2, "period": 3, "global_period": 4}},
     "plan.hierarchical_sgd.global_period must be a multiple of plan.hierarchical_sgd.period"),
    ({"local_sgd": {"period": 16}}, "plan.draws must be ≥ 16"),
])
def test_bad_baseline_settings_are_one_line_errors(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _settings(**kw)


def test_hsgd_blog_preset_predicts_the_posts_setting() -> None:
    """The post's setting: ~55 ms steps, 1 s stalls; synchronous SGD pays about
    1 − (1 − p)^n seconds of stall per step, local / hierarchical SGD much less. The winner
    is checked with every mitigation at DDP's iterations (plan.iterations=curves, local SGD
    assumed at I0: the post's own premise); with the arena's iterations local SGD carries
    its measured (censored) ratio, test_plan_arena.py."""
    cfg = compose_config("plan", ["experiment=hsgd_blog", "plan.n=[64]", "plan.p=[0.02]",
                                  "plan.families=[uncoded_wait]", "plan.draws=1600",
                                  "plan.iterations=curves", "plan.kappa=0"])
    cluster, st, conv = build_plan(cfg)
    assert cfg.app == "plan" and st.stall == 1.0 and st.slowdown == 1.0
    step = cluster.worker_compute(st.samples_per_worker, st.flops_per_sample * 11689512,
                                  11689512)
    assert float(step) == pytest.approx(0.055, rel=0.01)
    result = run_plan(cluster, st, conv)
    (best,) = result["best"]
    sync = 0.055 + 1 - 0.98**64 + _ring(cluster, 64, 11689512)
    assert best["ddp_iteration_time"] == pytest.approx(sync, rel=0.05)  # Monte Carlo
    speedups = best["step_speedup_vs_ddp"]
    assert speedups["hierarchical_sgd"] > speedups["local_sgd"] > 2
    # since the planner has the sharded runtime, backup workers there (no PS link, the
    # 1 s stalls ignored) beat hierarchical SGD in this setting; DDP never wins
    assert best["winner"]["family"] in ("hierarchical_sgd", "backup")
    assert best["winner"]["family"] != "ddp"


def test_hsgd_blog_app_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agc_pipeline.plan", "experiment=hsgd_blog", "plan.draws=160",
         "plan.error_sets=4", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
        text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["best"]) == 3 * 2  # n × p (one broadcast)
    assert all(b["winner"]["family"] for b in plan["best"])
    assert "best baseline" in plan["headline"] and "winners:" in plan["headline"]
    assert plan["settings"]["hierarchical_sgd"] == {
        "kind": "hierarchical_sgd", "period": 8, "group_size": 8, "global_period": 16}
    assert (tmp_path / "time_to_loss.png").stat().st_size > 10_000
