"""trainer=ddp: DistributedDataParallel over n processes (gloo, CPU, n = 3), the baseline
coded SGD is compared with.

Runs go through ``run_training`` in this process (rank 0) with the other ranks from the
fork server; a watchdog kills the session if one hangs. The app's own launch, torchrun and
the exit status of a lost rank run as subprocesses with timeouts.
"""

from __future__ import annotations

import faulthandler
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.ddp import ring_allreduce_bytes
from agc_pipeline.training.distributed import WorkersLost
from tests.conftest import ROOT, compose_config

N = 3
#: 8-feature 3-class logistic data (240 samples: 192 train, 48 test), the MLP, fast settings
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=5",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "straggler=none", "code=uncoded_wait", f"assignment.n={N}"]
DDP = ["trainer=ddp", "trainer.time_scale=0", "trainer.timeout_s=30"]
#: the residual CNN on a few MNIST images
CNN = ["dataset=mnist", "dataset.train_size=96", "dataset.test_size=10", "model=cnn",
       "model.width=4", "model.depth=2"]


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A test that hangs kills the session (with every thread's traceback) after 4 min."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(run_dir / "checkpoint.pt")["model"].values())


def overrides(*extra: str, cnn: bool = False) -> list[str]:
    base = [o for o in FAST if not o.startswith(("dataset", "model"))] + CNN if cnn else FAST
    return [*base, *extra]


def run_cli(*args: str, timeout: float = 180,
            launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------
# the same training as the simulated trainer's uncoded wait-for-all


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [None, 4])
def test_ddp_losses_equal_the_simulated_uncoded_wait_run(model: str, batch: int | None,
                                                         tmp_path: Path) -> None:
    """Same data, seed, model and batch size: DDP's train_loss rows (and final parameters)
    are the simulated trainer's with code=uncoded_wait, to float tolerance."""
    extra = [] if batch is None else [f"trainer.batch_size={batch}"]
    cfg = overrides(*extra, "trainer.alpha_samples=0", cnn=model == "cnn")
    simulated = run_training(compose_config("train", cfg), tmp_path / "sim")
    summary = run_training(compose_config("train", [*cfg, *DDP]), tmp_path / "ddp")
    assert summary["status"] == "completed" and summary["runtime"] == "ddp"
    ddp, sim = rows(tmp_path / "ddp"), rows(tmp_path / "sim")
    assert [r["iteration"] for r in ddp] == list(range(5))
    np.testing.assert_allclose([r["train_loss"] for r in ddp], [r["train_loss"] for r in sim],
                               rtol=1e-5)
    for p, q in zip(final_params(tmp_path / "ddp"), final_params(tmp_path / "sim"),
                    strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert summary["final_train_loss"] == pytest.approx(simulated["final_train_loss"],
                                                        rel=1e-5)
    d = summary["parameters"]
    assert all(r["bytes_per_rank"] == 2 * (N - 1) * d * 4 // N for r in ddp)
    assert summary["total_bytes_per_rank"] == 5 * ring_allreduce_bytes(N, d)
    assert ddp[-1]["wall_time"] == pytest.approx(sum(r["iteration_time"] for r in ddp))
    assert summary["ddp"]["launch"] == "local" and summary["virtual_time"] is None
