"""trainer=local_sgd: n processes over gloo with PyTorch's PeriodicModelAverager /
HierarchicalModelAverager, against the simulated local SGD, DDP at period 1, and resume.

Runs go through ``run_training`` in this process (rank 0) with the other ranks from the
fork server; a watchdog kills the session if one hangs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.build import validate
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from tests.conftest import ROOT, compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=7",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "code=uncoded_wait", "trainer.batch_size=4",
        "straggler=slowdown", "straggler.p=0.3"]
PROCESSES = ["trainer=local_sgd", "trainer.time_scale=0", "trainer.timeout_s=30"]


#: a test that hangs ends the session, saying so with every thread's stack, after 4 min
#: (tests/conftest.py: watchdog); tests that run the app longer have their own budget
pytestmark = pytest.mark.watchdog(240)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rank_params(run_dir: Path, n: int) -> list[list[torch.Tensor]]:
    """Every rank's final parameters: rank 0's checkpoint and the ranks' own files."""
    files = [run_dir / "checkpoint.pt", *(run_dir / "ranks" / f"rank{r}.pt"
                                          for r in range(1, n))]
    return [list(load_checkpoint(f)["model"].values()) for f in files]


@pytest.mark.parametrize(("n", "extra", "expected_logged"), [
    (3, ["trainer.period=3", "optimizer.momentum=0.9"], [0, 1, 4, 6]),
    (3, ["trainer.period=2", "trainer.warmup_steps=2"], [0, 1, 2, 3, 5, 6]),
    (4, ["trainer.hierarchy={2: 2, 4: 4}", "optimizer.momentum=0.9"], [0, 1, 5, 6]),
])
def test_processes_equal_the_simulated_local_sgd(n: int, extra: list[str],
                                                 expected_logged: list[int],
                                                 tmp_path: Path) -> None:
    """PyTorch's averagers on n gloo ranks: the simulated runtime's losses (on the rows
    that carry one), every rank's final parameters, and its clock (modelled_time) to float
    tolerance."""
    cfg = [*FAST, f"assignment.n={n}", *extra]
    summary = run_training(compose_config("train", [*cfg, *PROCESSES]), tmp_path / "ranks")
    run_training(compose_config("train", [*cfg, "trainer=local_sgd_simulated"]),
                 tmp_path / "sim")
    ours, theirs = rows(tmp_path / "ranks"), rows(tmp_path / "sim")
    logged = [t for t, r in enumerate(ours) if r["train_loss"] is not None]
    assert logged == expected_logged  # only where the ranks are in step anyway
    np.testing.assert_allclose([ours[t]["train_loss"] for t in logged],
                               [theirs[t]["train_loss"] for t in logged], rtol=1e-6)
    np.testing.assert_allclose([r["modelled_time"] for r in ours],
                               [r["virtual_time"] for r in theirs], rtol=1e-12)
    replicas = load_checkpoint(tmp_path / "sim" / "checkpoint.pt")["replicas"]
    for params, replica in zip(rank_params(tmp_path / "ranks", n), replicas, strict=True):
        for p, q in zip(params, replica.values(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    averaged = [r["averaged"] for r in theirs]  # after step t; the processes: start of t + 1
    assert [r["averaged"] for r in ours] == [None, *averaged[:-1]]
    assert summary["runtime"] == "local_sgd" and summary["local_sgd"]["simulated"] is False


def test_period_one_equals_ddp(tmp_path: Path) -> None:
    """period = 1 with plain SGD: DDP's losses and final parameters to float tolerance."""
    cfg = [*FAST, "assignment.n=3"]
    run_training(compose_config("train", [*cfg, *PROCESSES, "trainer.period=1"]),
                 tmp_path / "local")
    run_training(compose_config("train", [*cfg, "trainer=ddp", "trainer.time_scale=0"]),
                 tmp_path / "ddp")
    np.testing.assert_allclose([r["train_loss"] for r in rows(tmp_path / "local")],
                               [r["train_loss"] for r in rows(tmp_path / "ddp")], rtol=1e-5)
    # period 1: every iteration starts with an average, so every row has its loss
    ddp = list(load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"].values())
    for p, q in zip(rank_params(tmp_path / "local", 3)[0], ddp, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_resume_inside_a_period_is_bit_identical(tmp_path: Path) -> None:
    """3 iterations (inside a period of 4, momentum per rank), then resumed to 7: every
    rank's parameters and the losses of the 7-iteration run, bit for bit."""
    cfg = [*FAST, *PROCESSES, "assignment.n=3", "optimizer.momentum=0.9", "trainer.period=4"]
    run_training(compose_config("train", cfg), tmp_path / "whole")
    short = [o for o in cfg if not o.startswith("trainer.iterations")]
    run_training(compose_config("train", [*short, "trainer.iterations=3"]), tmp_path / "cut")
    run_training(compose_config("train", [*cfg, "trainer.resume=true"]), tmp_path / "cut")
    whole, cut = rows(tmp_path / "whole"), rows(tmp_path / "cut")
    # the cut run also logged its last iteration's loss (2): compare the whole run's rows
    assert [r["train_loss"] for r in whole if r["train_loss"] is not None] == \
        [r["train_loss"] for r, w in zip(cut, whole, strict=True) if w["train_loss"] is not None]
    assert [r["modelled_time"] for r in cut] == [r["modelled_time"] for r in whole]
    for a, b in zip(rank_params(tmp_path / "whole", 3), rank_params(tmp_path / "cut", 3),
                    strict=True):
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q)


@pytest.mark.watchdog(420)  # two runs of up to 180 s
def test_a_lost_rank_stops_with_status_4_and_the_run_resumes(tmp_path: Path) -> None:
    """Rank 1 exits abruptly at iteration 3; rank 0 notices at the next collective (the
    average of step 4, at the start of iteration 5): exit status 4, one line naming it, the
    checkpoint of iteration 5; the resumed run completes, the ranks without their own state
    of iteration 5 starting from rank 0's parameters (and saying so)."""
    cfg = [*FAST, *PROCESSES, "assignment.n=3", "trainer.period=4", "trainer.timeout_s=10"]
    run_dir = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.train", *cfg,
                           "trainer.fault.kill_worker=1", "trainer.fault.at_iteration=3",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 4, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("agc-train")]
    assert "iteration 5: rank 1 exited" in line and "trainer.resume=true" in line
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 5
    resumed = subprocess.run([sys.executable, "-m", "agc_pipeline.train", *cfg,
                              "trainer.resume=true", f"hydra.run.dir={run_dir}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starting from rank 0's parameters" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 7


@pytest.mark.parametrize(("extra", "message"), [
    (["trainer.fault.kill_worker=0"], "kill_worker must be null or a rank 1..n-1"),
    (["+trainer.fault.bad_message_worker=1"], "does not apply to trainer=local_sgd"),
    (["trainer.period=0"], "trainer.period must be a positive integer"),
    (["trainer.period=false"], "trainer.period must be a positive integer"),
    (["trainer.warmup_steps=1.5"], "trainer.warmup_steps must be a non-negative integer"),
    (["trainer.hierarchy={2: 2, 4: 3}"], "the last .* must be n"),
    (["trainer.start_method=fork"], "trainer.start_method"),
    (["code=frc"], "needs code=uncoded_wait"),
    (["cluster=ethernet_10g"], "trainer=simulated only"),
])
def test_bad_keys_are_refused_in_one_line(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate(compose_config("train", [*FAST, *PROCESSES, "assignment.n=3", *extra]))
    assert "\n" not in str(info.value)
