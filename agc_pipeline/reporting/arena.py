"""The arena report (issue 18): for every straggler regime × data placement, each mitigation's
time to a target test accuracy and to a target training loss (mean ± standard deviation over
seeds, :mod:`agc_pipeline.reporting.targets`), a table and a figure per regime, and a verdict
line naming the winner and its margin — including where coding loses.

A run's cell is read from its run dir: the ``mitigation=`` and ``regime=`` choices from its
summary (else ``.hydra/hydra.yaml``'s ``hydra.runtime.choices``; a run without them is
labelled by its runtime and ``code=`` choice, and by its straggler model), the placement
(``dataset.partition``), the seed and the setting (model / data set) from the summary's
config. Times are on the runs' clock (``virtual_time`` of the simulated runtimes).

Verdict of a (setting, regime, placement): among the mitigations whose every seed reached the
accuracy target, the one with the least mean time wins; its margin is the runner-up's mean
time / the winner's. The line also names the best code (a mitigation with ``code`` in its
name or an exact/approximate code preset) against the best non-code, with the ratio
best non-code time / best code time (< 1: coding loses). Mitigations that did not reach the
target in every seed are listed as such and never win.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from agc_pipeline.reporting.runs import Run
from agc_pipeline.reporting.targets import aggregate, time_to_accuracy, time_to_loss
from agc_pipeline.validation import require_finite, require_int

__all__ = ["ArenaTargets", "NON_CODES", "arena_cells", "arena_tables", "cell_of",
           "normalised_error", "verdicts", "write_arena"]

#: mitigations that are not gradient codes (the rest count as codes in the verdicts)
NON_CODES = ("ddp", "local_sgd", "backup_workers")
#: display names of the arena's mitigations (conf/mitigation/)
LABELS = {"ddp": "DDP (sync SGD)", "local_sgd": "local SGD", "backup_workers": "backup workers",
          "frc": "FRC (exact, m=1)", "ce_frc": "CE-FRC (exact, m=2)",
          "code7_m1": "(7), m=1", "code7_m2": "(7), m=2", "code7_m4": "(7), m=4",
          "code11_m2": "(11), m=2", "code19_m2": "(19), m=2"}


@dataclass(frozen=True)
class ArenaTargets:
    """The targets: test accuracy (first evaluation at or above it) and training loss (the
    mean of the last ``loss_smooth`` logged minibatch losses at or below it)."""

    accuracy: float = 0.8
    loss: float = 0.6
    loss_smooth: int = 10

    def __post_init__(self) -> None:
        require_finite(self.accuracy, "arena target accuracy", 0.0, 1.0)
        require_finite(self.loss, "arena target loss", 0.0)
        require_int(self.loss_smooth, "arena loss_smooth", minimum=1)


def _choices(run_dir: Path) -> dict[str, Any]:
    """``hydra.runtime.choices`` of a run ({} when its ``.hydra/hydra.yaml`` is missing)."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        node = OmegaConf.load(path)
        return dict(OmegaConf.to_container(node.hydra.runtime.choices))
    except Exception:  # noqa: BLE001 - a damaged record labels the run by its config
        return {}


def cell_of(run: Run) -> dict[str, Any]:
    """The run's arena cell: setting, regime, placement, mitigation, seed."""
    config = run.summary.config or {}
    choices = getattr(run.summary, "choices", None) or _choices(run.path)
    dataset = config.get("dataset") or {}
    mitigation = choices.get("mitigation") or (
        f"{run.summary.runtime}/{choices.get('code') or 'no code'}")
    regime = choices.get("regime") or choices.get("straggler") or "?"
    setting = f"{choices.get('model', '?')} / {choices.get('dataset', '?')}"
    return {"setting": setting, "regime": str(regime),
            "placement": str(dataset.get("partition", "iid")),
            "mitigation": str(mitigation), "seed": config.get("seed")}


