"""The run dir of a training run: its lock, refusing to mix two runs, resume from the very
start and its refusals, and the messages of bad values, bad files and unproven rescaling."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agc_pipeline.coding.stragglers import NoStragglers, StragglerDraw
from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.sinks import Sink
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.checkpoint import RunDirBusy, load_checkpoint, run_dir_lock
from agc_pipeline.training.loop import advance
from agc_pipeline.training.simulated import SimulatedRuntime
from agc_pipeline.training.state import StepResult
from tests.conftest import ROOT, compose_config

#: a small, fast problem: 6-feature 3-class logistic data, the Fano plane, m = 2
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=6",
        "trainer.progress=false", "trainer.alpha_samples=20", "trainer.eval_every=3",
        "trainer.checkpoint_every=0", "trainer.lr=0.5"]


def cfg_for(*overrides: str):  # noqa: ANN201 - DictConfig
    return compose_config("train", [*FAST, *overrides])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_cli(*args: str, app: str = "train") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


# ------------------------------------------------------------------------------------------
# point 1: one run per run dir


def test_a_second_run_into_a_locked_run_dir_refuses(tmp_path: Path) -> None:
    with run_dir_lock(tmp_path), pytest.raises(RunDirBusy, match="in use by another run"):
        run_training(cfg_for(), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
    run_training(cfg_for(), tmp_path)  # released at the end of the block


def test_the_lock_refuses_a_concurrent_app_and_dies_with_its_holder(tmp_path: Path) -> None:
    """A process holding the lock makes the app exit 2 with one line; SIGKILLed, it leaves
    nothing behind that blocks the next run."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom agc_pipeline.training.checkpoint import "
         f"run_dir_lock\nwith run_dir_lock({str(tmp_path)!r}):\n    print('locked', "
         "flush=True)\n    time.sleep(300)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    args = [*FAST, "trainer.iterations=2", f"hydra.run.dir={tmp_path}"]
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = run_cli(*args)
        assert busy.returncode == 2, busy.stderr
        (line,) = busy.stderr.strip().splitlines()
        assert f"{tmp_path} is in use by another run (pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()
    after = run_cli(*args)
    assert after.returncode == 0, after.stderr[-2000:]
    assert [r["iteration"] for r in rows(tmp_path)] == [0, 1]


# ------------------------------------------------------------------------------------------
# point 2: a fresh run never silently replaces another


def test_a_fresh_run_into_a_used_run_dir_refuses_unless_overwrite(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path)
    before = {name: (tmp_path / name).read_bytes()
              for name in ("metrics.jsonl", "summary.json", "checkpoint.pt")}
    with pytest.raises(ConfigError) as info:
        run_training(cfg_for("trainer.lr=0.1"), tmp_path)
    message = one_line(str(info.value))
    assert "already holds a run (completed after 6 iterations)" in message
    assert "trainer.resume=true" in message and "hydra.run.dir" in message
    assert "trainer.overwrite=true" in message
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name  # untouched
    # overwrite: the new run, exactly as in a fresh directory
    summary = run_training(cfg_for("trainer.lr=0.1", "trainer.overwrite=true"), tmp_path)
    run_training(cfg_for("trainer.lr=0.1"), tmp_path / "fresh")
    assert summary["config"]["trainer"]["lr"] == 0.1
    assert rows(tmp_path) == rows(tmp_path / "fresh")
    with pytest.raises(ConfigError, match="exclude each other"):
        build_trainer(cfg_for("trainer.overwrite=true", "trainer.resume=true"))


# ------------------------------------------------------------------------------------------
# points 3 and 5: resume from the start; never a summary or metrics that contradict


