"""trainer=sharded: n processes (gloo, CPU), each the owner of a 1/n shard of the parameters;
with an exact code and no stragglers the losses and parameters are the simulated trainer's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.sharded import sharded_bytes_per_node
from agc_pipeline.training.sharded_maths import ShardLayout
from tests.conftest import ROOT, compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=5",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "straggler=none", "trainer.alpha_samples=0"]
SHARDED = ["trainer=sharded", "trainer.time_scale=0", "trainer.timeout_s=30"]


#: a test that hangs ends the session, saying so with every thread's stack, after 4 min
#: (tests/conftest.py: watchdog); tests that run the app longer have their own budget
pytestmark = pytest.mark.watchdog(240)


def run_cli(*args: str, timeout: float = 180,
            launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(run_dir / "checkpoint.pt")["model"].values())


@pytest.mark.parametrize("code", [
    ["code=uncoded_wait", "assignment.n=3"],
    ["code=ce_frc", "assignment.n=4", "assignment.s=2", "m=2"],
], ids=["uncoded_wait", "ce_frc"])
def test_sharded_losses_equal_the_simulated_run(code: list[str], tmp_path: Path) -> None:
    cfg = [*FAST, *code]
    run_training(compose_config("train", [*cfg, "trainer.grad_error=false"]), tmp_path / "sim")
    summary = run_training(compose_config("train", [*cfg, *SHARDED]), tmp_path / "sh")
    assert summary["status"] == "completed" and summary["runtime"] == "sharded"
    sh, sim = rows(tmp_path / "sh"), rows(tmp_path / "sim")
    assert [r["iteration"] for r in sh] == list(range(5))
    np.testing.assert_allclose([r["train_loss"] for r in sh], [r["train_loss"] for r in sim],
                               rtol=1e-5)
    for p, q in zip(final_params(tmp_path / "sh"), final_params(tmp_path / "sim"), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    n, d, m = summary["sharded"]["nodes"], summary["parameters"], summary["sharded"]["m"]
    assert all(r["bytes_per_node"] == sharded_bytes_per_node(n, d, m) for r in sh)
    assert all(r["survivors"] == n for r in sh)
    assert all(r["bytes_to_ps"] == n * n * ShardLayout(d, m, n).width * 4 for r in sh)


def test_bad_keys_are_one_line_config_errors() -> None:
    for bad in ["+trainer.bogus=1", "trainer.grad_error=true", "trainer.device=cuda:7",
                "trainer.s=-1"]:
        with pytest.raises(ConfigError) as info:
            build_trainer(compose_config("train", [*FAST, "code=uncoded_wait",
                                                   "assignment.n=3", *SHARDED, bad]))
        assert "\n" not in str(info.value), bad


@pytest.mark.watchdog(300)  # a run of up to 180 s and two in this process
def test_a_lost_node_stops_with_status_4_and_the_run_resumes_bit_identically(
        tmp_path: Path) -> None:
    """Rank 1 exits abruptly at iteration 3: exit status 4, one line, the checkpoint of
    iteration 3 (a periodic one: every shard's momentum gathered); the resumed run ends with
    exactly the parameters and losses of an uninterrupted run."""
    cfg = [*FAST, "code=uncoded_wait", "assignment.n=3", *SHARDED, "trainer.iterations=6",
           "trainer.batch_size=4", "optimizer.momentum=0.9", "trainer.checkpoint_every=3"]
    run_training(compose_config("train", cfg), tmp_path / "whole")
    run_dir = tmp_path / "cut"
    proc = run_cli(*cfg, "trainer.fault.kill_worker=1", "trainer.fault.at_iteration=3",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 4, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("agc-train")]
    assert "iteration 3: rank 1 exited" in line and "trainer.resume=true" in line
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 3
    resumed = run_training(compose_config("train", [*cfg, "trainer.resume=true"]), run_dir)
    assert resumed["status"] == "completed" and resumed["iterations"] == 6
    whole, cut = rows(tmp_path / "whole"), rows(run_dir)
    assert [r["iteration"] for r in cut] == list(range(6))
    assert [r["train_loss"] for r in cut] == [r["train_loss"] for r in whole]
    for p, q in zip(final_params(run_dir), final_params(tmp_path / "whole"), strict=True):
        assert torch.equal(p, q)


def test_stragglers_each_owner_waits_for_n_minus_s(tmp_path: Path) -> None:
    """straggler=fixed (1 of 4 sleeps 4 windows): each owner proceeds at n − s = 3 slices
    and the run trains."""
    cfg = [*FAST, "code=ce_frc", "assignment.n=4", "assignment.s=2", "m=2", *SHARDED,
           "trainer.time_scale=0.02", "straggler=fixed", "straggler.s=1"]
    summary = run_training(compose_config("train", cfg), tmp_path / "sh")
    assert summary["status"] == "completed" and summary["sharded"]["target"] == 3
    losses = [r["train_loss"] for r in rows(tmp_path / "sh")]
    assert all(r["survivors"] >= 3 for r in rows(tmp_path / "sh"))
    assert losses[-1] < losses[0]


@pytest.mark.watchdog(300)  # a torchrun launch of up to 240 s
def test_torchrun_launches_the_nodes(tmp_path: Path) -> None:
    """Under torchrun (--nproc_per_node=n) rank 0 is the only rank that writes; the losses
    are the app's own launch's."""
    cfg = [*FAST, "code=uncoded_wait", "assignment.n=3", *SHARDED]
    run_training(compose_config("train", cfg), tmp_path / "app")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=3", "-m")
    proc = run_cli(*cfg, f"hydra.run.dir={tmp_path / 'tr' / 'run'}", timeout=240,
                   launcher=torchrun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "tr").iterdir()) == ["run"]
    summary = json.loads((tmp_path / "tr" / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["sharded"]["launch"] == "torchrun"
    assert [r["train_loss"] for r in rows(tmp_path / "tr" / "run")] == \
        [r["train_loss"] for r in rows(tmp_path / "app")]