def arena_cells(runs: list[Run], targets: ArenaTargets) -> list[dict[str, Any]]:
    """One entry per (setting, regime, placement, mitigation): the aggregates over its seeds
    of the time to each target (``accuracy``, ``loss``: :func:`aggregate`)."""
    groups: dict[tuple[str, str, str, str], list[Run]] = defaultdict(list)
    seeds: dict[int, Any] = {}  # id(run) -> its seed (each run's cell read once)
    for run in runs:
        cell = cell_of(run)
        seeds[id(run)] = cell["seed"]
        groups[(cell["setting"], cell["regime"], cell["placement"], cell["mitigation"])].append(run)
    out = []
    for (setting, regime, placement, mitigation), members in sorted(groups.items()):
        clock = members[0].summary.clock or "virtual"
        accuracy = aggregate(time_to_accuracy(r.rows, clock, targets.accuracy) for r in members)
        loss = aggregate(time_to_loss(r.rows, clock, targets.loss, targets.loss_smooth)
                         for r in members)
        errors = [e for e in (normalised_error(r, mitigation) for r in members) if e is not None]
        out.append({"setting": setting, "regime": regime, "placement": placement,
                    "mitigation": mitigation, "label": LABELS.get(mitigation, mitigation),
                    "code": mitigation not in NON_CODES, "clock": clock,
                    "normalised_error": float(np.mean(errors)) if errors else None,
                    "seeds": sorted(seeds[id(r)] for r in members),
                    "iterations": max(r.summary.iterations or 0 for r in members),
                    "accuracy": accuracy, "loss": loss})
    return out


def normalised_error(run: Run, mitigation: str) -> float | None:
    """ē of the run's gradient (the planner's measure, Section VII): 1 − α for a coded run
    with optimal decoding (α estimated at start-up), s/n for backup workers (A = I, eq. 3),
    0 for the runs that wait for every worker (DDP, local SGD) and for exact codes; None
    when the summary does not say. ``mitigation``: the run's (:func:`cell_of`)."""
    summary = run.summary
    if mitigation in ("ddp", "local_sgd", "frc", "ce_frc"):
        return 0.0
    config = summary.config or {}
    if mitigation == "backup_workers":
        n = (config.get("assignment") or {}).get("n")
        s = (config.get("straggler") or {}).get("s")
        return s / n if isinstance(n, int) and isinstance(s, int) and n else None
    alpha = getattr(summary, "alpha", None)
    value = getattr(alpha, "value", None) if alpha is not None else None
    if value is None and isinstance(alpha, dict):
        value = alpha.get("value")
    return None if value is None else 1.0 - float(value)


def _winner(cells: list[dict[str, Any]], measure: str) -> list[dict[str, Any]]:
    """The cells whose every seed reached the target, fastest first."""
    done = [c for c in cells if c[measure]["runs"] and c[measure]["reached"] == c[measure]["runs"]]
    return sorted(done, key=lambda c: (c[measure]["mean_time"], c["mitigation"]))


