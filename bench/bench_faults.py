"""Faults on real links: DDP, the parameter server and the sharded runtime on the emulated
star (bench/emulated_faults.py), one process per namespace, a fault injected mid-run.

    python bench/bench_faults.py                          # 3 runtimes x 3 faults: ~10 min
    python bench/bench_faults.py --runtimes distributed --faults master_down

Runtimes (``--n`` workers, MNIST, the MLP 784-``hidden``-10, ``--samples`` per worker, no
injected stragglers, ``trainer.timeout_s`` = ``--timeout-s``, a checkpoint every 5
iterations): ``ddp`` (``code=uncoded_wait``, rank r in node r), ``distributed`` (the PS in
node 0, worker j in node j + 1; ``code=cyclic_random_diagonal``, assignment s = 1, the PS
takes the first n − 1 messages) and ``sharded`` (the same code, node r = rank r, every
owner proceeds at n − 1 slices). Faults, injected once rank 0's ``metrics.jsonl`` has
``--at`` rows (the bench polls it every 0.1 s):

* ``worker_down``: the last worker's link down for ``--down-s`` seconds, then up;
* ``worker_slow``: the last worker's link at a tenth of its rate for the rest of the run;
* ``master_down``: rank 0's link (the PS's, or DDP's/sharded's rank 0) down for good.

Per case: how the run ended — ``finished`` (every rank exit 0), ``stopped`` (rank 0 exit 4
with a checkpoint: its iteration), ``HUNG`` (killed by the outer timeout, ``--case-timeout-s``)
— each rank's exit status and seconds from the fault to its exit, the metrics rows, the
checkpoint's iteration, whether any rank printed a traceback, ``summary.json``'s status and
rank 0's last stderr line; seconds per iteration: the median before the fault, the slowest
from the fault on (``worst``: the stall) and the median of the rows that appeared while the
fault lasted (their count). A table at the end; the run dirs
and every rank's stdout/stderr stay under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated  # noqa: E402
import emulated_faults  # noqa: E402
from bench_emulated import load, rank_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("ddp", "distributed", "sharded")
FAULTS = ("worker_down", "worker_slow", "master_down")


@dataclass
class Case:
    """One runtime x fault: what happened."""

    runtime: str
    fault: str
    outcome: str = "?"
    exits: list[int | None] = field(default_factory=list)
    exit_after: list[float | None] = field(default_factory=list)  #: s from the fault
    rows: int = 0
    checkpoint: int | None = None
    traceback: bool = False
    last_line: str = ""
    before: float | None = None  #: median s/iteration before the fault
    during: list[float] = field(default_factory=list)  #: iterations ended during the fault
    worst: float | None = None  #: the slowest iteration from the fault on (the stall)
    fault_at: int | None = None  #: rows when the fault started
    status: str = "-"  #: summary.json's status (and dead workers), "-" without one


def overrides(runtime: str, args: argparse.Namespace) -> tuple[list[str], int]:
    """The run's overrides and world size."""
    n = args.n
    common = ["dataset=mnist", f"dataset.train_size={n * args.samples}",
              "dataset.test_size=10", "model=mlp", f"model.hidden={args.hidden}",
              "straggler=none", "trainer.time_scale=0", f"trainer.iterations={args.iterations}",
              "trainer.lr=0.1", "trainer.progress=false", "trainer.eval_every=0",
              "trainer.checkpoint_every=5", f"trainer.timeout_s={args.timeout_s:g}",
              f"trainer.startup_timeout_s={args.startup_timeout_s:g}", "seed=0"]
    coded = ["code=cyclic_random_diagonal", f"assignment.n={n}", "assignment.s=1",
             "trainer.s=1", "decoder.rescale=false", "trainer.alpha_samples=0"]
    if runtime == "ddp":
        return [*common, "trainer=ddp", "code=uncoded_wait", f"assignment.n={n}"], n
    if runtime == "distributed":
        return [*common, "trainer=distributed", "trainer.grad_error=false", *coded], n + 1
    return [*common, "trainer=sharded", *coded], n


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def checkpoint_iteration(run_dir: Path) -> int | None:
    """The iteration of ``checkpoint.pt`` (the next to run), None without one."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("iteration"), int):
                return int(item["iteration"])
            stack.extend(v for v in item.values() if isinstance(v, dict))
    return -1


class Fault:
    """Injects one fault into ``node``'s link and lifts it (where it is lifted)."""

    def __init__(self, star: emulated_faults.FaultyStar, kind: str, node: int,
                 down_s: float) -> None:
        self.star, self.kind, self.node, self.down_s = star, kind, node, down_s
        self.started: float | None = None
        self.ended: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        if self.kind == "worker_slow":
            self.star.set_rate(self.node, self.star.rate_mbit / 10)
        else:
            self.star.link_down(self.node)

    def tick(self, now: float) -> None:
        """Lift a timed fault once its time is over."""
        if (self.kind == "worker_down" and self.started is not None and self.ended is None
                and now - self.started >= self.down_s):
            self.star.link_up(self.node)
            self.ended = now


