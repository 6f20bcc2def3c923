"""A user's own nn.Module that breaks the model contract is refused at start in one line
naming the model and the rule (issue 20: StopIteration, KeyError and AssertionError
tracebacks, tuple/float outputs, a detached loss), and one that raises mid-run stops with a
checkpoint, a summary.json that says "failed" and one line (the stack trace in a file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer
from tests.conftest import ROOT, compose_config


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)


class NoParams(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


class RaisesKeyError(_Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise KeyError("boom")


class RaisesAssertion(_Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("nope")


class TupleOutput(_Linear):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.linear(x.flatten(1)), 1


class FloatOutput(_Linear):
    def forward(self, x: torch.Tensor) -> float:
        return 1.0


class DetachedOutput(_Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).detach()


class FailsMidRun(_Linear):
    """Fails once it has run 10 forward passes (a few iterations in)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 10:
            raise RuntimeError("mid-run failure")
        return self.linear(x.flatten(1))


def user_model(name: str) -> list[str]:
    return ["debug=fast", "model=custom_example", "~model.module",
            f"+model.module._target_=tests.test_user_models.{name}"]


@pytest.mark.parametrize("name, says", [
    ("NoParams", "model NoParams has no trainable parameters"),
    ("RaisesKeyError", "model RaisesKeyError cannot train on dataset mnist10k (samples of "
                       "shape (1, 28, 28)): KeyError: 'boom'"),
    ("RaisesAssertion", "model RaisesAssertion cannot train on dataset mnist10k (samples of "
                        "shape (1, 28, 28)): AssertionError: nope"),
    ("TupleOutput", "model TupleOutput: forward must return a tensor with one row per sample"),
    ("FloatOutput", "model FloatOutput: forward must return a tensor with one row per sample"),
    ("DetachedOutput", "model DetachedOutput: the loss does not depend on the parameters"),
])
def test_a_model_that_breaks_the_contract_is_refused_in_one_line(name: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_trainer(compose_config("train", user_model(name)))
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_model_that_fails_mid_run_leaves_a_summary_and_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.train",
                           *user_model("FailsMidRun"), "trainer.iterations=30",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "agc-train: training failed: RuntimeError: mid-run failure" in proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "mid-run failure"
    assert summary["final_train_loss"] is None and 0 < summary["iterations"] < 30
    assert (tmp_path / "checkpoint.pt").is_file()
    assert "RuntimeError: mid-run failure" in (tmp_path / "traceback.txt").read_text()
