"""A table of hostile commands run through the apps (issue 20), each outcome classified:

* OK — refused with a non-zero status, one line naming what to fix, the run dir untouched;
* LOST — the run dir changed (a file rewritten, a ``*.tmp`` left behind, a checkpoint gone);
* SILENT-WRONG — accepted (status 0) though it should have been refused;
* TRACEBACK — an exception escaped the app's one-line reporting;
* UNCLEAR — refused, but the message does not name the parameter or file and its rule.

Most cases run in-process through :func:`~agc_pipeline.build.run_app` (the apps' reporting
path, ConfigError → status 2, WriteFailed → status 1), against a copy of a finished run; the
run-dir cases need Hydra and run as a subprocess. The totals are printed (``-s``) and every
bad class must be empty.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import agc_pipeline.training.checkpoint as checkpoint_module
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
CLASSES = ("OK", "LOST", "SILENT-WRONG", "TRACEBACK", "UNCLEAR")


@dataclass
class Outcome:
    status: int | None  #: None: an exception escaped
    stderr: str


def snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".run.lock"}


def in_process(main: Callable[[], Any], app: str) -> Outcome:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            run_app(main, app)
        except SystemExit as exc:
            return Outcome(int(exc.code or 0), err.getvalue())
        except BaseException as exc:  # noqa: BLE001 - what the classifier calls TRACEBACK
            return Outcome(None, f"{err.getvalue()}Traceback: {type(exc).__name__}: {exc}")
    return Outcome(0, err.getvalue())


def cli(app: str, *args: str) -> Outcome:
    proc = subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return Outcome(proc.returncode, proc.stderr)


def train(*overrides: str, data: bool = True) -> Callable[[Path], Outcome]:
    """The train app on ``overrides`` (``data=False``: they choose the data set)."""
    base = FAST if data else RUN
    return lambda run: in_process(
        lambda: run_training(compose_config("train", [*base, *overrides]), run), "agc-train")


def plan(*overrides: str) -> Callable[[Path], Outcome]:
    return lambda run: in_process(
        lambda: build_plan(compose_config("plan", list(overrides))), "agc-plan")


def analyze(*overrides: str) -> Callable[[Path], Outcome]:
    args = ["experiment=fig3", "debug=fast", "analysis.progress=false", *overrides]
    return lambda run: in_process(
        lambda: run_analysis(compose_config("analyze", args), run / "analysis"), "agc-analyze")


def disk_full_at_third_checkpoint(run: Path) -> Outcome:
    """A fresh run whose third checkpoint meets a full disk (the run dir is emptied first:
    what must survive is the second checkpoint and the rows before)."""
    for path in run.iterdir():
        path.unlink()
    real, calls = checkpoint_module.torch.save, []

    def save(obj: object, fh: IO[bytes]) -> None:
        calls.append(1)
        if len(calls) >= 3:
            fh.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, fh)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", save)
        outcome = train()(run)
    whole = checkpoint_module.load_checkpoint(run / "checkpoint.pt")["iteration"] == 1
    return Outcome(outcome.status, outcome.stderr + ("" if whole else "\nLOST checkpoint"))


def _files(tmp: Path) -> dict[str, str]:
    """The hostile files the cases point at."""
    (tmp / "a_file").write_text("x")
    (tmp / "not_utf8.json").write_bytes(b"\xff\xfe\x00{")
    curves = {"exact": "e", "curves": {"e": {"normalised_error": 0.0, "loss": [3.0, 2.0, 1.0]},
                                       "a": {"normalised_error": 0.2,
                                             "loss": [3.0, float("nan"), 1.0]}}}
    (tmp / "nan.json").write_text(json.dumps(curves))
    os.mkfifo(tmp / "fifo")
    mnist = tmp / "mnist"
    mnist.mkdir()
    source = ROOT / "agc_pipeline" / "data" / "mnist_t10k"
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (mnist / f"{split}-{kind}-ubyte.gz").write_bytes(
                (source / f"t10k-{kind}-ubyte.gz").read_bytes())
    raw = (mnist / "train-labels-idx1-ubyte.gz").read_bytes()
    (mnist / "train-labels-idx1-ubyte.gz").write_bytes(raw[:10] + bytes(50) + raw[60:])
    return {"tmp": str(tmp), "file": str(tmp / "a_file"), "mnist": str(mnist)}


#: name: (the command given the hostile files, words its one line must hold); every case
#: must be refused
CASES: dict[str, tuple[Callable[..., Outcome], str]] = {
    "m = 10⁹": (lambda f: train("m=1000000000"), "m=1000000000 (n = 7, k = 7) needs about"),
    "plan.n = [10⁹]": (lambda f: plan("plan.n=[1000000000]"), "plan.n=1000000000"),
    "convergence not UTF-8": (
        lambda f: plan(f"plan.convergence={f['tmp']}/not_utf8.json"),
        "not_utf8.json: not a convergence-curves file (not UTF-8 text)"),
    "convergence with NaN": (lambda f: plan(f"plan.convergence={f['tmp']}/nan.json"),
                             "nan.json: curve 'a' holds a NaN"),
    "weight_decay = nan": (lambda f: train("optimizer.weight_decay=nan"),
                           "optimizer.weight_decay must be a finite number"),
    "momentum = inf": (lambda f: train("optimizer.momentum=inf"),
                       "optimizer.momentum must be a finite number"),
    "damaged gzip MNIST": (
        lambda f: train("dataset=mnist", f"dataset.root={f['mnist']}", "dataset.download=false",
                        "dataset.train_size=100", "dataset.test_size=10", "model=mlp",
                        data=False),
        "train-labels-idx1-ubyte.gz: cannot read IDX file"),
    "FIFO as dataset.path": (lambda f: train("dataset=text", f"dataset.path={f['tmp']}/fifo",
                                             "model=gpt", data=False),
                             "fifo: not a regular file or a folder"),
    "plot_bounds = [bogus]": (lambda f: analyze("analysis.plot_bounds=[bogus]"),
                              "analysis.plot_bounds: 'bogus' is not a bound of scheme"),
    "disk full at a checkpoint": (lambda f: disk_full_at_third_checkpoint,
                                  "checkpoint.pt: No space left on device"),
    "hydra.run.dir is a file": (
        lambda f: (lambda run: cli("train", *FAST, f"hydra.run.dir={f['file']}")),
        "a_file exists and is not a directory"),
    "hydra.run.dir under a file": (
        lambda f: (lambda run: cli("train", *FAST, f"hydra.run.dir={f['file']}/run")),
        "a_file is not a directory"),
}


def classify(outcome: Outcome, says: str, before: dict[str, str], after: dict[str, str],
             run: Path) -> str:
    if outcome.status is None or "Traceback" in outcome.stderr:
        return "TRACEBACK"
    if outcome.status == 0:
        return "SILENT-WRONG"
    if "LOST" in outcome.stderr or list(run.rglob("*.tmp")):
        return "LOST"
    if says != "checkpoint.pt: No space left on device" and after != before:
        return "LOST"
    lines = [line for line in outcome.stderr.strip().splitlines() if not line.startswith("[")]
    if len(lines) != 1 or says not in lines[0]:
        return "UNCLEAR"
    return "OK"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished")
    run_training(compose_config("train", FAST), run)
    return run


def test_hostile_cases(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                       ) -> None:
    files = _files(tmp_path)
    results: dict[str, str] = {}
    for index, (name, (make, says)) in enumerate(CASES.items()):
        run = tmp_path / f"run{index}"
        shutil.copytree(finished, run)
        before = snapshot(run)
        outcome = make(files)(run)
        results[name] = classify(outcome, says, before, snapshot(run), run)
        if results[name] != "OK":
            results[name] += f" ({outcome.status}: {outcome.stderr.strip()[-300:]})"
    totals = Counter(result.split(" ")[0] for result in results.values())
    with capsys.disabled():
        print("\nhostile harness: " + ", ".join(f"{c} {totals.get(c, 0)}" for c in CLASSES))
    bad = {name: result for name, result in results.items() if not result.startswith("OK")}
    assert not bad, bad
    assert totals["OK"] == len(CASES)
