"""The ``report`` app: figures and a Markdown (optionally HTML) summary of run directories.

    python -m agc_pipeline.report runs/multirun/train/fig6_bibd7/<stamp>
    python -m agc_pipeline.report runs/analyze/fig3/<stamp>            # an analyze run
    python -m agc_pipeline.report RUN_DIR... --out report/ --title "Fig. 6" --html --wandb

Each argument is a run directory or a folder searched recursively (a multirun sweep dir).

``train`` runs (``summary.json`` + ``metrics.jsonl``) are grouped by their code and set-up —
scheme (and ε / variant), assignment, m, decoder, wait-for-all, straggler model, learning
rate, model and data — so that a group's runs differ only by seed; each group is one line
(mean ± standard deviation over its runs), labelled by the fields that differ between lines
(by the ``code=`` preset name when runs differ by it). Groups with different straggler
settings go to separate panels. Figures: ``train_loss.png`` (training loss against
iteration, as the paper's Fig. 6), ``train_loss_vs_time.png`` (against the simulated virtual
time, or the wall-clock time of distributed runs), ``loss_vs_bytes.png`` (against the bytes
sent to the PS so far); a table of final loss, test accuracy, time and bytes per line. The
loss axis is logarithmic by default (the paper does not state Fig. 6's scale; on a log axis
the schemes' curves stay apart late in training): ``--yscale linear`` for a linear one.

``analyze`` runs (``results.json``) get the paper-style error-against-straggler-fraction
figure with its bounds, a table of the points, and a comparison figure when there are several
(:mod:`agc_pipeline.analysis.report`).

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
import sys
import textwrap
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

from agc_pipeline.analysis.report import analysis_section, find_analysis_runs  # noqa: E402
from agc_pipeline.publish import markdown_to_html, publish_wandb  # noqa: E402
from agc_pipeline.sinks import write_json  # noqa: E402

log = logging.getLogger("agc_pipeline.report")

#: the set-up fields a group is keyed on (``panel`` fields split the figure into panels)
LINE_FIELDS = ("code", "scheme", "assignment", "m", "decoder", "wait", "lr", "model", "data")
PANEL_FIELDS = ("straggler",)
#: fields a ``code=`` preset (conf/code/) fixes: not repeated in labels when code varies
CODE_FIELDS = ("scheme", "assignment", "m", "decoder", "wait")
#: label fields dropped, in this order, when the remaining ones still tell the lines apart
REDUNDANT_FIRST = ("assignment", "decoder", "data", "model")


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

    @property
    def time_key(self) -> str:
        """``wall_time`` for distributed runs (or rows without a virtual clock), else
        ``virtual_time``."""
        rows = [r for run in self.runs for r in run.rows]
        has_wall = any(r.get("wall_time") is not None for r in rows)
        has_virtual = any(r.get("virtual_time") is not None for r in rows)
        distributed = any("distributed" in str(((run.summary.get("config") or {})
                                                .get("trainer") or {}).get("_target_", ""))
                          for run in self.runs)
        return "wall_time" if has_wall and (distributed or not has_virtual) else "virtual_time"

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
        of ``time`` / ``bytes``, see :meth:`series`), and the mean and std of ``key``."""
        ys = [self.series(run, key) for run in self.runs]
        xs = [] if x == "iteration" else [self.series(run, x) for run in self.runs]
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
    for field in REDUNDANT_FIRST:  # drop fields the others already tell apart (e.g. an
        fewer = [f for f in varying if f != field]  # assignment whose name encodes m)
        if field in varying and fewer and _distinct(groups, fewer):
            varying = fewer
    for g in groups:
        g.label = ", ".join(g.setup[f] for f in varying if g.setup[f]) or g.setup["scheme"]
        g.panel = " ".join(g.setup[f] for f in PANEL_FIELDS)
    return sorted(groups, key=lambda g: (g.panel, g.label))


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


def plot(groups: list[Group], path: Path, x: str, title: str | None,
         yscale: str = "log") -> Path:
    """Training loss (mean ± std over runs) against ``x`` ∈ {iteration, time, bytes}."""
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
        ax.set_yscale(yscale)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(panel if len(panels) > 1 else textwrap.fill(title or panel, 60))
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


def _time(rec: dict[str, Any]) -> str:
    """The virtual time of simulated runs, else the wall-clock seconds of distributed ones."""
    if rec.get("virtual_time") is not None:
        return _fmt(rec["virtual_time"], 1)
    return f"{_fmt(rec.get('wall_time'), 1)} s" if rec.get("wall_time") is not None else "n/a"


