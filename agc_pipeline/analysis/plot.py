"""Figures in the style of the paper's Figs. 3–5: error against straggler fraction s/n."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agc_pipeline.codes.base import paper_label  # noqa: E402

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


def scheme_label(results: dict[str, Any]) -> str:
    """The legend name of a results.json's scheme (older files: from its name and variant)."""
    return results.get("scheme_label") or paper_label(
        str(results.get("scheme")), (results.get("scheme_params") or {}).get("variant"))


def plot_results(results: dict[str, Any], path: Path, title: str | None = None,
                 bounds: Sequence[str] | None = None) -> Path:
    """Write :func:`error_figure` of ``results`` (the ``results.json`` dict) to ``path``."""
    fig = error_figure(results, title, bounds)
    fig.savefig(path)
    plt.close(fig)
    return path


def error_figure(results: dict[str, Any], title: str | None = None,
                 bounds: Sequence[str] | None = None) -> Any:
    """The paper-style figure of ``results``: errors and bounds against s/n.

    ``bounds`` names the bounds to draw (keys of each point's ``bounds``); by default the
    closed-form ones, or the primary bound when there is none. Legends name the schemes as
    the paper does ("Construction (7)", "(19), ±1", "Baseline construction (11)").
    """
    pts = results["points"]
    x = [p["straggler_fraction"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)

    def line(values: list[Any], label: str, color: str, marker: str, **kw: Any) -> None:
        if any(v is not None for v in values):
            ax.plot(x, [float("nan") if v is None else v for v in values], marker=marker,
                    color=color, label=label, **kw)

    name = scheme_label(results)
    compared = pts[0].get("compared", {})
    schemes = results.get("compared_schemes") or {}
    line([p["empirical_mean"] for p in pts], f"Emp. Avg. Err., {name}", "tab:blue", "^")
    for bound, color in zip(bounds if bounds is not None else default_bounds(results),
                            _BOUND_COLORS, strict=False):
        text = BOUND_LABELS.get(bound, bound)
        line([p["bounds"].get(bound) for p in pts], f"{text}, {name}" if compared else text,
             color, "o", linestyle="--")
    for key, color in zip(compared, _COMPARE_COLORS, strict=False):
        other = schemes.get(key) or {}
        label = other.get("label") or key
        bound = BOUND_LABELS.get(other.get("primary_bound"), "Upp. Bd.")
        line([p["compared"][key]["empirical_mean"] for p in pts], f"Emp. Avg. Err., {label}",
             color, "*")
        line([p["compared"][key]["upper_bound"] for p in pts], f"{bound}, {label}",
             color, "H", linestyle="--")
    baseline = results.get("baseline_label") or paper_label("stack")
    line([p["baseline_mean"] for p in pts], f"Err., {baseline}", "tab:red", "s")
    line([p["lower_bound"] for p in pts], "Low. Bd. (21)", "tab:orange", "x")
    label_axes(ax, title or f"{results['assignment']}, {name}, m = {results['m']}")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def label_axes(ax: Any, title: str) -> None:
    """Label an error-vs-straggler-fraction axis as the paper does."""
    ax.set_xlabel("Straggler fraction $s/n$")
    ax.set_ylabel("Approximation error")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)


def legend_beside(fig: Any, fontsize: str | float = "small") -> Any:
    """One legend for every axis of ``fig``, to the right of the axes so that it covers no
    curve (entries with the same label once); save with ``bbox_inches="tight"``."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return fig.legend(list(entries.values()), list(entries), loc="upper left",
                      bbox_to_anchor=(1.0, 0.95), fontsize=fontsize, frameon=False)
