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
(:mod:`agc_pipeline.reporting.analysis_runs`).

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
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from agc_pipeline.errors import ConfigError  # noqa: E402
from agc_pipeline.reporting.analysis_runs import (  # noqa: E402
    analysis_section,
)
from agc_pipeline.reporting.arena import ArenaTargets, write_arena  # noqa: E402
from agc_pipeline.reporting.figures import plot, table  # noqa: E402
from agc_pipeline.reporting.groups import Group, differing_keys, group_runs  # noqa: E402
from agc_pipeline.reporting.jobs import sweep_group  # noqa: E402
from agc_pipeline.reporting.publish import markdown_to_html, publish_wandb  # noqa: E402
from agc_pipeline.reporting.runs import ReportError, find_runs  # noqa: E402
from agc_pipeline.reporting.sinks import wandb_settings, write_json  # noqa: E402
from agc_pipeline.reporting.wandb_report import PublishError, publish  # noqa: E402
from agc_pipeline.reporting.wandb_runs import (  # noqa: E402
    WandbOptions,
    logged_runs,
    run_configs,
    wandb_target,
    write_wandb_report,
)

log = logging.getLogger("agc_pipeline.report")


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


def _train_section(runs: list[Any], out: Path, title: str | None, yscale: str,
                   ) -> tuple[list[Group], list[str], list[dict[str, Any]], list[Path],
                              list[str]]:
    """The train runs' groups, differing keys, table records, figures and report lines."""
    groups = group_runs(runs)
    differ = differing_keys(groups)
    md_table, records = table(groups)
    figures = [plot(groups, out / "train_loss.png", "iteration", title, yscale),
               plot(groups, out / "train_loss_vs_time.png", "time", title, yscale),
               plot(groups, out / "loss_vs_bytes.png", "bytes", title, yscale)]
    keys = ", ".join(f"`{k}`" for k in differ) if differ else "nothing (one configuration)"
    lines = ["## Training (train runs)", "",
             f"{len(runs)} runs in {len(groups)} groups of replicates (same config, "
             "distinct seeds; mean ± std over each group's runs).", "",
             f"Config keys that differ between groups: {keys}.", "",
             md_table, *(f"![{f.stem}]({f.name})\n" for f in figures)]
    return groups, differ, records, figures, lines


def _arena_section(runs: list[Any], out: Path, arena: ArenaTargets,
                   heading: str) -> tuple[dict[str, Any], str]:
    """Write the arena report (``arena.md``, ``arena.json``, figures); its JSON document
    and the section of ``report.md`` that points to it."""
    doc = write_arena(runs, out, arena, heading)
    lines = "\n".join(f"- {v['setting']}: {v['line']}" for v in doc["verdicts"]["accuracy"])
    return doc, ("\n## Arena\n\nTime to target per regime × placement × mitigation, and the "
                 "verdicts: [arena.md](arena.md) (figures arena_*.png, data arena.json).\n\n"
                 + lines + "\n")


def make_report(paths: list[Path], out: Path | None = None, title: str | None = None, *,
                html: bool = False, wandb: WandbOptions | None = None,
                yscale: str = "log", strict: bool = False,
                wandb_report: WandbOptions | None = None,
                arena: ArenaTargets | None = None) -> dict[str, Any]:
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
        groups, differ, records, train_figures, lines = _train_section(runs, out, title, yscale)
        figures += train_figures
        text += lines
    analysis_records: list[dict[str, Any]] = []
    if analysis_runs:
        section, analysis_records, analysis_figures = analysis_section(analysis_runs, out, title)
        figures += analysis_figures
        text += [section]
    text += ["## Reproducibility", "",
             *provenance_lines([r.summary.to_dict() for r in runs]
                               + [r.results for r in analysis_runs]),
             ""]
    markdown = "\n".join(text)
    arena_doc = None
    if arena is not None and runs:  # the arena's verdicts (reporting/arena.py)
        arena_doc, section = _arena_section(runs, out, arena, heading)
        markdown += section
        figures += [out / name for name in arena_doc["figures"]]
    (out / "report.md").write_text(markdown, encoding="utf-8")
    if html:
        (out / "report.html").write_text(markdown_to_html(markdown, heading), encoding="utf-8")
    report = {"title": title, "runs": len(runs), "groups": records, "differing_keys": differ,
              "analysis_runs": len(analysis_runs), "analysis": analysis_records,
              "warnings": warnings, "figures": [str(f) for f in figures],
              "inputs": [str(p) for p in paths]}
    if arena_doc is not None:
        report["arena"] = {"file": str(out / "arena.json"),
                           "verdicts": [v["line"] for v in arena_doc["verdicts"]["accuracy"]]}
    write_json(out / "report.json", report)
    if wandb is not None:
        target = wandb_target(run_configs(runs, analysis_runs), wandb,
                               logged_runs(runs, analysis_runs))
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

    def __init__(self, title: str | None = None, html: bool = True,
                 arena: dict[str, Any] | None = None) -> None:
        self.title = title
        self.html = html
        #: the arena's targets (``accuracy``, ``loss``, ``loss_smooth``): also write arena.md
        self.arena = None if arena is None else ArenaTargets(**dict(arena))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        logger = wandb_settings(config.get("logger"))  # None: the jobs log to no W&B run
        wandb = spec = None
        mode = (logger or {}).get("mode") or os.environ.get("WANDB_MODE") or "offline"
        if logger is not None:
            group = (logger.get("group") or os.environ.get("WANDB_RUN_GROUP")
                     or sweep_group(str(config.get("name", "")), sweep_dir))
            wandb = WandbOptions(group=group, project=logger.get("project"), mode=mode,
                                 entity=logger.get("entity"))
            spec = WandbOptions(group=group, project=logger.get("project"), mode="offline",
                                entity=logger.get("entity"))
        try:
            report = make_report([sweep_dir], sweep_dir, self.title or str(config.get("name", "")),
                                 html=self.html, wandb=wandb, wandb_report=spec,
                                 arena=self.arena)
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
    parser.add_argument("--arena", nargs=2, type=float, metavar=("ACCURACY", "LOSS"),
                        default=None,
                        help="also write the arena report (arena.md: time to test accuracy ≥ "
                             "ACCURACY and train loss ≤ LOSS per regime × placement × "
                             "mitigation, verdicts, figures); experiment=arena uses 0.8 0.6")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2) on a damaged input file instead of warning")
    args = parser.parse_args(argv)
    options = WandbOptions(args.wandb_group, args.wandb_project, args.wandb_mode,
                           args.wandb_entity)
    try:
        report = make_report(args.run_dirs, args.out, args.title, html=args.html,
                             wandb=options if args.wandb else None, yscale=args.yscale,
                             strict=args.strict,
                             wandb_report=options if args.wandb_report else None,
                             arena=None if args.arena is None else ArenaTargets(*args.arena))
    except (ReportError, PublishError, OSError, ConfigError) as exc:
        print(f"agc-report: {exc}", file=sys.stderr)
        return 2
    for warning in report["warnings"]:
        print(f"agc-report: warning: {warning} (left out; --strict makes this an error)",
              file=sys.stderr)
    out = args.out or args.run_dirs[0]
    for line in (report.get("arena") or {}).get("verdicts", []):
        print(f"arena: {line}")
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
