"""The ``report`` app: figures and a Markdown (optionally HTML) summary of run directories.

    python -m agc_pipeline.report runs/multirun/train/fig6_bibd7/<stamp>
    python -m agc_pipeline.report runs/analyze/fig3/<stamp>            # an analyze run
    python -m agc_pipeline.report RUN_DIR... --out report/ --title "Fig. 6" --html --wandb

Each argument is a run directory or a folder searched recursively (a multirun sweep dir).

``train`` runs (``summary.json`` + ``metrics.jsonl``) are grouped into replicates: runs whose
whole resolved config is the same apart from the seed (iterations, optimizer, runtime,
model, data, straggler model… and the run's status included; keys that cannot change the
numbers, such as ``logger`` or ``trainer.progress``, are left out), and two runs with the
same seed are never averaged. Each group is one line (mean ± standard deviation over its
runs), labelled by the set-up fields that differ between lines — the scheme as the paper
names it ("Construction (7)", "Baseline construction (11)", "(19), ±1"), ε, assignment, m,
decoder, … (by the ``code=`` preset name when the schemes do not tell its presets apart,
e.g. uncoded and stack) — and, where those do not
tell two groups apart, by the config keys that do; the report lists the keys that differ
between groups. Groups with different straggler settings go to separate panels.
Figures: ``train_loss.png`` (training loss against iteration, as the paper's Fig. 6),
``train_loss_vs_time.png`` (against the simulated virtual time, or the wall-clock time of
distributed runs), ``loss_vs_bytes.png`` (against the bytes sent to the PS so far), each
with its legend beside the panels; a table of final loss, test accuracy, time and bytes per
line. The loss axis is logarithmic by default (the paper does not state Fig. 6's scale; on a
log axis the schemes' curves stay apart late in training): ``--yscale linear`` for a linear one.

``analyze`` runs (``results.json``) get the paper-style error-against-straggler-fraction
figure with its bounds, a table of the points, and a comparison figure when there are several
(:mod:`agc_pipeline.analysis.report`).

A damaged input (a truncated, empty or garbled ``metrics.jsonl``, ``summary.json`` or
``results.json``) is named in a warning, one per file, in ``report.md`` and on stderr; with
``--strict`` the report fails instead (exit status 2).

Writes into ``--out`` (default: the first argument) ``report.md``, ``report.json``, the PNGs,
with ``--html`` also ``report.html``; with ``--wandb`` the figures and tables are logged to a
W&B run (``job_type=report``, offline by default) in the runs' group.

:class:`ReportCallback` runs the same at the end of a Hydra multirun (``hydra.callbacks``),
logging to W&B when the sweep runs with ``logger=wandb``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from agc_pipeline.analysis.plot import legend_beside  # noqa: E402
from agc_pipeline.analysis.report import (  # noqa: E402
    AnalysisRun,
    analysis_section,
    label_analysis_runs,
    read_overrides,
)
from agc_pipeline.codes.base import paper_label  # noqa: E402
from agc_pipeline.jobs import sweep_group  # noqa: E402
from agc_pipeline.publish import markdown_to_html, publish_wandb  # noqa: E402
from agc_pipeline.sinks import write_json  # noqa: E402
from agc_pipeline.wandb_report import PublishError, panels, publish, report_spec  # noqa: E402

log = logging.getLogger("agc_pipeline.report")

#: the set-up fields lines are labelled by (``panel`` fields split the figure into panels)
LINE_FIELDS = ("code", "scheme", "epsilon", "assignment", "m", "decoder", "wait", "lr",
               "model", "data")
PANEL_FIELDS = ("straggler",)
#: fields a ``code=`` preset (conf/code/) fixes: not repeated in labels when code varies
CODE_FIELDS = ("scheme", "epsilon", "assignment", "m", "decoder", "wait")
#: label fields dropped, in this order, when the remaining ones still tell the lines apart
REDUNDANT_FIRST = ("assignment", "decoder", "data", "model")
#: config keys (and their sub-keys) that cannot change a run's numbers: not part of the key
#: replicates are grouped by (the seed, and keys that follow it, are left out separately)
IGNORED_KEYS = ("name", "logger", "trainer.progress", "trainer.resume",
                "trainer.checkpoint_every", "extras")
#: the summary.json fields a train run needs to be reported
SUMMARY_FIELDS = ("final_train_loss", "scheme", "assignment", "decoder", "straggler", "m",
                  "wait_for_all", "lr", "model", "dataset", "train_samples")


class ReportError(ValueError):
    """The report cannot be made (no runs, damaged inputs under ``strict``, a bad ``--out``)."""


@dataclass
class Run:
    """One train run: its directory, ``summary.json`` and ``metrics.jsonl`` rows."""

    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        """The run's seed (None when its summary records none)."""
        return self.summary.get("seed", (self.summary.get("config") or {}).get("seed"))

    def flat_config(self) -> dict[str, str]:
        """The resolved config as ``dotted.key -> JSON value``, without :data:`IGNORED_KEYS`;
        the set-up fields when the summary holds no config, and always the run's status."""
        config = self.summary.get("config")
        flat = (flatten(config) if isinstance(config, dict) else
                {f"setup.{k}": json.dumps(v) for k, v in self.setup().items()})
        flat = {k: v for k, v in flat.items()
                if not any(k == i or k.startswith(f"{i}.") for i in IGNORED_KEYS)}
        flat["status"] = json.dumps(self.summary.get("status", "completed"))
        return flat

    def setup(self) -> dict[str, str]:
        """The fields runs are grouped by (everything but the seed), as short strings."""
        s = self.summary
        scheme = s["scheme"]
        straggler = s["straggler"]
        params = [f"{k}={straggler[k]:g}" if isinstance(straggler[k], float) else
                  f"{k}={straggler[k]}" for k in ("q", "s", "wait_for", "deadline")
                  if straggler.get(k) is not None]
        decoder = s["decoder"]["name"] + (" ÷α" if s["decoder"]["rescale"] else "")
        code = (s.get("choices") or {}).get("code") or ""
        epsilon = f"ε = {scheme['epsilon']:g}" if scheme.get("epsilon") else ""
        return {"code": code, "scheme": paper_label(scheme["name"], scheme.get("variant")),
                "epsilon": epsilon, "assignment": s["assignment"]["name"], "m": f"m={s['m']}",
                "decoder": decoder, "wait": "wait-for-all" if s["wait_for_all"] else "",
                "lr": f"lr={s['lr']:g}", "model": s["model"],
                "data": f"{s['dataset']} N={s['train_samples']}",
                "straggler": " ".join([straggler["name"], *params])}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict as ``dotted.key -> JSON value`` (lists stay one value)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


