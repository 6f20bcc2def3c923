"""Checkpoints and resumable ``metrics.jsonl`` files.

A checkpoint is written atomically (temporary file + rename), so a run killed at any moment
leaves either the previous or the new one. On resume, ``metrics.jsonl`` is cut back to the
complete rows of iterations before the checkpoint's, so that no row appears twice and no
half-written line survives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from agc_pipeline.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
#: checkpoint format version (bumped on incompatible changes)
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trainer.resume=true but there is no checkpoint {path}; pass "
                          "hydra.run.dir=<the interrupted run's directory>")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {path} has an unknown format (expected version "
                          f"{CHECKPOINT_VERSION})")
    return state


def truncate_metrics(path: Path, next_iteration: int) -> int:
    """Keep the complete JSON rows of ``path`` whose ``iteration`` < ``next_iteration``.

    Returns the number of rows kept. A missing file counts as empty.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
        if isinstance(row, dict) and isinstance(row.get("iteration"), int) \
                and row["iteration"] < next_iteration:
            kept.append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(kept)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += config_differences(old.get(key), new.get(key), name)
        return out
    return [] if old == new else [prefix]
