"""Read back an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``) without a network.

The file is W&B's record log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks
of records, each a 7-byte header (checksum, length, type: full/first/middle/last) and a piece
of one protobuf ``Record`` (``wandb.proto.wandb_internal_pb2``).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    """The records of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    out, piece, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        if pos + HEADER + length > len(data):  # a record still being written
            break
        piece += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(piece)
            out.append(record)
            piece = b""
    return out


def _key(item: Any) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What a run file says: the run's identity and config, its define_metric calls, its
    history rows and its final summary (the updates applied in order)."""

    id: str
    project: str
    group: str
    job_type: str
    name: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def finished_records(path: Path, timeout: float = 60.0) -> list[pb.Record]:
    """The records of a run file once W&B has written its ``exit`` record (W&B's service
    may still be writing the file for a moment after ``run.finish()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = records(path)
        except (AssertionError, ValueError, struct.error, DecodeError):  # a partly written file
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)


def read_run(folder: Path) -> OfflineRun:
    """The run in ``folder`` (an ``offline-run-*`` folder, or a folder with one below it)."""
    folder = Path(folder)
    files = sorted(folder.glob("run-*.wandb")) or sorted(folder.glob("**/run-*.wandb"))
    assert len(files) == 1, f"expected one run file under {folder}, found {files}"
    run = None
    for record in finished_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run" and run is None:
            r = record.run
            config = {u.key: json.loads(u.value_json) for u in r.config.update}
            run = OfflineRun(r.run_id, r.project, r.run_group, r.job_type, r.display_name,
                             config)
        elif run is None:
            continue
        elif kind == "metric":
            m = record.metric
            run.metrics[m.name or m.glob_name] = {"step_metric": m.step_metric,
                                                  "glob": bool(m.glob_name)}
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
    assert run is not None, f"no run record in {files[0]}"
    return run


def offline_runs(root: Path) -> list[Path]:
    """The offline run folders under ``root``."""
    return sorted(Path(root).glob("**/wandb/offline-run-*"))