@dataclass
class Found:
    """What :func:`find_runs` found: train and analyze runs, and one problem per damaged
    file (``"<file>: <what is wrong>"``)."""

    train: list[Run] = field(default_factory=list)
    analysis: list[AnalysisRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run dirs under ``paths``: each path that holds a ``summary.json`` or a
    ``results.json`` itself, else every folder below it that does (in sorted order)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "summary.json").is_file() or (path / "results.json").is_file():
            found.append(path)
        else:
            found += sorted({p.parent for marker in ("summary.json", "results.json")
                             for p in path.rglob(marker)})
    return list(dict.fromkeys(found))


def _read_json(path: Path, problems: list[str]) -> Any:
    """The JSON in ``path``, or None with a problem naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return None
    if not text.strip():
        problems.append(f"{path}: empty")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}: not valid JSON, truncated or damaged ({exc})")
        return None


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; unreadable lines are left out with one problem."""
    if not path.is_file():
        problems.append(f"{path}: missing (the run has no metrics rows)")
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return []
    if not any(line.strip() for line in lines):
        problems.append(f"{path}: empty (the run has no metrics rows)")
        return []
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"line {number} is not valid JSON"
                       + (" (truncated?)" if number == len(lines) else ""))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
            bad.append(f"line {number} is not a metrics row (no integer iteration)")
            continue
        rows.append(row)
    if bad:
        problems.append(f"{path}: {len(bad)} of {len(lines)} lines left out ({bad[0]}"
                        + (f"; and {len(bad) - 1} more" if len(bad) > 1 else "") + ")")
    return rows


