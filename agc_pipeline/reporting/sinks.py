"""Metric sinks behind one small interface: JSONL files, stdout and Weights & Biases.

W&B runs offline unless ``logger.mode=online`` (or ``WANDB_MODE``) says otherwise; ``close``
always calls ``wandb.finish()`` (a sequential multirun would otherwise reuse the first job's
run) and then logs where the offline run is and the ``wandb sync`` line that uploads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.provenance import record
from agc_pipeline.validation import require_choice

log = logging.getLogger("agc_pipeline.wandb")


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

    def describe(self) -> dict[str, Any] | None:
        """Where the sink keeps the run, for summary.json (None: nothing to record)."""
        return None

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
    """A W&B run in ``run_dir`` (offline by default). Its config is ``keys`` (flat, groupable
    set-up keys such as ``code``, ``n``, ``q``), ``cfg`` (the resolved config) and the
    provenance block (``versions``, ``provenance``: git commit, host, ...).

    ``x_axes`` are declared with ``define_metric`` as x-axes and ``step_metric`` becomes the
    default x-axis of every other metric; rows are committed as they are logged, so that a
    summary value set at the end (``train_loss`` = the final loss) is the run's last word.
    A row holding ``total_bytes_to_ps`` also gets ``mb_to_ps``: the MB sent to the PS before
    the row's iteration (where its ``train_loss`` is measured).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, project: str | None,
                 group: str | None, job_type: str | None, mode: str = "offline",
                 entity: str | None = None, name: str | None = None,
                 tags: list[str] | None = None, resume_id: str | None = None,
                 keys: dict[str, Any] | None = None, x_axes: tuple[str, ...] = (),
                 step_metric: str | None = None) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # our own lines say where the run is
        self._wandb = wandb
        self.mode = mode
        self.run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name,
            tags=tags or None, config=to_jsonable({**(keys or {}), "cfg": config, **record()}),
            dir=os.environ.get("WANDB_DIR") or str(run_dir), mode=mode,
            id=resume_id, resume="allow" if resume_id else None, reinit="finish_previous",
        )
        for axis in x_axes:
            self.run.define_metric(axis)
        if step_metric is not None:
            self.run.define_metric("*", step_metric=step_metric)

    def describe(self) -> dict[str, Any]:
        """Where the run is: id, project, entity, group, name, job type, mode and (offline)
        its folder under ``wandb/``, the one ``wandb sync`` uploads."""
        run = self.run
        folder = getattr(getattr(run, "settings", None), "sync_dir", None)
        return {"id": run.id, "project": run.project, "entity": run.entity or None,
                "group": run.group or None, "name": run.name, "job_type": run.job_type,
                "mode": self.mode, "dir": str(folder) if folder else None}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = to_jsonable(metrics)
        if row.get("total_bytes_to_ps") is not None:
            row["mb_to_ps"] = (row["total_bytes_to_ps"] - (row.get("bytes_to_ps") or 0)) / 1e6
        self.run.log(row, step=step, commit=True)

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
        where = self.describe()
        self.run.finish()
        if where["mode"] == "offline" and where["dir"]:
            log.info("W&B offline run %s: %s (upload: wandb sync %s)", where["id"],
                     where["dir"], where["dir"])
        elif where["mode"] == "online":
            log.info("W&B run %s: %s", where["id"], getattr(self.run, "url", None))


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
                     job_type: str, name: str | None = None, resume_id: str | None = None,
                     keys: dict[str, Any] | None = None, x_axes: tuple[str, ...] = (),
                     step_metric: str | None = None) -> Sink:
    """The sink chosen by ``logger=...``: ``none`` → a no-op, ``wandb`` → :class:`WandbSink`
    (``resume_id`` continues that W&B run; ``keys``, ``x_axes``, ``step_metric``: see there).

    What the config leaves null comes from W&B's environment variables, then from here:
    ``logger.project`` ← ``WANDB_PROJECT`` ← ``agc_pipeline``; ``logger.entity`` ←
    ``WANDB_ENTITY``; ``logger.mode`` ← ``WANDB_MODE`` ← ``offline``; ``logger.group`` ←
    ``WANDB_RUN_GROUP`` ← ``group``; the run name ``WANDB_NAME`` ← ``name``, the job type
    ``WANDB_JOB_TYPE`` ← ``job_type``, the folder ``WANDB_DIR`` ← ``run_dir``; empty
    ``logger.tags`` leave ``WANDB_TAGS`` to W&B.
    """
    kind = (logger_cfg or {}).get("name", "none") if logger_cfg is not None else "none"
    if kind == "none":
        return Sink()
    if kind != "wandb":
        raise ConfigError(f"logger must be wandb or none (got {kind!r})")
    env = os.environ.get
    mode = require_choice(logger_cfg.get("mode") or env("WANDB_MODE") or "offline",
                          "logger.mode", ("offline", "online", "disabled"))
    return WandbSink(run_dir, config,
                     project=logger_cfg.get("project") or env("WANDB_PROJECT") or "agc_pipeline",
                     group=logger_cfg.get("group") or env("WANDB_RUN_GROUP") or group,
                     job_type=env("WANDB_JOB_TYPE") or job_type, mode=mode,
                     entity=logger_cfg.get("entity") or env("WANDB_ENTITY"),
                     tags=list(logger_cfg.get("tags") or []) or None,
                     name=env("WANDB_NAME") or name, resume_id=resume_id, keys=keys,
                     x_axes=x_axes, step_metric=step_metric)
