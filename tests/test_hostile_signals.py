"""Ctrl-C twice (issue 20): a second SIGINT while the checkpoint is being written cut the write
and ended in a KeyboardInterrupt traceback with exit status −2; now a Ctrl-C during a write or
an update only asks to stop, and a second Ctrl-C mid-iteration ends the app with status 130,
one line and its checkpoint. The signals are the handlers called in-process, at fixed points:
nothing races on timing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import agc_pipeline.training.loop as loop
from agc_pipeline.reporting.sinks import Sink
from agc_pipeline.train import build_trainer
from agc_pipeline.training.checkpoint import load_checkpoint
from agc_pipeline.training.loop import TrainingInterrupted, fit
from tests.conftest import ROOT, compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=5",
        "trainer.progress=false", "trainer.alpha_samples=20", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "trainer.lr=0.5", "logger=none"]


def ctrl_c() -> None:
    """What a Ctrl-C does: the current SIGINT handler runs in the main thread."""
    handler = signal.getsignal(signal.SIGINT)
    # Python's own handler raises KeyboardInterrupt, which would end the test session
    assert callable(handler) and handler is not signal.default_int_handler, \
        "a Ctrl-C here would raise KeyboardInterrupt"
    try:
        handler(signal.SIGINT, None)
    except KeyboardInterrupt:
        raise AssertionError("a Ctrl-C here raised KeyboardInterrupt") from None


class CtrlCOnFirstRow(Sink):
    def __init__(self) -> None:
        self.rows = 0

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.rows += 1
        if self.rows == 1:
            ctrl_c()  # the first: stop at the end of this iteration


def test_a_second_ctrl_c_while_the_checkpoint_is_written_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.save_checkpoint, []

    def save(path: Path, state: dict[str, Any]) -> None:
        calls.append(path)
        if len(calls) == 2:  # the checkpoint of the stop: Ctrl-C twice more while writing
            ctrl_c()
            ctrl_c()
        real(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest started in the background
    runtime = build_trainer(compose_config("train", FAST))
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingInterrupted, match="stopped after iteration 0"):
        fit(runtime, CtrlCOnFirstRow(), checkpoint, {}, config=runtime.spec.config,
            run_dir=tmp_path)
    assert len(calls) == 2 and load_checkpoint(checkpoint)["iteration"] == 1
    assert not list(tmp_path.glob("*.tmp"))
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_ctrl_c_during_an_update_does_not_cut_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Twice during the optimizer step of iteration 1: the update completes, the loop stops
    after it (a KeyboardInterrupt there would have left half an update)."""
    runtime = build_trainer(compose_config("train", FAST))
    state = runtime.state
    real = type(state).commit

    def commit(self: Any, result: Any) -> None:
        if self.iteration == 1:
            ctrl_c()
            ctrl_c()
        real(self, result)

    monkeypatch.setattr(type(state), "commit", commit)
    with pytest.raises(TrainingInterrupted, match="stopped after iteration 1"):
        fit(runtime, Sink(), tmp_path / "checkpoint.pt", {}, config=runtime.spec.config,
            run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


#: the train app, whose runtime's step at iteration 1 gets Ctrl-C twice (the second stops it
#: at once: a KeyboardInterrupt inside the step)
APP = """
import signal, sys
from agc_pipeline.training.simulated import SimulatedRuntime
real = SimulatedRuntime.step
def step(self, evaluate=False):
    if self.state.iteration == 1:
        for _ in range(2):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    return real(self, evaluate=evaluate)
SimulatedRuntime.step = step
from agc_pipeline.train import main
sys.argv = ["agc-train", *sys.argv[1:]]
main()
"""


def test_a_second_ctrl_c_mid_iteration_exits_130_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", APP, *FAST, "trainer=simulated",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert (f"agc-train: interrupted at once by a second Ctrl-C (checkpoint "
            f"{tmp_path / 'checkpoint.pt'}); continue with trainer.resume=true") in proc.stderr
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 1
