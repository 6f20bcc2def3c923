"""Metric sinks behind one small interface: JSONL files, the console and Weights & Biases.

The ``logger`` config names its sink class by ``_target_`` (``conf/logger/``: ``none``,
``wandb``, ``console``, ``many``); a mapping of named logger configs gives several loggers at
once (:func:`make_logger_sink`, as lightning-hydra-template's ``instantiate_loggers``).

W&B runs offline unless ``logger.mode=online`` (or ``WANDB_MODE``) says otherwise; ``close``
always calls ``wandb.finish()`` (a sequential multirun would otherwise reuse the first job's
run) and then logs where the offline run is and the ``wandb sync`` line that uploads it.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from agc_pipeline.errors import ConfigError, atomic_write, require, write_failed
from agc_pipeline.reporting.provenance import record
from agc_pipeline.validation import require_choice, require_int

log = logging.getLogger("agc_pipeline.wandb")
console = logging.getLogger("agc_pipeline.console")


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
    """Write ``data`` as indented strict JSON, atomically (temp file + rename; WriteFailed
    naming ``path`` when it cannot be written)."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


class Sink:
    """Interface: every method is optional; the base class ignores everything."""

    def describe(self) -> dict[str, Any] | None:
        """Where the W&B run is, for summary.json's ``wandb`` (None: no W&B run)."""
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
        try:
            self._fh.write(json.dumps(row, allow_nan=False) + "\n")
            self._fh.flush()
        except OSError as exc:  # e.g. no space left on device
            raise write_failed(self.path, exc) from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            raise write_failed(self.path, exc) from None


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

    def describe(self) -> dict[str, Any] | None:
        """The first description of its sinks (the W&B run's, if one logs to W&B)."""
        return next((d for d in (s.describe() for s in self.sinks) if d is not None), None)

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


# ------------------------------------------------------------------------------------------
# the logger options (conf/logger/*.yaml name them by _target_)
#
# Each is built by make_logger_sink as ``instantiate(logger_cfg, _partial_=True)(**run)``: its
# config keys are its settings, and ``run`` the run's context as keyword arguments: run_dir,
# config (the resolved config), run_group, job_type, run_name, resume_id, keys (flat set-up
# keys), x_axes, step_metric, and key (the config path, "logger" or "logger.<name>", for
# messages). A logger takes what it needs and ignores the rest (``**run``).

#: the run's context every logger is built with (besides ``key``)
RUN_CONTEXT = ("run_dir", "config", "run_group", "job_type", "run_name", "resume_id", "keys",
               "x_axes", "step_metric", "key")


class NoLogger(Sink):
    """``logger=none``: logs nothing (the app's own files are written regardless)."""

    def __init__(self, **run: Any) -> None:
        del run


class WandbLogger(WandbSink):
    """``logger=wandb``: a :class:`WandbSink` whose null settings come from W&B's environment
    variables, then from the run: ``project`` ← ``WANDB_PROJECT`` ← ``agc_pipeline``;
    ``entity`` ← ``WANDB_ENTITY``; ``mode`` ← ``WANDB_MODE`` ← ``offline``; ``group`` ←
    ``WANDB_RUN_GROUP`` ← ``run_group``; the run name ``WANDB_NAME`` ← ``run_name``, the job
    type ``WANDB_JOB_TYPE`` ← ``job_type``, the folder ``WANDB_DIR`` ← ``run_dir``; empty
    ``tags`` leave ``WANDB_TAGS`` to W&B. ``resume_id`` continues that W&B run."""

    def __init__(self, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, *, run_dir: Path, config: dict[str, Any],
                 run_group: str | None, job_type: str, run_name: str | None = None,
                 resume_id: str | None = None, keys: dict[str, Any] | None = None,
                 x_axes: tuple[str, ...] = (), step_metric: str | None = None,
                 key: str = "logger", **run: Any) -> None:
        env = os.environ.get
        mode = self.check_settings(key, mode, tags)
        super().__init__(run_dir, config, project=project or env("WANDB_PROJECT")
                         or "agc_pipeline", group=group or env("WANDB_RUN_GROUP") or run_group,
                         job_type=env("WANDB_JOB_TYPE") or job_type, mode=mode,
                         entity=entity or env("WANDB_ENTITY"), name=env("WANDB_NAME") or run_name,
                         tags=list(tags or []) or None, resume_id=resume_id, keys=keys,
                         x_axes=tuple(x_axes), step_metric=step_metric)


    @staticmethod
    def check_settings(key: str, mode: str | None, tags: Any) -> str:
        """The mode (checked, its default filled in) after checking ``tags``."""
        require(tags is None or (not isinstance(tags, str) and all(
            isinstance(tag, str) for tag in tags)),
            f"{key}.tags must be a list of strings, e.g. [a, b] (got {tags!r})")
        return require_choice(mode or os.environ.get("WANDB_MODE") or "offline",
                              f"{key}.mode", ("offline", "online", "disabled"))


class ConsoleLogger(Sink):
    """``logger=console``: a compact line on the job's log (``agc_pipeline.console``) for the
    first row and every ``every``-th after it, e.g. ``iteration=20 train_loss=0.4123
    test_accuracy=0.91``, and the run's summary when it ends. ``columns`` picks and orders the
    columns a row shows where it has them (null: every number and string of the row)."""

    def __init__(self, every: int = 10, columns: list[str] | None = None, *,
                 key: str = "logger", **run: Any) -> None:
        self.every = require_int(every, f"{key}.every", minimum=1)
        if columns is not None and (not isinstance(columns, list | tuple)
                                    or not all(isinstance(c, str) for c in columns)):
            raise ConfigError(f"{key}.columns must be a list of metric names or null "
                              f"(got {columns!r})")
        self.columns = None if columns is None else list(columns)
        self.rows = 0

    @staticmethod
    def _line(values: dict[str, Any], names: list[str] | None) -> str:
        """``key=value`` of the scalars among ``names`` (None: all), floats to 4 digits."""
        shown = [(k, values.get(k)) for k in (names if names is not None else values)]
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in shown if isinstance(v, int | float | str)
                        and not isinstance(v, bool))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.rows % self.every == 0:
            console.info("%s", self._line(to_jsonable(metrics), self.columns))
        self.rows += 1

    def summary(self, values: dict[str, Any]) -> None:
        console.info("summary: %s", self._line(to_jsonable(values), None))


