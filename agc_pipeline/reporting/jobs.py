"""What every app job does around its work: its W&B identity, the resolved config, profiling,
and clean console lines in parallel sweeps.

- :func:`run_group` / :func:`run_name`: a run's W&B group is ``<name>-<timestamp of the sweep
  dir>`` (of the run dir for single runs), unique per sweep and shared by its jobs; its name
  is the job's swept overrides (``code=stack,seed=1``).
- :func:`save_run_record`: once the app has accepted the run (every check passed, so that a
  refused command writes nothing into an existing run), the resolved config as
  ``config_resolved.yaml`` and Hydra's record ``.hydra/{config,hydra,overrides}.yaml`` (the
  apps set ``hydra.output_subdir: null``: Hydra itself would write them before any check).
- :func:`app_job`: prints the resolved config with ``extras.print_config=true``, runs the
  job under cProfile with ``extras.profile=true`` (``profile.txt``, ``profile.prof``), and
  in jobs of a parallel sweep (``hydra/launcher=local``) keeps the console to warnings and
  whole progress lines led by ``job <num> (<swept overrides>)``: the job's full log is
  ``<run dir>/<app>.log``.
"""

from __future__ import annotations

import contextlib
import cProfile
import hashlib
import io
import logging
import pstats
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.reporting import progress
from agc_pipeline.validation import require_bool

log = logging.getLogger("agc_pipeline.reporting.jobs")

#: Hydra's default run/sweep dir names (``${now:%Y-%m-%d_%H-%M-%S}``)
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")
#: longest W&B run name
NAME_LENGTH = 128
#: functions listed in profile.txt
PROFILE_LINES = 40


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(name: str, folder: Path) -> str:
    """``<name>-<stamp>``: the stamp is the name of ``folder`` (the sweep dir, or a single
    run's dir), by default its timestamp; another folder name gets a short hash of the
    folder's path, so that two sweeps never share a group."""
    folder = Path(folder)
    stamp = folder.name
    if not TIMESTAMP.fullmatch(stamp):
        digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:6]
        stamp = f"{stamp}-{digest}"
    return f"{name}-{stamp}"


def run_group(name: str, out_dir: Path) -> str:
    """The W&B group of the job writing into ``out_dir``: :func:`sweep_group` of its sweep
    dir in a multirun, of its run dir otherwise."""
    folder = Path(out_dir)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        folder = Path(hc.sweep.dir) if _multirun() else Path(hc.runtime.output_dir)
    return sweep_group(name, folder)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys() -> set[str]:
    """The keys a multirun sweeps: comma lists, ranges, ... of its command line (as saved in
    the sweep dir's ``multirun.yaml``) and of ``hydra.sweeper.params``."""
    hc = HydraConfig.get()
    overrides = []
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        overrides += list(OmegaConf.load(saved).hydra.overrides.task)
    params = hc.sweeper.get("params") or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    parser = OverridesParser.create()
    keys = set()
    for text in overrides:
        try:
            override = parser.parse_override(str(text))
        except Exception:  # noqa: BLE001 - a value the parser cannot read is not a sweep
            continue
        if override.is_sweep_override():
            keys.add(override.key_or_group)
    return keys


def run_name(fallback: str) -> str:
    """The job's swept overrides (``code=stack,seed=1``) in a multirun; a single run's
    command-line overrides; ``fallback`` where there are none (or outside Hydra)."""
    if not HydraConfig.initialized():
        return fallback
    task = [str(o) for o in HydraConfig.get().overrides.task]
    if _multirun():
        swept = swept_keys()
        task = [o for o in task if _key(o) in swept] or task
    return (",".join(task) or fallback)[:NAME_LENGTH]


def parallel_job() -> bool:
    """Whether this is a job of a parallel sweep (the joblib launcher, ``hydra/launcher=local``)."""
    if not _multirun():
        return False
    return "joblib" in str(HydraConfig.get().launcher.get("_target_", "")).lower()


@dataclass
class Job:
    """A running job: its label on the console and the line its end adds (``result``)."""

    label: str
    out_dir: Path
    parallel: bool
    result: str = ""

    def say(self, text: str) -> None:
        """One console line ``<label>: <text>`` (parallel jobs only; else a log line)."""
        if self.parallel:
            progress.emit(f"{self.label}: {text}")
        else:
            log.info("%s", text)


def _console_to_warnings() -> None:
    """Raise the console handlers of the root logger to WARNING (the file handler that Hydra
    gives each job keeps everything)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler) and handler.stream in (sys.stdout, sys.stderr):
            handler.setLevel(logging.WARNING)


def _log_file(out_dir: Path) -> Path | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def _extras(cfg: DictConfig) -> tuple[bool, bool]:
    extras = cfg.get("extras") or {}
    return (require_bool(extras.get("print_config", False), "extras.print_config"),
            require_bool(extras.get("profile", False), "extras.profile"))


def write_profile(profiler: cProfile.Profile, out_dir: Path) -> Path:
    """``profile.prof`` (pstats; ``snakeviz``/``python -m pstats`` read it) and ``profile.txt``
    (the top functions by cumulative time) in ``out_dir``; returns the text file."""
    profiler.dump_stats(str(out_dir / "profile.prof"))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(PROFILE_LINES)
    path = out_dir / "profile.txt"
    path.write_text(text.getvalue(), encoding="utf-8")
    return path


def save_run_record(cfg: DictConfig, out_dir: Path) -> None:
    """Write the accepted run's record into ``out_dir``: ``config_resolved.yaml`` and, under
    Hydra, ``.hydra/config.yaml`` (the composed config), ``.hydra/hydra.yaml`` and
    ``.hydra/overrides.yaml`` — what Hydra writes with its default ``output_subdir``."""
    out_dir = Path(out_dir)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True),
                                                  encoding="utf-8")
    if not HydraConfig.initialized():
        return
    record = out_dir / ".hydra"
    record.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.get()
    (record / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    (record / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": hydra_cfg}),
                                       encoding="utf-8")
    (record / "overrides.yaml").write_text(
        OmegaConf.to_yaml(list(hydra_cfg.overrides.task)), encoding="utf-8")


@contextlib.contextmanager
def app_job(cfg: DictConfig, out_dir: Path, app: str) -> Iterator[Job]:
    """The job of ``app`` writing into ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    show_config, profile = _extras(cfg)
    parallel = parallel_job()
    label = (f"job {HydraConfig.get().job.num} ({run_name(str(cfg.name))})" if parallel
             else str(cfg.name))
    job = Job(label, out_dir, parallel)
    out_dir.mkdir(parents=True, exist_ok=True)
    if show_config:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        progress.emit(f"resolved config ({out_dir / 'config_resolved.yaml'}):\n{resolved}")
    if parallel:
        _console_to_warnings()
        progress.use_lines(label)
        logfile = _log_file(out_dir)
        job.say(f"started -> {out_dir}" + (f" (log: {logfile})" if logfile else ""))
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    try:
        if profiler is not None:
            profiler.enable()
        yield job
    except BaseException as exc:
        if parallel:
            job.say(f"stopped after {time.perf_counter() - started:.1f} s: "
                    f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        if profiler is not None:
            profiler.disable()
            log.info("profile: %s", write_profile(profiler, out_dir))
        progress.use_lines(None)
    if parallel:
        job.say(f"done in {time.perf_counter() - started:.1f} s"
                + (f", {job.result}" if job.result else ""))