def find_runs(paths: list[Path]) -> Found:
    """The train runs (``summary.json`` + ``metrics.jsonl``) and analyze runs
    (``results.json``) under ``paths``, each a run dir or a folder searched recursively;
    damaged files are left out and named in :attr:`Found.problems`."""
    found = Found()
    for path in run_dirs(paths):
        results_file, summary_file = path / "results.json", path / "summary.json"
        if results_file.is_file():  # an analyze run; its summary.json marks completion
            results = _read_json(results_file, found.problems)
            if results is None:
                continue
            if isinstance(results, dict) and results.get("points"):
                found.analysis.append(AnalysisRun(path, results, read_overrides(path)))
            else:
                found.problems.append(f"{results_file}: holds no points (not the results "
                                      "of an analyze run)")
            continue
        summary = _read_json(summary_file, found.problems)
        if summary is None:
            continue
        if not isinstance(summary, dict):
            found.problems.append(f"{summary_file}: not a JSON object")
            continue
        if summary.get("app") == "analyze":
            found.problems.append(f"{summary_file}: an analyze run without its results.json")
            continue
        missing = [k for k in SUMMARY_FIELDS if k not in summary]
        if missing:
            found.problems.append(f"{summary_file}: not the summary of a train run (no "
                                  f"{', '.join(missing)})")
            continue
        found.train.append(Run(path, summary, _read_metrics(path / "metrics.jsonl",
                                                            found.problems)))
    label_analysis_runs(found.analysis)
    return found


@dataclass
class Group:
    """Replicate runs (same config, distinct seeds); ``label`` tells it from other lines."""

    setup: dict[str, str]
    runs: list[Run]
    label: str = ""
    panel: str = ""
    #: the flat config the group's runs share (seed keys left out), see :meth:`Run.flat_config`
    config: dict[str, str] = field(default_factory=dict)
    #: > 0 when another group has the same config and seeds (numbered from 1)
    copy: int = 0

    @property
    def time_key(self) -> str:
        """``wall_time`` for distributed runs (or rows without a virtual clock), else
        ``virtual_time``."""
        rows = [r for run in self.runs for r in run.rows]
        has_wall = any(r.get("wall_time") is not None for r in rows)
        has_virtual = any(r.get("virtual_time") is not None for r in rows)
        # runtimes that measure real time (summary.json "runtime"; the simulated one says
        # "simulated" and keeps a virtual clock)
        measured = any(run.summary.get("runtime") not in (None, "simulated") for run in self.runs)
        return "wall_time" if has_wall and (measured or not has_virtual) else "virtual_time"

    def series(self, run: Run, key: str) -> dict[int, float]:
        """Iteration → value of ``key`` in ``run``'s rows. ``time`` (the group's
        :attr:`time_key`) and ``bytes`` (MB sent to the PS) are taken at the start of the
        iteration, where its ``train_loss`` is measured (before its update)."""
        if key == "bytes":
            out, total = {}, 0.0
            for r in sorted(run.rows, key=lambda r: r["iteration"]):
                sent = float(r.get("bytes_to_ps") or 0)
                cumulative = r.get("total_bytes_to_ps")
                # the row's loss is before its update: count the bytes of earlier iterations
                before = total if cumulative is None else float(cumulative) - sent
                out[r["iteration"]] = before / 1e6
                total += sent
            return out
        if key == "time":  # the iteration's start: its train_loss is before its update
            key = self.time_key
            return {r["iteration"]: r[key] - (r.get("iteration_time") or 0.0)
                    for r in run.rows if r.get(key) is not None}
        return {r["iteration"]: r[key] for r in run.rows if r.get(key) is not None}

    def curve(self, key: str, x: str = "iteration") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over the iterations logged by every run: ``x`` (the iteration, or the mean over runs
        of ``time`` / ``bytes``, see :meth:`series`), and the mean and std of ``key``. Runs
        without any metrics row (a damaged ``metrics.jsonl``, warned about) are left out."""
        runs = [run for run in self.runs if run.rows]
        ys = [self.series(run, key) for run in runs]
        xs = [] if x == "iteration" else [self.series(run, x) for run in runs]
        common = sorted(set.intersection(*(set(t) for t in ys + xs))) if ys else []
        if not common:
            return np.empty(0), np.empty(0), np.empty(0)
        vals = np.array([[t[i] for i in common] for t in ys], dtype=np.float64)
        where = (np.array(common, dtype=np.float64) if x == "iteration" else
                 np.array([[t[i] for i in common] for t in xs], dtype=np.float64).mean(axis=0))
        return where, vals.mean(axis=0), vals.std(axis=0)

    def stats(self, key: str) -> tuple[float, float] | None:
        """Mean and std over runs of a numeric summary field (None when absent)."""
        values = [r.summary.get(key) for r in self.runs]
        values = [float(v) for v in values if isinstance(v, int | float)]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values))


def _seed_keys(runs: list[Run]) -> set[str]:
    """Config keys that follow the seed: ``seed``, and every ``….seed`` equal to its run's
    seed in every run (``model.seed: ${seed}``), not a fixed one such as a graph's seed."""
    keys = {"seed"}
    flats = [(run.flat_config(), json.dumps(run.seed, sort_keys=True)) for run in runs]
    candidates = {k for flat, _ in flats for k in flat if k.endswith(".seed")}
    for key in candidates:
        if all(flat.get(key, seed) == seed for flat, seed in flats):
            keys.add(key)
    return keys


