"""trainer=sharded: n processes (gloo, CPU), each the owner of a 1/n shard of the parameters;
with an exact code and no stragglers the losses and parameters are the simulated trainer's."""

from __future__ import annotations

import faulthandler
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.sharded import sharded_bytes_per_node
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=240", "dataset.dim=8",
        "dataset.num_classes=3", "model=mlp", "model.hidden=16", "trainer.iterations=5",
        "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.lr=0.5", "straggler=none", "trainer.alpha_samples=0"]
SHARDED = ["trainer=sharded", "trainer.time_scale=0", "trainer.timeout_s=30"]


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


def test_bad_keys_are_one_line_config_errors() -> None:
    for bad in ["+trainer.bogus=1", "trainer.grad_error=true", "trainer.device=cuda:7",
                "trainer.s=-1"]:
        with pytest.raises(ConfigError) as info:
            build_trainer(compose_config("train", [*FAST, "code=uncoded_wait",
                                                   "assignment.n=3", *SHARDED, bad]))
        assert "\n" not in str(info.value), bad
