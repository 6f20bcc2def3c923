"""The report's section on ``analyze`` runs: error against straggler fraction, with bounds.

Each run (a dir holding ``results.json``) gets the paper-style figure of
:func:`~agc_pipeline.analysis.plot.plot_results` (same title and bounds as the app draws) and
a table of its points; several runs also get one figure comparing their average errors and
primary bounds (e.g. ``analyze -m m=1,2,3``). Runs are labelled by their scheme, as the
paper names it, and by what differs between them (:func:`label_analysis_runs`). The runs
themselves are found by :func:`agc_pipeline.reporting.runs.find_runs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import ListConfig, OmegaConf  # noqa: E402

from agc_pipeline.analysis.plot import (  # noqa: E402
    BOUND_LABELS,
    label_axes,
    legend_beside,
    plot_results,
    scheme_label,
)

#: the fields of each point of results.json the report reads: numbers, or null where the paper
#: gives no bound (``s`` an integer, ``bounds`` a mapping of bound name -> number or null)
POINT_NUMBERS = ("straggler_fraction", "empirical_mean", "empirical_max")
POINT_OPTIONAL = ("baseline_mean", "upper_bound", "lower_bound")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def results_problem(results: Any) -> str | None:
    """Why ``results`` (a loaded results.json) is not the results of an analyze run, or None:
    a JSON object whose ``points`` is a non-empty list of objects with the fields above."""
    if not isinstance(results, dict) or not results.get("points"):
        return "holds no points (not the results of an analyze run)"
    points = results["points"]
    if not isinstance(points, list):
        return "'points' is not a list"
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            return f"point {i} is not an object"
        if not isinstance(point.get("s"), int) or isinstance(point.get("s"), bool):
            return f"point {i}: 's' must be an integer (got {point.get('s')!r})"
        for key in POINT_NUMBERS:
            if not _number(point.get(key)):
                return f"point {i}: {key!r} must be a number (got {point.get(key)!r})"
        for key in POINT_OPTIONAL:
            if point.get(key) is not None and not _number(point[key]):
                return f"point {i}: {key!r} must be a number or null (got {point[key]!r})"
        if not isinstance(point.get("bounds", {}), dict):
            return f"point {i}: 'bounds' must be an object"
    return None

@dataclass
class AnalysisRun:
    """One analyze run: its directory, ``results.json`` and command-line overrides."""

    path: Path
    results: dict[str, Any]
    overrides: list[str]
    label: str = ""

    @property
    def slug(self) -> str:
        """The label as a file-name fragment."""
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", self.label).strip("_") or "run"


def read_overrides(path: Path) -> list[str]:
    """The run's command-line overrides (Hydra's ``.hydra/overrides.yaml``), if any."""
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    try:
        data = OmegaConf.load(file)
    except Exception:  # noqa: BLE001 - an unreadable file only costs the label its detail
        return []
    return [str(o) for o in data] if isinstance(data, ListConfig) else []


#: what tells analyze runs apart in labels, in this order: (name, value of a run)
_LABEL_FIELDS: tuple[tuple[str, Any], ...] = (
    ("scheme", lambda r: scheme_label(r)),
    ("assignment", lambda r: str(r.get("assignment"))),
    ("m", lambda r: f"m = {r.get('m')}"),
    ("epsilon", lambda r: (f"ε = {(r.get('scheme_params') or {}).get('epsilon'):g}"
                           if (r.get("scheme_params") or {}).get("epsilon") is not None
                           else "")),
    ("decoder", lambda r: f"{r.get('decoder')} decoding"),
)


def label_analysis_runs(runs: list[AnalysisRun]) -> list[AnalysisRun]:
    """Label each run by its scheme (as the paper names it) and by the fields that differ
    between the runs (assignment, m, ε, decoder); where those do not tell two runs apart,
    by the command-line overrides that differ, then by the run dir."""
    values = [{f: get(r.results) for f, get in _LABEL_FIELDS} for r in runs]
    varying = [f for f, _ in _LABEL_FIELDS
               if f == "scheme" or len({v[f] for v in values}) > 1]
    shared = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    for run, value in zip(runs, values, strict=True):
        run.label = ", ".join(value[f] for f in varying if value[f])
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            extra = [o.replace("=", " = ", 1) for o in run.overrides
                     if o not in shared and not o.startswith("hydra")]
            run.label = ", ".join([run.label, *extra])
    labels = [r.label for r in runs]
    for run in runs:  # the same run twice (e.g. the same command run twice): add the dir
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.path.name})"
    return runs


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def points_table(run: AnalysisRun) -> str:
    """Markdown table of a run's points: s, s/n, errors and bounds."""
    head = ("| s | s/n | emp. mean | emp. max | stack baseline | upper bound | lower bound (21) |"
            "\n|---|---|---|---|---|---|---|")
    rows = [f"| {p['s']} | {p['straggler_fraction']:.3f} | {_fmt(p['empirical_mean'])} | "
            f"{_fmt(p['empirical_max'])} | {_fmt(p.get('baseline_mean'))} | "
            f"{_fmt(p.get('upper_bound'))} | {_fmt(p.get('lower_bound'))} |"
            for p in run.results["points"]]
    return "\n".join([head, *rows]) + "\n"