def run_case(star: emulated_faults.FaultyStar, runtime: str, fault_kind: str,
             args: argparse.Namespace, out: Path, port: int) -> Case:
    case = Case(runtime, fault_kind)
    ovr, world = overrides(runtime, args)
    node = 0 if fault_kind == "master_down" else world - 1
    run_dir = out / f"{runtime}_{fault_kind}"
    logs = run_dir.parent / f"{run_dir.name}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "agc_pipeline.train", *ovr, f"hydra.run.dir={run_dir}"]
    procs, files = [], []
    for rank in range(world):
        err = open(logs / f"rank{rank}.err", "w")  # noqa: SIM115 - closed below
        std = open(logs / f"rank{rank}.out", "w")  # noqa: SIM115 - closed below
        files += [err, std]
        env = {**rank_env(star, rank, world, port),
               "AGC_STARTUP_TIMEOUT_S": f"{args.startup_timeout_s:g}"}
        procs.append(star.popen(rank, argv, env=env, cwd=ROOT, stdout=std, stderr=err))
    fault = Fault(star, fault_kind, node, args.down_s)
    seen: dict[int, float] = {}  #: metrics row index -> when the bench saw it
    exited: dict[int, float] = {}
    deadline = time.monotonic() + args.case_timeout_s
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            rows = read_rows(run_dir / "metrics.jsonl")
            for i in range(len(rows)):
                seen.setdefault(i, now)
            if fault.started is None and len(rows) >= args.at:
                case.fault_at = len(rows)
                fault.start()
            fault.tick(now)
            for rank, proc in enumerate(procs):
                if proc.poll() is not None and rank not in exited:
                    exited[rank] = now
            if len(exited) == world:
                break
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for fh in files:
            fh.close()
        if fault_kind == "worker_slow":
            star.set_rate(node, star.rate_mbit)
        elif fault.ended is None:
            star.link_up(node)
    return summarize(case, procs, exited, fault, read_rows(run_dir / "metrics.jsonl"), seen,
                     run_dir, logs)


def summarize(case: Case, procs: list[subprocess.Popen], exited: dict[int, float],
              fault: Fault, rows: list[dict[str, Any]], seen: dict[int, float],
              run_dir: Path, logs: Path) -> Case:
    case.exits = [proc.returncode if rank in exited else None
                  for rank, proc in enumerate(procs)]
    start = fault.started
    case.exit_after = [None if start is None or rank not in exited else exited[rank] - start
                       for rank in range(len(procs))]
    case.rows = len(rows)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        dead = summary.get("dead_workers") or []
        case.status = str(summary.get("status")) + (f", dead {dead}" if dead else "")
    except (OSError, ValueError):
        pass
    case.checkpoint = checkpoint_iteration(run_dir)
    errs = [(logs / f"rank{r}.err").read_text(errors="replace") for r in range(len(procs))]
    case.traceback = any("Traceback (most recent call last)" in e for e in errs)
    lines = [line for line in errs[0].splitlines()
             if line.strip() and not line.startswith("[W")]  # c10d's hostname warnings
    case.last_line = lines[-1][:160] if lines else ""
    times = [r.get("iteration_time") for r in rows]
    if start is not None and case.fault_at is not None:
        before = [t for t in times[1:case.fault_at] if t is not None]
        case.before = statistics.median(before) if before else None
        end = fault.ended if fault.ended is not None else float("inf")
        case.during = [times[i] for i in range(case.fault_at, len(rows))
                       if times[i] is not None and seen.get(i, 0.0) <= end + 0.2]
        after = [t for t in times[case.fault_at:] if t is not None]
        case.worst = max(after) if after else None
    if None in case.exits:
        case.outcome = "HUNG"
    elif all(code == 0 for code in case.exits):
        case.outcome = "finished"
    elif case.exits[0] == 4 and case.checkpoint is not None:
        case.outcome = "stopped"
    else:
        case.outcome = "failed"
    return case


