"""The plan app (agc-plan) and its planner: designs per n, the convergence model, hand-checked
iteration times, the app's outputs and its one-line configuration errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agc_pipeline.build import build_cluster
from agc_pipeline.cluster.costmodel import ps_iteration_times
from agc_pipeline.cluster.planner import (
    ASSUMPTIONS,
    Convergence,
    PlanSettings,
    family_codes,
    fit_kappa,
    load_convergence,
    run_plan,
)
from agc_pipeline.errors import ConfigError
from agc_pipeline.plan import build_plan
from tests.conftest import ROOT, compose_config

FRACTIONS = [0.0, 0.25]


# ------------------------------------------------------------------------------------------
# which designs exist at n (the repository's constructions)


@pytest.mark.parametrize(("n", "q"), [(16, 4), (64, 8), (256, 16)])
def test_affine_planes_and_lattices_exist_at_powers_of_four(n: int, q: int) -> None:
    (code,), why = family_codes("affine_rd", n, 2, FRACTIONS)
    assert why is None and code.n == n and code.scheme.k == q * q + q
    assert code.load == pytest.approx((q + 1) / (q * q + q))  # load q+1 of k = q² + q lines
    (lattice,), _ = family_codes("lattice_rd", n, 1, FRACTIONS)
    assert lattice.n == n and lattice.load == pytest.approx(2 * (q - 1) / n)
    # no projective plane PG(2, q) has q² + q + 1 = 16, 64 or 256 points: said, not invented
    codes, why = family_codes("projective_rd", n, 2, FRACTIONS)
    assert codes == [] and why is not None and "q² + q + 1" in why


def test_families_report_missing_designs() -> None:
    codes, why = family_codes("projective_rd", 13, 2, FRACTIONS)  # PG(2,3)
    assert len(codes) == 1 and codes[0].scheme.k == 13
    codes, why = family_codes("affine_rd", 12, 2, FRACTIONS)
    assert codes == [] and "q²" in why
    codes, why = family_codes("coset_rd", 16, 3, FRACTIONS)
    assert codes == [] and "does not divide" in why
    (coset,), _ = family_codes("coset_rd", 16, 4, FRACTIONS)  # k = 4, δ = 3
    assert coset.scheme.k == 4 and coset.load == pytest.approx(3 / 4)
    assert family_codes("frc", 16, 2, FRACTIONS) == ([], None)  # FRC is m = 1 only
    frc, _ = family_codes("frc", 16, 1, FRACTIONS)
    assert [c.s_values for c in frc] == [[1], [3]]  # s + 1 divides 16, s ≤ 16/4
    ce, _ = family_codes("ce_frc", 16, 2, FRACTIONS)
    assert [c.s_values for c in ce] == [[2]]  # s + 2 ∈ {4, 8, 16}, s ≤ 4
    with pytest.raises(ConfigError, match="unknown family"):
        family_codes("nope", 16, 1, FRACTIONS)


# ------------------------------------------------------------------------------------------
# convergence: iterations ∝ 1 + κ ē/(1 − ē)


def test_factor_and_kappa_fit() -> None:
    conv = Convergence("x", 1.0, 100, kappa=0.5, fitted_kappa=0.5)
    assert conv.factor(0.0) == 1.0
    assert conv.factor(0.5) == pytest.approx(1.5)
    assert conv.factor(0.5, 1.0) == pytest.approx(2.0)  # the isotropic bound
    assert conv.factor(1.0) == math.inf
    points = [{"normalised_error": 0.5, "ratio": 1.5}, {"normalised_error": 0.2, "ratio": 1.125}]
    assert fit_kappa(points) == pytest.approx(0.5)  # v = 1 and 0.25, both on κ = 0.5
    assert fit_kappa([{"normalised_error": 0.5, "ratio": 0.9}]) == 0.0  # clipped at 0


def test_load_convergence_hand_case(tmp_path: Path) -> None:
    curves = {"exact": "e", "curves": {
        "e": {"normalised_error": 0.0, "loss": [5, 4, 3, 2, 1]},
        "a": {"normalised_error": 0.5, "loss": [5, 4.5, 4, 3.5, 3]},
        "never": {"normalised_error": 0.8, "loss": [5, 5, 5, 5, 5]}}}
    path = tmp_path / "curves.json"
    path.write_text(json.dumps(curves))
    conv = load_convergence(path, 0.6, None)  # target: the exact loss at iteration 3 = 3
    assert (conv.target_loss, conv.iterations_exact) == (3.0, 3)
    a, never = conv.points
    assert a["iterations"] == 5 and a["ratio"] == pytest.approx(5 / 3) and not a["censored"]
    assert never["censored"] and never["ratio"] == pytest.approx(5 / 3)
    v = np.array([1.0, 4.0])
    assert conv.fitted_kappa == pytest.approx(float(v @ np.array([2 / 3, 2 / 3]) / (v @ v)))
    assert load_convergence(path, 0.6, 1.0).kappa == 1.0
    with pytest.raises(ConfigError, match="plan.convergence"):
        load_convergence(tmp_path / "missing.json", 0.5, None)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a convergence-curves file"):
        load_convergence(tmp_path / "bad.json", 0.5, None)


def test_packaged_curves() -> None:
    conv = load_convergence(None, 0.5, None)
    assert conv.iterations_exact > 10 and len(conv.points) >= 4
    errors = sorted(p["normalised_error"] for p in conv.points)
    assert errors[0] > 0 and errors[-1] < 1
    assert 0 <= conv.fitted_kappa < 1  # aligned partial gradients: below the isotropic κ = 1
    noisy = load_convergence(ROOT / "agc_pipeline/data/convergence/mnist_mlp_batch1.json", 0.5,
                             None)  # 1 image per subset: more gradient noise, larger κ
    assert conv.fitted_kappa < noisy.fitted_kappa < 1


# ------------------------------------------------------------------------------------------
# run_plan against hand computations


def _settings(**kw: object) -> PlanSettings:
    base = dict(n=[16], d=[1_000_000], m=[1], p=[0.0, 0.2], slowdown=10.0,
                samples_per_iteration=2**20, flops_per_sample=6, grad_bytes=4, param_bytes=2,
                broadcast=["unicast", "pipelined"], families=["uncoded_wait", "affine_rd"],
                s_fractions=[0.0, 0.25], draws=64, error_realizations=2, error_sets=10)
    base.update(kw)
    return PlanSettings(**base)  # type: ignore[arg-type]


def test_plan_rows_match_hand_computations() -> None:
    cluster = build_cluster(compose_config("plan", ["cluster=ib_100g"]))
    assert cluster is not None
    conv = Convergence("x", 1.0, 100, kappa=0.0, fitted_kappa=0.0)
    result = run_plan(cluster, _settings(), conv)
    n, d, batch = 16, 1_000_000, 2**20
    beta, alpha = cluster.bandwidth, cluster.latency
    compute = batch / n * 6 * d / cluster.worker_flops
    rows = {(r["p"], r["scheme"], r["broadcast"]): r for r in result["results"]}
    # DDP, no stragglers: compute + 2(n−1)α + 2(n−1)/n · 4d/β, times I0 = 100 iterations
    ddp = compute + 2 * (n - 1) * alpha + 2 * (n - 1) / n * 4 * d / beta
    assert rows[(0.0, "ddp", None)]["time_to_loss"] == pytest.approx(100 * ddp, rel=1e-12)
    # uncoded wait-for-all PS, unicast: the 4d-byte messages (τ_u = 4d/β) are slower than
    # the 2d-byte copies (τ_b), so the queue never drains after the first: the last message
    # lands at α + τ_b + compute + α + n·τ_u, then decoding streams n messages
    tau_b, tau_u = 2 * d / beta, 4 * d / beta
    decode = cluster.decode_time(n, 1, n, d, 4)
    wait = alpha + tau_b + compute + alpha + n * tau_u + decode
    row = rows[(0.0, "uncoded_wait m=1", "unicast")]
    assert row["iteration_time"] == pytest.approx(wait, rel=1e-12) and row["s"] == 0
    assert not row["coded"] and rows[(0.0, "affine_rd m=1", "unicast")]["coded"]
    # stragglers hurt DDP (it waits for the slowest) more than the coded PS (first n − s)
    best = {(b["p"], b["broadcast"]): b for b in result["best"]}
    assert best[(0.2, "unicast")]["speedup_vs_ddp"] > best[(0.0, "unicast")]["speedup_vs_ddp"]
    assert rows[(0.2, "ddp", None)]["iteration_time"] > 5 * compute  # P(a slow one) ≈ 97 %
    assert result["assumptions"] == list(ASSUMPTIONS) and "ring all-reduce" in result["method"]
    assert set(result["designs"]["16"]) == {"uncoded_wait", "affine_rd"}


def test_plan_on_a_shared_host_takes_the_cpu_work_bound() -> None:
    """cluster=loopback (every process on 2 cores): with no stragglers and 16 samples per
    worker at d = 1M, the CPU work of all the processes over the cores exceeds the critical
    path, for DDP and for the uncoded PS alike; written out by hand here."""
    cluster = build_cluster(compose_config("plan", ["cluster=loopback"]))
    assert cluster is not None and cluster.shared_cores == 2
    n, d = 16, 1_000_000
    conv = Convergence("x", 1.0, 100, kappa=0.0, fitted_kappa=0.0)
    result = run_plan(cluster, _settings(p=[0.0], families=["uncoded_wait"],
                                         broadcast=["unicast"], samples_per_iteration=n * 16),
                      conv)
    rows = {r["scheme"]: r for r in result["results"]}
    compute = d * cluster.step_time_per_parameter + 16 * 6 * d / cluster.worker_flops
    cb, cm = cluster.transfer_cpu_per_byte, cluster.message_cpu
    # DDP: n ranks' compute; each rank sends 2(n−1) chunks of d/n float32 values
    ddp_work = n * compute + 2 * (n * 2 * (n - 1) / n * 4 * d) * cb + n * 2 * (n - 1) * cm
    ddp_path = compute + 2 * (n - 1) * cluster.latency + 2 * (n - 1) / n * 4 * d / \
        cluster.bandwidth
    assert ddp_work / 2 > ddp_path
    assert rows["ddp"]["iteration_time"] == pytest.approx(ddp_work / 2, rel=1e-12)
    # the PS: n workers' compute, decode + update, n 16-bit copies out, n 4-byte messages in
    ps_work = (n * compute + cluster.decode_time(n, 1, n, d, 4)
               + d * cluster.step_time_per_parameter
               + 2 * (n * 2 * d + n * 4 * d) * cb + 2 * n * cm)
    row = rows["uncoded_wait m=1"]
    assert row["iteration_time"] == pytest.approx(ps_work / 2, rel=1e-12)
    # the planner's PS path equals the cost model's function (which the benchmark uses)
    assert row["iteration_time"] == pytest.approx(float(ps_iteration_times(
        cluster, np.full(n, compute), n, d, 1, n, 4, 2, broadcast="unicast")), rel=1e-12)
    assert any("shared_cores" in a for a in result["assumptions"])


# ------------------------------------------------------------------------------------------
# the app


def test_scale_study_preset_is_the_issue_grid() -> None:
    cfg = compose_config("plan", ["experiment=scale_study"])
    assert cfg.app == "plan" and cfg.cluster.name == "ib_100g"
    assert list(cfg.plan.n) == [16, 64, 256] and list(cfg.plan.m) == [1, 2, 4]
    assert list(cfg.plan.d) == [10**6, 10**8, 10**9] and list(cfg.plan.p) == [0.0, 0.05, 0.2]
    cluster, settings, conv = build_plan(cfg)
    assert cluster.name == "ib_100g" and settings.n == [16, 64, 256]


def test_plan_app_writes_plan_json_and_the_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agc_pipeline.plan", "cluster=ethernet_10g", "plan.n=[16,64]",
         "plan.d=[1000000]", "plan.p=[0.0,0.2]", "plan.m=[1,2]", "plan.draws=32",
         "plan.error_sets=8", "plan.error_realizations=1",
         "plan.families=[uncoded_wait,uncoded_ignore,affine_rd,projective_rd]",
         f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (tmp_path / "time_to_loss.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    assert plan["cluster"]["name"] == "ethernet_10g" and plan["assumptions"]
    assert plan["designs"]["16"]["projective_rd"]["available"] is False
    assert plan["designs"]["64"]["affine_rd"]["available"] is True
    assert len(plan["best"]) == 2 * 1 * 2 * 2  # n × d × p × broadcast
    # the default plan.broadcast: the PS's concurrent sends (as implemented) and a chain
    assert {c["broadcast"] for c in plan["crossovers"]} == {"concurrent", "pipelined"}
    assert plan["headline"].startswith("cluster=ethernet_10g")


@pytest.mark.parametrize(("override", "message"), [
    ("plan.n=[1]", "plan.n[0] must be an integer ≥ 2"),
    ("plan.p=[1.5]", "plan.p[0] must be ≤ 1.0"),
    ("plan.broadcast=[tree]", "plan.broadcast[0] must be one of concurrent | unicast | pipelined"),
    ("cluster=none", "the plan app needs a cluster model"),
    ("experiment=fig3", "experiment=fig3 is a preset of the analyze app"),
])
def test_plan_config_errors_are_one_line(override: str, message: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.plan", override,
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("agc-plan: configuration error:") and message in line, line


@pytest.mark.parametrize(("override", "message"), [
    ("plan.convergence=true", "plan.convergence must be a string or null (got True)"),
    ("plan.title=true", "plan.title must be a string or null (got True)"),
    ("plan.slowdown=false", "plan.slowdown must be a finite number (got False)"),
    ("plan.p=[true]", "plan.p[0] must be a finite number (got True)"),
    ("plan.draws=true", "plan.draws must be a positive integer (got True)"),
])
def test_plan_keys_refuse_booleans(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build_plan(compose_config("plan", [override]))


def test_plan_settings_validate_themselves() -> None:
    with pytest.raises(ConfigError, match=r"^plan.error_sets must be a positive integer"):
        _settings(error_sets=True)
    with pytest.raises(ConfigError, match=r"^plan.s_fractions\[1\] must be ≤ 0.99"):
        _settings(s_fractions=[0.0, 1.0])
    assert _settings(flops_per_sample=6).flops_per_sample == 6.0
