"""The documentation (README.md and docs/*.md) against the code.

- Every command in a fenced ``bash`` block is classified: an app command (``python -m
  agc_pipeline.<app> …``, ``agc-<app> …``, ``torchrun … -m agc_pipeline.train …``), a
  benchmark (``python bench/<script>.py …``, ``bash bench/gpu_check.sh …``), or one of
  ``NOT_RUN`` (install commands, the test suite itself, ``wandb sync``, shell completion, …)
  with the reason it is not exercised. An unclassified command fails.
- Hydra apps (train, analyze, plan): the overrides compose with the app's config (a ``-m``
  sweep: its first job, the command line's first values over the preset's
  ``hydra.sweeper.params``), the experiment preset is the app's own, and for train/analyze the
  assignment and scheme build (train: the trainer settings validate too).
- argparse apps (report, repro): their parser accepts the flags.
- ``RUN``: a handful of documented commands run for real with ``debug=fast`` (where the app has
  it) into ``tmp_path``, and the outputs the docs promise exist.
- Benchmarks: the script exists and every flag the docs pass to it appears in it (a static
  check: importing torch in a subprocess per script to run ``--help`` would cost more than
  the rest of this file).
- Paths: every relative repository path the docs mention exists, as does the target of every
  relative Markdown link. **Target layout**: the docs are written for the layout after the
  refactor of issue 17 (``conf/`` at the top, ``agc_pipeline/coding/``, ``agc_pipeline/cluster/``,
  ``agc_pipeline/reporting/``); before that refactor has landed, the paths of that layout are
  the only expected failures of ``test_doc_path_exists`` (one test per path, so the failures
  name them).
- results.md: every line with a measured number names its date (YYYY-MM-DD).
- README.md: at most about 12 KB, the two set-up commands verbatim, ``pip install`` in its
  first 60 lines.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from agc_pipeline.conf_path import CONFIG_DIR, preset_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]

HYDRA_APPS = ("train", "analyze", "plan")
ARGPARSE_APPS = ("report", "repro")

SETUP_INSTALL = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 '
                 '-e ".[dev,reports]" && python -m agc_pipeline.train')
SETUP_TEST = ". .venv/bin/activate && python -m pytest -q"

#: commands that are not exercised here: (regex on the command, reason)
NOT_RUN: list[tuple[str, str]] = [
    (r"^python3? -m venv\b", "creates a virtual environment"),
    (r"^\. \.venv/bin/activate$", "activates the virtual environment"),
    (r"^pip (install|wheel)\b", "installs packages (network; CI runs the README's install)"),
    (r"^python -m pytest\b", "the test suite itself"),
    (r"^wandb sync\b", "uploads W&B runs: needs a network and a W&B account"),
    (r'^eval "\$\(agc-\w+ -sc install=\w+\)"$', "installs shell completion into the shell"),
    (r"^python -m agc_pipeline\.reporting\.wandb_report\b",
     "publishes a W&B report: needs a network (its module path is checked by the path test)"),
]

#: Hydra commands that are composed (and built) but never launched here, with the reason; every
#: other Hydra command is composed only too, except those of RUN (they train or compute for
#: seconds to hours, which a docs test cannot afford)
COMPOSED_NOT_RUN: list[tuple[str, str]] = [
    (r"^torchrun\b", "a multi-process torchrun launch (one or two nodes)"),
    (r"hydra/launcher=slurm", "needs a Slurm cluster (composed without the launcher unless the "
                              "submitit plugin, .[slurm], is installed)"),
    (r"trainer=(distributed|ddp)\b", "starts worker processes and trains for minutes"),
    (r"trainer\.device=cuda", "needs a GPU (bench/gpu_check.sh exercises it)"),
    (r"dataset\.root=", "needs a data set that is not in the repository"),
]

#: overrides that only the launched app can check (no CUDA on the test machines)
NEEDS_DEVICE = ("trainer.device=cuda", "trainer.backend=nccl")

#: documented commands run for real: command as written in the docs -> extra arguments
#: (``{tmp}`` is tmp_path); outputs that the docs promise, relative to the run dir
RUN: dict[str, tuple[list[str], list[str]]] = {
    "python -m agc_pipeline.train": (
        ["debug=fast", "hydra.run.dir={tmp}/train"],
        ["train/metrics.jsonl", "train/summary.json", "train/checkpoint.pt",
         "train/config_resolved.yaml"]),
    "agc-analyze experiment=fig3 debug=fast": (
        ["hydra.run.dir={tmp}/fig3"],
        ["fig3/results.json", "fig3/summary.json", "fig3/error_vs_stragglers.png"]),
    "python -m agc_pipeline.plan cluster=ib_100g plan.n=[32] plan.d=[7000000000] plan.p=[0.1]": (
        ["hydra.run.dir={tmp}/plan", "plan.draws=50"],
        ["plan/plan.json", "plan/time_to_loss.png"]),
    "python -m agc_pipeline.repro --list": ([], []),
}
#: after the runs above: a report of the train run (the report app's documented form)
REPORT_OF_RUN = "python -m agc_pipeline.report runs/multirun/train/fig6_bibd7/<timestamp>"


# ------------------------------------------------------------------------ extraction

BASH_BLOCK = re.compile(r"^( *)```bash\n(.*?)^\1```", re.S | re.M)
PLACEHOLDER = re.compile(r"<[^<>\n]*>")


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str    # the command as written (continuations joined, comment stripped)
    argv: tuple[str, ...]  # placeholders <...> replaced by "X"


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_commands() -> list[Command]:
    commands = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in BASH_BLOCK.finditer(text):
            start = text.count("\n", 0, block.start(2)) + 1
            lines = block.group(2).splitlines()
            i = 0
            while i < len(lines):
                first = i
                line = _strip_comment(lines[i])
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1].rstrip() + " " + _strip_comment(lines[i]).strip()
                i += 1
                line = line.strip()
                if not line:
                    continue
                for part in line.split(" && "):
                    part = part.strip()
                    try:
                        argv = tuple(shlex.split(PLACEHOLDER.sub("X", part)))
                    except ValueError as exc:
                        raise ValueError(f"{path.name}:{start + first}: {part!r}: {exc}") from None
                    commands.append(Command(f"{path.relative_to(ROOT)}:{start + first}",
                                            part, argv))
    return commands


COMMANDS = doc_commands()


def classify(cmd: Command) -> tuple[str, str | None, list[str]]:
    """(kind, app or script, arguments); kind: hydra, argparse, bench, not_run, unknown."""
    argv = list(cmd.argv)
    for pattern, _ in NOT_RUN:
        if re.search(pattern, cmd.text):
            return "not_run", None, []
    if argv[0] == "torchrun":
        module = argv.index("-m")
        app = argv[module + 1].removeprefix("agc_pipeline.")
        return "hydra", app, argv[module + 2:]
    if argv[:2] in (["python", "-m"], ["python3", "-m"]) and argv[2].startswith("agc_pipeline."):
        app, args = argv[2].removeprefix("agc_pipeline."), argv[3:]
    elif argv[0].startswith("agc-"):
        app, args = argv[0].removeprefix("agc-"), argv[1:]
    elif argv[0] in ("python", "python3", "bash") and argv[1].startswith("bench/"):
        return "bench", argv[1], argv[2:]
    else:
        return "unknown", None, argv
    if app in HYDRA_APPS:
        return "hydra", app, args
    if app in ARGPARSE_APPS:
        return "argparse", app, args
    return "unknown", app, args


def _ids(commands: list[Command]) -> list[str]:
    return [f"{c.source}: {c.text[:70]}" for c in commands]


def test_docs_have_commands() -> None:
    assert len(COMMANDS) > 40
    kinds = {classify(c)[0] for c in COMMANDS}
    assert {"hydra", "argparse", "bench", "not_run"} <= kinds


@pytest.mark.parametrize("cmd", COMMANDS, ids=_ids(COMMANDS))
def test_command_is_classified(cmd: Command) -> None:
    kind, app, _ = classify(cmd)
    assert kind != "unknown", (f"{cmd.source}: {cmd.text!r} is neither an app command, a "
                               f"benchmark nor in NOT_RUN (app {app!r})")


@pytest.mark.parametrize("pattern,reason", NOT_RUN + COMPOSED_NOT_RUN)
def test_not_run_entries_are_used(pattern: str, reason: str) -> None:
    assert any(re.search(pattern, c.text) for c in COMMANDS), (
        f"NOT_RUN entry {pattern!r} ({reason}) matches no command of the docs: drop it")


# ----------------------------------------------------------------- hydra apps compose

def _first_job(overrides: list[str]) -> list[str]:
    """The overrides of the first job of a sweep: the first value of each sweep override."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(text)
    return first


