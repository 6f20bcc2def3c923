"""The arena's figures: one per (setting, regime) — for each mitigation, its mean time to the
accuracy target (bars, ± one standard deviation over seeds) in each data placement; a
mitigation that missed the target in some seed is drawn hatched at its mean over the seeds
that reached it, one that never reached it as a cross at the right edge."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_regimes"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def plot_regimes(cells: list[dict[str, Any]], out: Path, targets: Any) -> list[Path]:
    """Write ``arena_<setting>_<regime>.png`` per (setting, regime); return the paths."""
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        keyed[(cell["setting"], cell["regime"])].append(cell)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (setting, regime), members in sorted(keyed.items()):
        labels = sorted({c["label"] for c in members},
                        key=lambda lab: (not any(c["label"] == lab and not c["code"]
                                                 for c in members), lab))
        placements = sorted({c["placement"] for c in members})
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) * len(placements) + 1.4))
        height = 0.8 / len(placements)
        times = [c["accuracy"]["mean_time"] for c in members if c["accuracy"]["reached"]]
        edge = 1.05 * max(times) if times else 1.0
        for p_index, placement in enumerate(placements):
            labelled = False
            for l_index, label in enumerate(labels):
                cell = next((c for c in members if c["label"] == label
                             and c["placement"] == placement), None)
                if cell is None:
                    continue
                agg, y = cell["accuracy"], l_index + p_index * height
                color = f"C{p_index}"
                if not agg["reached"]:
                    ax.plot([edge], [y], "x", color=color, markersize=8)
                    continue
                ax.barh(y, agg["mean_time"], height=height, color=color,
                        xerr=agg["std_time"] or 0.0, capsize=2,
                        hatch="//" if agg["reached"] < agg["runs"] else None,
                        label=None if labelled else placement, alpha=0.85)
                labelled = True
        ax.set_yticks(np.arange(len(labels)) + 0.4 - height / 2)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"time to test accuracy ≥ {targets.accuracy:g} (s; x: never reached)")
        ax.set_title(f"{setting}, regime {regime}")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / f"arena_{_slug(setting)}_{_slug(regime)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
