"""Hydra conveniences (issue 11): debug=fast|profile for every preset of both apps, the
resolved config saved (and printed) at start, profiling, whole progress lines in parallel
sweeps with each job's log in its own file, start-up separated from training."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agc_pipeline.conf_path import CONFIG_DIR, preset_app
from agc_pipeline.reporting.progress import LineProgress
from agc_pipeline.train import run_training
from agc_pipeline.training.simulated import SimulatedRuntime
from tests.conftest import ROOT, compose_config

PRESETS = {app: sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                       if preset_app(p.stem) == app) for app in ("train", "analyze")}
TINY = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.alpha_samples=20", "name=tiny"]


def run_cli(app: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**env, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})


@pytest.mark.parametrize("preset", PRESETS["train"])
def test_debug_fast_shrinks_every_train_preset(preset: str) -> None:
    full = compose_config("train", [f"experiment={preset}", "logger=wandb"])
    cfg = compose_config("train", [f"experiment={preset}", "logger=wandb", "debug=fast"])
    assert cfg.trainer.iterations == 5 < full.trainer.iterations
    size = cfg.dataset.get("train_size", cfg.dataset.get("n_samples"))
    assert size is not None and size <= 280, preset
    assert cfg.logger._target_.endswith(".WandbLogger")  # the command line still wins
    assert compose_config("train", [f"experiment={preset}", "debug=fast"]).logger._target_ \
        .endswith(".NoLogger")
    assert cfg.extras.print_config and not cfg.extras.profile
    profile = compose_config("train", [f"experiment={preset}", "debug=profile"])
    assert profile.extras.profile and profile.trainer.iterations == 20
    assert profile.dataset == full.dataset  # the real workload, shorter
    assert (cfg.model, cfg.scheme, cfg.assignment) == (full.model, full.scheme, full.assignment)


@pytest.mark.parametrize("preset", PRESETS["analyze"])
def test_debug_fast_shrinks_every_analyze_preset(preset: str) -> None:
    full = compose_config("analyze", [f"experiment={preset}"])
    cfg = compose_config("analyze", [f"experiment={preset}", "debug=fast"])
    assert cfg.analysis.realizations == 2 < full.analysis.realizations
    assert cfg.analysis.straggler_sets < full.analysis.straggler_sets
    assert "trainer" not in cfg and "dataset" not in cfg  # nothing of the other app
    assert (cfg.scheme, cfg.assignment, cfg.m) == (full.scheme, full.assignment, full.m)
    assert compose_config("analyze", [f"experiment={preset}", "debug=profile"]).extras.profile


def test_debug_fast_train_prints_and_saves_the_resolved_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("train", "experiment=mnist_cnn", "debug=fast", "trainer.progress=false",
                   f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = OmegaConf.load(run / "config_resolved.yaml")
    assert saved.trainer.iterations == 5 and saved.dataset.seed == 0  # ${seed}, resolved
    assert f"resolved config ({run / 'config_resolved.yaml'})" in proc.stdout
    assert "iterations: 5" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 5 and summary["choices"]["debug"] == "fast"
    assert summary["model"] == "CNN" and not (run / "wandb").exists()


def test_debug_profile_writes_the_profile(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("analyze", "experiment=fig4", "debug=profile", "analysis.straggler_sets=50",
                   "analysis.progress=false", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (run / "profile.txt").read_text()
    assert "function calls" in text and "cumulative" in text and "run_analysis" in text
    assert (run / "profile.prof").stat().st_size > 0
    assert json.loads((run / "results.json").read_text())["points"][0]["realizations"] == 5


def test_line_progress_prints_whole_lines_at_each_quarter() -> None:
    out = io.StringIO()
    bar = LineProgress(total=8, desc="train", label="job 3 (seed=1)", stream=out)
    for t in range(8):
        bar.set_postfix(loss=f"{1 / (t + 1):.2f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        f"job 3 (seed=1): train {n}/8 it ({100 * n // 8}%)" for n in (2, 4, 6, 8)]
    assert "loss=0.50" in lines[0] and "\r" not in out.getvalue()
    out = io.StringIO()
    resumed = LineProgress(total=8, initial=6, desc="train", stream=out)
    resumed.update(2)
    assert out.getvalue().startswith("train 8/8 it (100%)")  # no line for the skipped quarters


def console_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def check_parallel_console(lines: list[str], jobs: dict[int, str], unit: str) -> None:
    """Each job: a start line, its quarter lines, a done line, all led by its label; no bar."""
    for job, overrides in jobs.items():
        mine = [line for line in lines if line.startswith(f"job {job} ({overrides}): ")]
        assert "started -> " in mine[0] and "log: " in mine[0], mine
        counts = [re.search(r" (\d+)/(\d+) " + unit + " ", line).groups() for line in mine[1:-1]]
        total = int(counts[0][1])
        assert [int(n) for n, _ in counts] == sorted({-(-part * total // 4)
                                                      for part in (1, 2, 3, 4)}), mine
        assert mine[-1].split(": ", 1)[1].startswith("done in "), mine
    text = "\n".join(lines)
    assert "\r" not in text and "it/s" not in text and "draw/s" not in text and "█" not in text


def test_parallel_sweep_console_shows_job_lines_and_each_log_has_its_own_file(
        tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("train", "-m", *TINY, "trainer.iterations=8", "hydra/launcher=local",
                   "code=random_diagonal,stack", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = console_lines(proc)
    check_parallel_console(lines, {0: "code=random_diagonal", 1: "code=stack"}, "it")
    assert not any("final train loss" in line and "[INFO]" in line for line in lines)
    for job in (0, 1):
        log = (sweep / str(job) / "train.log").read_text()
        assert "final train loss" in log and "alpha = " in log
        assert f"-> {sweep / str(1 - job)}" not in log  # only its own job's lines
    analyze = tmp_path / "analyze"
    proc = run_cli("analyze", "-m", "assignment.design=fano", "analysis.s=[1,2]",
                   "analysis.realizations=4", "analysis.straggler_sets=5",
                   "analysis.plot=false", "hydra/launcher=local", "m=1,2",
                   f"hydra.sweep.dir={analyze}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_parallel_console(console_lines(proc), {0: "m=1", 1: "m=2"}, "draw")
    assert "s=1  mean=" in (analyze / "0" / "analyze.log").read_text()
    assert "s=1  mean=" not in proc.stdout + proc.stderr


def test_startup_is_not_counted_as_training(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime whose session takes 0.5 s to start (as workers do): the start-up goes to
    startup_seconds, not to train_seconds; the report shows both."""
    session = SimulatedRuntime.session

    def slow_session(self: SimulatedRuntime, *args: object):  # noqa: ANN202
        time.sleep(0.5)
        return session(self, *args)

    monkeypatch.setattr(SimulatedRuntime, "session", slow_session)
    summary = run_training(compose_config("train", [*TINY, "trainer.iterations=2",
                                                    "trainer.progress=false"]), tmp_path / "r")
    assert summary["train_seconds"] < 0.5 <= summary["startup_seconds"]
    assert summary["startup_seconds"] + summary["train_seconds"] == pytest.approx(
        summary["seconds"])
    from agc_pipeline.report import make_report

    report = make_report([tmp_path / "r"], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| start-up s | training s |" in text
    assert report["groups"][0]["startup_seconds"][0] == summary["startup_seconds"]
    assert report["groups"][0]["train_seconds"][0] == summary["train_seconds"]


def test_shell_completion_offers_the_debug_presets() -> None:
    """Hydra's tab completion (``eval "$(agc-train -sc install=bash)"``) knows the group."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMP_LINE": "agc-train debug="}
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.train", "-sc", "query=bash"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["debug=fast", "debug=profile"]


def test_progress_written_to_a_file_is_whole_lines(tmp_path: Path) -> None:
    """stderr redirected to a log file (not a terminal): no carriage-return frames, one line
    per tenth of the work (issue 20: a bar wrote hundreds of frames into the file)."""
    log_file = tmp_path / "train.log"
    with log_file.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "agc_pipeline.train", "debug=fast",
                               "trainer.iterations=40", "trainer.progress=true",
                               f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, stderr=err,
                              stdout=subprocess.PIPE, text=True, timeout=300)
    text = log_file.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text and "it/s" not in text
    lines = [line for line in text.splitlines() if line.startswith("train ")]
    assert [line.split()[1] for line in lines] == [f"{4 * i}/40" for i in range(1, 11)], lines
