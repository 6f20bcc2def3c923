"""Run directories: their lock, checkpoints and resumable ``metrics.jsonl`` files.

A run holds an exclusive lock on its run dir (:func:`run_dir_lock`), so two runs never write
the same files. A checkpoint is written atomically (temporary file + rename), so a run killed
at any moment leaves either the previous or the new one. On resume, ``metrics.jsonl`` is cut
back to the complete rows of iterations before the checkpoint's, so that no row appears twice
and no half-written line survives; rows missing before the checkpoint (a truncated file) are
an error, not a silent gap (:func:`check_metrics_rows`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from agc_pipeline.errors import ConfigError, atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
#: checkpoint format version (bumped on incompatible changes)
CHECKPOINT_VERSION = 1
#: the lock file of a run dir
LOCK_NAME = ".run.lock"
#: the files that make a directory hold a run
RUN_FILES = ("metrics.jsonl", "summary.json", CHECKPOINT_NAME)


class RunDirBusy(ConfigError):
    """Another process holds the run dir's lock."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``flock`` on its ``.run.lock``) for the block.

    A second run into the same directory raises :class:`RunDirBusy` at once. The kernel drops
    the lock when the holder's process ends, however it ends (SIGKILL included), so a killed
    run never leaves its directory locked.
    """
    path = Path(run_dir) / LOCK_NAME
    with path.open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunDirBusy(f"{run_dir} is in use by another run (pid {holder}): wait for it "
                             "to end, or pass another hydra.run.dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield  # closing the file releases the lock


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts) to ``path`` atomically;
    a failed write leaves the previous checkpoint and no temporary file."""
    # through a file object: torch.save(obj, path) reports a full disk as an obscure
    # RuntimeError, a file object's write as OSError(ENOSPC) (WriteFailed naming ``path``)
    atomic_write(path, lambda fh: torch.save({"version": CHECKPOINT_VERSION, **state}, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trainer.resume=true but there is no checkpoint {path}; pass "
                          "hydra.run.dir=<the interrupted run's directory>")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is one clear error
        # not torch's message: it suggests weights_only=False, i.e. running pickled code
        raise ConfigError(f"cannot read checkpoint {path}: not a checkpoint of this program, "
                          "or truncated; delete it to start over, or pass another "
                          "hydra.run.dir") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {path} has an unknown format (expected version "
                          f"{CHECKPOINT_VERSION})")
    return state


def metrics_rows_before(path: Path, next_iteration: int) -> list[str]:
    """The complete JSON rows of ``path`` whose ``iteration`` < ``next_iteration`` (read
    only: a resume checks them before anything is rewritten). A missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
        if isinstance(row, dict) and isinstance(row.get("iteration"), int) \
                and row["iteration"] < next_iteration:
            kept.append(line)
    return kept


def rewrite_metrics(path: Path, rows: list[str]) -> int:
    """Replace ``path`` by ``rows`` (atomically); return their number."""
    text = "".join(f"{line}\n" for line in rows)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return len(rows)


def check_metrics_rows(path: Path, kept: int, expected: int | None, iteration: int) -> None:
    """Raise ConfigError unless ``kept`` (the rows of ``path`` before the checkpoint's
    ``iteration``) equals ``expected`` (the rows logged up to the checkpoint, as it records;
    None: a checkpoint that does not record it)."""
    if expected is None or kept == expected:
        return
    raise ConfigError(f"trainer.resume=true: {path} holds {kept} rows before iteration "
                      f"{iteration} but {expected} were logged (truncated or edited?); "
                      "resuming would leave a gap: restore the file, or start a new run "
                      "(trainer.overwrite=true or another hydra.run.dir)")


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += config_differences(old.get(key), new.get(key), name)
        return out
    return [] if old == new else [prefix]