def group_runs(runs: list[Run]) -> list[Group]:
    """Group replicates (the same config apart from the seed, see the module docstring;
    never two runs with the same seed in a group); label lines by the set-up fields that
    vary, then by the config keys that still tell groups apart; panels by straggler."""
    seed_keys = _seed_keys(runs)
    by_key: dict[tuple[tuple[str, str], ...], list[list[Run]]] = defaultdict(list)
    for run in runs:
        config = {k: v for k, v in run.flat_config().items() if k not in seed_keys}
        replicates = by_key[tuple(sorted(config.items()))]
        home = next((g for g in replicates if all(r.seed != run.seed for r in g)), None)
        if home is None:  # first run of this config, or its seed is taken: a new group
            replicates.append(home := [])
        home.append(run)
    groups = []
    for key, replicates in by_key.items():
        for i, members in enumerate(replicates):
            groups.append(Group(members[0].setup(), members, config=dict(key),
                                copy=i + 1 if len(replicates) > 1 else 0))
    varying = [f for f in LINE_FIELDS if len({g.setup[f] for g in groups}) > 1] or ["scheme"]
    if "code" in varying:  # code presets: named by their schemes when those tell them apart
        rest = [f for f in varying if f not in CODE_FIELDS and f != "code"]
        by_scheme = [f for f in ("scheme", "epsilon") if f in varying] or ["scheme"]
        varying = ([*by_scheme, *rest] if _distinct(groups, [*by_scheme, *rest]) else
                   [f for f in varying if f not in CODE_FIELDS])
    for field_name in REDUNDANT_FIRST:  # drop fields the others already tell apart (e.g.
        fewer = [f for f in varying if f != field_name]  # an assignment whose name encodes m)
        if field_name in varying and fewer and _distinct(groups, fewer):
            varying = fewer
    for g in groups:
        g.label = ", ".join(g.setup[f] for f in varying if g.setup[f]) or g.setup["scheme"]
        g.panel = " ".join(g.setup[f] for f in PANEL_FIELDS)
    _tell_apart(groups)
    return sorted(groups, key=lambda g: (g.panel, g.label))


def differing_keys(groups: list[Group]) -> list[str]:
    """The config keys (and ``status``) whose values differ between groups."""
    keys = sorted({k for g in groups for k in g.config})
    return [k for k in keys if len({g.config.get(k) for g in groups}) > 1]