def test_a_checkpoint_exists_before_the_first_iteration(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = SimulatedRuntime.step

    def step(self: SimulatedRuntime, evaluate: bool = False) -> StepResult:
        if self.state.iteration == 0:
            state = load_checkpoint(tmp_path / "checkpoint.pt")
            seen.append(state["iteration"])
            assert state["metrics_rows"] == 0 and state["alpha"] is not None
        return original(self, evaluate)

    monkeypatch.setattr(SimulatedRuntime, "step", step)
    run_training(cfg_for("trainer.checkpoint_every=100"), tmp_path)
    assert seen == [0]


def test_resume_cannot_shorten_a_run(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path)
    summary = (tmp_path / "summary.json").read_text()
    with pytest.raises(ConfigError) as info:
        run_training(cfg_for("trainer.resume=true", "trainer.iterations=3"), tmp_path)
    message = one_line(str(info.value))
    assert "trainer.iterations=3" in message and "at iteration 6" in message
    assert (tmp_path / "summary.json").read_text() == summary  # not rewritten
    # as long or longer: fine (no iterations, or the missing ones)
    assert run_training(cfg_for("trainer.resume=true"), tmp_path)["iterations"] == 6
    assert run_training(cfg_for("trainer.resume=true", "trainer.iterations=8"),
                        tmp_path)["iterations"] == 8
    assert [r["iteration"] for r in rows(tmp_path)] == list(range(8))


def test_resume_onto_truncated_metrics_refuses(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ConfigError) as info:
        run_training(cfg_for("trainer.resume=true", "trainer.iterations=10"), tmp_path)
    message = one_line(str(info.value))
    assert "holds 3 rows before iteration 6 but 6 were logged" in message
    assert len(rows(tmp_path)) == 3


# ------------------------------------------------------------------------------------------
# point 13: messages


def test_non_finite_values_say_finite() -> None:
    for key in ("lr", "straggler_slowdown", "decode_cost", "clip_grad_norm"):
        with pytest.raises(ConfigError, match=f"trainer.{key} must be a finite number"):
            build_trainer(cfg_for(f"trainer.{key}=inf"))
    with pytest.raises(ConfigError, match="trainer.threads must be a positive integer"):
        build_trainer(cfg_for("trainer.threads=0"))


def test_a_garbage_checkpoint_is_one_line_without_torch_advice(tmp_path: Path) -> None:
    run_training(cfg_for(), tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x04garbage, not a checkpoint")
    with pytest.raises(ConfigError) as info:
        run_training(cfg_for("trainer.resume=true"), tmp_path)
    message = one_line(str(info.value))
    assert str(tmp_path / "checkpoint.pt") in message
    assert "weights_only" not in message and "trust" not in message


# ------------------------------------------------------------------------------------------
# point 18: decoder.rescale off the proven families


class Recorder(Sink):
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def summary(self, values: dict[str, Any]) -> None:
        self.values.update(values)


@pytest.mark.parametrize("assignment,warned", [
    (["assignment=biregular", "assignment.n=14", "assignment.k=7", "assignment.delta=2",
      "assignment.gamma=4"], True),
    ([], False),  # the Fano plane (a BIBD): proven
])
def test_rescale_warns_off_the_symmetric_families_and_logs_the_residual(
        assignment: list[str], warned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    monkeypatch.setattr("agc_pipeline.train.make_logger_sink", lambda *a, **k: recorder)
    with caplog.at_level(logging.WARNING, logger="agc_pipeline.train"):
        summary = run_training(cfg_for(*assignment, "decoder.rescale=true",
                                       "trainer.alpha_samples=200", "trainer.iterations=2"),
                               tmp_path)
    residual = summary["alpha"]["residual"]
    assert summary["alpha_residual"] == residual > 0
    assert json.loads((tmp_path / "summary.json").read_text())["alpha_residual"] == residual
    assert recorder.values["alpha_residual"] == residual  # the W&B summary
    warnings = [r.getMessage() for r in caplog.records if "decoder.rescale" in r.getMessage()]
    if warned:
        (warning,) = warnings
        assert "biregular" in warning and f"{residual:.3g}" in warning
    else:
        assert warnings == []


# ------------------------------------------------------------------------------------------
# point 21: the trainer advances its clock through VirtualClock (and its checks)


class BrokenClockModel(NoStragglers):
    """Every worker reports, but the waiting time is NaN."""

    def draw(self, iteration: int, n: int, message_length: int,
             context: object = None) -> StragglerDraw:
        draw = super().draw(iteration, n, message_length, context)
        return StragglerDraw(draw.survivors, draw.finish_times, float("nan"))


def test_a_non_finite_iteration_time_is_refused_by_the_clock() -> None:
    trainer = build_trainer(cfg_for("straggler=none", "trainer.alpha_samples=0"))
    trainer.coded_part.straggler = BrokenClockModel()
    with pytest.raises(ConfigError, match="iteration time must be finite"):
        advance(trainer)
    assert trainer.state.iteration == 0 and trainer.state.virtual_time == 0.0
    assert np.isfinite(trainer.state.virtual_time)


# ------------------------------------------------------------------------------------------
# point 11: each app refuses the other's presets


def test_every_experiment_preset_declares_its_app() -> None:
    from agc_pipeline.build import preset_app
    from agc_pipeline.conf_path import CONFIG_DIR

    apps = {p.stem: preset_app(p.stem) for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert set(apps.values()) == {"train", "analyze", "plan"}, apps
    assert {name for name, app in apps.items() if app == "analyze"} == {"fig3", "fig4", "fig5"}
    assert {name for name, app in apps.items() if app == "plan"} == {"scale_study", "hsgd_blog"}


def test_train_refuses_an_analyze_preset() -> None:
    with pytest.raises(ConfigError) as info:
        build_trainer(compose_config("train", ["experiment=fig3"]))
    assert "experiment=fig3 is a preset of the analyze app" in one_line(str(info.value))


@pytest.mark.parametrize("app,args,preset,owner", [
    ("train", ["experiment=fig3"], "fig3", "analyze"),
    ("analyze", ["experiment=fig6_bibd7"], "fig6_bibd7", "train"),
    ("analyze", ["-m", "experiment=fig4,compare_codes"], "compare_codes", "train"),
    ("train", ["experiment=scale_study"], "scale_study", "plan"),
    ("plan", ["experiment=fig6_bibd7"], "fig6_bibd7", "train"),
])
def test_each_app_refuses_the_other_apps_presets_in_one_line(
        app: str, args: list[str], preset: str, owner: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_cli(*args, f"hydra.run.dir={tmp_path}", app=app)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"agc-{app}: configuration error: experiment={preset} is a preset "
                           f"of the {owner} app")
    assert f"python -m agc_pipeline.{owner} experiment={preset}" in line
    assert not list(tmp_path.iterdir())  # nothing ran
    assert time.monotonic() - started < 60
