"""The W&B report of a sweep (issue 11): native panels, grouping and run filters of the spec
``agc-report --wandb-report`` writes offline, its 1:1 mapping onto wandb_workspaces'
objects, and the online path (saved, URL printed) against a stand-in of the library."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from agc_pipeline.analyze import run_analysis
from agc_pipeline.report import main, make_report
from agc_pipeline.reporting.wandb_report import build_report, panels
from agc_pipeline.reporting.wandb_runs import WandbOptions
from agc_pipeline.train import run_training
from tests.conftest import compose_config

FAST = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=4", "trainer.alpha_samples=0",
        "trainer.progress=false", "trainer.eval_every=2", "name=tiny"]
GROUP = "tiny-2026-01-02_03-04-05"


def log_as_wandb(run_dir: Path, file: str, job_type: str) -> None:
    """Record in the run's summary that it was logged to W&B in GROUP (as logger=wandb
    does), without running W&B."""
    path = run_dir / file
    data = json.loads(path.read_text())
    data["wandb"] = {"id": f"id{run_dir.name}", "project": "agc", "entity": None,
                     "group": GROUP, "name": run_dir.name, "job_type": job_type,
                     "mode": "offline",
                     "dir": str(run_dir / "wandb" / f"offline-run-x-id{run_dir.name}")}
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two codes x two seeds at two straggler probabilities, and one analyze run."""
    root = tmp_path_factory.mktemp("sweep")
    jobs = [(code, q, seed) for code in ("random_diagonal", "stack") for q in (0.1, 0.3)
            for seed in (0, 1)]
    for i, (code, q, seed) in enumerate(jobs):
        run_training(compose_config("train", [*FAST, f"code={code}", f"straggler.q={q}",
                                              f"seed={seed}"]), root / str(i))
        log_as_wandb(root / str(i), "summary.json", "train")
    cfg = compose_config("analyze", ["assignment.design=fano", "analysis.s=[1,2]",
                                     "analysis.realizations=2", "analysis.straggler_sets=5",
                                     "analysis.progress=false", "analysis.plot=false"])
    run_analysis(cfg, root / "analysis")
    log_as_wandb(root / "analysis", "results.json", "analyze")
    return root


def grids(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in spec["report"]["blocks"] if b["type"] == "PanelGrid"]


def test_spec_has_native_panels_grouped_by_code_per_straggler_setting(sweep: Path,
                                                                      tmp_path: Path) -> None:
    report = make_report([sweep], tmp_path, "Tiny study", wandb_report=WandbOptions())
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    assert report["wandb_report"]["spec"] == str(tmp_path / "wandb_report.json")
    assert spec["api"] == "wandb_workspaces.reports.v2" and spec["groups"] == [GROUP]
    assert spec["report"]["type"] == "Report" and spec["report"]["project"] == "agc"
    assert spec["report"]["title"] == "Tiny study"
    train, analyze = grids(spec)[:2], grids(spec)[2]
    assert len(grids(spec)) == 3  # one grid per q, then the analyze runs
    for grid, q in zip(train, (0.1, 0.3), strict=True):
        (runset,) = grid["runsets"]
        assert runset["filters"] == (f"Metric('Group') == '{GROUP}' and "
                                     f"Metric('JobType') == 'train' and Config('q') == {q}")
        assert runset["groupby"] == ["config.code"]  # scheme adds nothing to code
        assert "summary:final_train_loss" in runset["visible_columns"]
        assert "summary:startup_seconds" in runset["visible_columns"]
        plots = {(p["x"], p["y"][0]): p for p in grid["panels"]}
        assert set(plots) == {("iteration", "train_loss"), ("virtual_time", "train_loss"),
                              ("mb_to_ps", "train_loss"), ("iteration", "test_accuracy")}
        for plot in plots.values():
            assert plot["type"] == "LinePlot"
            assert plot["groupby"] == {"type": "Config", "name": "code"}
            assert (plot["groupby_aggfunc"], plot["groupby_rangefunc"]) == ("mean", "stddev")
        assert plots[("iteration", "train_loss")]["log_y"] is True
    (runset,) = analyze["runsets"]
    assert runset["filters"] == f"Metric('Group') == '{GROUP}' and Metric('JobType') == 'analyze'"
    (plot,) = analyze["panels"]
    assert plot["x"] == "straggler_fraction"
    assert {"empirical_mean", "upper_bound", "lower_bound", "baseline_mean"} <= set(plot["y"])
    findings = spec["report"]["blocks"][-1]
    assert findings["type"] == "MarkdownBlock" and "| start-up s | training s |" in findings[
        "text"]
    assert "![" not in findings["text"] and "## Approximation error" in findings["text"]
    assert report["wandb_report"]["panels"] == len(panels(spec)) == 9


def test_other_config_keys_that_split_lines_join_the_grouping(tmp_path: Path) -> None:
    """Two learning rates of one code: code does not tell the lines apart, cfg.trainer.lr does."""
    for i, (lr, seed) in enumerate([(lr, seed) for lr in (0.1, 0.5) for seed in (0, 1)]):
        run_training(compose_config("train", [*FAST, f"trainer.lr={lr}", f"seed={seed}"]),
                     tmp_path / "runs" / str(i))
        log_as_wandb(tmp_path / "runs" / str(i), "summary.json", "train")
    make_report([tmp_path / "runs"], tmp_path / "out", wandb_report=WandbOptions())
    spec = json.loads((tmp_path / "out" / "wandb_report.json").read_text())
    (grid,) = grids(spec)
    # the first differing config key (optimizer.lr = ${trainer.lr})
    assert grid["runsets"][0]["groupby"] == ["config.cfg.optimizer.lr"]
    assert grid["panels"][0]["groupby"] == {"type": "Config", "name": "cfg.optimizer.lr"}
    assert "Config('q')" not in grid["runsets"][0]["filters"]  # one straggler setting


