"""Sweep helpers shared by the apps: skip finished jobs, one torch thread per parallel job.

Re-running a multirun into the same sweep dir (``hydra.sweep.dir=<dir>``) after an
interruption redoes only the unfinished jobs: a job is skipped when its run dir holds a
``summary.json`` with ``"status": "completed"`` (and, for training, every iteration done),
its output files, and a resolved config equal to the new job's (keys in
:data:`IGNORED_KEYS` aside). Hydra rewrites ``.hydra/config.yaml`` before the job starts, so
the comparison uses the config saved in ``summary.json``. The other jobs run again in their
directories, replacing what is there. ``trainer.skip_finished=false`` (or
``analysis.skip_finished=false``) reruns every job; ``trainer.threads`` pins each training
job's torch threads (the analyze app does not use torch, and runs BLAS on one thread).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.reporting.sinks import to_jsonable
from agc_pipeline.reporting.summary import ReportError, RunSummary
from agc_pipeline.validation import require_bool, require_int

log = logging.getLogger("agc_pipeline.reporting.sweeps")

#: config keys that do not change a run's results (dotted paths)
IGNORED_KEYS = ("app", "trainer.progress", "analysis.progress", "trainer.skip_finished",
                "analysis.skip_finished", "trainer.overwrite", "extras.print_config")
#: the config sections that hold an app's sweep options (train, analyze)
SECTIONS = ("trainer", "analysis")


def app_option(cfg: DictConfig, key: str, default: Any) -> tuple[str, Any]:
    """``(dotted name, value)`` of the app's option ``key`` (``trainer.<key>`` or
    ``analysis.<key>``), ``default`` where the config has none."""
    for section in SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig) and key in node:
            return f"{section}.{key}", node[key]
    return key, default


def _normalized(config: Any) -> Any:
    """The config as it reads back from JSON, without :data:`IGNORED_KEYS`."""
    data = json.loads(json.dumps(to_jsonable(config)))
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def finished_run(run_dir: Path, config: dict[str, Any], outputs: tuple[str, ...]) -> str | None:
    """Why ``run_dir`` already holds a complete run of ``config`` (None when it does not).
    A train run's summary is read as a :class:`RunSummary`; one that does not read is named
    in a warning and its job runs again."""
    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.exists():
        return None
    try:
        data = json.loads(summary_path.read_text())
        if isinstance(data, dict) and data.get("app") == "analyze":
            status, iterations, saved = data.get("status"), None, data.get("config")
        else:
            summary = RunSummary.from_dict(data, summary_path)
            status, iterations, saved = summary.status, summary.iterations, summary.config
    except ReportError as exc:  # names the file and what is wrong
        log.warning("%s: running its job again", exc)
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running its job again", summary_path,
                    type(exc).__name__)
        return None
    if status != "completed" or saved is None:
        return None
    if any(not (Path(run_dir) / name).is_file() for name in outputs):
        return None
    wanted = (config.get("trainer") or {}).get("iterations")
    if wanted is not None and (iterations is None or iterations < wanted):
        return None
    if _normalized(saved) != _normalized(config):
        return None
    return f"{summary_path} says completed with the same config"


def skip_finished_job(cfg: DictConfig, run_dir: Path, outputs: tuple[str, ...]) -> bool:
    """In a multirun: True (and one log line) when ``run_dir`` already holds this job's
    complete run. Always False for single runs or with ``trainer.skip_finished=false``."""
    name, enabled = app_option(cfg, "skip_finished", True)
    if not require_bool(enabled, name):
        return False
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    reason = finished_run(run_dir, OmegaConf.to_container(cfg, resolve=True), outputs)
    if reason is None:
        return False
    log.info("skipping job %s (%s): %s; delete its summary.json to run it again",
             HydraConfig.get().job.num, run_dir, reason)
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def running_others(path: str = "/proc/loadavg") -> int | None:
    """Processes running or runnable now besides this one (the 4th field of
    ``/proc/loadavg``, ``running/total``, less 1); None where the file does not say."""
    try:
        running = int(Path(path).read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def free_cores(loadavg: str = "/proc/loadavg") -> int:
    """The cores free now: the machine's cores less the busy ones, at least 1 and at most the
    cores this process may run on. Busy = the 1-minute load average, but no more than the
    processes running beside this one right now where the kernel says (``/proc/loadavg``): the
    average lags, so a job that has just ended (the previous command, say) would otherwise
    take a core from an idle machine for a minute."""
    cores = _cores()
    try:
        load = round(os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average
        load = 0
    others = running_others(loadavg)
    busy = load if others is None else min(load, others)
    return max(1, min(cores, (os.cpu_count() or cores) - busy))


def limit_threads(cfg: DictConfig | None = None) -> int | None:
    """Set torch's intra-op threads for this job and return the number (None: unchanged).

    ``trainer.threads`` of ``cfg`` wins; otherwise, under the joblib
    launcher (``hydra/launcher=local``), ``max(1, cores // n_jobs)`` so that parallel jobs do
    not oversubscribe the cores, and for a single run (or a sequential sweep's job) the cores
    free when it starts (:func:`free_cores`: other jobs on the machine are not slowed down by
    oversubscription). torch is only touched when the app has imported it. CPU results may
    differ in their last bits between thread counts: the golden checks pin
    ``trainer.threads=1`` (docs/reproducibility.md).
    """
    name, threads = app_option(cfg, "threads", None) if cfg is not None else ("", None)
    if threads is not None:
        threads = require_int(threads, name, minimum=1)
    elif HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        if "joblib" in str(launcher.get("_target_", "")).lower():
            n_jobs = int(launcher.get("n_jobs") or 1)
            cores = _cores()
            threads = 1 if n_jobs < 0 else max(1, cores // max(n_jobs, 1))
        else:
            threads = free_cores()
    elif cfg is not None:
        threads = free_cores()
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None:
        torch.set_num_threads(threads)
    return threads