def _tell_apart(groups: list[Group], most: int = 3) -> None:
    """Add to the labels that two groups of a panel share the config keys that differ
    between them (``trainer.iterations=30``), and a copy number to groups that a rerun with
    the same config and seed split (copy 2 holds the reruns)."""
    clashes: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        clashes[(g.panel, g.label)].append(g)
    for same in clashes.values():
        if len(same) < 2:
            continue
        for key in differing_keys(same)[:most]:
            for g in same:
                value = g.config.get(key, "null")
                g.label += f", {key}={json.loads(value) if value != 'null' else None}"
        for g in same:
            if g.copy:
                g.label += f" (copy {g.copy})"


def _distinct(groups: list[Group], fields: list[str]) -> bool:
    """Whether ``fields`` still tell every pair of groups of a panel apart."""
    keys = [(g.setup["straggler"], *(g.setup[f] for f in fields)) for g in groups]
    return len(set(keys)) == len(keys)


def details(setup: dict[str, str]) -> str:
    """The code's set-up in one cell: scheme, assignment, m, decoder, wait-for-all."""
    return ", ".join(setup[f] for f in CODE_FIELDS if setup[f])


#: x-axis labels of :func:`plot`
X_LABELS = {"iteration": "Iteration", "bytes": "MB sent to the PS",
            "virtual_time": "Virtual time", "wall_time": "Wall-clock time (s)"}


def loss_figure(groups: list[Group], x: str, title: str | None, yscale: str = "log") -> Any:
    """Training loss (mean ± std over runs) against ``x`` ∈ {iteration, time, bytes}, one
    panel per straggler setting, one legend beside the panels (it covers no curve)."""
    panels = sorted({g.panel for g in groups})
    labels = sorted({g.label for g in groups})
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
    cols = len(panels) if len(panels) <= 3 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), dpi=120,
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for g in (g for g in groups if g.panel == panel):
            xs, mean, std = g.curve("train_loss", x)
            color = colors[g.label]
            ax.plot(xs, mean, color=color, label=f"{g.label} ({len(g.runs)} runs)")
            if len(g.runs) > 1:
                ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2)
        keys = sorted({g.time_key for g in groups}) if x == "time" else [x]
        ax.set_xlabel(" / ".join(X_LABELS[k] for k in keys))
        ax.set_ylabel("Training loss")
        if ax.has_data():  # no curve (every run damaged): keep the linear axis
            ax.set_yscale(yscale)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(panel if len(panels) > 1 else textwrap.fill(title or panel, 60))
    if title and len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    legend_beside(fig, 8)
    return fig


def plot(groups: list[Group], path: Path, x: str, title: str | None,
         yscale: str = "log") -> Path:
    """Write :func:`loss_figure` to ``path`` (PNG)."""
    fig = loss_figure(groups, x, title, yscale)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(stat: tuple[float, float] | None, digits: int = 4, scale: float = 1.0) -> str:
    if stat is None or not math.isfinite(stat[0]):
        return "n/a"
    return f"{stat[0] * scale:.{digits}f} ± {stat[1] * scale:.{digits}f}"


def _time(rec: dict[str, Any]) -> str:
    """The virtual time of simulated runs, else the wall-clock seconds of distributed ones."""
    if rec.get("virtual_time") is not None:
        return _fmt(rec["virtual_time"], 1)
    return f"{_fmt(rec.get('wall_time'), 1)} s" if rec.get("wall_time") is not None else "n/a"