def _launcher_available(overrides: list[str]) -> list[str]:
    """Drop the Slurm launcher's overrides where its plugin is not installed (.[slurm])."""
    for override in overrides:
        if override == "hydra/launcher=slurm":
            try:
                importlib.import_module("hydra_plugins.hydra_submitit_launcher")
            except ImportError:
                return [o for o in overrides
                        if not (o.startswith("hydra/launcher=") or o.startswith("hydra.launcher."))]
    return overrides


def compose_app(app: str, overrides: list[str], multirun: bool):
    overrides = _launcher_available(overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        if not multirun:
            return compose(config_name=app, overrides=overrides)
        job = _first_job(overrides)
        hydra_cfg = compose(config_name=app, overrides=job, return_hydra_config=True)
        given = {o.split("=", 1)[0] for o in job}
        for key, value in (hydra_cfg.hydra.sweeper.get("params") or {}).items():
            if key not in given:
                job += _first_job([f"{key}={value}"])
        return compose(config_name=app, overrides=job)


HYDRA_COMMANDS = [c for c in COMMANDS if classify(c)[0] == "hydra"]


@pytest.mark.parametrize("cmd", HYDRA_COMMANDS, ids=_ids(HYDRA_COMMANDS))
def test_hydra_command_composes(cmd: Command) -> None:
    from agc_pipeline.build import build_assignment, build_scheme, build_trainer_settings

    _, app, args = classify(cmd)
    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun", "--help"}, f"unexpected flags {flags}"
    overrides = [a for a in args if not a.startswith("-")]
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "experiment":
            for name in value.split(","):
                assert preset_app(name) == app, f"experiment={name} is not a preset of {app}"
    cfg = compose_app(app, overrides, multirun=bool({"-m", "--multirun"} & set(flags)))
    if app in ("train", "analyze"):
        build_scheme(cfg.scheme, build_assignment(cfg), cfg.m)
    if app == "train" and not any(o in NEEDS_DEVICE for o in overrides):
        build_trainer_settings(cfg)


# ------------------------------------------------------------ argparse apps parse

class _Parsed(Exception):
    pass


ARGPARSE_COMMANDS = [c for c in COMMANDS if classify(c)[0] == "argparse"]


@pytest.mark.parametrize("cmd", ARGPARSE_COMMANDS, ids=_ids(ARGPARSE_COMMANDS))
def test_argparse_command_parses(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    _, app, args = classify(cmd)
    main = importlib.import_module(f"agc_pipeline.{app}").main
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed):  # argparse rejects an unknown flag with SystemExit(2)
        main(args)


# ------------------------------------------------------------------- benchmarks

BENCH_COMMANDS = [c for c in COMMANDS if classify(c)[0] == "bench"]


@pytest.mark.parametrize("cmd", BENCH_COMMANDS, ids=_ids(BENCH_COMMANDS))
def test_bench_command(cmd: Command) -> None:
    _, script, args = classify(cmd)
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    source = path.read_text()
    for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert flag in source, f"{script} has no flag {flag}"


# -------------------------------------------------------------------- real runs

def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if argv[0].startswith("agc-"):
        argv = ["python", "-m", f"agc_pipeline.{argv[0].removeprefix('agc-')}", *argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_documented_commands_run(tmp_path: Path) -> None:
    """A few documented commands, for real and small, into tmp_path; then a report of the
    train run. The apps run from tmp_path (not the checkout), as an installed user would."""
    texts = {c.text for c in COMMANDS}
    for text, (extra, outputs) in RUN.items():
        assert text in texts, f"{text!r} is no longer in the docs: update RUN"
        argv = shlex.split(text) + [e.format(tmp=tmp_path) for e in extra]
        proc = _run(argv, tmp_path)
        assert proc.returncode == 0, f"{text}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        for output in outputs:
            assert (tmp_path / output).is_file(), f"{text}: no {output}"
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["iterations"] > 0
    assert REPORT_OF_RUN in texts
    proc = _run(["python", "-m", "agc_pipeline.report", str(tmp_path / "train"),
                 "--out", str(tmp_path / "report")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report" / "report.md").is_file()


# ------------------------------------------------------------------------- paths

PATH_ROOTS = ("agc_pipeline", "conf", "tests", "bench", "docs", ".ci", ".github")
PATH = re.compile(r"(?<![\w/.\-])((?:" + "|".join(map(re.escape, PATH_ROOTS))
                  + r")/[\w./{},*<>\-]*)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _expand(path: str) -> list[str]:
    """Brace expansion: ``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py``."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return list(itertools.chain.from_iterable(
        _expand(path[:match.start()] + option + path[match.end():])
        for option in match.group(1).split(",")))


def _existing_prefix(path: str) -> str:
    """The part of ``path`` before a placeholder (``<x>``), glob or ``...``: a folder to check."""
    cut = min((i for i in (path.find("<"), path.find("*"), path.find("...")) if i >= 0),
              default=len(path))
    return path[:cut] if cut == len(path) else path[:path.rfind("/", 0, cut) + 1]


def doc_paths() -> list[tuple[str, str]]:
    """(path relative to the repository, where it is mentioned)."""
    found: dict[str, str] = {}
    for doc in DOC_FILES:
        text = doc.read_text()
        for match in PATH.finditer(text):
            raw = match.group(1).rstrip(".,:;")
            for path in _expand(raw):
                path = _existing_prefix(path).rstrip(".,:;")
                if path and path not in ("agc_pipeline/", "conf/"):
                    found.setdefault(path, str(doc.relative_to(ROOT)))
        for match in LINK.finditer(text):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve().relative_to(ROOT).as_posix()
            found.setdefault(path, str(doc.relative_to(ROOT)))
    for cmd in COMMANDS:  # python -m agc_pipeline.x.y -> agc_pipeline/x/y.py
        argv = list(cmd.argv)
        if "-m" in argv and argv[argv.index("-m") + 1].startswith("agc_pipeline."):
            module = argv[argv.index("-m") + 1].replace(".", "/")
            found.setdefault(module + ".py", cmd.source)
    return sorted(found.items())


DOC_PATHS = doc_paths()


def test_doc_paths_found() -> None:
    paths = dict(DOC_PATHS)
    assert "agc_pipeline/training/ps.py" in paths and "docs/results.md" in paths


@pytest.mark.parametrize("path,where", DOC_PATHS, ids=[p for p, _ in DOC_PATHS])
def test_doc_path_exists(path: str, where: str) -> None:
    """Before the refactor of issue 17 lands, the target layout's paths (conf/…,
    agc_pipeline/coding/…, agc_pipeline/cluster/…, agc_pipeline/reporting/…) fail here."""
    assert (ROOT / path).exists(), f"{where} mentions {path}, which does not exist"


# ----------------------------------------------------------- results.md and README

DATE = re.compile(r"20\d\d-\d\d-\d\d")
NUMBER = re.compile(r"(?<![A-Za-z_\d])\d")


def test_results_lines_carry_dates() -> None:
    lines = (ROOT / "docs" / "results.md").read_text().splitlines()
    undated = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        next_line = lines[i + 1] if i + 1 < len(lines) else ""
        if (fenced or line.startswith("#") or re.fullmatch(r"\|[-| ]+\|", line)
                or next_line.startswith("|---")):  # headings, table separators and headers
            continue
        if NUMBER.search(line) and not DATE.search(line):
            undated.append(f"results.md:{i + 1}: {line[:80]}")
    assert not undated, "measured numbers without a date:\n" + "\n".join(undated)


def test_readme_shape() -> None:
    text = README.read_text()
    assert len(text.encode()) <= 12_500, f"README.md is {len(text.encode())} bytes"
    lines = text.splitlines()
    assert SETUP_INSTALL in lines and SETUP_TEST in lines
    first_pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert first_pip < 60
    assert lines.index(SETUP_INSTALL) < lines.index(SETUP_TEST)
    for page in ("train", "analyze", "plan", "report", "repro", "configuration", "distributed",
                 "reproducibility", "extending", "design", "results"):
        assert f"(docs/{page}.md)" in text, f"README does not link docs/{page}.md"
