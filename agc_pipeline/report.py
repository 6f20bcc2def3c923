"""The ``report`` app: figures and a Markdown table from ``train`` run directories.

    python -m agc_pipeline.report runs/multirun/train/fig6_bibd7/<stamp>
    python -m agc_pipeline.report RUN_DIR... --out report/ --title "Fig. 6"

Each argument is a run directory (holding ``summary.json`` and ``metrics.jsonl``) or a
folder searched recursively for them (a multirun sweep dir). Runs are grouped by their code
and set-up — scheme (and ε / variant), assignment, m, decoder, wait-for-all, straggler model,
learning rate, model and data — so that a group's runs differ only by seed; each group is one
line (mean ± standard deviation over its runs), labelled by the fields that differ between
lines (by the ``code=`` preset name when runs differ by it). Groups with different straggler
settings go to separate panels. Writes ``train_loss.png`` (training loss against iteration, as the
paper's Fig. 6), ``train_loss_vs_time.png`` (against the simulated virtual time),
``report.md`` and ``report.json`` into ``--out`` (default: the first argument).

:class:`ReportCallback` runs the same at the end of a Hydra multirun (``hydra.callbacks``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from agc_pipeline.sinks import write_json  # noqa: E402

log = logging.getLogger("agc_pipeline.report")

#: the set-up fields a group is keyed on (``panel`` fields split the figure into panels)
LINE_FIELDS = ("code", "scheme", "assignment", "m", "decoder", "wait", "lr", "model", "data")
PANEL_FIELDS = ("straggler",)
#: fields a ``code=`` preset (conf/code/) fixes: not repeated in labels when code varies
CODE_FIELDS = ("scheme", "assignment", "m", "decoder", "wait")


@dataclass
class Run:
    """One train run: its directory, ``summary.json`` and ``metrics.jsonl`` rows."""

    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    def setup(self) -> dict[str, str]:
        """The fields runs are grouped by (everything but the seed), as short strings."""
        s = self.summary
        scheme = s["scheme"]
        extra = [f"ε={scheme['epsilon']:g}"] if scheme.get("epsilon") else []
        extra += [str(scheme["variant"])] if scheme.get("variant") else []
        straggler = s["straggler"]
        params = [f"{k}={straggler[k]:g}" if isinstance(straggler[k], float) else
                  f"{k}={straggler[k]}" for k in ("q", "s", "wait_for", "deadline")
                  if straggler.get(k) is not None]
        decoder = s["decoder"]["name"] + (" ÷α" if s["decoder"]["rescale"] else "")
        code = (s.get("choices") or {}).get("code") or ""
        return {"code": code, "scheme": " ".join([scheme["name"], *extra]),
                "assignment": s["assignment"]["name"], "m": f"m={s['m']}",
                "decoder": decoder, "wait": "wait-for-all" if s["wait_for_all"] else "",
                "lr": f"lr={s['lr']:g}", "model": s["model"],
                "data": f"{s['dataset']} N={s['train_samples']}",
                "straggler": " ".join([straggler["name"], *params])}


def find_runs(paths: list[Path]) -> list[Run]:
    """The runs under ``paths`` (each a run dir or a folder searched recursively)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "summary.json").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.rglob("summary.json"))
    runs = []
    for path in dict.fromkeys(found):
        summary = json.loads((path / "summary.json").read_text())
        if "final_train_loss" not in summary:
            continue  # not a train run
        rows = []
        metrics = path / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        runs.append(Run(path, summary, rows))
    return runs


@dataclass
class Group:
    """Runs with the same set-up; ``label`` shows the fields that differ between lines."""

    setup: dict[str, str]
    runs: list[Run]
    label: str = ""
    panel: str = ""

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Iterations logged by every run, and the mean/std of ``key`` and of the virtual
        time there."""
        tables = [{r["iteration"]: r for r in run.rows if r.get(key) is not None}
                  for run in self.runs]
        common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
        its = np.array(common, dtype=np.int64)
        vals = np.array([[t[i][key] for i in common] for t in tables], dtype=np.float64)
        times = np.array([[t[i].get("virtual_time", np.nan) for i in common] for t in tables],
                         dtype=np.float64)
        if not common:
            return its, np.empty(0), np.empty(0), np.empty(0)
        return its, vals.mean(axis=0), vals.std(axis=0), times.mean(axis=0)

    def stats(self, key: str) -> tuple[float, float] | None:
        """Mean and std over runs of a numeric summary field (None when absent)."""
        values = [r.summary.get(key) for r in self.runs]
        values = [float(v) for v in values if isinstance(v, int | float)]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values))


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by set-up; label lines by the line fields that vary, panels by straggler."""
    by_key: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        setup = run.setup()
        by_key[tuple(setup[f] for f in (*LINE_FIELDS, *PANEL_FIELDS))].append(run)
    groups = [Group(runs[0].setup(), runs) for runs in by_key.values()]
    varying = [f for f in LINE_FIELDS if len({g.setup[f] for g in groups}) > 1] or ["scheme"]
    if "code" in varying:
        varying = [f for f in varying if f not in CODE_FIELDS]
    for g in groups:
        g.label = ", ".join(g.setup[f] for f in varying if g.setup[f]) or g.setup["scheme"]
        g.panel = " ".join(g.setup[f] for f in PANEL_FIELDS)
    return sorted(groups, key=lambda g: (g.panel, g.label))