def report(case: Case) -> str:
    exits = " ".join("-" if c is None else str(c) for c in case.exits)
    after = " ".join("-" if a is None else f"{a:.0f}" for a in case.exit_after)
    before = "-" if case.before is None else f"{case.before:.3f}"
    worst = "-" if case.worst is None else f"{case.worst:.2f}"
    during = ("-" if not case.during else
              f"{statistics.median(case.during):.3f} ({len(case.during)})")
    ckpt = "-" if case.checkpoint is None else str(case.checkpoint)
    return (f"  {case.runtime:11s} {case.fault:11s} {case.outcome:8s} {exits:9s} {after:14s} "
            f"{case.rows:4d} {ckpt:>4s} {'yes' if case.traceback else 'no':3s} {before:>6s} "
            f"{worst:>6s} {during}\n      summary: {case.status}; rank 0: {case.last_line}")


def bench(args: argparse.Namespace, out: Path) -> int:
    print(f"bench_faults: {args.rate_mbit:g} Mbit/s, n = {args.n}, MLP 784-{args.hidden}-10, "
          f"{args.iterations} iterations, trainer.timeout_s = {args.timeout_s:g}, fault at row "
          f"{args.at}, link down {args.down_s:g} s, outer timeout {args.case_timeout_s:g} s; "
          f"{load()}", flush=True)
    cases = []
    with emulated_faults.FaultyStar(args.n + 1, args.rate_mbit) as star:
        print(f"  {star.describe()}", flush=True)
        port = args.port
        for runtime in args.runtimes:
            for fault in args.faults:
                started = time.monotonic()
                case = run_case(star, runtime, fault, args, out, port)
                port += 1
                cases.append(case)
                print(f"{report(case)}\n      ({time.monotonic() - started:.0f} s; {load()})",
                      flush=True)
    print(f"\n  {'runtime':11s} {'fault':11s} {'outcome':8s} {'exits':9s} {'s to exit':14s} "
          f"{'rows':>4s} {'ckpt':>4s} {'tb':3s} {'before':>6s} "
          f"{'worst':>6s} during the fault: median (rows)")
    for case in cases:
        print(report(case))
    print(f"\n{load()}; run dirs: {out}")
    bad = [f"{c.runtime}/{c.fault}" for c in cases if c.outcome in ("HUNG", "failed")
           or c.traceback]
    print(f"faults: {len(cases) - len(bad)} of {len(cases)} cases survived or stopped cleanly"
          + (f"; not: {' '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--n", type=emulated.at_least(2, int), default=4,
                        help="workers (DDP/sharded ranks)")
    parser.add_argument("--rate-mbit", type=emulated.at_least(0, strict=True), default=100.0)
    parser.add_argument("--hidden", type=emulated.at_least(1, int), default=128,
                        help="d = 795·hidden + 10")
    parser.add_argument("--samples", type=emulated.at_least(1, int), default=16,
                        help="samples per worker")
    parser.add_argument("--iterations", type=emulated.at_least(1, int), default=80)
    parser.add_argument("--at", type=emulated.at_least(0, int), default=5,
                        help="inject after this many rows")
    parser.add_argument("--down-s", type=emulated.at_least(0, strict=True), default=5.0,
                        help="worker_down: seconds")
    parser.add_argument("--timeout-s", type=emulated.at_least(0, strict=True), default=20.0,
                        help="trainer.timeout_s")
    parser.add_argument("--startup-timeout-s", type=emulated.at_least(0, strict=True),
                        default=120.0)
    parser.add_argument("--case-timeout-s", type=emulated.at_least(0, strict=True), default=150.0,
                        help="outer, per case")
    parser.add_argument("--port", type=emulated.at_least(1024, int), default=29600)
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    args = parser.parse_args(argv)
    return emulated.run_bench("bench_faults", args.out, lambda out: bench(args, out))


if __name__ == "__main__":
    sys.exit(main())