def test_cli_offline_says_how_to_publish(sweep: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--out", str(tmp_path), "--wandb-report"]) == 0
    out = capsys.readouterr().out
    assert f"W&B report spec (9 panels, group {GROUP}) -> {tmp_path / 'wandb_report.json'}" in out
    assert f"wandb sync {sweep}/*/wandb/offline-run-*" in out
    assert "--wandb-mode online" in out and "agc_pipeline[reports]" in out


def fake_library(saved: list[Any]) -> types.ModuleType:
    """A stand-in for wandb_workspaces.reports.v2: every class keeps its fields; Report.save
    records the report and gives it an id (as W&B's API does)."""
    module = types.ModuleType("wandb_workspaces.reports.v2")

    class Obj:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    class Report(Obj):
        entity = "me"
        url = ""

        def save(self) -> Report:
            saved.append(self)
            self.url = f"https://wandb.example/{self.entity}/{self.project}/reports/r--1"
            return self

    def __getattr__(name: str) -> type:  # noqa: N807
        return Report if name == "Report" else type(name, (Obj,), {})

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def test_online_saves_the_report_and_prints_its_url(sweep: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    saved: list[Any] = []
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", fake_library(saved))
    assert main([str(sweep), "--out", str(tmp_path), "--wandb-report", "--wandb-mode",
                 "online", "--wandb-entity", "team"]) == 0
    out = capsys.readouterr().out
    (report,) = saved
    assert "W&B report: https://wandb.example/team/agc/reports/r--1" in out
    assert report.entity == "team" and report.title == "Training report"
    grid = next(b for b in report.blocks if type(b).__name__ == "PanelGrid")
    assert type(grid.panels[0]).__name__ == "LinePlot" and grid.runsets[0].entity == "team"
    assert type(grid.panels[0].groupby).__name__ == "Config"
    done = json.loads((tmp_path / "report.json").read_text())["wandb_report"]
    assert done["url"] == "https://wandb.example/team/agc/reports/r--1"


def test_online_without_the_library_is_one_line(sweep: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)  # not installed
    assert main([str(sweep), "--out", str(tmp_path), "--wandb-report", "--wandb-mode",
                 "online"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("agc-report: publishing a W&B report needs wandb-workspaces: "
                           "pip install 'agc_pipeline[reports]'")
    assert (tmp_path / "wandb_report.json").is_file()  # the spec is written first


def test_spec_builds_the_librarys_objects(sweep: Path, tmp_path: Path) -> None:
    """The spec maps 1:1 onto wandb_workspaces.reports.v2 (offline: nothing is saved)."""
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from wandb_workspaces import expr

    make_report([sweep], tmp_path, wandb_report=WandbOptions(entity="team"))
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    report = build_report(spec)
    assert isinstance(report, wr.Report) and report.entity == "team"
    built = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(built) == 3 and all(isinstance(p, wr.LinePlot) for g in built for p in g.panels)
    assert built[0].panels[0].groupby == wr.Config("code")
    for grid in built:
        parsed = expr.expr_to_filters(grid.runsets[0].filters)
        assert {f.key.name for f in parsed.filters} >= {"group", "jobType"}


def test_the_whole_report_serialises_offline_and_plots_only_logged_keys(
        sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: the report was never serialised in a test. Built and serialised offline
    (only the project-id lookup of each run set is stubbed), and every panel's keys are ones
    the runs logged: the train rows through the W&B sink (which adds ``mb_to_ps``), the
    analyze runs' points."""
    pytest.importorskip("wandb_workspaces.reports.v2")
    import importlib

    from agc_pipeline.reporting.sinks import WandbSink

    interface = importlib.import_module("wandb_workspaces.reports.v2.interface")
    monkeypatch.setattr(interface, "_get_api", lambda: None)
    monkeypatch.setattr(interface, "execute_graphql",
                        lambda api, query, variables: {"project": {"internalId": "P1"}})
    make_report([sweep], tmp_path, wandb_report=WandbOptions(entity="team"))
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    model = json.loads(build_report(spec)._to_model().model_dump_json())
    assert "team" in json.dumps(model["project"]) and model["spec"]["blocks"]

    logged: set[str] = set()

    class Recorder:  # what the W&B sink hands to wandb's run.log
        def log(self, row: dict[str, Any], step: int, commit: bool) -> None:
            logged.update(row)

    sink = object.__new__(WandbSink)
    sink.run = Recorder()
    for metrics in sweep.glob("*/metrics.jsonl"):
        for line in metrics.read_text().splitlines():
            sink.log(json.loads(line), step=0)
    points = json.loads((sweep / "analysis" / "results.json").read_text())["points"]
    logged |= {key for point in points for key in point}
    plotted = {key for panel in panels(spec) for key in [panel["x"], *panel["y"]]}
    assert plotted <= logged, sorted(plotted - logged)


def test_a_report_without_an_entity_offline_is_one_line(sweep: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's default entity needs the API: offline and logged out, one line says what to do
    (it was a pydantic/API traceback)."""
    pytest.importorskip("wandb_workspaces.reports.v2")
    import importlib

    from agc_pipeline.reporting.wandb_report import PublishError

    interface = importlib.import_module("wandb_workspaces.reports.v2.interface")

    def logged_out() -> None:
        raise Exception("not logged in to W&B, try `wandb login --relogin`")

    monkeypatch.setattr(interface, "_get_api", logged_out)
    make_report([sweep], tmp_path, wandb_report=WandbOptions())
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    with pytest.raises(PublishError, match="needs `wandb login` \\(or pass --wandb-entity\\)"):
        build_report(spec)
