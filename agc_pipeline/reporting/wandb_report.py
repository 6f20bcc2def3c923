"""A W&B report of a sweep with native panels, as a JSON spec that maps 1:1 onto the W&B
Reports API (``wandb_workspaces.reports.v2``, the optional extra ``reports``).

:func:`report_spec` builds the spec without W&B or that library: every object is
``{"type": <class name in wandb_workspaces.reports.v2>, <its fields>...}`` (``Report``,
``H2``, ``MarkdownBlock``, ``PanelGrid``, ``Runset``, ``LinePlot``, ``Config``, ``Layout``).
For the train runs of the sweep's W&B group, one panel grid per straggler setting: training
loss against the iteration, the virtual (or wall-clock) time and the MB sent to the PS, and
the test accuracy, lines grouped by the set-up keys that vary (``code``, ...; mean ± standard
deviation over the seeds), and the run table; for its analyze runs, the error against the
straggler fraction with the bounds (Figs. 3–5); then the report's Markdown findings.
:func:`build_report` turns a spec into the library's objects, :func:`publish` saves it to W&B
(online) and returns its URL.

    agc-report <sweep dir> --wandb-report                       # writes wandb_report.json
    agc-report <sweep dir> --wandb-report --wandb-mode online   # saves it, prints the URL
    python -m agc_pipeline.reporting.wandb_report <dir>/wandb_report.json # publish a written spec
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: the spec's format tag and the module its types name
FORMAT = "agc_pipeline.reporting.wandb_report/1"
API = "wandb_workspaces.reports.v2"
#: flat W&B config keys (see the apps' ``run_keys``) that tell the lines of a panel apart
LINE_KEYS = ("code", "scheme", "assignment", "n", "k", "m", "decoder", "runtime", "model",
             "dataset", "d")
#: flat keys that split train runs into panel grids (the report's straggler panels)
PANEL_KEYS = ("straggler", "q", "s")
#: the analyze runs' curves (their metrics rows, one per straggler count)
ERROR_METRICS = ("empirical_mean", "empirical_max", "baseline_mean", "upper_bound",
                 "lower_bound")
#: runs-table columns: the set-up, then the headline results
TRAIN_COLUMNS = ("run:displayName", "config:code.value", "config:scheme.value",
                 "config:assignment.value", "config:m.value", "config:q.value",
                 "config:seed.value", "summary:final_train_loss", "summary:test_accuracy",
                 "summary:alpha", "summary:mb_to_ps", "summary:startup_seconds",
                 "summary:train_seconds")
ANALYZE_COLUMNS = ("run:displayName", "config:code.value", "config:assignment.value",
                   "config:n.value", "config:k.value", "config:m.value", "config:seed.value",
                   "summary:max_s", "summary:error_mean_at_max_s",
                   "summary:upper_bound_at_max_s", "summary:baseline_mean_at_max_s")
X_TITLES = {"iteration": "Iteration", "virtual_time": "Virtual time",
            "wall_time": "Wall-clock time (s)", "mb_to_ps": "MB sent to the PS",
            "straggler_fraction": "Straggler fraction s/n"}
#: what the plots are called after "vs"
X_NAMES = {"iteration": "iteration", "virtual_time": "virtual time",
           "wall_time": "wall-clock time", "mb_to_ps": "MB sent to the PS"}
_IMAGE = re.compile(r"^!\[[^\]]*\]\([^)]*\)\s*$")


class PublishError(RuntimeError):
    """The report cannot be published (the library is missing, or W&B refused it)."""


def node(kind: str, **fields: Any) -> dict[str, Any]:
    """One object of the spec: ``kind`` names its class; None fields are left out (the
    library's defaults)."""
    return {"type": kind, **{k: v for k, v in fields.items() if v is not None}}


def _literal(value: Any) -> str:
    return repr(value) if not isinstance(value, list) else "[" + ", ".join(
        repr(v) for v in value) + "]"


def run_filter(groups: list[str], job_type: str, where: dict[str, Any] | None = None) -> str:
    """The runs of ``groups`` with ``job_type`` (and config keys equal to ``where``'s
    values), in the library's filter syntax."""
    parts = [f"Metric('Group') == {groups[0]!r}" if len(groups) == 1
             else f"Metric('Group') in {_literal(groups)}",
             f"Metric('JobType') == {job_type!r}"]
    parts += [f"Config({key!r}) == {value!r}" for key, value in (where or {}).items()]
    return " and ".join(parts)


def _varying(keys: list[dict[str, Any]], names: Iterable[str]) -> list[str]:
    return [k for k in names
            if len({json.dumps(run.get(k), sort_keys=True) for run in keys}) > 1]


def _combinations(runs: list[dict[str, Any]], keys: list[str]) -> int:
    return len({tuple(json.dumps(_value(r, k), sort_keys=True) for k in keys) for r in runs})


def _value(run: dict[str, Any], key: str) -> Any:
    """A flat key, or ``cfg.<dotted config key>`` (the run's ``"_config"``)."""
    if key.startswith("cfg."):
        return (run.get("_config") or {}).get(key[4:])
    return run.get(key)


def line_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The keys the lines of ``runs`` are grouped by: the flat keys of :data:`LINE_KEYS` that
    tell more runs apart (in that order, each only when it adds a distinction: ``scheme``
    is left out when ``code`` already separates the schemes), then, while runs the report
    keeps apart (``"_line"``) still share a line, the config keys that differ between them
    (``cfg.trainer.lr``); ``["code"]`` when nothing varies."""
    chosen: list[str] = []
    for key in LINE_KEYS:
        if _combinations(runs, [*chosen, key]) > _combinations(runs, chosen):
            chosen.append(key)
    lines = len({r.get("_line") for r in runs})
    extra = sorted({k for r in runs for k in r.get("_config") or {}})
    for key in extra:
        if _combinations(runs, chosen) >= lines:
            break
        if _combinations(runs, [*chosen, f"cfg.{key}"]) > _combinations(runs, chosen):
            chosen.append(f"cfg.{key}")
    return chosen or ["code"]


def _layout(i: int) -> dict[str, Any]:
    return node("Layout", x=12 * (i % 2), y=8 * (i // 2), w=12, h=8)


def loss_plot(i: int, x: str, y: str, groupby: list[str], log_y: bool,
              title: str) -> dict[str, Any]:
    """A line plot of ``y`` against ``x``, lines grouped by the runset's keys: the mean over
    each group's runs (its seeds) with a ± standard-deviation band."""
    return node("LinePlot", title=title, x=x, y=[y], log_y=log_y or None,
                title_x=X_TITLES.get(x, x), title_y=y.replace("_", " ").capitalize(),
                groupby=node("Config", name=groupby[0]) if len(groupby) == 1 else None,
                groupby_aggfunc="mean" if groupby else None,
                groupby_rangefunc="stddev" if groupby else None,
                aggregate=True if groupby else None, layout=_layout(i))


def _runset(name: str, project: str, entity: str | None, filters: str, groupby: list[str],
            columns: tuple[str, ...]) -> dict[str, Any]:
    return node("Runset", name=name, project=project, entity=entity or None, filters=filters,
                groupby=[f"config.{k}" for k in groupby], pinned_columns=list(columns[:2]),
                visible_columns=list(columns))


def findings(markdown: str) -> str:
    """The report's Markdown without its title and image lines (local PNGs; the panels
    replace them)."""
    lines = [line for line in markdown.splitlines() if not _IMAGE.match(line)]
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def train_grids(train: list[dict[str, Any]], groups: list[str], project: str,
                entity: str | None, time_keys: list[str], yscale: str) -> list[dict[str, Any]]:
    """One H2 + panel grid per straggler setting of the train runs (``train``: each run's
    flat keys, its metrics' names under ``"_metrics"``, its report line under ``"_line"`` and
    its flat config under ``"_config"``)."""
    split = _varying(train, PANEL_KEYS)
    settings: dict[str, dict[str, Any]] = {}
    for run in train:
        where = {k: run.get(k) for k in split if run.get(k) is not None}
        settings.setdefault(json.dumps(where, sort_keys=True), where)
    blocks = []
    for where in settings.values():
        members = [r for r in train if all(r.get(k) == v for k, v in where.items())]
        groupby = line_keys(members)
        metrics = set().union(*(r.get("_metrics", set()) for r in members))
        x_axes = ["iteration", *time_keys, "mb_to_ps"]
        panels = [loss_plot(i, x, "train_loss", groupby, yscale == "log",
                            f"Training loss vs {X_NAMES[x]}")
                  for i, x in enumerate(x_axes)]
        if "test_accuracy" in metrics:
            panels.append(loss_plot(len(panels), "iteration", "test_accuracy", groupby, False,
                                    "Test accuracy vs iteration"))
        label = ", ".join(f"{k} = {v}" for k, v in where.items())
        blocks += [node("H2", text="Training" + (f" ({label})" if label else "")),
                   node("PanelGrid", runsets=[_runset(
                       "train runs" + (f" ({label})" if label else ""), project, entity,
                       run_filter(groups, "train", where), groupby, TRAIN_COLUMNS)],
                       panels=panels)]
    return blocks


def analyze_grid(groups: list[str], project: str, entity: str | None,
                 several: bool) -> list[dict[str, Any]]:
    """The H2 + panel grid of the analyze runs: error against the straggler fraction with
    the bounds (one line per run and metric), and their run table."""
    panels = [node("LinePlot", title="Approximation error vs straggler fraction",
                   x="straggler_fraction", y=list(ERROR_METRICS),
                   title_x=X_TITLES["straggler_fraction"], title_y="Error ‖Bx − 1‖²",
                   layout=node("Layout", x=0, y=0, w=24 if not several else 12, h=9))]
    return [node("H2", text="Approximation error"),
            node("PanelGrid", runsets=[_runset("analyze runs", project, entity,
                                               run_filter(groups, "analyze"), [],
                                               ANALYZE_COLUMNS)], panels=panels)]


def report_spec(*, title: str, groups: list[str], project: str, entity: str | None,
                train: list[dict[str, Any]], analysis: int, markdown: str,
                time_keys: list[str], yscale: str = "log",
                description: str = "") -> dict[str, Any]:
    """The spec of the report (see the module docstring)."""
    blocks: list[dict[str, Any]] = [node("MarkdownBlock", text=description)] if description \
        else []
    if train:
        blocks += train_grids(train, groups, project, entity, time_keys, yscale)
    if analysis:
        blocks += analyze_grid(groups, project, entity, analysis > 1)
    blocks += [node("H2", text="Findings"), node("MarkdownBlock", text=findings(markdown))]
    report = node("Report", project=project, entity=entity or None, title=title[:128],
                  description=description[:1000], width="fluid", blocks=blocks)
    return {"format": FORMAT, "api": API, "groups": groups, "report": report}


def panels(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a spec (for tests and messages)."""
    return [p for block in spec["report"]["blocks"] if block["type"] == "PanelGrid"
            for p in block["panels"]]


def build_report(spec: dict[str, Any]) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` of ``spec`` (raises PublishError when the
    library is not installed)."""
    try:
        wr = importlib.import_module(spec.get("api", API))
    except ImportError as exc:
        raise PublishError(f"publishing a W&B report needs wandb-workspaces: pip install "
                           f"'agc_pipeline[reports]' ({exc})") from None

    def make(value: Any) -> Any:
        if isinstance(value, dict) and "type" in value:  # None fields: the library's default
            fields = {k: make(v) for k, v in value.items() if k != "type" and v is not None}
            return getattr(wr, value["type"])(**fields)
        if isinstance(value, list):
            return [make(v) for v in value]
        return value

    try:
        report = make(spec["report"])
    except Exception as exc:  # noqa: BLE001 - without an entity, W&B's API is asked for one
        if spec["report"].get("entity"):
            raise
        raise PublishError(f"a W&B report without an entity takes W&B's default entity, which "
                           f"needs `wandb login` (or pass --wandb-entity): "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    for block in report.blocks:  # runsets without an entity: the report's (its default)
        for runset in getattr(block, "runsets", None) or []:
            if not getattr(runset, "entity", None):
                runset.entity = report.entity
    return report


def publish(spec: dict[str, Any]) -> str:
    """Save the report of ``spec`` to W&B (needs the network and ``wandb login``); its URL."""
    report = build_report(spec)
    try:
        report.save()
    except Exception as exc:  # noqa: BLE001 - the API's errors are many: one line
        raise PublishError(f"W&B did not save the report: {type(exc).__name__}: {exc}") from None
    return str(report.url)


def main(argv: list[str] | None = None) -> int:
    """``python -m agc_pipeline.reporting.wandb_report SPEC.json``: publish a written spec."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agc_pipeline.reporting.wandb_report <wandb_report.json>",
              file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        print(f"W&B report: {publish(spec)}")
    except (OSError, ValueError, PublishError) as exc:
        print(f"agc_pipeline.reporting.wandb_report: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