def table(groups: list[Group]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and the same numbers as a list of dicts."""
    head = ("| line | code | straggler | runs | final train loss | test accuracy | α | "
            "mean grad error | mean survivors | time (virtual / wall s) | MB to PS | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    records = []
    for g in groups:
        alphas = [r.summary["alpha"]["value"] for r in g.runs if r.summary.get("alpha")]
        alpha = (float(np.mean(alphas)), float(np.std(alphas))) if alphas else None
        rec = {"label": g.label, "panel": g.panel, "setup": g.setup, "runs": len(g.runs),
               "paths": [str(r.path) for r in g.runs]}
        for key in ("final_train_loss", "test_accuracy", "mean_grad_error", "mean_survivors",
                    "virtual_time", "wall_time", "total_bytes_to_ps", "seconds"):
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
                     f"{_fmt(rec['total_bytes_to_ps'], 1, 1e-6)} | {_fmt(rec['seconds'], 1)} |")
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


def _wandb_target(configs: list[dict[str, Any]], options: WandbOptions) -> dict[str, Any]:
    """Group and project of the report's W&B run: the options', else the first run's."""
    first = configs[0] if configs else {}
    logger = first.get("logger") or {}
    return {"group": options.group or logger.get("group") or first.get("name") or "report",
            "project": options.project or logger.get("project") or "agc_pipeline",
            "mode": options.mode, "entity": options.entity or logger.get("entity")}


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
                yscale: str = "log") -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``report.json`` (``report.html`` with ``html``)
    for the train and analyze runs under ``paths``; log them to W&B with ``wandb``."""
    runs, analysis_runs = find_runs(paths), find_analysis_runs(paths)
    if not runs and not analysis_runs:
        raise FileNotFoundError("no train runs (summary.json) or analyze runs (results.json) "
                                f"under {', '.join(map(str, paths))}")
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    heading = title or ("Training report" if runs else "Approximation-error report")
    text = [f"# {heading}", ""]
    figures: list[Path] = []
    groups: list[Group] = []
    records: list[dict[str, Any]] = []
    if runs:
        groups = group_runs(runs)
        md_table, records = table(groups)
        train_figures = [plot(groups, out / "train_loss.png", "iteration", title, yscale),
                         plot(groups, out / "train_loss_vs_time.png", "time", title, yscale),
                         plot(groups, out / "loss_vs_bytes.png", "bytes", title, yscale)]
        figures += train_figures
        text += ["## Training (train runs)", "",
                 f"{len(runs)} runs in {len(groups)} groups (mean ± std over each group's runs).",
                 "", md_table, *(f"![{f.stem}]({f.name})\n" for f in train_figures)]
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
    report = {"title": title, "runs": len(runs), "groups": records,
              "analysis_runs": len(analysis_runs), "analysis": analysis_records,
              "figures": [str(f) for f in figures], "inputs": [str(p) for p in paths]}
    write_json(out / "report.json", report)
    if wandb is not None:
        target = _wandb_target(_run_configs(runs, analysis_runs), wandb)
        publish_wandb(report, figures, out, **target)
        report["wandb"] = target
        write_json(out / "report.json", report)
    return report


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends (and log it to
    W&B, in the sweep's group, when the sweep runs with ``logger=wandb``)."""

    def __init__(self, title: str | None = None, html: bool = True) -> None:
        self.title = title
        self.html = html

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        logger = config.get("logger") or {}
        wandb = None
        if logger.get("name") == "wandb":
            wandb = WandbOptions(group=logger.get("group") or str(config.get("name", "")),
                                 project=logger.get("project"),
                                 mode=logger.get("mode") or "offline",
                                 entity=logger.get("entity"))
        try:
            make_report([sweep_dir], sweep_dir, self.title or str(config.get("name", "")),
                        html=self.html, wandb=wandb)
            log.info("report: %s", sweep_dir / "report.md")
        except Exception as exc:  # noqa: BLE001 - a report failure must not fail the sweep
            log.warning("report for %s failed: %s", sweep_dir, exc)


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
    parser.add_argument("--wandb-mode", choices=("offline", "online", "disabled"),
                        default="offline")
    args = parser.parse_args(argv)
    wandb = WandbOptions(args.wandb_group, args.wandb_project, args.wandb_mode) \
        if args.wandb else None
    try:
        report = make_report(args.run_dirs, args.out, args.title, html=args.html, wandb=wandb,
                             yscale=args.yscale)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"agc-report: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.run_dirs[0]
    print(f"{report['runs']} train runs in {len(report['groups'])} groups, "
          f"{report['analysis_runs']} analyze runs -> {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
