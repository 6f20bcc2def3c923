"""The arena (experiment=arena): its mitigations and regimes compose and mean what they say,
the simulated DDP is synchronous SGD, the cluster's ring all-reduce times local SGD, the
compute model's fixed step cost, and the arena report's time-to-target verdicts on hand-made
runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agc_pipeline.build import validate
from agc_pipeline.coding.stragglers import Delay, Persistent, Stall
from agc_pipeline.conf_path import CONFIG_DIR, options
from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.arena import ArenaTargets, arena_cells, verdicts, write_arena
from agc_pipeline.reporting.runs import Run
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.local_sgd_simulated import LocalSgdSimulatedRuntime
from agc_pipeline.training.loop import advance
from tests.conftest import ROOT, compose_config

MITIGATIONS = options("mitigation")
REGIMES = options("regime")
SMALL = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
         "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=6",
         "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
         "trainer.batch_size=4", "optimizer=adamw", "trainer.lr=0.01"]


def test_the_arena_has_every_mitigation_and_regime_of_the_issue() -> None:
    assert set(MITIGATIONS) == {"ddp", "local_sgd", "backup_workers", "frc", "ce_frc",
                                "code7_m1", "code7_m2", "code7_m4", "code11_m2", "code19_m2"}
    assert set(REGIMES) == {"stall", "stall_frequent", "slowdown", "delay", "persistent"}
    sweep = OmegaConf.load(CONFIG_DIR / "experiment" / "arena.yaml").hydra.sweeper.params
    assert set(sweep["mitigation"].split(",")) == set(MITIGATIONS)
    assert set(sweep["regime"].split(",")) == set(REGIMES)
    assert sweep["dataset.partition"] == "iid,label_skew"


@pytest.mark.parametrize("mitigation", MITIGATIONS)
def test_each_mitigation_composes_with_the_arena(mitigation: str) -> None:
    plan = validate(compose_config("train", ["experiment=arena", f"mitigation={mitigation}",
                                             "regime=persistent"]))
    straggler = plan.straggler
    assert isinstance(straggler, Persistent) and straggler.ranks == [0, 1]
    assert straggler.per_step == pytest.approx(0.00225)  # the arena's measured compute
    assert plan.cluster is not None and plan.cluster.name == "ethernet_10g"
    if mitigation in ("ddp", "local_sgd"):
        assert plan.runtime is LocalSgdSimulatedRuntime
        assert plan.scheme.assignment.kind == "identity" and plan.scheme.assignment.n == 12
        warmup = plan.settings.warmup_steps
        assert (warmup == plan.settings.iterations) == (mitigation == "ddp")
    else:
        assert plan.runtime.coded and plan.scheme.assignment.n == 12
        assert straggler.s == (1 if mitigation == "ce_frc" else 2)
    if mitigation.startswith("code7_m"):
        assert plan.m == int(mitigation[-1])


@pytest.mark.parametrize("regime", REGIMES)
def test_each_regime_composes_with_the_arena(regime: str) -> None:
    plan = validate(compose_config("train", ["experiment=arena", f"regime={regime}",
                                             "mitigation=code7_m2"]))
    assert plan.straggler.name == {"stall_frequent": "stall"}.get(regime, regime)
    assert plan.straggler.per_sample == pytest.approx(0.000126)
    if regime == "stall_frequent":
        assert plan.straggler.p == 0.3


def test_compute_is_a_fixed_step_cost_plus_per_sample() -> None:
    """c_j = (per_step + per_sample · samples_j) · factor (+ stall)."""
    work = np.array([10.0, 30.0, 20.0])
    delay = Delay(rate=None, s=1, per_sample=0.5, per_step=2.0, comm_per_unit=0.0)
    np.testing.assert_allclose(delay.compute_times(0, 3, work), [7.0, 17.0, 12.0])
    slow = Persistent(ranks=[1], factor=4.0, per_sample=0.5, per_step=2.0)
    np.testing.assert_allclose(slow.compute_times(5, 3, work), [7.0, 68.0, 12.0])
    stall = Stall(p=1.0, duration=3.0, per_sample=0.5, per_step=2.0)
    np.testing.assert_allclose(stall.compute_times(0, 3, work), [10.0, 20.0, 15.0])
    with pytest.raises(ConfigError, match="per_step .* needs straggler.per_sample"):
        Delay(rate=None, s=1, per_sample=None, per_step=1.0)
    with pytest.raises(ConfigError, match="straggler.per_step"):
        Delay(rate=None, s=1, per_sample=1.0, per_step=-1.0)


def test_the_simulated_ddp_is_synchronous_sgd_with_adamw(tmp_path: Path) -> None:
    """mitigation=ddp (every step a warm-up step: the gradients averaged, one AdamW step)
    equals the simulated uncoded wait-for-all run — losses, parameters and clock — where
    period-1 local SGD (parameters averaged after per-worker AdamW steps) does not."""
    base = [*SMALL, "assignment.n=3", "straggler=slowdown", "straggler.p=0.3"]
    ddp = run_training(compose_config("train", [*base, "mitigation=ddp"]), tmp_path / "ddp")
    sync = run_training(compose_config("train", [*base, "code=uncoded_wait",
                                                 "trainer.alpha_samples=0"]), tmp_path / "sync")
    local = run_training(compose_config("train", [*base, "mitigation=ddp",
                                                  "trainer.warmup_steps=0"]), tmp_path / "local")

    def losses(name: str) -> list[float]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    np.testing.assert_allclose(losses("ddp"), losses("sync"), rtol=1e-5)
    assert ddp["virtual_time"] == pytest.approx(sync["virtual_time"])
    assert not np.allclose(losses("local")[2:], losses("sync")[2:], rtol=1e-5)
    assert local["virtual_time"] == pytest.approx(sync["virtual_time"])


def test_a_cluster_times_each_synchronisation_as_a_ring_allreduce() -> None:
    cfg = compose_config("train", [*SMALL, "assignment.n=4", "mitigation=ddp",
                                   "regime=persistent", "straggler.per_sample=0.001",
                                   "cluster=ethernet_10g"])
    trainer = build_trainer(cfg)
    for _ in range(3):
        advance(trainer)
    ring = trainer.spec.cluster.ring_allreduce_time(4, trainer.d, 4)
    expected = sum(trainer.compute_times(t).max() + ring for t in range(3))
    assert ring > 0 and trainer.state.virtual_time == pytest.approx(expected, rel=1e-12)


def test_a_diverging_worker_leaves_every_worker_as_it_was() -> None:
    """Local SGD's n optimizer steps are all or nothing: when worker 2's step would
    overflow, workers 0 and 1 go back (parameters, AdamW moments, schedule)."""
    cfg = compose_config("train", [*SMALL, "assignment.n=3", "mitigation=local_sgd",
                                   "regime=persistent", "trainer.warmup_steps=0",
                                   "scheduler=cosine"])
    trainer = build_trainer(cfg)
    advance(trainer)
    before = [[p.detach().clone() for p in r.parameters()] for r in trainer.replicas]
    moments = [[s["exp_avg"].clone() for s in o.optimizer.state.values()]
               for o in trainer.state.optimizers]
    lrs = [o.lr for o in trainer.state.optimizers]
    trainer.state.optimizers[2].step = lambda flat: False
    with pytest.raises(TrainingDiverged):
        advance(trainer)
    for replica, params in zip(trainer.replicas, before, strict=True):
        for p, q in zip(replica.parameters(), params, strict=True):
            assert torch.equal(p, q)
    for optimizer, saved, lr in zip(trainer.state.optimizers, moments, lrs, strict=True):
        assert [torch.equal(s["exp_avg"], m) for s, m in
                zip(optimizer.optimizer.state.values(), saved, strict=True)] == [True] * len(saved)
        assert optimizer.lr == lr


# ----------------------------------------------------------------------- the report


def fake_run(root: Path, name: str, mitigation: str, regime: str, placement: str, seed: int,
             accuracy_times: list[tuple[float, float]], loss: float = 1.0) -> Run:
    """A run dir with its Hydra choices, and rows reaching each (accuracy, time) in turn."""
    path = root / name
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n"
        f"      mitigation: {mitigation}\n      regime: {regime}\n"
        "      model: cnn\n      dataset: mnist\n")
    rows = [{"iteration": i, "train_loss": loss, "test_accuracy": acc, "virtual_time": t}
            for i, (acc, t) in enumerate(accuracy_times)]
    summary = SimpleNamespace(config={"seed": seed, "dataset": {"partition": placement}},
                              clock="virtual", runtime="simulated", iterations=len(rows))
    return Run(path, summary, rows)  # type: ignore[arg-type]


def test_arena_verdicts_on_hand_cases(tmp_path: Path) -> None:
    curve = {  # (mitigation, placement): per seed, the time its accuracy reaches 0.9
        ("ddp", "iid"): [4.0, 6.0], ("backup_workers", "iid"): [3.0, 3.0],
        ("frc", "iid"): [3.5, 4.5], ("code7_m2", "iid"): [2.0, None],
        ("ddp", "label_skew"): [None, None], ("code7_m2", "label_skew"): [5.0, 7.0]}
    runs = []
    for (mitigation, placement), times in curve.items():
        for seed, t in enumerate(times):
            rows = [(0.1, 0.5)] + ([(0.95, t)] if t is not None else [(0.5, 9.0)])
            runs.append(fake_run(tmp_path / "runs", f"{mitigation}_{placement}_{seed}",
                                 mitigation, "stall", placement, seed, rows,
                                 loss=0.1 if t is not None else 2.0))
    targets = ArenaTargets(accuracy=0.9, loss=0.5, loss_smooth=1)
    cells = {(c["mitigation"], c["placement"]): c for c in arena_cells(runs, targets)}
    assert cells[("ddp", "iid")]["accuracy"]["mean_time"] == pytest.approx(5.0)
    assert cells[("ddp", "iid")]["accuracy"]["std_time"] == pytest.approx(np.sqrt(2.0))
    assert cells[("code7_m2", "iid")]["accuracy"]["reached"] == 1
    iid, skew = verdicts(arena_cells(runs, targets))  # sorted: iid, label_skew
    assert iid["winner"] == "backup_workers" and iid["runner_up"] == "frc"
    assert iid["margin"] == pytest.approx(4.0 / 3.0)
    assert iid["best_code"] == "frc" and iid["code_vs_other"] == pytest.approx(0.75)
    assert "coding loses" in iid["line"] and "(7), m=2" in iid["line"]  # missed a seed
    assert skew["winner"] == "code7_m2" and "coding wins" in skew["line"]
    doc = write_arena(runs, tmp_path / "out", targets)
    text = (tmp_path / "out" / "arena.md").read_text()
    assert iid["line"] in text and "| DDP (sync SGD) | 5 ± 1.4 |" in text
    assert doc["figures"] and all((tmp_path / "out" / f).is_file() for f in doc["figures"])
    assert json.loads((tmp_path / "out" / "arena.json").read_text())["runs"] == len(runs)


def test_the_arena_sweep_writes_its_report(tmp_path: Path) -> None:
    """A two-run arena (ddp vs (7), persistent slow hosts, a few iterations) from the
    command line: both runs and the arena report with its verdict lines."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "agc_pipeline.train", "-m", "experiment=arena",
               "mitigation=ddp,code7_m2", "regime=persistent", "dataset.partition=iid",
               "seed=0", "trainer.iterations=4", "trainer.eval_every=2",
               "dataset.train_size=480", "dataset.test_size=60", "hydra/launcher=basic",
               f"hydra.sweep.dir={sweep}", "trainer.threads=1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((sweep / "arena.json").read_text())
    assert doc["runs"] == 2 and {c["mitigation"] for c in doc["cells"]} == {"ddp", "code7_m2"}
    assert "## Verdicts" in (sweep / "arena.md").read_text()
    assert "Arena" in (sweep / "report.md").read_text()


@pytest.mark.parametrize("mitigation", ["ddp", "local_sgd", "backup_workers", "frc",
                                        "code7_m2"])
def test_the_gpt_arena_composes(mitigation: str) -> None:
    sweep = OmegaConf.load(CONFIG_DIR / "experiment" / "arena_gpt.yaml").hydra.sweeper.params
    assert mitigation in sweep["mitigation"].split(",")
    plan = validate(compose_config("train", ["experiment=arena_gpt",
                                             f"mitigation={mitigation}"]))
    assert plan.straggler.name == "stall" and plan.straggler.p == 0.3
    assert plan.straggler.per_step == pytest.approx(0.00638)
