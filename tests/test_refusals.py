"""A refused command writes nothing into an existing run (issue 20: the refused run's
``config_resolved.yaml`` and ``.hydra/*.yaml`` used to replace the run's own, a garbled
metrics row was dropped before the refusal, an analysis was silently replaced).

Each case copies a finished run, runs a command the app must refuse (exit status 2, one
line naming what to fix, no traceback) and compares every file of the run dir, byte for
byte, with what it held before. The lock file ``.run.lock`` is left out: it holds the pid of
whoever holds the lock, and a refused run that could take the lock writes its own pid there.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

FAST = ["debug=fast", "trainer.iterations=3", "trainer.progress=false"]


def cli(app: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` (but the lock) -> the SHA-1 of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".run.lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = cli("train", *FAST, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the app's record of the run
    return run_dir


def _garble_a_row(run_dir: Path) -> None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a row cut in the middle
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _drop_the_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint.pt").unlink()


def _random_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint.pt").write_bytes(bytes(range(256)) * 40)


def _truncated_checkpoint(run_dir: Path) -> None:
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 3])


def _empty_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint.pt").write_bytes(b"")


def _directory_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "checkpoint.pt").mkdir()


def _foreign_checkpoint(run_dir: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, run_dir / "checkpoint.pt")


def _other_architecture(run_dir: Path) -> None:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["model"] = {k: torch.zeros(2, 2) for k in state["model"]}
    torch.save(state, run_dir / "checkpoint.pt")


CASES = {  # name: (damage done to the copy first, extra command-line arguments, message)
    "fresh run into a finished run": (None, ["trainer.lr=0.1"], "already holds a run"),
    "changed config on resume": (None, ["trainer.resume=true", "trainer.lr=0.1"],
                                 "differs from the checkpoint's in optimizer.lr, trainer.lr"),
    "shorter resume": (None, ["trainer.resume=true", "trainer.iterations=2"],
                       "cannot be shortened"),
    "runtime switch on resume": (None, ["trainer.resume=true", "trainer=ddp",
                                        "code=uncoded_wait"], "differs from the checkpoint"),
    "garbled metrics row on resume": (_garble_a_row, ["trainer.resume=true"],
                                      "restore the file"),
    "metrics and no checkpoint": (_drop_the_checkpoint, ["trainer.resume=true"],
                                  "holds metrics.jsonl and no checkpoint.pt"),
    "random checkpoint": (_random_checkpoint, ["trainer.resume=true"], "cannot read checkpoint"),
    "truncated checkpoint": (_truncated_checkpoint, ["trainer.resume=true"],
                             "cannot read checkpoint"),
    "empty checkpoint": (_empty_checkpoint, ["trainer.resume=true"], "cannot read checkpoint"),
    "checkpoint is a directory": (_directory_checkpoint, ["trainer.resume=true"],
                                  "checkpoint"),
    "foreign torch.save file": (_foreign_checkpoint, ["trainer.resume=true"],
                                "unknown format"),
    "checkpoint of another architecture": (_other_architecture, ["trainer.resume=true"],
                                           "does not fit this run"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_train_command_leaves_the_run_as_it_was(finished: Path, tmp_path: Path,
                                                          case: str) -> None:
    damage, extra, says = CASES[case]
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    if damage is not None:
        damage(run_dir)
    before = snapshot(run_dir)
    proc = cli("train", *FAST, *extra, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert snapshot(run_dir) == before


def test_a_run_refused_because_the_dir_is_locked_writes_nothing(finished: Path,
                                                                tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    with (run_dir / ".run.lock").open("a+") as lock:  # as a running run holds it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = cli("train", *FAST, "trainer.overwrite=true", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "in use by another run" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(run_dir) == before


def test_analyze_into_a_finished_analysis_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "analysis"
    args = ["experiment=fig3", "debug=fast", "analysis.progress=false",
            f"hydra.run.dir={run_dir}"]
    assert cli("analyze", *args).returncode == 0
    before = snapshot(run_dir)
    proc = cli("analyze", *args, "seed=1")
    assert proc.returncode == 2 and "already holds an analysis" in proc.stderr, proc.stderr
    assert snapshot(run_dir) == before
    replaced = cli("analyze", *args, "seed=1", "analysis.overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert snapshot(run_dir)["results.json"] != before["results.json"]