def verdicts(cells: list[dict[str, Any]], measure: str = "accuracy") -> list[dict[str, Any]]:
    """A verdict per (setting, regime, placement); see the module docstring."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        groups[(cell["setting"], cell["regime"], cell["placement"])].append(cell)
    out = []
    for (setting, regime, placement), members in sorted(groups.items()):
        ranked = _winner(members, measure)
        missed = sorted(c["label"] for c in members if c not in ranked)
        entry: dict[str, Any] = {"setting": setting, "regime": regime, "placement": placement,
                                 "measure": measure, "missed": missed}
        if not ranked:
            entry["line"] = (f"{regime}, {placement}: no mitigation reached the {measure} "
                             "target in every seed")
            out.append(entry)
            continue
        win = ranked[0]
        t = win[measure]["mean_time"]
        margin = ranked[1][measure]["mean_time"] / t if len(ranked) > 1 and t > 0 else None
        codes = [c for c in ranked if c["code"]]
        others = [c for c in ranked if not c["code"]]
        entry.update(winner=win["mitigation"], time=t, margin=margin,
                     runner_up=ranked[1]["mitigation"] if len(ranked) > 1 else None)
        line = f"{regime}, {placement}: winner {win['label']} ({t:.3g} s"
        line += f", {margin:.2f}× ahead of {ranked[1]['label']})" if margin else ")"
        if codes and others:
            ratio = others[0][measure]["mean_time"] / codes[0][measure]["mean_time"]
            entry.update(best_code=codes[0]["mitigation"], best_other=others[0]["mitigation"],
                         code_vs_other=ratio)
            line += (f"; best code {codes[0]['label']} vs best non-code {others[0]['label']}: "
                     f"{ratio:.2f}× — coding {'wins' if ratio > 1 else 'loses'}")
        elif codes:
            line += "; no non-code mitigation reached the target — coding wins"
        else:
            line += "; no code reached the target — coding loses"
        if missed:
            line += f"; never reached in every seed: {', '.join(missed)}"
        entry["line"] = line
        out.append(entry)
    return out


def _fmt(agg: dict[str, Any]) -> str:
    if not agg["reached"]:
        return f"— (0/{agg['runs']})"
    text = f"{agg['mean_time']:.3g}"
    if agg["std_time"] is not None:
        text += f" ± {agg['std_time']:.2g}"
    if agg["reached"] < agg["runs"]:
        text += f" ({agg['reached']}/{agg['runs']})"
    return text


def arena_tables(cells: list[dict[str, Any]], targets: ArenaTargets) -> list[str]:
    """Markdown: per setting and regime, a table of mitigations × placements."""
    lines: list[str] = []
    keyed = defaultdict(list)
    for cell in cells:
        keyed[(cell["setting"], cell["regime"])].append(cell)
    for (setting, regime), members in sorted(keyed.items()):
        placements = sorted({c["placement"] for c in members})
        lines += [f"### {setting}, regime `{regime}`", "",
                  "| mitigation | " + " | ".join(
                      f"{p}: s to acc ≥ {targets.accuracy:g} | {p}: s to loss ≤ {targets.loss:g}"
                      for p in placements) + " |",
                  "|---|" + "---|---|" * len(placements)]
        by_mitigation = defaultdict(dict)
        for c in members:
            by_mitigation[c["label"]][c["placement"]] = c
        for label, row in sorted(by_mitigation.items()):
            cols = []
            for p in placements:
                cell = row.get(p)
                cols += ["" if cell is None else _fmt(cell["accuracy"]),
                         "" if cell is None else _fmt(cell["loss"])]
            lines.append(f"| {label} | " + " | ".join(cols) + " |")
        lines.append("")
    return lines


def write_arena(runs: list[Run], out: Path, targets: ArenaTargets,
                title: str = "The arena") -> dict[str, Any]:
    """Write ``arena.md``, ``arena.json`` and one ``arena_<regime>.png`` per regime into
    ``out``; return the JSON document."""
    from agc_pipeline.reporting.arena_figures import plot_regimes

    cells = arena_cells(runs, targets)
    verdict = {"accuracy": verdicts(cells, "accuracy"), "loss": verdicts(cells, "loss")}
    figures = plot_regimes(cells, out, targets)
    doc = {"title": title, "targets": targets.__dict__, "runs": len(runs), "cells": cells,
           "verdicts": verdict, "figures": [f.name for f in figures]}
    lines = [f"# {title}", "",
             f"{len(runs)} runs. Time (virtual seconds: compute measured, links from the "
             f"cluster model) to the first evaluation with test accuracy ≥ {targets.accuracy:g}"
             f" and to the mean of the last {targets.loss_smooth} minibatch losses ≤ "
             f"{targets.loss:g}: mean ± standard deviation over the seeds that reached it "
             "(k/n: only k of n seeds did; —: none).", "",
             "## Verdicts (time to the accuracy target)", ""]
    lines += [f"- {v['setting']}: {v['line']}" for v in verdict["accuracy"]]
    lines += ["", "## Verdicts (time to the loss target)", ""]
    lines += [f"- {v['setting']}: {v['line']}" for v in verdict["loss"]]
    lines += ["", "## Tables", "", *arena_tables(cells, targets), "## Figures", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    out.mkdir(parents=True, exist_ok=True)
    (out / "arena.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "arena.json").write_text(json.dumps(doc, indent=1, default=str) + "\n",
                                    encoding="utf-8")
    return doc
