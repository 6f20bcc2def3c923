"""The planner's sharded rows (``trainer=sharded`` beside the PS) and the PS's concurrent
broadcast: hand cases at n = 3 without randomness (p ∈ {0, 1}, slowdown 1), the row labels,
the winner per setting and the headline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agc_pipeline.build import build_cluster
from agc_pipeline.cluster.costmodel import (
    ClusterModel,
    order_statistic,
    owner_order_statistics,
    sharded_iteration_times,
)
from agc_pipeline.cluster.plan_summary import best_per_setting, headline
from agc_pipeline.cluster.planner import Convergence, PlanSettings, run_plan
from tests.conftest import compose_config

CONV = Convergence("x", 1.0, 100, kappa=0.0, fitted_kappa=0.0)


def _cluster() -> ClusterModel:
    cluster = build_cluster(compose_config("plan", ["cluster=ib_100g"]))
    assert cluster is not None and cluster.step_time_per_parameter == 0.0
    return cluster


def _settings(**kw: object) -> PlanSettings:
    base = dict(n=[3], d=[1_000_000], m=[1], p=[0.0, 1.0], slowdown=1.0,
                samples_per_iteration=3 * 2**14, flops_per_sample=6, grad_bytes=4,
                param_bytes=2, broadcast=["concurrent"], families=["uncoded_wait"],
                s_fractions=[0.0, 0.34], draws=8, error_realizations=1, error_sets=4,
                local_sgd=None, hierarchical_sgd=None)
    base.update(kw)
    return PlanSettings(**base)  # type: ignore[arg-type]


def test_sharded_and_concurrent_ps_rows_by_hand() -> None:
    """n = 3, d = 1M, m = 1, every worker computing c (B/3 samples), a 2 s stall on every
    worker at p = 1. Sharded: slices of W = ⌈d/3⌉ values; node j's two slices leave its
    link together (α + 2·4W/β after its compute); every owner holds its own slice at c and
    the others' at c + that, so with equal compute its 2nd and 3rd arrivals are both at
    c + α + 8W/β; it decodes W-value slices, then the ring all-gather of the shards:
    2·(α + 4W/β). The PS (concurrent): the three 2d-byte copies share its link, every
    worker starts at α + 3·τ_b, the three 4d-byte messages queue: the w-th lands at
    α + 3τ_b + c + α + w·τ_u."""
    cluster, n, d = _cluster(), 3, 1_000_000
    alpha, beta = cluster.latency, cluster.bandwidth
    result = run_plan(cluster, _settings(stall=2.0), CONV)
    rows = {(r["p"], r["scheme"]): r for r in result["results"]}
    c = 2**14 * 6 * d / cluster.worker_flops
    width = math.ceil(d / n)
    scatter, gather = alpha + 2 * 4 * width / beta, 2 * (alpha + 4 * width / beta)
    tau_b, tau_u = 2 * d / beta, 4 * d / beta
    for p, stall in ((0.0, 0.0), (1.0, 2.0)):
        ready = c + stall
        # uncoded wait-for-all (s = 0) on both runtimes
        sharded = rows[(p, "uncoded_wait m=1 (sharded)")]
        assert sharded["runtime"] == "sharded" and sharded["broadcast"] is None
        assert sharded["s"] == 0 and not sharded["coded"]
        assert sharded["iteration_time"] == pytest.approx(
            ready + scatter + cluster.decode_time(3, 1, 3, width, 4) + gather, rel=1e-12)
        ps = rows[(p, "uncoded_wait m=1")]
        assert ps["runtime"] == "ps" and ps["broadcast"] == "concurrent"
        assert ps["iteration_time"] == pytest.approx(
            alpha + 3 * tau_b + ready + alpha + 3 * tau_u + cluster.decode_time(3, 1, 3, d, 4),
            rel=1e-12)
        # backup workers (A = I): s = 1 (κ = 0: the faster wait wins); an owner's 2nd
        # arrival is at the same time as its 3rd, only the decode is smaller
        backup = rows[(p, "backup workers (sharded)")]
        assert backup["runtime"] == "sharded" and backup["family"] == "backup"
        assert backup["s"] == 1 and backup["normalised_error"] == pytest.approx(1 / 3)
        assert backup["iteration_time"] == pytest.approx(
            ready + scatter + cluster.decode_time(2, 1, 3, width, 4) + gather, rel=1e-12)
        ps_backup = rows[(p, "backup workers")]
        assert ps_backup["runtime"] == "ps" and ps_backup["s"] == 1
        assert ps_backup["iteration_time"] == pytest.approx(
            alpha + 3 * tau_b + ready + alpha + 2 * tau_u + cluster.decode_time(2, 1, 3, d, 4),
            rel=1e-12)
    # the best entry carries the sharded runtime's fastest scheme and its speed-ups
    best = {b["p"]: b for b in result["best"]}
    entry = best[0.0]
    assert entry["best_sharded"]["scheme"] == "backup workers (sharded)"
    assert entry["best_sharded"]["runtime"] == "sharded"
    fastest_ps = min(rows[(0.0, "uncoded_wait m=1")]["time_to_loss"],
                     rows[(0.0, "backup workers")]["time_to_loss"])
    assert entry["sharded_speedup_vs_ps"] == pytest.approx(
        fastest_ps / rows[(0.0, "backup workers (sharded)")]["time_to_loss"])
    assert entry["sharded_speedup_vs_ddp"] == pytest.approx(
        rows[(0.0, "ddp")]["time_to_loss"] / rows[(0.0, "backup workers (sharded)")]
        ["time_to_loss"])
    assert entry["best_sharded_coded"] is None  # uncoded_wait is no code


def test_the_sharded_owner_takes_its_own_first_arrivals() -> None:
    """Compute 3, 0, 0 s (TOY-like links, scatter 8.5 s): owner 0 holds its own slice at 3 s
    and the others' at 8.5 s; owners 1 and 2 hold their own at 0 s, the other fast one's at
    8.5 s and node 0's at 11.5 s. The 2nd arrival: 8.5 s everywhere; the 1st: 3, 0, 0."""
    compute = np.array([3.0, 0.0, 0.0])
    np.testing.assert_allclose(owner_order_statistics(compute, 8.5, 1), [3.0, 0.0, 0.0])
    np.testing.assert_allclose(owner_order_statistics(compute, 8.5, 2), [8.5, 8.5, 8.5])
    np.testing.assert_allclose(owner_order_statistics(compute, 8.5, 3), [8.5, 11.5, 11.5])
    rng = np.random.default_rng(3)  # against the plain (…, n, n) order statistic
    for n in (2, 3, 5):
        draws = np.round(rng.exponential(2.0, (20, n)))  # ties included
        for wait in range(1, n + 1):
            brute = order_statistic(draws[..., None, :] + 1.5 * (1 - np.eye(n)), wait)
            np.testing.assert_allclose(owner_order_statistics(draws, 1.5, wait), brute)


