"""Figures in the style of the paper's Figs. 3–5: error against straggler fraction s/n."""

from __future__ import annotations

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
    "lemma1_mean": "Lemma 1 Bd. (mean)",
    "lemma1_max": "Lemma 1 Bd. (max)",
    "eq20_max": "Upp. Bd. (20) (max)",
    "stack_exact": "Stack err. (exact)",
}
_MARKERS = "o^sDvP*HX<>"


def plot_results(results: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Write a PNG of ``results`` (the ``results.json`` dict) to ``path``."""
    pts = results["points"]
    x = [p["straggler_fraction"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    markers = iter(_MARKERS)
    scheme = results["scheme"]

    def line(values: list[Any], label: str, **kw: Any) -> None:
        if any(v is not None for v in values):
            ax.plot(x, [float("nan") if v is None else v for v in values],
                    marker=next(markers), label=label, **kw)

    line([p["empirical_mean"] for p in pts], f"Emp. Avg. Err. ({scheme})", color="tab:blue")
    names = sorted({name for p in pts for name in p["bounds"]
                    if name in BOUND_LABELS and not name.endswith("_mean")
                    or name == "lemma1_mean"})
    for name in names:
        line([p["bounds"].get(name) for p in pts], BOUND_LABELS[name], linestyle="--")
    for label in pts[0].get("compared", {}):
        line([p["compared"][label]["empirical_mean"] for p in pts], f"Emp. Avg. Err. ({label})")
        if any(p["compared"][label]["upper_bound"] is not None for p in pts):
            line([p["compared"][label]["upper_bound"] for p in pts], f"Upp. Bd. ({label})",
                 linestyle="--")
    line([p["baseline_mean"] for p in pts], "Err. Base. Cons. (stack)", color="tab:red")
    line([p["lower_bound"] for p in pts], "Low. Bd. (21)", color="tab:orange")
    ax.set_xlabel("Straggler fraction $s/n$")
    ax.set_ylabel("Approximation error")
    ax.set_title(title or f"{results['assignment']}, m = {results['m']}")
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