def table(groups: list[Group]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and the same numbers as a list of dicts. Time: the virtual time of
    simulated runs (the wall-clock seconds of distributed ones); start-up s: each run's seconds
    outside the iterations (building the run, α, the workers' start-up, the final
    evaluation); training s: the iterations."""
    head = ("| line | code | straggler | runs | final train loss | test accuracy | α | "
            "mean grad error | mean survivors | time (virtual / wall s) | MB to PS | "
            "start-up s | training s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    records = []
    for g in groups:
        alphas = [r.summary["alpha"]["value"] for r in g.runs if r.summary.get("alpha")]
        alpha = (float(np.mean(alphas)), float(np.std(alphas))) if alphas else None
        rec = {"label": g.label, "panel": g.panel, "setup": g.setup, "runs": len(g.runs),
               "paths": [str(r.path) for r in g.runs]}
        for key in ("final_train_loss", "test_accuracy", "mean_grad_error", "mean_survivors",
                    "virtual_time", "wall_time", "total_bytes_to_ps", "seconds",
                    "startup_seconds", "train_seconds"):
            rec[key] = g.stats(key)
        rec["alpha"] = alpha
        records.append(rec)
        bad = sum(r.summary.get("status", "completed") != "completed" for r in g.runs)
        rec["not_completed"] = bad
        count = f"{len(g.runs)}" + (f" ({bad} not completed)" if bad else "")
        lines.append(f"| {g.label} | {details(g.setup)} | {g.panel} | {count} | "
                     f"{_fmt(rec['final_train_loss'])} | {_fmt(rec['test_accuracy'], 3)} | "
                     f"{_fmt(alpha, 3)} | {_fmt(rec['mean_grad_error'], 3)} | "
                     f"{_fmt(rec['mean_survivors'], 2)} | {_time(rec)} | "
                     f"{_fmt(rec['total_bytes_to_ps'], 1, 1e-6)} | "
                     f"{_fmt(rec['startup_seconds'], 1)} | {_fmt(rec['train_seconds'], 1)} |")
    return "\n".join(lines) + "\n", records


@dataclass
class WandbOptions:
    """Where ``--wandb`` logs the report (``group`` None: the runs' W&B group or name)."""

    group: str | None = None
    project: str | None = None
    mode: str = "offline"
    entity: str | None = None


def _run_configs(train: list[Run], analysis: list[Any]) -> list[dict[str, Any]]:
    return [r.summary.get("config") or {} for r in train] + \
        [r.results.get("config") or {} for r in analysis]


def _wandb_runs(train: list[Run], analysis: list[Any]) -> list[dict[str, Any]]:
    """Where the runs were logged to W&B (summary.json / results.json ``wandb``), if they were."""
    records = [r.summary.get("wandb") for r in train] + [r.results.get("wandb") for r in analysis]
    return [w for w in records if isinstance(w, dict) and w.get("id")]


def _wandb_target(configs: list[dict[str, Any]], options: WandbOptions,
                  logged: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Group, project and entity of the report (and of its W&B run): the options', else those
    the runs were logged with, else the first run's config's."""
    first = configs[0] if configs else {}
    logger = first.get("logger") or {}
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
    """``wandb_report.json`` in ``out`` (:mod:`agc_pipeline.wandb_report`): a W&B report of
    the runs' group with native panels; saved to W&B with ``options.mode == "online"``.
    Returns where it went and what to do next (``notes``)."""
    logged = _wandb_runs(runs, analysis_runs)
    target = _wandb_target(_run_configs(runs, analysis_runs), options, logged)
    names = sorted({w["group"] for w in logged if w.get("group")}) or [target["group"]]
    if options.group:
        names = [options.group]
    line = {id(run): i for i, g in enumerate(groups) for run in g.runs}
    seeds = _seed_keys(runs) if runs else set()
    train = [{**(r.summary.get("keys") or {"code": r.setup()["code"] or
                                        r.summary["scheme"]["name"]}),
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
                     + "rerun with --wandb-mode online, or python -m agc_pipeline.wandb_report "
                     f"{path} (pip install 'agc_pipeline[reports]'; wandb login)")
    return done


def provenance_lines(configs_and_records: list[dict[str, Any]]) -> list[str]:
    """One Markdown line per distinct (commit, versions) the runs were made with."""
    seen: dict[str, int] = defaultdict(int)
    for record in configs_and_records:
        git = (record.get("provenance") or {}).get("git") or {}
        versions = record.get("versions") or {}
        commit = (f"commit {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}"
                  if git.get("commit") else "no git commit recorded")
        libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        seen[f"{commit}; {libs or 'no versions recorded'}"] += 1
    return [f"- {count} run(s): {line}" for line, count in seen.items()]


def make_report(paths: list[Path], out: Path | None = None, title: str | None = None, *,
                html: bool = False, wandb: WandbOptions | None = None,
                yscale: str = "log", strict: bool = False,
                wandb_report: WandbOptions | None = None) -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``report.json`` (``report.html`` with ``html``)
    for the train and analyze runs under ``paths``; log them to W&B with ``wandb``; write
    (and with mode online, save) a W&B report with native panels with ``wandb_report``.

    Damaged input files are left out and listed in ``report["warnings"]`` (one line per
    file, naming it) and in ``report.md``; with ``strict`` they raise :class:`ReportError`.
    """
    found = find_runs(paths)
    runs, analysis_runs, warnings = found.train, found.analysis, found.problems
    if warnings and strict:
        raise ReportError(f"{len(warnings)} damaged input file(s), --strict: "
                          + "; ".join(warnings))
    if not runs and not analysis_runs:
        damaged = f" ({len(warnings)} damaged: {'; '.join(warnings)})" if warnings else ""
        raise ReportError("no train runs (summary.json) or analyze runs (results.json) "
                          f"under {', '.join(map(str, paths))}{damaged}")
    out = Path(out or paths[0])
    if out.exists() and not out.is_dir():
        raise ReportError(f"output folder {out} is an existing file: choose a folder (--out)")
    out.mkdir(parents=True, exist_ok=True)
    heading = title or ("Training report" if runs else "Approximation-error report")
    text = [f"# {heading}", ""]
    if warnings:
        text += ["## Warnings: damaged inputs left out", "",
                 *(f"- `{w}`" for w in warnings), ""]
    figures: list[Path] = []
    groups: list[Group] = []
    records: list[dict[str, Any]] = []
    differ: list[str] = []
    if runs:
        groups = group_runs(runs)
        differ = differing_keys(groups)
        md_table, records = table(groups)
        train_figures = [plot(groups, out / "train_loss.png", "iteration", title, yscale),
                         plot(groups, out / "train_loss_vs_time.png", "time", title, yscale),
                         plot(groups, out / "loss_vs_bytes.png", "bytes", title, yscale)]
        figures += train_figures
        keys = (", ".join(f"`{k}`" for k in differ) if differ else
                "nothing (one configuration)")
        text += ["## Training (train runs)", "",
                 f"{len(runs)} runs in {len(groups)} groups of replicates (same config, "
                 "distinct seeds; mean ± std over each group's runs).", "",
                 f"Config keys that differ between groups: {keys}.", "",
                 md_table, *(f"![{f.stem}]({f.name})\n" for f in train_figures)]
    analysis_records: list[dict[str, Any]] = []
    if analysis_runs:
        section, analysis_records, analysis_figures = analysis_section(analysis_runs, out, title)
        figures += analysis_figures
        text += [section]
    text += ["## Reproducibility", "",
             *provenance_lines([r.summary for r in runs] + [r.results for r in analysis_runs]),
             ""]
    markdown = "\n".join(text)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    if html:
        (out / "report.html").write_text(markdown_to_html(markdown, heading), encoding="utf-8")
    report = {"title": title, "runs": len(runs), "groups": records, "differing_keys": differ,
              "analysis_runs": len(analysis_runs), "analysis": analysis_records,
              "warnings": warnings, "figures": [str(f) for f in figures],
              "inputs": [str(p) for p in paths]}
    write_json(out / "report.json", report)
    if wandb is not None:
        target = _wandb_target(_run_configs(runs, analysis_runs), wandb,
                               _wandb_runs(runs, analysis_runs))
        publish_wandb(report, figures, out, **target)
        report["wandb"] = target
        write_json(out / "report.json", report)
    if wandb_report is not None:
        report["wandb_report"] = write_wandb_report(out, wandb_report, runs, groups,
                                                    analysis_runs, markdown, heading, yscale)
        write_json(out / "report.json", report)
    return report


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends. When the
    sweep runs with ``logger=wandb``, also log it to W&B (a ``job_type=report`` run in the
    sweep's group), write the W&B report spec ``wandb_report.json`` (saved to W&B when the
    logger is online) and print the ``wandb sync`` line of the jobs' offline runs."""

    def __init__(self, title: str | None = None, html: bool = True) -> None:
        self.title = title
        self.html = html

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        logger = config.get("logger") or {}
        wandb = spec = None
        mode = logger.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        if logger.get("name") == "wandb":
            group = (logger.get("group") or os.environ.get("WANDB_RUN_GROUP")
                     or sweep_group(str(config.get("name", "")), sweep_dir))
            wandb = WandbOptions(group=group, project=logger.get("project"), mode=mode,
                                 entity=logger.get("entity"))
            spec = WandbOptions(group=group, project=logger.get("project"), mode="offline",
                                entity=logger.get("entity"))
        try:
            report = make_report([sweep_dir], sweep_dir, self.title or str(config.get("name", "")),
                                 html=self.html, wandb=wandb, wandb_report=spec)
            for warning in report["warnings"]:
                log.warning("report: %s", warning)
            log.info("report: %s", sweep_dir / "report.md")
        except Exception as exc:  # noqa: BLE001 - a report failure must not fail the sweep
            log.warning("report for %s failed: %s", sweep_dir, exc)
            return
        if spec is None:
            return
        done = report["wandb_report"]
        log.info("W&B report spec (%d panels): %s", done["panels"], done["spec"])
        if mode == "online":
            try:
                log.info("W&B report: %s",
                         publish(json.loads(Path(done["spec"]).read_text(encoding="utf-8"))))
            except PublishError as exc:
                log.warning("W&B report not published: %s", exc)
        for note in done["notes"]:
            log.info("W&B: %s", note)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``agc-report``)."""
    parser = argparse.ArgumentParser(prog="agc-report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs or sweep dirs")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--title", default=None)
    parser.add_argument("--html", action="store_true", help="also write report.html")
    parser.add_argument("--yscale", choices=("log", "linear"), default="log",
                        help="training-loss axis (default: log)")
    parser.add_argument("--wandb", action="store_true",
                        help="log the figures and tables to a W&B run (offline by default)")
    parser.add_argument("--wandb-group", default=None,
                        help="W&B group (default: the runs' group, else their name)")
    parser.add_argument("--wandb-project", default=None)
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument("--wandb-mode", choices=("offline", "online", "disabled"),
                        default="offline",
                        help="offline (default): --wandb logs offline, --wandb-report only "
                             "writes its spec; online: uploads, and saves the report")
    parser.add_argument("--wandb-report", action="store_true",
                        help="write wandb_report.json, a W&B report of the runs' group with "
                             "native panels (saved to W&B with --wandb-mode online; needs "
                             "pip install 'agc_pipeline[reports]')")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2) on a damaged input file instead of warning")
    args = parser.parse_args(argv)
    options = WandbOptions(args.wandb_group, args.wandb_project, args.wandb_mode,
                           args.wandb_entity)
    try:
        report = make_report(args.run_dirs, args.out, args.title, html=args.html,
                             wandb=options if args.wandb else None, yscale=args.yscale,
                             strict=args.strict,
                             wandb_report=options if args.wandb_report else None)
    except (ReportError, PublishError, OSError) as exc:
        print(f"agc-report: {exc}", file=sys.stderr)
        return 2
    for warning in report["warnings"]:
        print(f"agc-report: warning: {warning} (left out; --strict makes this an error)",
              file=sys.stderr)
    out = args.out or args.run_dirs[0]
    print(f"{report['runs']} train runs in {len(report['groups'])} groups, "
          f"{report['analysis_runs']} analyze runs -> {out / 'report.md'}")
    done = report.get("wandb_report")
    if done is not None:
        print(f"W&B report spec ({done['panels']} panels, group {', '.join(done['groups'])})"
              f" -> {done['spec']}")
        if done["url"]:
            print(f"W&B report: {done['url']}")
        for note in done["notes"]:
            print(f"W&B: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
