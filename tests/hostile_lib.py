"""The hostile harness's machinery (issue 20): how a case runs through an app's user-facing
path and how its outcome is classified. The cases are in ``tests/hostile_cases_*.py``, the
test in ``tests/test_hostile_harness.py``.

An outcome is

* OK — refused with a non-zero status, a line naming what to fix (``says``), the run dir
  untouched (or, for ``expect="warn"``: accepted with a warning naming the damaged file);
* LOST — the run dir changed (a file rewritten, a ``*.tmp`` left behind, a checkpoint gone);
* SILENT-WRONG — accepted (status 0) though it should have been refused;
* TRACEBACK — an exception escaped the app's one-line reporting;
* UNCLEAR — refused, but no line of the message names the parameter or file and its rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agc_pipeline.analyze import run_analysis
from agc_pipeline.build import run_app
from agc_pipeline.plan import build_plan
from agc_pipeline.train import run_training
from tests.conftest import ROOT, compose_config

RUN = ["trainer.iterations=3", "trainer.progress=false", "trainer.alpha_samples=20",
       "trainer.eval_every=0", "trainer.checkpoint_every=1", "trainer.lr=0.5", "logger=none"]
DATA = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic"]
FAST = [*DATA, *RUN]
ANALYZE = ["experiment=fig3", "debug=fast", "analysis.progress=false", "analysis.plot=false",
           "extras.print_config=false"]
CLASSES = ("OK", "LOST", "SILENT-WRONG", "TRACEBACK", "UNCLEAR")
CATEGORIES = {"a": "refused against a finished run (LOST-type)",
              "b": "wrong types and values (SILENT-WRONG-type)",
              "c": "broken models and files (TRACEBACK-type)",
              "d": "messages naming the parameter or file (UNCLEAR-type)"}

#: a runner: given the case's directory (a copy of the finished run, or an empty one),
#: run the command and return its outcome
Runner = Callable[[Path], "Outcome"]


@dataclass
class Outcome:
    status: int | None  #: None: an exception escaped
    stderr: str


@dataclass
class Case:
    """One hostile command. ``make(files)`` gives the runner (``files``: the hostile files'
    paths); ``says``: words a line of its message must hold."""

    category: str  #: a | b | c | d (:data:`CATEGORIES`)
    make: Callable[[dict[str, str]], Runner]
    says: str
    #: finished: a copy of the finished run (its analysis in analysis/) | empty: a new folder |
    #: sweep: a folder holding a copy of the run in train/ and of the analysis in analysis/
    where: str = "finished"
    expect: str = "refuse"  #: refuse | warn (status 0, a warning holding ``says``)
    one_line: bool = True  #: the message must be one line (the apps' ConfigError path)
    changes: bool = False  #: the run dir may change (a fresh run that fails half-way)
    damage: Callable[[Path], Any] | None = None  #: done to the run dir before the snapshot


def snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".run.lock"}


def in_process(main: Callable[[], Any], app: str, stdout: bool = False) -> Outcome:
    """``main`` through :func:`run_app`, as the app's entry point runs it (``stdout``: its
    standard output counts as part of the message, e.g. agc-repro's check lines)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            run_app(main, app)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            return Outcome(code, err.getvalue() + (out.getvalue() if stdout else ""))
        except BaseException as exc:  # noqa: BLE001 - what the classifier calls TRACEBACK
            return Outcome(None, f"{err.getvalue()}Traceback: {type(exc).__name__}: {exc}")
    return Outcome(0, err.getvalue() + (out.getvalue() if stdout else ""))


def cli(app: str, *args: str) -> Outcome:
    proc = subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return Outcome(proc.returncode, proc.stderr)


def train(*overrides: str, data: bool = True) -> Runner:
    """The train app on ``overrides`` (``data=False``: they choose the data set)."""
    base = FAST if data else RUN
    return lambda run: in_process(
        lambda: run_training(compose_config("train", [*base, *overrides]), run), "agc-train")


def plan(*overrides: str) -> Runner:
    return lambda run: in_process(
        lambda: build_plan(compose_config("plan", list(overrides))), "agc-plan")


def analyze(*overrides: str, into: str = "analysis_new") -> Runner:
    """The analyze app writing into ``<run>/<into>`` (``analysis``: a finished analysis)."""
    return lambda run: in_process(
        lambda: run_analysis(compose_config("analyze", [*ANALYZE, *overrides]), run / into),
        "agc-analyze")


def report(*args: str, target: str = "") -> Runner:
    """agc-report on ``<run>/<target>`` (its output in ``<run>/../report``)."""
    from agc_pipeline.report import main

    return lambda run: in_process(
        lambda: sys.exit(main([str(run / target), "--out", str(run.parent / f"{run.name}.out"),
                               *args])), "agc-report")


def repro(*args: str) -> Runner:
    from agc_pipeline.repro import main

    return lambda run: in_process(lambda: sys.exit(main(list(args))), "agc-repro",
                                  stdout=True)


def classify(outcome: Outcome, case: Case, before: dict[str, str], after: dict[str, str],
             run: Path) -> str:
    if outcome.status is None or "Traceback" in outcome.stderr:
        return "TRACEBACK"
    if outcome.status == 0 and case.expect != "warn":
        return "SILENT-WRONG"
    if "LOST" in outcome.stderr or list(run.rglob("*.tmp")):
        return "LOST"
    if not case.changes and after != before:
        return "LOST"
    if outcome.status != 0 and case.expect == "warn":
        return "UNCLEAR"  # refused what it should have read (with a warning)
    lines = [line for line in outcome.stderr.strip().splitlines() if not line.startswith("[")]
    if case.one_line and len(lines) != 1:
        return "UNCLEAR"
    if not any(case.says in line for line in lines):
        return "UNCLEAR"
    return "OK"
