"""Finding and reading the runs a report covers: train runs (``summary.json`` +
``metrics.jsonl``) and analyze runs (``results.json``) under run or sweep dirs; a damaged file
is named in one warning and left out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from agc_pipeline.codes.base import paper_label  # noqa: E402
from agc_pipeline.reporting.analysis_runs import (  # noqa: E402
    AnalysisRun,
    label_analysis_runs,
    read_overrides,
    results_problem,
)
from agc_pipeline.reporting.summary import ReportError, RunSummary  # noqa: E402

#: config keys (and their sub-keys) that cannot change a run's numbers: not part of the key
#: replicates are grouped by (the seed, and keys that follow it, are left out separately)
IGNORED_KEYS = ("name", "logger", "trainer.progress", "trainer.resume",
                "trainer.checkpoint_every", "extras")

@dataclass
class Run:
    """One train run: its directory, ``summary.json`` and ``metrics.jsonl`` rows."""

    path: Path
    summary: RunSummary
    rows: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        """The run's seed (None when its summary records none)."""
        return self.summary.setup_seed

    def flat_config(self) -> dict[str, str]:
        """The resolved config as ``dotted.key -> JSON value``, without :data:`IGNORED_KEYS`;
        the set-up fields when the summary holds no config, and always the run's status."""
        config = self.summary.config
        flat = (flatten(config) if isinstance(config, dict) else
                {f"setup.{k}": json.dumps(v) for k, v in self.setup().items()})
        flat = {k: v for k, v in flat.items()
                if not any(k == i or k.startswith(f"{i}.") for i in IGNORED_KEYS)}
        flat["status"] = json.dumps(self.summary.status or "completed")
        return flat

    def setup(self) -> dict[str, str]:
        """The fields runs are grouped by (everything but the seed), as short strings."""
        s = self.summary
        scheme = s.scheme
        straggler = s.straggler
        params = [f"{k}={straggler[k]:g}" if isinstance(straggler[k], float) else
                  f"{k}={straggler[k]}" for k in ("q", "s", "wait_for", "deadline")
                  if straggler.get(k) is not None]
        decoder = s.decoder["name"] + (" ÷α" if s.decoder["rescale"] else "")
        code = (s.choices or {}).get("code") or ""
        epsilon = f"ε = {scheme['epsilon']:g}" if scheme.get("epsilon") else ""
        return {"code": code, "scheme": paper_label(scheme["name"], scheme.get("variant")),
                "epsilon": epsilon, "assignment": s.assignment["name"], "m": f"m={s.m}",
                "decoder": decoder, "wait": "wait-for-all" if s.wait_for_all else "",
                "lr": f"lr={s.lr:g}", "model": s.model,
                "data": f"{s.dataset} N={s.train_samples}",
                "straggler": " ".join([straggler["name"], *params])}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict as ``dotted.key -> JSON value`` (lists stay one value)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


@dataclass
class Found:
    """What :func:`find_runs` found: train and analyze runs, and one problem per damaged
    file (``"<file>: <what is wrong>"``)."""

    train: list[Run] = field(default_factory=list)
    analysis: list[AnalysisRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run dirs under ``paths``: each path that holds a ``summary.json`` or a
    ``results.json`` itself, else every folder below it that does (in sorted order)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "summary.json").is_file() or (path / "results.json").is_file():
            found.append(path)
        else:
            found += sorted({p.parent for marker in ("summary.json", "results.json")
                             for p in path.rglob(marker)})
    return list(dict.fromkeys(found))


def _read_json(path: Path, problems: list[str]) -> Any:
    """The JSON in ``path``, or None with a problem naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return None
    if not text.strip():
        problems.append(f"{path}: empty")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}: not valid JSON, truncated or damaged ({exc})")
        return None


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; unreadable lines are left out with one problem."""
    if not path.is_file():
        problems.append(f"{path}: missing (the run has no metrics rows)")
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return []
    if not any(line.strip() for line in lines):
        problems.append(f"{path}: empty (the run has no metrics rows)")
        return []
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"line {number} is not valid JSON"
                       + (" (truncated?)" if number == len(lines) else ""))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
            bad.append(f"line {number} is not a metrics row (no integer iteration)")
            continue
        rows.append(row)
    if bad:
        problems.append(f"{path}: {len(bad)} of {len(lines)} lines left out ({bad[0]}"
                        + (f"; and {len(bad) - 1} more" if len(bad) > 1 else "") + ")")
    return rows


def find_runs(paths: list[Path]) -> Found:
    """The train runs (``summary.json`` + ``metrics.jsonl``) and analyze runs
    (``results.json``) under ``paths``, each a run dir or a folder searched recursively;
    damaged files are left out and named in :attr:`Found.problems`."""
    found = Found()
    for path in run_dirs(paths):
        results_file, summary_file = path / "results.json", path / "summary.json"
        if results_file.is_file():  # an analyze run; its summary.json marks completion
            results = _read_json(results_file, found.problems)
            if results is None:
                continue
            problem = results_problem(results)
            if problem is None:
                found.analysis.append(AnalysisRun(path, results, read_overrides(path)))
            else:
                found.problems.append(f"{results_file}: {problem}")
            continue
        summary = _read_json(summary_file, found.problems)
        if summary is None:
            continue
        if not isinstance(summary, dict):
            found.problems.append(f"{summary_file}: not a JSON object")
            continue
        if summary.get("app") == "analyze":
            found.problems.append(f"{summary_file}: an analyze run without its results.json")
            continue
        try:
            typed = RunSummary.from_dict(summary, summary_file)
        except ReportError as exc:
            found.problems.append(str(exc))
            continue
        found.train.append(Run(path, typed, _read_metrics(path / "metrics.jsonl",
                                                          found.problems)))
    label_analysis_runs(found.analysis)
    return found


