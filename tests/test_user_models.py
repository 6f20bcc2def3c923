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


MYNET = '''import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * 28 * 28, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))
'''


def test_your_own_model_from_your_own_folder_with_the_console_script(tmp_path: Path) -> None:
    """Issue 20: agc-train could not import a module of the current folder, a plain module
    given as model._target_ failed with an unexpected keyword and no pointer to WithLoss, and
    the documented override inherited custom_example's arguments. As the docs say it now."""
    (tmp_path / "mynet.py").write_text(MYNET)
    agc_train = Path(sys.executable).parent / "agc-train"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(agc_train), "debug=fast", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    plain = run("model._target_=mynet.TinyCNN", f"hydra.run.dir={tmp_path / 'plain'}")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr[-2000:]
    assert "model=custom model.module._target_=mynet.TinyCNN" in plain.stderr
    unnamed = run("model=custom", f"hydra.run.dir={tmp_path / 'unnamed'}")
    assert unnamed.returncode == 2 and "model.module._target_ is not set" in unnamed.stderr
    proc = run("model=custom", "model.module._target_=mynet.TinyCNN", "+model.module.channels=2",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "WithLoss" and summary["parameters"] == 2 * 9 + 2 + 2 * 784 * 10 + 10
