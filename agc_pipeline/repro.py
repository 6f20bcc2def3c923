"""Golden reproducibility checks: re-run canonical configs and compare with checked-in numbers.

    python -m agc_pipeline.repro                     # every check (CI runs this)
    python -m agc_pipeline.repro --only fig3_small   # one (repeatable)
    python -m agc_pipeline.repro --update            # rewrite tests/golden/*.json
    python -m agc_pipeline.repro --list
    python -m agc_pipeline.repro --allow-skip        # a missing runtime skips, exit 0

Each check runs an app through its real command line, at reduced size, in a fresh run dir:
one per paper figure (Figs. 3-5 with the ``analyze`` app; Fig. 6 trained on the simulated
cluster) and one distributed training run. Tolerances: analysis numbers to 1e-12 relative
(to the curve's largest value, so that an error of 0 at s = 0 compares sensibly); simulated
training losses bit-identical; distributed losses within 1e-6. A mismatch prints the check,
the metric (e.g. ``empirical_mean[s=5]``), both values and the difference, and the exit
status is 1. A check is skipped for one reason only, a runtime it needs missing on this
machine (:data:`RUNTIMES`: torch.distributed); a skip also exits 1 unless ``--allow-skip``.
A run that stops for any other reason (e.g. the app refuses the check's config) fails.
``--override`` keys are checked against each selected check's config first (exit 2).

Bit-identical means: on x86-64 CPUs with AVX2, with this module's pinned environment
(:data:`PINNED_ENV`: one thread everywhere, MKL's conditional numerical reproducibility and
torch/OpenBLAS/oneDNN kernels pinned to AVX2), for the library versions recorded in the
goldens. Other CPUs, or other torch/numpy versions, may differ in the last bits (MKL, for
one, dispatches by CPU vendor whatever the pinning). A golden file therefore holds the main
numbers (``metrics``, recorded on the CPU named in ``cpu``) and, under ``cpus``, the numbers
of further CPUs (:func:`cpu_fingerprint`); a check compares with this CPU's own entry when
there is one, else with the main numbers, and is bit-identical either way. After checking
that the differences are rounding: ``--update`` rewrites the main numbers (and drops the
other CPUs' entries, which must then be recorded again on those CPUs), ``--add-cpu`` records
this CPU's entry and keeps the rest. Commit the goldens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.reporting.goldens import (
    RTOL,
    Difference,
    GoldenError,
    compare,
    cpu_fingerprint,
    points_metrics,
    read_golden,
    reference,
)
from agc_pipeline.reporting.provenance import REPO_ROOT, library_versions
from agc_pipeline.reporting.sinks import write_json
from agc_pipeline.reporting.summary import RunSummary

#: the golden files: ``agc_pipeline/golden`` in a wheel install, else the checkout's
#: ``tests/golden`` (their one source; pyproject.toml ships them in the wheel)
GOLDEN_DIR = (Path(__file__).resolve().parent / "golden"
              if (Path(__file__).resolve().parent / "golden").is_dir()
              else REPO_ROOT / "tests" / "golden")
#: environment of every check's process: deterministic kernels and thread counts
PINNED_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "MKL_CBWR": "AVX2", "OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0",
    "WANDB_MODE": "disabled",
}

_SMALL_ANALYSIS = ("analysis.plot=false", "analysis.progress=false", "logger=none")
_SMALL_TRAIN = ("seed=0", "trainer.iterations=6", "dataset.train_size=280",
                "dataset.test_size=100", "trainer.alpha_samples=20", "trainer.eval_every=3",
                "trainer.checkpoint_every=0", "trainer.progress=false", "logger=none",
                # one thread: the float32 products' summation order then does not depend on
                # how many threads a loaded machine lets MKL/OpenMP use (bit-identical checks)
                "trainer.threads=1")


def _torch_distributed_missing() -> str | None:
    """Why torch.distributed (with its gloo backend) cannot run here; None when it can."""
    try:
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - a torch build without it
        return f"torch.distributed cannot be imported ({exc})"
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if not dist.is_gloo_available():
        return "torch.distributed has no gloo backend in this torch build"
    return None


#: the runtimes a check may need: name -> why this machine lacks it (None: it has it). The
#: only reason a check is skipped; anything else that stops a run (a config the app refuses,
#: a crash) fails the check.
RUNTIMES = {"torch.distributed": _torch_distributed_missing}


@dataclass(frozen=True)
class Case:
    """One canonical run: the app, its overrides and how its numbers are compared."""

    name: str
    app: str  #: analyze | train
    overrides: tuple[str, ...]
    kind: str  #: analysis | simulated | distributed (the tolerance)
    requires: str | None = None  #: a runtime of :data:`RUNTIMES` the case needs
    description: str = ""

    def __post_init__(self) -> None:
        if self.requires is not None and self.requires not in RUNTIMES:
            raise ValueError(f"check {self.name}: requires must be one of "
                             f"{', '.join(RUNTIMES)} (got {self.requires!r})")

    def unavailable(self) -> str | None:
        """Why the runtime the case needs is missing on this machine (None: it is there)."""
        return None if self.requires is None else RUNTIMES[self.requires]()

    def available(self) -> bool:
        """Whether the case can run on this machine."""
        return self.unavailable() is None


def override_error(case: Case, overrides: Sequence[str]) -> str | None:
    """Why the case's app cannot compose its config with ``overrides`` added (None: it can),
    in one line naming the override, e.g. an unknown key."""
    from hydra import compose, initialize_config_dir

    for override in overrides:
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                compose(config_name=case.app, overrides=[*case.overrides, override])
        except Exception as exc:  # noqa: BLE001 - Hydra's composition and parse errors
            reason = " ".join(line.strip() for line in str(exc).splitlines()[:2] if line.strip())
            return (f"--override {override} does not apply to check {case.name} "
                    f"({case.app} app): {reason}")
    return None


CASES: tuple[Case, ...] = (
    Case("fig3_small", "analyze",
         ("experiment=fig3", "analysis.realizations=4", "analysis.straggler_sets=40",
          *_SMALL_ANALYSIS), "analysis",
         description="Fig. 3: PG(2,9) BIBD, (7), m = 2; 4 draws x 40 sets"),
    Case("fig4_small", "analyze",
         ("experiment=fig4", "analysis.realizations=4", "analysis.straggler_sets=40",
          *_SMALL_ANALYSIS), "analysis",
         description="Fig. 4: (27,2,5) coset graph, (7) eps = 0.1; 4 draws x 40 sets"),
    Case("fig5_small", "analyze",
         ("experiment=fig5", "analysis.realizations=3", "analysis.straggler_sets=30",
          *_SMALL_ANALYSIS), "analysis",
         description="Fig. 5: (40,20,3,6) bi-regular, (19) Gaussian and +-1; 3 x 30"),
    Case("fig6_simulated_small", "train",
         ("experiment=fig6_bibd7", "code=random_diagonal", *_SMALL_TRAIN), "simulated",
         description="Fig. 6 (b): (7,7,3,1) BIBD, construction (7), simulated, 6 iterations"),
    Case("fig6_distributed_small", "train",
         ("experiment=fig6_bibd7", "code=random_diagonal", "trainer=distributed",
          *_SMALL_TRAIN), "distributed", requires="torch.distributed",
         description="Fig. 6 (b) on the torch.distributed runtime, 6 iterations"),
)


# ------------------------------------------------------------------------------- metrics


def collect_metrics(case: Case, run_dir: Path) -> dict[str, list[float | None]]:
    """The numbers a case is compared on, read from its run dir."""
    if case.app == "analyze":
        return points_metrics(json.loads((run_dir / "results.json").read_text()))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = RunSummary.read(run_dir / "summary.json")
    metrics: dict[str, list[float | None]] = {
        "iteration": [r["iteration"] for r in rows],
        "train_loss": [r["train_loss"] for r in rows],
        "final_train_loss": [summary.final_train_loss],
        "test_accuracy": [summary.test_accuracy],
    }
    if case.kind == "simulated":  # the simulated runtime's full record is deterministic too
        metrics["grad_error"] = [r.get("grad_error") for r in rows]
        metrics["virtual_time"] = [r.get("virtual_time") for r in rows]
    return metrics


# ------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """The result of one check: ``status`` ∈ pass | fail | skip | updated."""

    case: Case
    status: str
    message: str = ""
    differences: list[Difference] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self, limit: int = 10) -> Iterator[str]:
        """What the check prints: one header line, then the differences."""
        head = f"{self.status.upper():7s} {self.case.name}"
        yield f"{head} ({self.seconds:.1f} s){': ' + self.message if self.message else ''}"
        for diff in self.differences[:limit]:
            yield f"          {self.case.name}: {diff}"
        if len(self.differences) > limit:
            yield f"          ... and {len(self.differences) - limit} more differences"


def run_case(case: Case, run_dir: Path, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run the case's app in a subprocess with :data:`PINNED_ENV`, output into ``run_dir``."""
    env = {**os.environ, **PINNED_ENV}
    command = [sys.executable, "-m", f"agc_pipeline.{case.app}", *case.overrides, *extra,
               f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def golden_path(golden_dir: Path, case: Case) -> Path:
    """``<golden_dir>/<case>.json``."""
    return Path(golden_dir) / f"{case.name}.json"


def check(case: Case, golden_dir: Path, work: Path, update: bool = False,
          extra: Sequence[str] = (), add_cpu: bool = False) -> Outcome:
    """Run one case and compare it with (or, with ``update``, write; with ``add_cpu``, add
    this CPU's entry to) its golden file."""
    reason = case.unavailable()
    if reason is not None:
        return Outcome(case, "skip", f"{case.requires} is missing on this machine: {reason}")
    path = golden_path(golden_dir, case)
    golden = None
    cpu = cpu_fingerprint()
    if not update:
        if not path.is_file():
            return Outcome(case, "fail", f"no golden file {path}: create it with `python -m "
                                         f"agc_pipeline.repro --update --only {case.name}`")
        try:
            golden = read_golden(path)
        except GoldenError as exc:
            return Outcome(case, "fail", str(exc))
        if list(golden.get("overrides", [])) != list(case.overrides):
            return Outcome(case, "fail", f"{path} was made for other overrides "
                                         f"({' '.join(golden.get('overrides', []))}); "
                                         "regenerate it with --update")
    started = time.perf_counter()
    run_dir = Path(work) / case.name
    proc = run_case(case, run_dir, extra)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return Outcome(case, "fail", f"the run exited with status {proc.returncode}: {tail}",
                       seconds=seconds)
    metrics = collect_metrics(case, run_dir)
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"case": case.name, "description": case.description,
                          "app": case.app, "overrides": list(case.overrides),
                          "kind": case.kind, "tolerance": RTOL[case.kind],
                          "versions": library_versions(), "environment": PINNED_ENV,
                          "cpu": cpu, "metrics": metrics})
        return Outcome(case, "updated", str(path), seconds=seconds)
    assert golden is not None
    if add_cpu:
        golden.setdefault("cpus", {})[cpu] = {"versions": library_versions(),
                                              "metrics": metrics}
        write_json(path, golden)
        return Outcome(case, "updated", f"{path}: added the entry of {cpu}", seconds=seconds)
    expected, where = reference(golden, cpu)
    diffs = compare(metrics, expected, case.kind)
    count = sum(len(v) for v in metrics.values())
    note = f" with extra overrides {' '.join(extra)}" if extra else ""
    if diffs:
        note += f"; compared with {where}"
        if cpu not in golden.get("cpus", {}) and golden.get("cpu") != cpu:
            note += (f"; this CPU ({cpu}) has no entry of its own: if the differences are "
                     f"rounding, add one with `agc-repro --add-cpu --only {case.name}`")
        changed = [f"{k} {v} (golden: {golden.get('versions', {}).get(k)})"
                   for k, v in library_versions().items()
                   if golden.get("versions", {}).get(k) != v]
        note += f"; library versions changed: {', '.join(changed)}" if changed else ""
        return Outcome(case, "fail", f"{len(diffs)} of {count} values differ from {path}{note}",
                       diffs, seconds)
    own = ", this CPU's entry" if cpu in golden.get("cpus", {}) else ""
    return Outcome(case, "pass", f"{count} values match ({case.kind}{own}){note}",
                   seconds=seconds)


