"""A table of hostile commands run through the apps (issue 20), each outcome classified as
OK, LOST, SILENT-WRONG, TRACEBACK or UNCLEAR (:mod:`tests.hostile_lib`).

The cases (``tests/hostile_cases_ab.py``, ``tests/hostile_cases_cd.py``) fall in four
categories: (a) commands refused against a finished run, which must leave it byte-identical;
(b) wrong types and values, which must be refused; (c) broken user models and damaged files,
which must never show a stack trace; (d) refusals whose one line must name the parameter or
file. Most run in-process through :func:`~agc_pipeline.build.run_app` (the apps' reporting
path, ConfigError → status 2, WriteFailed → status 1) against a copy of a finished run (with
a finished analysis in its ``analysis/``) or an empty folder; the cases of Hydra's own
refusals need the command line and are marked slow. The totals per class and per category
are printed (``-s``) and every bad class must be empty.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from agc_pipeline.analyze import run_analysis
from agc_pipeline.train import run_training
from tests.conftest import compose_config
from tests.hostile_cases_ab import A, B
from tests.hostile_cases_cd import SLOW, C, D, hostile_files
from tests.hostile_lib import ANALYZE, CATEGORIES, CLASSES, FAST, Case, classify, snapshot

CASES: dict[str, Case] = {**A, **B, **C, **D}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished train run with a finished analysis in its ``analysis/``."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_training(compose_config("train", FAST), run)
    run_analysis(compose_config("analyze", ANALYZE), run / "analysis")
    return run


def run_cases(cases: dict[str, Case], finished: Path, tmp_path: Path,
              capsys: pytest.CaptureFixture[str], title: str) -> None:
    files = hostile_files(tmp_path)
    sys.path.insert(0, str(tmp_path))  # the user's own model modules
    results: dict[str, tuple[str, str]] = {}
    try:
        for index, (name, case) in enumerate(cases.items()):
            run = tmp_path / f"run{index}"
            if case.where == "finished":
                shutil.copytree(finished, run)
            elif case.where == "sweep":
                shutil.copytree(finished, run / "train", ignore=shutil.ignore_patterns("analysis"))
                shutil.copytree(finished / "analysis", run / "analysis")
            else:
                run.mkdir()
            if case.damage is not None:
                case.damage(run)
            before = snapshot(run)
            outcome = case.make(files)(run)
            result = classify(outcome, case, before, snapshot(run), run)
            if result != "OK":
                result += f" ({outcome.status}: {outcome.stderr.strip()[-400:]})"
            results[name] = (case.category, result)
    finally:
        sys.path.remove(str(tmp_path))
    classes = Counter(result.split(" ")[0] for _, result in results.values())
    with capsys.disabled():
        print(f"\n{title}: {len(results)} cases: "
              + ", ".join(f"{c} {classes.get(c, 0)}" for c in CLASSES))
        for category, what in CATEGORIES.items():
            mine = [r.split(" ")[0] for cat, r in results.values() if cat == category]
            if mine:
                counts = Counter(mine)
                print(f"  ({category}) {what}: {len(mine)} cases: "
                      + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES))
    bad = {name: result for name, (_, result) in results.items() if result != "OK"}
    assert not bad, "\n".join(f"{name}: {result}" for name, result in bad.items())


def test_hostile_cases(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                       ) -> None:
    assert len(CASES) >= 70
    assert {case.category for case in CASES.values()} == set(CATEGORIES)
    run_cases(CASES, finished, tmp_path, capsys, "hostile harness")


@pytest.mark.slow
def test_hostile_cases_on_the_command_line(finished: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_cases(SLOW, finished, tmp_path, capsys, "hostile harness (command line)")
