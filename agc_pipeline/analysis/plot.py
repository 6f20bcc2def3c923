"""Figures in the style of the paper's Figs. 3–5: error against straggler fraction s/n."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: legend labels of the bounds, as in the paper
BOUND_LABELS = {
    "eq10": "Upp. Bd. (10)",
    "eq12": "Upp. Bd. (12)",
    "eq17": "Upp. Bd. (17)",
    "lemma1_mean": "Lemma 1 Bd. (mean over sets)",
    "lemma1_max": "Lemma 1 Bd. (max over sets)",
    "eq20_mean": "Upp. Bd. (20) (mean over sets)",
    "eq20_max": "Upp. Bd. (20) (max over sets)",
    "stack_exact": "Stack err. (exact)",
}
_BOUND_COLORS = ["tab:green", "black", "tab:purple", "tab:brown", "tab:olive"]
_COMPARE_COLORS = ["tab:cyan", "tab:pink", "tab:gray"]


def default_bounds(results: dict[str, Any]) -> list[str]:
    """The scheme's closed-form bounds if any, else its primary bound."""
    names = list(results["points"][0]["bounds"])
    closed = [n for n in names if not n.endswith(("_mean", "_max"))]
    primary = results.get("primary_bound")
    return closed or ([primary] if primary else [])


def plot_results(results: dict[str, Any], path: Path, title: str | None = None,
                 bounds: Sequence[str] | None = None) -> Path:
    """Write a PNG of ``results`` (the ``results.json`` dict) to ``path``.

    ``bounds`` names the bounds to draw (keys of each point's ``bounds``); by default the
    closed-form ones, or the primary bound when there is none.
    """
    pts = results["points"]
    x = [p["straggler_fraction"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)

    def line(values: list[Any], label: str, color: str, marker: str, **kw: Any) -> None:
        if any(v is not None for v in values):
            ax.plot(x, [float("nan") if v is None else v for v in values], marker=marker,
                    color=color, label=label, **kw)

    line([p["empirical_mean"] for p in pts], f"Emp. Avg. Err. ({results['scheme']})",
         "tab:blue", "^")
    for name, color in zip(bounds if bounds is not None else default_bounds(results),
                           _BOUND_COLORS, strict=False):
        line([p["bounds"].get(name) for p in pts], BOUND_LABELS.get(name, name), color, "o",
             linestyle="--")
    for label, color in zip(pts[0].get("compared", {}), _COMPARE_COLORS, strict=False):
        line([p["compared"][label]["empirical_mean"] for p in pts], f"Emp. Avg. Err. ({label})",
             color, "*")
        line([p["compared"][label]["upper_bound"] for p in pts], f"Upp. Bd. ({label})",
             color, "H", linestyle="--")
    line([p["baseline_mean"] for p in pts], "Err. Base. Cons. (stack)", "tab:red", "s")
    line([p["lower_bound"] for p in pts], "Low. Bd. (21)", "tab:orange", "x")
    title = title or f"{results['assignment']}, {results['scheme']}, m = {results['m']}"
    return save_error_figure(fig, ax, path, title)


def save_error_figure(fig: Any, ax: Any, path: Path, title: str,
                      legend_size: str = "small") -> Path:
    """Label an error-vs-straggler-fraction axis as the paper does, save it as PNG, close."""
    ax.set_xlabel("Straggler fraction $s/n$")
    ax.set_ylabel("Approximation error")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=legend_size, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
