"""Grouping train runs into replicates (same resolved config apart from the seed) and
labelling each group by the set-up fields that tell the groups apart (the scheme as the paper
names it, ε, assignment, m, …); groups with different straggler settings go to separate
panels."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import matplotlib
import numpy as np

matplotlib.use("Agg")

from agc_pipeline.reporting.runs import Run  # noqa: E402

#: the set-up fields lines are labelled by (``panel`` fields split the figure into panels)
LINE_FIELDS = ("code", "scheme", "epsilon", "assignment", "m", "decoder", "wait", "lr",
               "model", "data")
PANEL_FIELDS = ("straggler",)
#: fields a ``code=`` preset (conf/code/) fixes: not repeated in labels when code varies
CODE_FIELDS = ("scheme", "epsilon", "assignment", "m", "decoder", "wait")
#: label fields dropped, in this order, when the remaining ones still tell the lines apart
REDUNDANT_FIRST = ("assignment", "decoder", "data", "model")


@dataclass
class Group:
    """Replicate runs (same config, distinct seeds); ``label`` tells it from other lines."""

    setup: dict[str, str]
    runs: list[Run]
    label: str = ""
    panel: str = ""
    #: the flat config the group's runs share (seed keys left out), see :meth:`Run.flat_config`
    config: dict[str, str] = field(default_factory=dict)
    #: > 0 when another group has the same config and seeds (numbered from 1)
    copy: int = 0

    @property
    def time_key(self) -> str:
        """``wall_time`` for runs whose clock is the wall clock (summary ``clock``; distributed
        runtimes), or rows without a virtual clock; else ``virtual_time``."""
        rows = [r for run in self.runs for r in run.rows]
        has_wall = any(r.get("wall_time") is not None for r in rows)
        has_virtual = any(r.get("virtual_time") is not None for r in rows)
        measured = any(run.summary.clock == "wall" for run in self.runs)
        return "wall_time" if has_wall and (measured or not has_virtual) else "virtual_time"

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
        of ``time`` / ``bytes``, see :meth:`series`), and the mean and std of ``key``. Runs
        without any metrics row (a damaged ``metrics.jsonl``, warned about) are left out."""
        runs = [run for run in self.runs if run.rows]
        ys = [self.series(run, key) for run in runs]
        xs = [] if x == "iteration" else [self.series(run, x) for run in runs]
        common = sorted(set.intersection(*(set(t) for t in ys + xs))) if ys else []
        if not common:
            return np.empty(0), np.empty(0), np.empty(0)
        vals = np.array([[t[i] for i in common] for t in ys], dtype=np.float64)
        where = (np.array(common, dtype=np.float64) if x == "iteration" else
                 np.array([[t[i] for i in common] for t in xs], dtype=np.float64).mean(axis=0))
        return where, vals.mean(axis=0), vals.std(axis=0)

    def stats(self, key: str) -> tuple[float, float] | None:
        """Mean and std over runs of the numeric :class:`RunSummary` attribute ``key`` (None
        when no run has a number there)."""
        values = [getattr(r.summary, key) for r in self.runs]
        values = [float(v) for v in values if isinstance(v, int | float)]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values))


def seed_keys(runs: list[Run]) -> set[str]:
    """Config keys that follow the seed: ``seed``, and every ``….seed`` equal to its run's
    seed in every run (``model.seed: ${seed}``), not a fixed one such as a graph's seed."""
    keys = {"seed"}
    flats = [(run.flat_config(), json.dumps(run.seed, sort_keys=True)) for run in runs]
    candidates = {k for flat, _ in flats for k in flat if k.endswith(".seed")}
    for key in candidates:
        if all(flat.get(key, seed) == seed for flat, seed in flats):
            keys.add(key)
    return keys


def group_runs(runs: list[Run]) -> list[Group]:
    """Group replicates (the same config apart from the seed, see the module docstring;
    never two runs with the same seed in a group); label lines by the set-up fields that
    vary, then by the config keys that still tell groups apart; panels by straggler."""
    seeds = seed_keys(runs)
    by_key: dict[tuple[tuple[str, str], ...], list[list[Run]]] = defaultdict(list)
    for run in runs:
        config = {k: v for k, v in run.flat_config().items() if k not in seeds}
        replicates = by_key[tuple(sorted(config.items()))]
        home = next((g for g in replicates if all(r.seed != run.seed for r in g)), None)
        if home is None:  # first run of this config, or its seed is taken: a new group
            replicates.append(home := [])
        home.append(run)
    groups = []
    for key, replicates in by_key.items():
        for i, members in enumerate(replicates):
            groups.append(Group(members[0].setup(), members, config=dict(key),
                                copy=i + 1 if len(replicates) > 1 else 0))
    varying = [f for f in LINE_FIELDS if len({g.setup[f] for g in groups}) > 1] or ["scheme"]
    if "code" in varying:  # code presets: named by their schemes when those tell them apart
        rest = [f for f in varying if f not in CODE_FIELDS and f != "code"]
        by_scheme = [f for f in ("scheme", "epsilon") if f in varying] or ["scheme"]
        varying = ([*by_scheme, *rest] if _distinct(groups, [*by_scheme, *rest]) else
                   [f for f in varying if f not in CODE_FIELDS])
    for field_name in REDUNDANT_FIRST:  # drop fields the others already tell apart (e.g.
        fewer = [f for f in varying if f != field_name]  # an assignment whose name encodes m)
        if field_name in varying and fewer and _distinct(groups, fewer):
            varying = fewer
    for g in groups:
        g.label = ", ".join(g.setup[f] for f in varying if g.setup[f]) or g.setup["scheme"]
        g.panel = " ".join(g.setup[f] for f in PANEL_FIELDS)
    _tell_apart(groups)
    return sorted(groups, key=lambda g: (g.panel, g.label))


def differing_keys(groups: list[Group]) -> list[str]:
    """The config keys (and ``status``) whose values differ between groups."""
    keys = sorted({k for g in groups for k in g.config})
    return [k for k in keys if len({g.config.get(k) for g in groups}) > 1]


def _tell_apart(groups: list[Group], most: int = 3) -> None:
    """Add to the labels that two groups of a panel share the config keys that differ
    between them (``trainer.iterations=30``), and a copy number to groups that a rerun with
    the same config and seed split (copy 2 holds the reruns)."""
    clashes: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        clashes[(g.panel, g.label)].append(g)
    for same in clashes.values():
        if len(same) < 2:
            continue
        for key in differing_keys(same)[:most]:
            for g in same:
                value = g.config.get(key, "null")
                g.label += f", {key}={json.loads(value) if value != 'null' else None}"
        for g in same:
            if g.copy:
                g.label += f" (copy {g.copy})"


def _distinct(groups: list[Group], fields: list[str]) -> bool:
    """Whether ``fields`` still tell every pair of groups of a panel apart."""
    keys = [(g.setup["straggler"], *(g.setup[f] for f in fields)) for g in groups]
    return len(set(keys)) == len(keys)


def details(setup: dict[str, str]) -> str:
    """The code's set-up in one cell: scheme, assignment, m, decoder, wait-for-all."""
    return ", ".join(setup[f] for f in CODE_FIELDS if setup[f])


#: x-axis labels of :func:`plot`