#: what a logger node must be, for the one-line error when it is not
LOGGER_RULE = ("a logger config names its sink class (e.g. _target_: "
               "agc_pipeline.reporting.sinks.WandbLogger) or is a mapping of such configs "
               "(logger=none | wandb | console | many)")


def _logger_configs(logger_cfg: Any) -> Iterator[tuple[str, Any]]:
    """(key, config) of each logger in ``logger_cfg``: itself when it has a ``_target_``,
    else each entry of the mapping (null entries: switched off)."""
    if logger_cfg is None:
        return
    if not isinstance(logger_cfg, Mapping) or "_target_" not in logger_cfg and not all(
            v is None or isinstance(v, Mapping) for v in logger_cfg.values()):
        raise ConfigError(f"logger has no _target_: {LOGGER_RULE}")
    if "_target_" in logger_cfg:
        yield "logger", logger_cfg
        return
    for name, node in logger_cfg.items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ConfigError(f"logger.{name} has no _target_: {LOGGER_RULE}")
        yield f"logger.{name}", node


def logger_settings(cls: type) -> list[str]:
    """The settings a logger class takes from its config: its named ``__init__`` parameters
    other than the run's context."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in (*RUN_CONTEXT, "self")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_logger(logger_cfg: Any) -> None:
    """The checks of :func:`make_logger_sink` that need no run (the apps call it before they
    write into the run dir: a refused logger must leave an existing run as it was)."""
    for key, node in _logger_configs(logger_cfg):
        cls = _logger_factory(node, key).func
        if issubclass(cls, WandbLogger):
            cls.check_settings(key, node.get("mode"), node.get("tags"))


def _build_logger(node: Any, key: str, run: dict[str, Any]) -> Sink:
    """``instantiate(node)`` with the run's context as call-time keyword arguments."""
    factory = _logger_factory(node, key)
    try:
        return factory(**run, key=key)
    except TypeError as exc:  # e.g. a Sink that does not take the run's context
        raise ConfigError(f"{key}: {factory.func.__name__} cannot be built as a logger "
                          f"({exc})") from None


def _logger_factory(node: Any, key: str) -> Any:
    """``instantiate(node, _partial_=True)``, its class and settings checked."""
    target = node["_target_"]
    try:
        factory = instantiate(node, _partial_=True, _convert_="all")
    except InstantiationException as exc:
        text = " ".join(str(exc.__cause__ or exc).split())  # one line
        raise ConfigError(f"{key}._target_ {target!r}: {text}") from None
    cls = factory.func
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigError(f"{key}._target_ must name a Sink class (got {target!r})")
    allowed = logger_settings(cls)
    for name in map(str, node):
        if not name.startswith("_") and name not in allowed:
            raise ConfigError(f"{key}.{name}: {cls.__name__} has no such setting (its settings: "
                              f"{', '.join(allowed) or 'none'})")
    return factory


def make_logger_sink(logger_cfg: Any, run_dir: Path, config: dict[str, Any], *, group: str,
                     job_type: str, name: str | None = None, resume_id: str | None = None,
                     keys: dict[str, Any] | None = None, x_axes: tuple[str, ...] = (),
                     step_metric: str | None = None) -> Sink:
    """The sink of ``logger=...``: the logger config's ``_target_`` class instantiated with
    ``hydra.utils.instantiate`` (its keys as settings, the run's context as call-time keyword
    arguments: ``run_dir``, ``config``, ``run_group=group``, ``job_type``, ``run_name=name``,
    ``resume_id``, ``keys``, ``x_axes``, ``step_metric``); for a mapping of named logger
    configs (``logger=many``), all of them in a :class:`MultiSink`. Null: :class:`NoLogger`.
    """
    run = {"run_dir": Path(run_dir), "config": config, "run_group": group,
           "job_type": job_type, "run_name": name, "resume_id": resume_id, "keys": keys,
           "x_axes": tuple(x_axes), "step_metric": step_metric}
    sinks: list[Sink] = []
    try:
        for key, node in _logger_configs(logger_cfg):
            sinks.append(_build_logger(node, key, run))
    except BaseException:
        for sink in sinks:  # e.g. a W&B run already started
            with suppress(Exception):
                sink.close()
        raise
    if not sinks:
        return NoLogger()
    return sinks[0] if len(sinks) == 1 else MultiSink(sinks)


def _is_wandb(target: Any) -> bool:
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - an unknown target is no W&B logger
        return False
    return issubclass(cls, WandbSink)


def wandb_settings(logger_cfg: Any) -> dict[str, Any] | None:
    """The settings (``project``, ``entity``, ``mode``, ``group``, ``tags``) of the W&B
    logger in ``logger_cfg`` (a logger config or a mapping of them), found by its
    ``_target_`` class (a :class:`WandbSink`); None when it logs to no W&B run."""
    try:
        configs = list(_logger_configs(logger_cfg))
    except ConfigError:  # e.g. a run recorded before the loggers were named by _target_
        return None
    for _, node in configs:
        if _is_wandb(node["_target_"]):
            return {str(k): v for k, v in node.items() if not str(k).startswith("_")}
    return None
