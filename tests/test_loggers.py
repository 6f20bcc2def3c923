"""Loggers by ``_target_`` (issue 17): every option of ``conf/logger/`` instantiates, several
loggers at once all get every row, the W&B settings are found by class, and a bad logger node
fails with one line. W&B is faked here except in the end-to-end run (offline)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.sinks import (
    ConsoleLogger,
    MultiSink,
    NoLogger,
    Sink,
    WandbLogger,
    make_logger_sink,
    wandb_settings,
)
from agc_pipeline.train import run_training
from tests.conftest import compose_config
from tests.wandb_files import offline_runs, read_run

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml"))
#: the sinks each option builds
EXPECTED = {"none": [NoLogger], "wandb": [WandbLogger], "console": [ConsoleLogger],
            "many": [WandbLogger, ConsoleLogger]}
CONSOLE = "agc_pipeline.reporting.sinks.ConsoleLogger"


class FakeRun:
    """The W&B run a WandbLogger drives, recording what it is given."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.id = kwargs, "fake"
        self.project, self.entity, self.group = kwargs["project"], kwargs["entity"], kwargs["group"]
        self.name, self.job_type = kwargs["name"], kwargs["job_type"]
        self.rows: list[tuple[int | None, dict[str, Any]]] = []
        self.summary: dict[str, Any] = {}

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        pass

    def log(self, row: dict[str, Any], step: int | None = None, commit: bool = True) -> None:
        self.rows.append((step, row))

    def finish(self) -> None:
        pass


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    import wandb

    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def build(logger: Any, tmp_path: Path) -> Sink:
    return make_logger_sink(logger, tmp_path, {"seed": 0}, group="g", job_type="train",
                            name="seed=0", x_axes=("iteration",), step_metric="iteration")


def leaves(sink: Sink) -> list[Sink]:
    return sink.sinks if isinstance(sink, MultiSink) else [sink]


def test_the_logger_options_are_the_expected_ones() -> None:
    assert OPTIONS == sorted(EXPECTED)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("app", ["train", "analyze"])
def test_every_logger_option_instantiates(option: str, app: str, tmp_path: Path,
                                          fake_wandb: list[FakeRun]) -> None:
    cfg = compose_config(app, [f"logger={option}"])
    sink = build(cfg.logger, tmp_path)
    assert [type(s) for s in leaves(sink)] == EXPECTED[option]
    sink.log({"iteration": 0, "train_loss": 0.5}, step=0)
    sink.summary({"final_train_loss": 0.5})
    sink.close()
    logs_to_wandb = WandbLogger in EXPECTED[option]
    assert len(fake_wandb) == int(logs_to_wandb)
    assert (sink.describe() is not None) == logs_to_wandb  # summary.json's "wandb"
    assert (wandb_settings(cfg.logger) is not None) == logs_to_wandb
    if logs_to_wandb:  # the defaults of conf/logger/wandb.yaml
        (run,) = fake_wandb
        assert (run.kwargs["mode"], run.kwargs["project"], run.kwargs["group"]) == (
            "offline", "agc_pipeline", "g")
        assert run.rows == [(0, {"iteration": 0, "train_loss": 0.5})]


def test_two_loggers_at_once_both_receive_every_row(tmp_path: Path, fake_wandb: list[FakeRun],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config("train", ["logger=many", "logger.console.every=2"])
    sink = build(cfg.logger, tmp_path)
    with caplog.at_level(logging.INFO, logger="agc_pipeline.console"):
        for i in range(5):
            sink.log({"iteration": i, "train_loss": 1 / (i + 1), "skipped": False}, step=i)
        sink.summary({"final_train_loss": 0.2, "status": "completed"})
        sink.close()
    (run,) = fake_wandb
    assert [step for step, _ in run.rows] == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "agc_pipeline.console"]
    assert lines == ["iteration=0 train_loss=1", "iteration=2 train_loss=0.3333",
                     "iteration=4 train_loss=0.2", "summary: final_train_loss=0.2 status=completed"]