def test_sharded_rows_for_codes_and_the_winner() -> None:
    """With a code (frc, m = 1 at n = 3: FRC needs (s + 1) | n, s = 2) the planner adds a
    sharded row per code; the winner may be a sharded scheme, and the headline says where
    the sharded runtime beats DDP and the PS."""
    cluster = _cluster()
    result = run_plan(cluster, _settings(families=["uncoded_wait", "frc"],
                                         s_fractions=[0.0, 0.67], p=[1.0], slowdown=10.0),
                      CONV)
    runtimes = {(r["family"], r["runtime"]) for r in result["results"]}
    assert {("frc", "ps"), ("frc", "sharded"), ("backup", "sharded"),
            ("ddp", "allreduce")} <= runtimes
    sharded = next(r for r in result["results"]
                   if r["family"] == "frc" and r["runtime"] == "sharded")
    compute = np.full((8, 3), sharded["load"] * 3 * 2**14 * 6e6 / cluster.worker_flops * 10)
    assert sharded["iteration_time"] == pytest.approx(float(np.mean(sharded_iteration_times(
        cluster, compute, 3 - sharded["s"], 1_000_000, 1, 3, 4))), rel=1e-12)
    (best,) = result["best"]
    assert best["best_sharded_coded"]["scheme"].endswith("(sharded)")
    assert "sharded runtime: its best scheme beats DDP in" in result["headline"]


def _row(family: str, t: float, coded: bool = False, **kw: object) -> dict:
    return {"n": 4, "d": 10, "p": 0.1, "scheme": kw.pop("scheme", family), "family": family,
            "coded": coded, "broadcast": kw.pop("broadcast", None), "iteration_time": t,
            "time_to_loss": 10 * t, "time_to_loss_isotropic": 10 * t, "s_isotropic": 0,
            "s": 0, "runtime": kw.pop("runtime", "ps"), **kw}


@pytest.mark.parametrize(("sharded", "winner", "runtime"), [
    (0.5, "frc m=1 (sharded)", "sharded"),  # faster than everything
    (1.0, "frc m=1", "ps"),  # a tie with the PS code: the earlier candidate keeps it
    (2.5, "frc m=1", "ps"),
])
def test_the_winner_includes_the_sharded_rows(sharded: float, winner: str,
                                              runtime: str) -> None:
    rows = [_row("ddp", 3.0, runtime="allreduce"),
            _row("backup", 2.0, broadcast="concurrent", scheme="backup workers"),
            _row("backup", 2.2, scheme="backup workers (sharded)", runtime="sharded"),
            _row("frc", 1.0, coded=True, broadcast="concurrent", scheme="frc m=1"),
            _row("frc", sharded, coded=True, scheme="frc m=1 (sharded)", runtime="sharded")]
    st = _settings(n=[4], d=[10], p=[0.1])
    (best,) = best_per_setting(rows, st)
    assert best["winner"]["scheme"] == winner and best["winner"]["runtime"] == runtime
    assert set(best["baselines"]) == {"ddp", "backup"}  # the sharded backup is not the PS's
    assert best["baselines"]["backup"]["scheme"] == "backup workers"
    assert best["sharded_speedup_vs_ddp"] == pytest.approx(3.0 / min(sharded, 2.2))
    assert best["sharded_speedup_vs_ps"] == pytest.approx(1.0 / min(sharded, 2.2))
    text = headline(_cluster(), [best], st, 0.0)
    expected = 1 if sharded < 1.0 else 0
    assert f"fastest PS scheme in {expected} of 1 settings" in text
