"""Metric sinks behind one small interface: JSONL files, stdout and Weights & Biases.

W&B runs offline unless the user configures ``logger.mode=online``; ``close`` always calls
``wandb.finish()`` (a sequential multirun would otherwise reuse the first job's run).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from agc_pipeline.provenance import record


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays and non-finite floats into strict-JSON values (NaN/inf → None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented strict JSON, atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


class Sink:
    """Interface: every method is optional; the base class ignores everything."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record one row of metrics at ``step``."""

    def summary(self, values: dict[str, Any]) -> None:
        """Record run-level results."""

    def image(self, key: str, path: Path) -> None:
        """Attach an image file."""

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """Attach a table (list of flat dicts with the same keys)."""

    def close(self) -> None:
        """Flush and release resources."""


class JsonlSink(Sink):
    """One JSON object per ``log`` call, flushed line by line (complete lines survive a kill)."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self._fh = self.path.open("a" if append else "w", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = to_jsonable(metrics)
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class WandbSink(Sink):
    """A W&B run in ``run_dir`` (offline by default); its config is ``config`` plus the
    provenance block (``versions``, ``provenance``: git commit, host, ...)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], *, project: str, group: str,
                 job_type: str, mode: str = "offline", entity: str | None = None,
                 name: str | None = None, tags: list[str] | None = None,
                 resume_id: str | None = None) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        config = {**config, **record()}
        self._wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name,
            tags=tags or None, config=to_jsonable(config), dir=str(run_dir), mode=mode,
            id=resume_id, resume="allow" if resume_id else None, reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(to_jsonable(metrics), step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in to_jsonable(values).items():
            self.run.summary[key] = value

    def image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data = [[to_jsonable(r.get(c)) for c in columns] for r in rows]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def close(self) -> None:
        self.run.finish()


class MultiSink(Sink):
    """Fan out to several sinks; ``close`` closes all of them even if one fails."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for s in self.sinks:
            s.summary(values)

    def image(self, key: str, path: Path) -> None:
        for s in self.sinks:
            s.image(key, path)

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        for s in self.sinks:
            s.table(key, rows)

    def close(self) -> None:
        errors = []
        for s in self.sinks:
            try:
                s.close()
            except Exception as exc:  # noqa: BLE001 - close every sink, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def make_logger_sink(logger_cfg: Any, run_dir: Path, config: dict[str, Any], *, group: str,
                     job_type: str, name: str | None = None,
                     resume_id: str | None = None) -> Sink:
    """The sink chosen by ``logger=...``: ``none`` → a no-op, ``wandb`` → :class:`WandbSink`
    (run ``name``; ``resume_id`` continues that W&B run)."""
    kind = (logger_cfg or {}).get("name", "none") if logger_cfg is not None else "none"
    if kind == "none":
        return Sink()
    if kind == "wandb":
        return WandbSink(run_dir, config, project=logger_cfg.get("project", "agc_pipeline"),
                         group=logger_cfg.get("group") or group, job_type=job_type,
                         mode=logger_cfg.get("mode", "offline"),
                         entity=logger_cfg.get("entity"), tags=list(logger_cfg.get("tags") or []),
                         name=name, resume_id=resume_id)
    from agc_pipeline.errors import ConfigError

    raise ConfigError(f"logger must be wandb or none (got {kind!r})")