def test_a_mapping_may_hold_loggers_of_one_kind_and_switch_one_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = {"a": {"_target_": CONSOLE, "every": 1, "columns": None},
              "b": {"_target_": CONSOLE, "every": 1, "columns": ["loss"]}, "c": None}
    sink = build(logger, tmp_path)
    assert [type(s) for s in leaves(sink)] == [ConsoleLogger, ConsoleLogger]
    with caplog.at_level(logging.INFO, logger="agc_pipeline.console"):
        sink.log({"loss": 0.25, "n": 3}, step=0)
    assert [r.getMessage() for r in caplog.records] == ["loss=0.25 n=3", "loss=0.25"]
    assert type(build(None, tmp_path)) is NoLogger and type(build({}, tmp_path)) is NoLogger


@pytest.mark.parametrize(("logger", "message"), [
    ({"name": "wandb"}, r"^logger has no _target_: a logger config names its sink class"),
    ("wandb", r"^logger has no _target_"),
    ({"w": {"project": "p"}}, r"^logger\.w has no _target_"),
    ({"_target_": "collections.OrderedDict"},
     r"^logger\._target_ must name a Sink class \(got 'collections.OrderedDict'\)$"),
    ({"_target_": "agc_pipeline.reporting.sinks.Nope"},
     r"^logger\._target_ 'agc_pipeline.reporting.sinks.Nope': "),
    ({"_target_": CONSOLE, "every": True},
     r"^logger\.every must be a positive integer \(got True\)$"),
    ({"c": {"_target_": CONSOLE, "evry": 1}},
     r"^logger\.c\.evry: ConsoleLogger has no such setting \(its settings: every, columns\)$"),
    ({"c": {"_target_": CONSOLE, "columns": "loss"}}, r"^logger\.c\.columns must be a list"),
    ({"_target_": "agc_pipeline.reporting.sinks.JsonlSink"},
     r"^logger: JsonlSink cannot be built as a logger \(.*\)$"),
    ({"_target_": CONSOLE, "keys": ["loss"]},
     r"^logger\.keys: ConsoleLogger has no such setting"),
])
def test_a_bad_logger_node_is_one_line(logger: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build(logger, tmp_path)
    assert "\n" not in str(info.value)


def test_wandb_settings_are_found_by_class() -> None:
    wandb = compose_config("train", ["logger=wandb", "logger.project=p"]).logger
    assert wandb_settings(wandb) == {"project": "p", "entity": None, "mode": None,
                                     "group": None, "tags": []}
    many = compose_config("train", ["logger=many", "logger.wandb.group=grp"]).logger
    assert wandb_settings(many)["group"] == "grp"
    for other in (compose_config("train", ["logger=console"]).logger,
                  compose_config("train", ["logger=none"]).logger, None,
                  {"name": "wandb", "project": "p"},  # a config from before issue 17
                  {"_target_": "no.such.Class"}):
        assert wandb_settings(other) is None


TINY = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.alpha_samples=0", "trainer.progress=false",
        "trainer.eval_every=2", "name=tiny"]


def test_a_run_logs_to_wandb_and_the_console_and_resumes_the_wandb_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    run_dir = tmp_path / "run"
    run_training(compose_config("train", [*TINY, "logger=wandb", "trainer.iterations=2"]),
                 run_dir)
    first = json.loads((run_dir / "summary.json").read_text())["wandb"]
    # resume with another logger node (the key prefix "logger" is resumable): same W&B run
    with caplog.at_level(logging.INFO, logger="agc_pipeline.console"):
        run_training(compose_config("train", [*TINY, "logger=many", "logger.console.every=1",
                                              "trainer.iterations=4", "trainer.resume=true"]),
                     run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wandb"]["id"] == first["id"] and summary["wandb"]["mode"] == "offline"
    folders = offline_runs(run_dir)
    assert len(folders) == 2 and all(f.is_dir() for f in folders)
    assert [h["iteration"] for h in read_run(folders[1]).history] == [2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "agc_pipeline.console"]
    assert [line.split(" ")[0] for line in lines[:2]] == ["iteration=2", "iteration=3"]
    assert "summary:" in lines[-1] and "final_train_loss=" in lines[-1]
