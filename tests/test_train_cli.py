"""The train app through its real command line: a bad configuration and a `-m` multirun
(the Fig. 6 preset, shrunk to seconds) with the report written by the Hydra callback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agc_pipeline.report import main as report_main
from tests.conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agc_pipeline.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_impossible_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("straggler=fixed", "straggler.s=7", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("agc-train: configuration error:") and "s < n" in lines[0]


def test_fig6_multirun_and_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=fig6_bibd7", "seed=0", "trainer.iterations=3",
                   "dataset.train_size=70", "dataset.test_size=20", "trainer.alpha_samples=10",
                   "trainer.progress=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 2
    schemes = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        schemes.add(summary["scheme"]["name"])
        assert summary["iterations"] == 3 and summary["choices"]["experiment"] == "fig6_bibd7"
        assert len((job / "metrics.jsonl").read_text().splitlines()) == 3
        assert (job / ".hydra" / "config.yaml").is_file()
    assert schemes == {"random_diagonal", "stack"}
    # the ReportCallback of the preset wrote the figure and table at the end of the sweep
    assert (sweep / "train_loss.png").is_file() and (sweep / "report.md").is_file()
    report = json.loads((sweep / "report.json").read_text())
    assert {g["label"] for g in report["groups"]} == {"Construction (7)",
                                                       "Baseline construction (11)"}
    # the report app on the same runs, elsewhere
    assert report_main([str(sweep), "--out", str(tmp_path / "again")]) == 0
    assert "Construction (7)" in (tmp_path / "again" / "report.md").read_text()


def test_report_without_runs_is_one_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path)]) == 2
    assert "no train runs" in capsys.readouterr().err
