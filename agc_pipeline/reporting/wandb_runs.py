"""The report's W&B side: which W&B run and group a report logs to, the ``wandb sync`` line
of offline runs, and the W&B report spec with native panels (``--wandb-report``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from agc_pipeline.reporting.groups import Group, seed_keys  # noqa: E402
from agc_pipeline.reporting.runs import Run  # noqa: E402
from agc_pipeline.reporting.sinks import wandb_settings, write_json  # noqa: E402
from agc_pipeline.reporting.wandb_report import panels, publish, report_spec  # noqa: E402


@dataclass
class WandbOptions:
    """Where ``--wandb`` logs the report (``group`` None: the runs' W&B group or name)."""

    group: str | None = None
    project: str | None = None
    mode: str = "offline"
    entity: str | None = None


def run_configs(train: list[Run], analysis: list[Any]) -> list[dict[str, Any]]:
    return [r.summary.config or {} for r in train] + \
        [r.results.get("config") or {} for r in analysis]


def logged_runs(train: list[Run], analysis: list[Any]) -> list[dict[str, Any]]:
    """Where the runs were logged to W&B (summary.json / results.json ``wandb``), if they were."""
    records = [r.summary.wandb for r in train] + [r.results.get("wandb") for r in analysis]
    return [w for w in records if isinstance(w, dict) and w.get("id")]


def wandb_target(configs: list[dict[str, Any]], options: WandbOptions,
                  logged: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Group, project and entity of the report (and of its W&B run): the options', else those
    the runs were logged with, else the first run's config's."""
    first = configs[0] if configs else {}
    logger = wandb_settings(first.get("logger")) or {}
    run = (logged or [{}])[0]
    return {"group": options.group or run.get("group") or logger.get("group")
            or first.get("name") or "report",
            "project": options.project or run.get("project") or logger.get("project")
            or "agc_pipeline",
            "mode": options.mode,
            "entity": options.entity or run.get("entity") or logger.get("entity")}


def sync_command(logged: list[dict[str, Any]]) -> str | None:
    """``wandb sync`` of the runs logged offline (a glob over the job folders of a sweep)."""
    dirs = [Path(w["dir"]) for w in logged if w.get("mode") == "offline" and w.get("dir")]
    if not dirs:
        return None
    sweeps = {d.parents[2] for d in dirs if len(d.parents) > 2 and d.parent.name == "wandb"}
    if len(dirs) > 1 and len(sweeps) == 1:
        return f"wandb sync {next(iter(sweeps))}/*/wandb/offline-run-*"
    return "wandb sync " + " ".join(map(str, dirs))


def write_wandb_report(out: Path, options: WandbOptions, runs: list[Run], groups: list[Group],
                       analysis_runs: list[Any], markdown: str, title: str,
                       yscale: str) -> dict[str, Any]:
    """``wandb_report.json`` in ``out`` (:mod:`agc_pipeline.reporting.wandb_report`): a W&B
    report of the runs' group with native panels; saved to W&B with ``options.mode == "online"``.
    Returns where it went and what to do next (``notes``)."""
    logged = logged_runs(runs, analysis_runs)
    target = wandb_target(run_configs(runs, analysis_runs), options, logged)
    names = sorted({w["group"] for w in logged if w.get("group")}) or [target["group"]]
    if options.group:
        names = [options.group]
    line = {id(run): i for i, g in enumerate(groups) for run in g.runs}
    seeds = seed_keys(runs) if runs else set()
    train = [{**(r.summary.keys or {"code": r.setup()["code"] or r.summary.scheme["name"]}),
              "_metrics": {k for row in r.rows for k in row}, "_line": line.get(id(r)),
              "_config": {k: json.loads(v) for k, v in r.flat_config().items()
                          if k not in seeds and k != "status"}} for r in runs]
    time_keys = sorted({g.time_key for g in groups})
    description = (f"{len(runs)} train and {len(analysis_runs)} analyze runs of W&B group "
                   f"{', '.join(names)}, made by agc_pipeline from "
                   f"{', '.join(str(r.path.parent) for r in runs[:1] + analysis_runs[:1])}.")
    spec = report_spec(title=title, groups=names, project=target["project"],
                       entity=target["entity"], train=train, analysis=len(analysis_runs),
                       markdown=markdown, time_keys=time_keys, yscale=yscale,
                       description=description)
    path = out / "wandb_report.json"
    write_json(path, spec)
    done: dict[str, Any] = {"spec": str(path), "mode": options.mode, "groups": names,
                            "panels": len(panels(spec)), "url": None, "notes": []}
    notes = done["notes"]
    if not logged:
        notes.append("the runs were not logged to W&B (logger=none): the report's panels "
                     "will show no runs; rerun them with logger=wandb")
    sync = sync_command(logged)
    if options.mode == "online":
        done["url"] = publish(spec)
        if sync:
            notes.append(f"runs logged offline show once uploaded: {sync}")
    else:
        notes.append("to publish: " + (f"upload the runs ({sync}), then " if sync else "")
                     + "rerun with --wandb-mode online, or "
                     "python -m agc_pipeline.reporting.wandb_report "
                     f"{path} (pip install 'agc_pipeline[reports]'; wandb login)")
    return done


