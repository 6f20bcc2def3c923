"""W&B run metadata (issue 11): groupable config keys, x-axes, headline summary, group and
name of sweep jobs, W&B's environment variables, resume into the same run. Offline runs are
read back from their files (tests/wandb_files.py); nothing reaches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agc_pipeline.analyze import run_analysis
from agc_pipeline.reporting.sinks import make_logger_sink
from agc_pipeline.train import run_training
from tests.conftest import ROOT, compose_config
from tests.wandb_files import offline_runs, read_run, records

TINY = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=4", "trainer.alpha_samples=20",
        "trainer.progress=false", "trainer.eval_every=2", "name=tiny"]
#: the flat keys every run's W&B config holds (issue 11)
#: the W&B logger's class, as conf/logger/wandb.yaml names it
WANDB_LOGGER = "agc_pipeline.reporting.sinks.WandbLogger"
FLAT = ("code", "scheme", "assignment", "n", "k", "m", "s", "q", "runtime", "model", "d")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B variable of the caller's environment leaks in; runs stay offline."""
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run([sys.executable, "-m", "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**clean, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
                               **(env or {})})


def test_sweep_jobs_share_a_group_are_named_by_their_overrides_and_chart_by_iteration(
        tmp_path: Path) -> None:
    sweep = tmp_path / "2026-01-02_03-04-05"  # as Hydra names sweep dirs: the timestamp
    proc = run_cli("-m", *TINY, "logger=wandb", "code=random_diagonal,stack", "seed=1",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for job, code in ((0, "random_diagonal"), (1, "stack")):
        (folder,) = offline_runs(sweep / str(job))
        run = read_run(folder)
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert run.group == "tiny-2026-01-02_03-04-05" and run.job_type == "train"
        assert run.name == f"code={code}"  # the swept override only (seed=1 is fixed)
        assert run.project == "agc_pipeline"
        # flat, groupable keys; the resolved config under cfg
        assert set(FLAT) <= set(run.config)
        assert (run.config["code"], run.config["n"], run.config["k"], run.config["m"],
                run.config["q"], run.config["runtime"]) == (code, 7, 7, 2, 0.25, "simulated")
        assert run.config["d"] == summary["parameters"] and run.config["seed"] == 1
        assert run.config["cfg"]["trainer"]["iterations"] == 4
        # x-axes; every other metric charted against the iteration
        assert {"iteration", "virtual_time", "wall_time", "mb_to_ps"} <= set(run.metrics)
        assert run.metrics["*"] == {"step_metric": "iteration", "glob": True}
        # headline results; the summary's train_loss is the final loss
        assert run.summary["train_loss"] == summary["final_train_loss"]
        assert run.summary["final_train_loss"] == summary["final_train_loss"]
        assert run.summary["alpha"] == summary["alpha"]["value"]
        assert run.summary["test_accuracy"] == summary["test_accuracy"]
        assert run.summary["total_bytes_to_ps"] == summary["total_bytes_to_ps"]
        assert run.summary["startup_seconds"] == summary["startup_seconds"]
        rows = [json.loads(line) for line in
                (sweep / str(job) / "metrics.jsonl").read_text().splitlines()]
        assert [h["iteration"] for h in run.history] == [r["iteration"] for r in rows]
        assert run.history[1]["mb_to_ps"] == rows[0]["total_bytes_to_ps"] / 1e6
        # where the offline run is, and how to upload it
        assert summary["wandb"]["id"] == run.id and summary["wandb"]["dir"] == str(folder)
        assert f"wandb sync {folder}" in output
    assert (sweep / "wandb_report.json").is_file()  # the report callback's spec
    spec = json.loads((sweep / "wandb_report.json").read_text())
    assert spec["groups"] == ["tiny-2026-01-02_03-04-05"]


def test_a_new_sweep_of_the_same_preset_gets_its_own_group(tmp_path: Path) -> None:
    from agc_pipeline.reporting.jobs import sweep_group

    first, second = (sweep_group("fig6_bibd7", tmp_path / stamp) for stamp in
                     ("2026-01-02_03-04-05", "2026-01-02_03-09-00"))
    assert first == "fig6_bibd7-2026-01-02_03-04-05" and first != second
    a, b = sweep_group("x", tmp_path / "a" / "sweep"), sweep_group("x", tmp_path / "b" / "sweep")
    assert a.startswith("x-sweep-") and a != b  # same folder name, other sweep


def test_resume_continues_the_same_wandb_run(tmp_path: Path, offline: None) -> None:
    run_dir = tmp_path / "run"
    run_training(compose_config("train", [*TINY, "logger=wandb", "trainer.iterations=2"]),
                 run_dir)
    first = json.loads((run_dir / "summary.json").read_text())["wandb"]["id"]
    run_training(compose_config("train", [*TINY, "logger=wandb", "trainer.iterations=4",
                                          "trainer.resume=true"]), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    folders = offline_runs(run_dir)
    assert len(folders) == 2 and summary["wandb"]["id"] == first
    runs = [read_run(folder) for folder in folders]
    assert [r.id for r in runs] == [first, first]
    assert [h["iteration"] for h in runs[1].history] == [2, 3]  # the rest of the same run


def test_analyze_points_are_charted_against_the_straggler_fraction(tmp_path: Path,
                                                                   offline: None) -> None:
    cfg = compose_config("analyze", ["assignment.design=fano", "analysis.s=[1,2,3]",
                                     "analysis.realizations=2", "analysis.straggler_sets=5",
                                     "analysis.progress=false", "analysis.plot=false",
                                     "logger=wandb", "name=fano"])
    results = run_analysis(cfg, tmp_path / "run")
    run = read_run(tmp_path / "run")
    assert run.job_type == "analyze" and run.group.startswith("fano-run-")
    assert {"straggler_fraction", "s"} <= set(run.metrics)
    assert run.metrics["*"] == {"step_metric": "straggler_fraction", "glob": True}
    points = [h for h in run.history if "empirical_mean" in h]  # not the table's row
    assert [p["straggler_fraction"] for p in points] == [p["straggler_fraction"]
                                                         for p in results["points"]]
    assert set(FLAT) <= set(run.config) and (run.config["n"], run.config["m"]) == (7, 2)
    assert run.config["code"] == "random_diagonal" and run.config["assignment"] == "bibd"
    last = results["points"][-1]
    assert run.summary["error_mean_at_max_s"] == last["empirical_mean"]
    assert run.summary["max_s"] == 3 and run.summary["upper_bound_at_max_s"] == last[
        "upper_bound"]
    assert results["wandb"]["id"] == run.id
    # regression: a run file read while W&B still writes it (cut inside a record) gave a
    # protobuf DecodeError instead of the records so far, so read_run did not wait (CI flake)
    (path,) = (tmp_path / "run").glob("**/run-*.wandb")
    data, full = path.read_bytes(), records(path)
    for cut in range(8, len(data), max(1, len(data) // 97)):
        part = tmp_path / "part.wandb"
        part.write_bytes(data[:cut])
        got = records(part)
        assert [r.SerializeToString() for r in got] == [
            r.SerializeToString() for r in full[:len(got)]]


class FakeRun:
    """What make_logger_sink's WandbSink needs of a run."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.id, self.project, self.entity = "fake", kwargs["project"], kwargs["entity"]
        self.group, self.name, self.job_type = kwargs["group"], kwargs["name"], kwargs["job_type"]
        self.defined: list[tuple[str, str | None]] = []
        self.summary: dict = {}

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.defined.append((name, step_metric))

    def finish(self) -> None:
        pass


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch, offline: None) -> list[FakeRun]:
    import wandb

    runs: list[FakeRun] = []

    def init(**kwargs: object) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def sink_for(logger: dict, tmp_path: Path) -> FakeRun:
    sink = make_logger_sink(logger, tmp_path, {"seed": 0}, group="tiny-stamp",
                            job_type="train", name="seed=0")
    sink.close()
    return sink.run


def test_wandb_environment_variables_fill_what_the_config_leaves_null(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_wandb: list[FakeRun]) -> None:
    base = {"_target_": WANDB_LOGGER, "project": None, "entity": None, "mode": None, "group": None,
            "tags": []}
    run = sink_for(base, tmp_path)  # nothing set: our defaults
    assert run.kwargs["project"] == "agc_pipeline" and run.kwargs["mode"] == "offline"
    assert (run.kwargs["group"], run.kwargs["name"], run.kwargs["job_type"]) == (
        "tiny-stamp", "seed=0", "train")
    assert run.kwargs["dir"] == str(tmp_path) and run.kwargs["tags"] is None
    env = {"WANDB_PROJECT": "envproj", "WANDB_ENTITY": "team", "WANDB_MODE": "disabled",
           "WANDB_RUN_GROUP": "envgroup", "WANDB_NAME": "envname", "WANDB_JOB_TYPE": "envjob",
           "WANDB_DIR": str(tmp_path / "elsewhere")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = sink_for(base, tmp_path)
    assert (run.kwargs["project"], run.kwargs["entity"], run.kwargs["mode"],
            run.kwargs["group"], run.kwargs["name"], run.kwargs["job_type"],
            run.kwargs["dir"]) == ("envproj", "team", "disabled", "envgroup", "envname",
                                   "envjob", str(tmp_path / "elsewhere"))
    run = sink_for({**base, "project": "cfgproj", "mode": "offline", "group": "cfggroup"},
                   tmp_path)  # the config's values win over the environment's
    assert (run.kwargs["project"], run.kwargs["mode"], run.kwargs["group"]) == (
        "cfgproj", "offline", "cfggroup")


def test_bad_logger_mode_is_one_line(tmp_path: Path, fake_wandb: list[FakeRun]) -> None:
    from agc_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^logger.mode must be one of"):
        sink_for({"_target_": WANDB_LOGGER, "mode": "onlin"}, tmp_path)
