"""The report's training figures (loss against iteration, time and MB sent, one line per
group of replicates, mean ± std) and its Markdown table."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agc_pipeline.analysis.plot import legend_beside  # noqa: E402
from agc_pipeline.reporting.groups import Group, details  # noqa: E402

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
        alphas = [a.value for a in (r.summary.alpha for r in g.runs)
                  if a is not None and a.value is not None]
        alpha = (float(np.mean(alphas)), float(np.std(alphas))) if alphas else None
        rec = {"label": g.label, "panel": g.panel, "setup": g.setup, "runs": len(g.runs),
               "paths": [str(r.path) for r in g.runs]}
        for key in ("final_train_loss", "test_accuracy", "mean_grad_error", "mean_survivors",
                    "virtual_time", "wall_time", "total_bytes_to_ps", "seconds",
                    "startup_seconds", "train_seconds"):
            rec[key] = g.stats(key)
        rec["alpha"] = alpha
        records.append(rec)
        bad = sum((r.summary.status or "completed") != "completed" for r in g.runs)
        rec["not_completed"] = bad
        count = f"{len(g.runs)}" + (f" ({bad} not completed)" if bad else "")
        lines.append(f"| {g.label} | {details(g.setup)} | {g.panel} | {count} | "
                     f"{_fmt(rec['final_train_loss'])} | {_fmt(rec['test_accuracy'], 3)} | "
                     f"{_fmt(alpha, 3)} | {_fmt(rec['mean_grad_error'], 3)} | "
                     f"{_fmt(rec['mean_survivors'], 2)} | {_time(rec)} | "
                     f"{_fmt(rec['total_bytes_to_ps'], 1, 1e-6)} | "
                     f"{_fmt(rec['startup_seconds'], 1)} | {_fmt(rec['train_seconds'], 1)} |")
    return "\n".join(lines) + "\n", records


