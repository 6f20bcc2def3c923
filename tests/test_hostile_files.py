"""The file system against the apps (issue 20): a run dir that cannot be created or written,
and a disk that fills up mid-run. Each is one line naming the file or the key and what is
wrong, a non-zero exit status, no traceback; a failed write leaves no ``*.tmp`` file and the
files written before it as they were."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import IO

import pytest

import agc_pipeline.reporting.sinks as sinks
import agc_pipeline.training.checkpoint as checkpoint_module
from agc_pipeline.build import check_output_dir, run_app
from agc_pipeline.errors import WriteFailed, atomic_write
from agc_pipeline.reporting.sinks import JsonlSink
from agc_pipeline.train import run_training
from agc_pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import compose_config

#: a small, fast problem (tests/test_train_rundir.py's), checkpointed every iteration
FAST = ["dataset=synthetic_logistic", "dataset.n_samples=210", "dataset.dim=6",
        "dataset.num_classes=3", "model=logistic", "trainer.iterations=4",
        "trainer.progress=false", "trainer.alpha_samples=20", "trainer.eval_every=3",
        "trainer.checkpoint_every=1", "trainer.lr=0.5", "logger=none"]
NO_SPACE = "No space left on device"


def no_space(fh: IO[bytes] | None = None) -> None:
    """A write that fills the disk: some bytes, then ENOSPC."""
    if fh is not None:
        fh.write(b"half a file")
    raise OSError(errno.ENOSPC, NO_SPACE)


def app_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The train app's run in ``tmp_path`` as its console script reports it: (status, stderr)."""
    with pytest.raises(SystemExit) as info:
        run_app(lambda: run_training(compose_config("train", FAST), tmp_path), "agc-train")
    return int(info.value.code), capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# the run dir


def test_a_run_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    assert check_output_dir(tmp_path / "run", "hydra.run.dir") == (
        f"hydra.run.dir={tmp_path / 'run'} exists and is not a directory: pass another "
        "hydra.run.dir")


def test_a_run_dir_under_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    problem = check_output_dir(tmp_path / "file" / "a" / "run", "hydra.sweep.dir")
    assert problem is not None and problem.startswith(f"hydra.sweep.dir={tmp_path}/file/a/run:")
    assert f"({tmp_path / 'file'} is not a directory)" in problem


def test_a_run_dir_name_the_system_refuses_is_named(tmp_path: Path) -> None:
    problem = check_output_dir(tmp_path / ("x" * 300) / "run", "hydra.run.dir")
    assert problem is not None and "cannot create the directory (File name too long)" in problem


def test_a_run_dir_is_created_when_it_can_be(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "a" / "b", "hydra.run.dir") is None
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory: "
                                               "the case cannot be built as root")
def test_a_read_only_run_dir_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        problem = check_output_dir(run_dir, "hydra.run.dir")
    finally:
        run_dir.chmod(0o700)
    assert problem is not None and "may not write into the directory" in problem


# ------------------------------------------------------------------------------------------
# a full disk


def test_a_checkpoint_on_a_full_disk_leaves_the_previous_one(tmp_path: Path) -> None:
    """The real thing: the temporary file is /dev/full (torch.save to a path reported it as
    an obscure RuntimeError and left the temporary file)."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})
    before = path.read_bytes()
    (tmp_path / "checkpoint.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(WriteFailed, match=f"^cannot write {path}: {NO_SPACE}$"):
        save_checkpoint(path, {"iteration": 2})
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    def interrupted(fh: IO[bytes]) -> None:
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "summary.json", interrupted)
    assert not list(tmp_path.iterdir())


def test_a_metrics_row_on_a_full_disk_names_the_file() -> None:
    sink = JsonlSink(Path("/dev/full"))
    with pytest.raises(WriteFailed, match=f"^cannot write /dev/full: {NO_SPACE}$"):
        sink.log({"iteration": 0, "train_loss": 1.0}, step=0)


def test_the_disk_fills_up_at_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The third checkpoint (after iteration 2) meets a full disk: one line naming
    checkpoint.pt, status 1; the second checkpoint, the metrics rows and summary.json
    (status failed) are there and whole."""
    calls = []
    real = checkpoint_module.torch.save

    def save(obj: object, fh: IO[bytes]) -> None:
        calls.append(1)
        if len(calls) >= 3:
            no_space(fh)
        real(obj, fh)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    status, err = app_run(tmp_path, capsys)
    assert status == 1
    assert err.strip() == f"agc-train: cannot write {tmp_path / 'checkpoint.pt'}: {NO_SPACE}"
    assert not list(tmp_path.glob("*.tmp"))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows][:2] == [0, 1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and NO_SPACE in summary["error"]


def test_the_summary_records_the_threads_and_older_ones_still_read(tmp_path: Path) -> None:
    """summary.json's ``threads`` (torch's intra-op threads of the run); a summary written
    before the field existed reads as threads None."""
    import torch

    from agc_pipeline.reporting.summary import RunSummary

    run_training(compose_config("train", [*FAST, "trainer.iterations=1"]), tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["threads"] == torch.get_num_threads()
    del data["threads"]
    assert RunSummary.from_dict(data).threads is None


def test_the_disk_fills_up_at_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.json, the last file of a completed run, meets a full disk: one line naming it;
    the final checkpoint and every metrics row are there."""
    real = sinks.atomic_write

    def write(path: Path, data: object) -> None:
        if Path(path).name == "summary.json":
            return real(path, no_space)
        return real(path, data)

    monkeypatch.setattr(sinks, "atomic_write", write)
    status, err = app_run(tmp_path, capsys)
    assert status == 1
    assert err.strip() == f"agc-train: cannot write {tmp_path / 'summary.json'}: {NO_SPACE}"
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "summary.json").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 3
