"""The typed, versioned summary.json (issue 17): RunSummary round trip, files written before
the schema, one clear message for a missing field, None-valued fields through every reader."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from agc_pipeline.report import make_report
from agc_pipeline.reporting.groups import group_runs
from agc_pipeline.reporting.runs import find_runs
from agc_pipeline.reporting.summary import (
    ORDER,
    SCHEMA_VERSION,
    ReportError,
    RunSummary,
)
from agc_pipeline.reporting.sweeps import finished_run
from agc_pipeline.reporting.wandb_runs import WandbOptions, logged_runs, run_configs
from agc_pipeline.repro import CASES, collect_metrics
from agc_pipeline.train import _summary, build_trainer, headline, run_training
from tests.conftest import ROOT, compose_config

#: a train run's summary.json written before the schema (tests/data/README.md)
OLD = ROOT / "tests" / "data" / "summary_pre_schema.json"
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=140", "dataset.dim=5",
        "model=logistic", "trainer.iterations=3", "trainer.alpha_samples=0",
        "trainer.progress=false", "name=tiny"]


def old_data() -> dict[str, Any]:
    return json.loads(OLD.read_text())


def test_every_field_is_in_the_file_order() -> None:
    assert set(ORDER) == {f.name for f in fields(RunSummary)}


def test_a_run_writes_the_schema_and_reads_back_the_same(tmp_path: Path) -> None:
    summary = run_training(compose_config("train", FAST), tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["schema"] == SCHEMA_VERSION and data["clock"] == "virtual"
    assert summary == data  # run_training returns what it wrote
    # today's keys: those of a file written before the schema, plus schema and clock
    assert set(data) == set(old_data()) | {"schema", "clock", "threads"}  # threads: added later
    typed = RunSummary.read(tmp_path / "summary.json")
    assert typed.to_dict() == data and list(typed.to_dict()) == list(data)
    assert typed.runtime == "simulated" and typed.runtime_fields == {}
    assert headline(typed)["train_loss"] == typed.final_train_loss
    assert headline(typed)["schema"] == SCHEMA_VERSION


def test_a_summary_written_before_the_schema_reads() -> None:
    data = old_data()
    assert "schema" not in data and "clock" not in data
    summary = RunSummary.read(OLD)
    assert summary.schema == 0 and summary.clock == "virtual"  # from runtime "simulated"
    assert summary.alpha is not None and summary.alpha.value == data["alpha"]["value"]
    assert summary.final_train_loss == data["final_train_loss"]
    out = summary.to_dict()
    assert {k: v for k, v in out.items() if k not in ("schema", "clock")} == data
    assert out["schema"] == 0  # not claimed to be of today's schema


def test_older_files_lack_optional_fields_and_the_runtime_tells_the_clock() -> None:
    required = {k: v for k, v in old_data().items()
                if k in ("final_train_loss", "scheme", "assignment", "decoder", "straggler",
                         "m", "wait_for_all", "lr", "model", "dataset", "train_samples")}
    summary = RunSummary.from_dict(required | {"runtime": "distributed"})
    assert summary.clock == "wall" and summary.status is None and summary.alpha is None
    assert summary.iterations is None and summary.wall_time is None
    assert RunSummary.from_dict(required).clock == "virtual"


@pytest.mark.parametrize(("trainer", "clock"), [
    (["trainer=simulated"], "virtual"), (["trainer=distributed"], "wall"),
    (["trainer=ddp", "code=uncoded_wait"], "wall")])
def test_each_runtime_names_its_clock(trainer: list[str], clock: str) -> None:
    """Built, not started: the summary says which time the run measures, from the runtime's
    ``virtual_clock`` capability."""
    coded_only = ("trainer.alpha_samples=0",)  # DDP decodes nothing: it has no such key
    cfg = compose_config("train", [o for o in FAST if "ddp" not in trainer[0]
                                   or o not in coded_only] + trainer)
    runtime = build_trainer(cfg)
    assert _summary(runtime, cfg, {}, "completed", None, 0.0).clock == clock


@pytest.mark.parametrize(("drop", "named"), [("final_train_loss", "final_train_loss"),
                                             ("scheme", "scheme"),
                                             ("decoder.rescale", "decoder.rescale")])
def test_a_missing_required_field_gives_one_message_naming_file_and_field(
        drop: str, named: str, tmp_path: Path) -> None:
    data = old_data()
    if "." in drop:
        outer, inner = drop.split(".")
        del data[outer][inner]
    else:
        del data[drop]
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(data))
    (run / "metrics.jsonl").write_text('{"iteration": 0, "train_loss": 1.0}\n')
    with pytest.raises(ReportError) as info:
        RunSummary.read(run / "summary.json")
    message = str(info.value)
    assert message == f"{run / 'summary.json'}: not the summary of a train run (no {named})"
    found = find_runs([run])  # the report names it once and leaves the run out
    assert found.train == [] and found.problems == [message]


def test_wrong_types_and_newer_schemas_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="summary field final_train_loss is 'low'"):
        RunSummary.from_dict(old_data() | {"final_train_loss": "low"}, tmp_path)
    with pytest.raises(ReportError, match="summary field m is True"):
        RunSummary.from_dict(old_data() | {"m": True}, tmp_path)
    with pytest.raises(ReportError, match="clock is 'sundial'"):
        RunSummary.from_dict(old_data() | {"clock": "sundial"}, tmp_path)
    with pytest.raises(ReportError, match="schema is '1'"):
        RunSummary.from_dict(old_data() | {"schema": "1"}, tmp_path)
    with pytest.raises(ReportError, match="schema 99 is newer"):
        RunSummary.from_dict(old_data() | {"schema": 99}, tmp_path)
    with pytest.raises(ReportError, match="not a JSON object"):
        RunSummary.from_dict([1, 2], tmp_path)


def ddp_summary() -> dict[str, Any]:
    """What trainer=ddp writes: no PS (total_bytes_to_ps null), no virtual clock, no α, no
    test accuracy; runtime fields of its own."""
    return old_data() | {
        "schema": SCHEMA_VERSION, "runtime": "ddp", "clock": "wall", "virtual_time": None,
        "total_bytes_to_ps": None, "alpha": None, "alpha_residual": None,
        "test_accuracy": None, "mean_grad_error": None, "wall_time": 1.5,
        "mean_iteration_time": 0.5, "total_bytes_per_rank": 1200, "mean_sleep_time": 0.0,
        "ddp": {"workers": 7, "backend": "gloo", "launch": "local", "buckets": 1}}


def test_none_valued_fields_pass_every_reader(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    run.mkdir()
    RunSummary.from_dict(ddp_summary()).write(run / "summary.json")
    rows = [{"iteration": i, "train_loss": 2.0 - i, "wall_time": 0.5 * (i + 1),
             "iteration_time": 0.5} for i in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = RunSummary.read(run / "summary.json")
    assert summary.to_dict() == ddp_summary()
    assert summary.wall_time == 1.5 and summary.runtime_fields["ddp"]["workers"] == 7
    # the W&B headline
    head = headline(summary)
    assert head["mb_to_ps"] is None and head["alpha"] is None and head["alpha_stderr"] is None
    assert head["train_loss"] == summary.final_train_loss and head["clock"] == "wall"
    # the report: groups, table, figures, W&B side
    found = find_runs([run])
    assert found.problems == []
    (group,) = group_runs(found.train)
    assert group.time_key == "wall_time"
    report = make_report([run], tmp_path / "out", wandb_report=WandbOptions())
    (record,) = report["groups"]
    assert record["total_bytes_to_ps"] is None and record["alpha"] is None
    assert record["wall_time"] == (1.5, 0.0) and record["virtual_time"] is None
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 1.5 ± 0.0 s | n/a |" in text  # wall-clock time; no MB to the PS
    assert logged_runs(found.train, []) == [] and run_configs(found.train, []) == [
        summary.config]
    # the sweep skip logic and the golden checks
    assert finished_run(run, summary.config or {}, ("metrics.jsonl",))
    case = next(c for c in CASES if c.kind == "distributed")
    metrics = collect_metrics(case, run)
    assert metrics["test_accuracy"] == [None]
    assert metrics["final_train_loss"] == [summary.final_train_loss]


def test_alpha_from_one_draw_has_no_standard_error(tmp_path: Path) -> None:
    """One α draw: stderr is inf, written as null; the summary reads and reports."""
    alpha = {"value": 0.7, "stderr": None, "residual": 0.1, "samples": 1}
    summary = RunSummary.from_dict(old_data() | {"alpha": alpha}, tmp_path)
    assert summary.alpha is not None and summary.alpha.stderr is None
    assert headline(summary)["alpha"] == 0.7 and headline(summary)["alpha_stderr"] is None
    with pytest.raises(ReportError, match="summary field alpha is 0.7"):
        RunSummary.from_dict(old_data() | {"alpha": 0.7}, tmp_path)


def test_a_diverged_run_s_null_loss_reads(tmp_path: Path) -> None:
    """A non-finite final loss is written as null: the summary still reads and reports."""
    data = old_data() | {"final_train_loss": None, "status": "diverged"}
    summary = RunSummary.from_dict(data, tmp_path)
    assert summary.final_train_loss is None and headline(summary)["train_loss"] is None
    run = tmp_path / "diverged"
    run.mkdir()
    summary.write(run / "summary.json")
    (run / "metrics.jsonl").write_text('{"iteration": 0, "train_loss": 3.0}\n')
    report = make_report([run], tmp_path / "out")
    (record,) = report["groups"]
    assert record["final_train_loss"] is None and record["not_completed"] == 1