def comparison_figure(runs: list[AnalysisRun], title: str | None = None) -> Any:
    """One figure for several runs: average error (solid) and primary bound (dashed), with
    the legend beside the axes (it covers no curve)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for i, run in enumerate(runs):
        pts, color = run.results["points"], cmap(i % cmap.N)
        x = [p["straggler_fraction"] for p in pts]
        ax.plot(x, [p["empirical_mean"] for p in pts], marker="^", color=color,
                label=f"Emp. Avg. Err., {run.label}")
        bound = run.results.get("primary_bound")
        if any(p.get("upper_bound") is not None for p in pts):
            ax.plot(x, [float("nan") if p.get("upper_bound") is None else p["upper_bound"]
                        for p in pts], linestyle="--", marker="o", color=color, alpha=0.7,
                    label=f"{BOUND_LABELS.get(bound, bound or 'Upp. Bd.')}, {run.label}")
    label_axes(ax, title or "Approximation error against straggler fraction")
    legend_beside(fig, "x-small")
    return fig


def plot_comparison(runs: list[AnalysisRun], path: Path, title: str | None = None) -> Path:
    """Write :func:`comparison_figure` to ``path`` (PNG)."""
    fig = comparison_figure(runs, title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def analysis_section(runs: list[AnalysisRun], out: Path,
                     title: str | None = None) -> tuple[str, list[dict[str, Any]], list[Path]]:
    """Figures into ``out``; returns the Markdown section, per-run records and the figures."""
    figures, records, text = [], [], ["## Approximation error (analyze runs)", ""]
    used: set[str] = set()
    for i, run in enumerate(runs):
        analysis = (run.results.get("config") or {}).get("analysis") or {}
        name = ("error_vs_stragglers.png" if len(runs) == 1
                else f"error_vs_stragglers_{run.slug}.png")
        if name in used:  # labels differ only in characters a file name drops
            name = name.replace(".png", f"_{i}.png")
        used.add(name)
        figure = plot_results(run.results, out / name, title=analysis.get("title"),
                              bounds=analysis.get("plot_bounds"))
        figures.append(figure)
        r = run.results
        records.append({"label": run.label, "path": str(run.path), "figure": str(figure),
                        "n": r.get("n"), "k": r.get("k"), "m": r.get("m"),
                        "scheme": r.get("scheme"), "assignment": r.get("assignment"),
                        "primary_bound": r.get("primary_bound"), "points": r["points"]})
        text += [f"### {r.get('name') or run.path.name}: {run.label}", "",
                 f"{r.get('assignment')}, {scheme_label(r)}, n = {r.get('n')}, "
                 f"k = {r.get('k')}, m = {r.get('m')}; {r['points'][0]['realizations']} "
                 f"encoder draws × {r['points'][0]['straggler_sets']} straggler sets per s "
                 f"(`{run.path}`).", "", points_table(run), f"![{figure.stem}]({figure.name})",
                 ""]
    if len(runs) > 1:
        figures.append(plot_comparison(runs, out / "error_vs_stragglers_all.png", title))
        text += ["### All runs", "", f"![{figures[-1].stem}]({figures[-1].name})", ""]
    return "\n".join(text), records, figures