def select_cases(names: Sequence[str] = ()) -> list[Case]:
    """The cases named (all when none); ValueError for an unknown name."""
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; "
                         f"known: {', '.join(c.name for c in CASES)}")
    return [c for c in CASES if not names or c.name in names]


def run_checks(names: Sequence[str] = (), golden_dir: Path = GOLDEN_DIR, update: bool = False,
               extra: Sequence[str] = (), keep: Path | None = None,
               echo: bool = True, add_cpu: bool = False) -> list[Outcome]:
    """Run the selected cases (all by default); print each outcome when ``echo``."""
    cases = select_cases(names)
    if keep is not None and Path(keep).exists() and not Path(keep).is_dir():
        raise ValueError(f"--keep {keep} is an existing file: name a folder for the run dirs")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="agc-repro-"))
    work.mkdir(parents=True, exist_ok=True)
    outcomes = []
    try:
        for case in cases:
            outcome = check(case, golden_dir, work, update, extra, add_cpu)
            outcomes.append(outcome)
            if echo:
                for line in outcome.lines():
                    print(line, flush=True)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``agc-repro``): 0 when every check passes, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="agc-repro", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this check (repeatable)")
    parser.add_argument("--update", action="store_true",
                        help="rewrite the golden files (their main numbers, from this CPU)")
    parser.add_argument("--add-cpu", action="store_true",
                        help="add this CPU's numbers to the golden files, keeping the rest")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--golden-dir", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every selected check (e.g. to see a "
                             "drift being caught)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--allow-skip", action="store_true",
                        help="exit 0 when a check is skipped because its runtime (e.g. "
                             "torch.distributed) is missing; by default a skip fails the run")
    args = parser.parse_args(argv)
    if (args.update or args.add_cpu) and args.override:
        parser.error("--update and --add-cpu write the goldens of the canonical configs: no "
                     "--override")
    if args.update and args.add_cpu:
        parser.error("--update rewrites the main numbers, --add-cpu adds this CPU's: one of "
                     "the two")
    if args.list:
        for case in CASES:
            state = "" if case.available() else f"  [{case.requires} missing: skipped]"
            print(f"{case.name:24s} {case.app:8s} {case.description}{state}")
        return 0
    try:
        selected = select_cases(args.only)
        for case in selected if args.override else ():
            problem = override_error(case, args.override)
            if problem is not None:
                raise ValueError(problem)
        outcomes = run_checks(args.only, args.golden_dir, args.update, args.override,
                              args.keep, add_cpu=args.add_cpu)
    except ValueError as exc:
        print(f"agc-repro: {exc}", file=sys.stderr)
        return 2
    failed = [o.case.name for o in outcomes if o.status == "fail"]
    skipped = [o.case.name for o in outcomes if o.status == "skip"]
    words = {"fail": "failed", "pass": "passed", "updated": "updated", "skip": "skipped"}
    counts = {w: sum(o.status == s for o in outcomes) for s, w in words.items()}
    summary = ", ".join(f"{n} {w}" for w, n in counts.items() if n) or "nothing run"
    if failed:
        print(f"agc-repro: FAILED {', '.join(failed)} ({summary}); see the lines above",
              file=sys.stderr)
        return 1
    if skipped and not args.allow_skip:
        print(f"agc-repro: SKIPPED {', '.join(skipped)} ({summary}): a skipped check fails "
              "the run; pass --allow-skip to accept it", file=sys.stderr)
        return 1
    print(f"agc-repro: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