def details(setup: dict[str, str]) -> str:
    """The code's set-up in one cell: scheme, assignment, m, decoder, wait-for-all."""
    return ", ".join(setup[f] for f in CODE_FIELDS if setup[f])


def plot(groups: list[Group], path: Path, x: str, title: str | None) -> Path:
    """Training loss (mean ± std over runs) against ``x`` ∈ {iteration, virtual_time}."""
    panels = sorted({g.panel for g in groups})
    labels = sorted({g.label for g in groups})
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), dpi=120,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for g in (g for g in groups if g.panel == panel):
            its, mean, std, times = g.curve("train_loss")
            xs = its if x == "iteration" else times
            color = colors[g.label]
            ax.plot(xs, mean, color=color, label=f"{g.label} ({len(g.runs)} runs)")
            if len(g.runs) > 1:
                ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_xlabel("iteration" if x == "iteration" else "virtual time")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(panel if len(panels) > 1 else (title or panel))
        ax.legend(fontsize=8)
    if title and len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(stat: tuple[float, float] | None, digits: int = 4, scale: float = 1.0) -> str:
    if stat is None or not math.isfinite(stat[0]):
        return "n/a"
    return f"{stat[0] * scale:.{digits}f} ± {stat[1] * scale:.{digits}f}"


def table(groups: list[Group]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and the same numbers as a list of dicts."""
    head = ("| line | code | straggler | runs | final train loss | test accuracy | α | "
            "mean grad error | mean survivors | virtual time | MB to PS | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    records = []
    for g in groups:
        alphas = [r.summary["alpha"]["value"] for r in g.runs if r.summary.get("alpha")]
        alpha = (float(np.mean(alphas)), float(np.std(alphas))) if alphas else None
        rec = {"label": g.label, "panel": g.panel, "setup": g.setup, "runs": len(g.runs),
               "paths": [str(r.path) for r in g.runs]}
        for key in ("final_train_loss", "test_accuracy", "mean_grad_error", "mean_survivors",
                    "virtual_time", "total_bytes_to_ps", "seconds"):
            rec[key] = g.stats(key)
        rec["alpha"] = alpha
        records.append(rec)
        bad = sum(r.summary.get("status", "completed") != "completed" for r in g.runs)
        rec["not_completed"] = bad
        count = f"{len(g.runs)}" + (f" ({bad} not completed)" if bad else "")
        lines.append(f"| {g.label} | {details(g.setup)} | {g.panel} | {count} | "
                     f"{_fmt(rec['final_train_loss'])} | {_fmt(rec['test_accuracy'], 3)} | "
                     f"{_fmt(alpha, 3)} | {_fmt(rec['mean_grad_error'], 3)} | "
                     f"{_fmt(rec['mean_survivors'], 2)} | {_fmt(rec['virtual_time'], 1)} | "
                     f"{_fmt(rec['total_bytes_to_ps'], 1, 1e-6)} | {_fmt(rec['seconds'], 1)} |")
    return "\n".join(lines) + "\n", records


def make_report(paths: list[Path], out: Path | None = None,
                title: str | None = None) -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``report.json`` for the runs under ``paths``."""
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no train runs (summary.json) under {', '.join(map(str, paths))}")
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    md_table, records = table(groups)
    figures = [plot(groups, out / "train_loss.png", "iteration", title),
               plot(groups, out / "train_loss_vs_time.png", "virtual_time", title)]
    text = [f"# {title or 'Training report'}", "",
            f"{len(runs)} runs in {len(groups)} groups (mean ± std over each group's runs).",
            "", md_table, *(f"![{f.stem}]({f.name})\n" for f in figures)]
    (out / "report.md").write_text("\n".join(text), encoding="utf-8")
    report = {"title": title, "runs": len(runs), "groups": records,
              "figures": [str(f) for f in figures]}
    write_json(out / "report.json", report)
    return report


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends."""

    def __init__(self, title: str | None = None) -> None:
        self.title = title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            make_report([sweep_dir], sweep_dir, self.title or str(config.get("name", "")))
            log.info("report: %s", sweep_dir / "report.md")
        except Exception as exc:  # noqa: BLE001 - a report failure must not fail the sweep
            log.warning("report for %s failed: %s", sweep_dir, exc)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``agc-report``)."""
    parser = argparse.ArgumentParser(prog="agc-report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs or sweep dirs")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        report = make_report(args.run_dirs, args.out, args.title)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"agc-report: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.run_dirs[0]
    print(f"{report['runs']} runs, {len(report['groups'])} groups -> {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
