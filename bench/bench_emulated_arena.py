"""The arena's stragglers on the emulated links: time to a target test accuracy of DDP, backup
workers, local SGD and sharded coded SGD, each on real processes, one per network namespace
of one emulated star (bench/emulated.py: tbf-shaped links, both directions), env://
rendezvous (bench/bench_emulated.py's ``run_ranks``).

    python bench/bench_emulated_arena.py                 # stall_frequent, 100 Mbit/s, n = 4: ~6 min
    python bench/bench_emulated_arena.py --regime stall --stall-s 1.0 --ms 2
    python bench/bench_emulated_arena.py --n 8 --target 0.8 --out /tmp/arena_n8

Runs (same data, seed, lr, samples per worker and minibatch; MNIST, the MLP 784-``hidden``-10:
d = 1,009,660 at hidden = 1270, so the links matter; plain SGD; ``--iterations`` iterations
with the test accuracy every ``--eval-every``; the arena's straggler ``--regime`` from
conf/regime/, really slept by every worker process):

* ``DDP``: ``trainer=ddp code=uncoded_wait`` (waits for all n ranks, ring all-reduce);
* ``backup workers``: conf/mitigation/backup_workers.yaml (``code=uncoded_ignore``: the
  first n − s of n uncoded gradients, averaged) on the sharded runtime (``trainer=sharded``:
  each owner takes the first n − s slices of its shard; no parameter server);
* ``local SGD``: conf/mitigation/local_sgd.yaml (period 4, 10 synchronous warm-up steps) on
  ``trainer=local_sgd`` (PyTorch's PeriodicModelAverager; the test accuracy is rank 0's
  model, 0-3 local steps after the latest average);
* ``coded (7) m=<m>``: conf/mitigation/code7_m<m>.yaml (construction (7) on the cyclic
  assignment of load 1 + m, optimal decoding from the first n − s) on ``trainer=sharded``;
  where 1 + m > n the load is capped at n (``assignment.s=0``: load m), and the label says so.

Every run ignores (where it can) the same ``--s`` slowest workers (default 1 of 4; the
arena: 2 of 12). Stragglers: ``regime=<regime>`` with the modelled compute set to zero
(``straggler.per_step=0 straggler.per_sample=1e-9``, as bench/arena_crosscheck.py: the
processes compute for real), so a worker sleeps only its stall; ``trainer.time_scale`` =
``--stall-s`` / the regime's stall duration, so a stall lasts ``--stall-s`` seconds
(default 0.5 s: about one DDP iteration on these links; the arena's 0.06 s is ~17 steps of its
3.5 ms CNN compute, which would be ~8 s here). Regimes without stalls (slowdown, delay,
persistent) multiply the compute model instead: for those the arena's compute model is kept
(2.25 ms + 0.126 ms per image, conf/experiment/arena.yaml) and slept at ``--time-scale``
(default 1: real seconds) on top of the real compute.

Time to accuracy: a row with ``test_accuracy`` at iteration t evaluates the parameters after
t iterations, so it is reached at the end of iteration t − 1: that row's ``wall_time`` less
its ``iteration_time`` (``wall_time`` is the sum of the iterations' times: the start-up and
checkpoints are excluded; the earlier evaluations are included, rank 0's evaluation of the
test set: its in-process cost is printed). The run's final accuracy (summary.json, after all
iterations, at its ``wall_time``) counts as one more point. s/iteration: the mean
``iteration_time`` of the rows without an evaluation. Last line:
``emulated arena <regime> <rate>mbit n=<n>: sharded coded <t>x DDP time-to-accuracy, backup
<t>x, local SGD <t>x`` (ratios of the times to the target; < 1: sooner than DDP; the best m
for sharded coded; ``never``: not reached in the run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated  # noqa: E402
from bench_emulated import compose_train, load, run_ranks  # noqa: E402

#: the arena's compute model (conf/experiment/arena.yaml), for regimes without stalls
ARENA_PER_STEP, ARENA_PER_SAMPLE = 0.00225, 0.000126
STALL_REGIMES = ("stall", "stall_frequent")


@dataclass(frozen=True)
class Reached:
    """When a run first reached the target: ``seconds`` of training (wall_time), after
    ``iterations`` iterations, at test accuracy ``accuracy``."""

    seconds: float
    iterations: int
    accuracy: float


@dataclass(frozen=True)
class Outcome:
    """One run's row of the table."""

    label: str
    runtime: str
    reached: Reached | None
    s_per_iteration: float
    final_accuracy: float | None
    iterations: int
    evaluations: int  #: evaluations up to the target (or in the run)


def accuracy_points(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None
                    ) -> list[tuple[int, float, float]]:
    """``(iterations done, seconds of training, test accuracy)`` of every evaluation: a row
    with ``test_accuracy`` at iteration t evaluates the parameters after t iterations, done at
    that row's ``wall_time − iteration_time``; the summary's final accuracy (after all its
    ``iterations``, at its ``wall_time``) is the last point."""
    points = [(int(r["iteration"]), float(r["wall_time"]) - float(r["iteration_time"]),
               float(r["test_accuracy"]))
              for r in rows if r.get("test_accuracy") is not None]
    if summary and summary.get("test_accuracy") is not None and summary.get("wall_time"):
        done = int(summary["iterations"])
        if not points or points[-1][0] < done:
            points.append((done, float(summary["wall_time"]), float(summary["test_accuracy"])))
    return points


def time_to_accuracy(rows: list[dict[str, Any]], target: float,
                     summary: dict[str, Any] | None = None) -> Reached | None:
    """The first evaluation at test accuracy ≥ ``target`` (:func:`accuracy_points`), or None."""
    for done, seconds, accuracy in accuracy_points(rows, summary):
        if accuracy >= target:
            return Reached(seconds, done, accuracy)
    return None


def outcome(label: str, rows: list[dict[str, Any]], summary: dict[str, Any],
            target: float) -> Outcome:
    """A run's table row from its metrics rows and summary."""
    reached = time_to_accuracy(rows, target, summary)
    plain = [float(r["iteration_time"]) for r in rows if r.get("test_accuracy") is None]
    per_iteration = statistics.mean(plain) if plain else math.nan
    limit = reached.iterations if reached else int(summary.get("iterations", len(rows)))
    evaluations = sum(1 for r in rows
                      if r.get("test_accuracy") is not None and int(r["iteration"]) < limit)
    return Outcome(label, str(summary.get("runtime")), reached, per_iteration,
                   summary.get("test_accuracy"), int(summary.get("iterations", len(rows))),
                   evaluations)


def _ratio(t: Reached | None, base: Reached | None) -> str:
    if t is None:
        return "never"
    if base is None:
        return "n/a"
    return f"{t.seconds / base.seconds:.2f}x"


def table(outcomes: list[Outcome], target: float) -> list[str]:
    """The table's lines: one per run, DDP (the first) the baseline."""
    base = outcomes[0].reached
    lines = [f"  {'run':24s} {'runtime':9s} {'to acc':>8s} {'vs DDP':>7s} {'iters':>6s} "
             f"{'s/iter':>7s} {'final acc':>9s}   (target test accuracy {target:g})"]
    for o in outcomes:
        to = f"{o.reached.seconds:7.1f}s" if o.reached else "   never"
        iters = f"{o.reached.iterations:6d}" if o.reached else f"{'>' + str(o.iterations):>6s}"
        final = "-" if o.final_accuracy is None else f"{o.final_accuracy:.3f}"
        lines.append(f"  {o.label:24s} {o.runtime:9s} {to:>8s} {_ratio(o.reached, base):>7s} "
                     f"{iters} {o.s_per_iteration:7.3f} {final:>9s}")
    return lines


def last_line(outcomes: list[Outcome], regime: str, rate_mbit: float, n: int) -> str:
    """``emulated arena <regime> <rate>mbit n=<n>: sharded coded <t>x DDP time-to-accuracy,
    backup <t>x, local SGD <t>x`` (the best coded run; ``never`` where not reached)."""
    by = {o.label: o for o in outcomes}
    base = by["DDP"].reached
    coded = [o.reached for o in outcomes if o.label.startswith("coded")]
    best = min((r for r in coded if r is not None), key=lambda r: r.seconds, default=None)
    backup = by.get("backup workers")
    local = by.get("local SGD")
    return (f"emulated arena {regime} {rate_mbit:g}mbit n={n}: sharded coded "
            f"{_ratio(best, base) if coded else 'n/a'} DDP time-to-accuracy, backup "
            f"{_ratio(backup.reached, base) if backup else 'n/a'}, local SGD "
            f"{_ratio(local.reached, base) if local else 'n/a'}")


def runs(n: int, s: int, ms: list[int]) -> dict[str, list[str]]:
    """label -> overrides of each runtime (world size n for all of them)."""
    out = {"DDP": ["trainer=ddp", "code=uncoded_wait"],
           "backup workers": ["mitigation=backup_workers", "trainer=sharded"],
           "local SGD": ["mitigation=local_sgd", "trainer=local_sgd"]}
    for m in ms:
        if 1 + m <= n:
            out[f"coded (7) m={m}"] = [f"mitigation=code7_m{m}", "trainer=sharded",
                                       "assignment.s=1"]
        else:  # load 1 + m exceeds n: load m on every worker
            out[f"coded (7) m={m}, load {m}"] = [f"mitigation=code7_m{m}", "trainer=sharded",
                                                 "assignment.s=0"]
    return {label: [*overrides, f"assignment.n={n}", f"straggler.s={s}"]
            for label, overrides in out.items()}


def straggler_overrides(regime: str, stall_s: float, time_scale: float | None
                        ) -> tuple[list[str], str]:
    """The regime's overrides and a description of what is slept."""
    straggler = compose_train([f"regime={regime}"]).straggler
    if regime in STALL_REGIMES or "duration" in straggler:
        scale = time_scale if time_scale is not None else stall_s / float(straggler.duration)
        return ([f"regime={regime}", "straggler.per_step=0", "straggler.per_sample=1e-9",
                 f"trainer.time_scale={scale:.6g}"],
                f"regime {regime}: p = {straggler.p:g} per worker and step, stalls of "
                f"{float(straggler.duration) * scale:.3g} s slept (time_scale {scale:.4g}); "
                "compute real, not modelled")
    scale = 1.0 if time_scale is None else time_scale
    return ([f"regime={regime}", f"straggler.per_step={ARENA_PER_STEP}",
             f"straggler.per_sample={ARENA_PER_SAMPLE}", f"trainer.time_scale={scale:g}"],
            f"regime {regime}: the arena's compute model (2.25 ms + 0.126 ms per image) x the "
            f"regime's factors slept at time_scale {scale:g}, on top of the real compute")


def common_overrides(args: argparse.Namespace) -> list[str]:
    return ["dataset=mnist", f"dataset.train_size={args.n * args.samples}",
            f"dataset.test_size={args.test_size}", "model=mlp", f"model.hidden={args.hidden}",
            "optimizer=sgd", f"trainer.lr={args.lr}", f"trainer.batch_size={args.batch}",
            f"trainer.iterations={args.iterations}", f"trainer.eval_every={args.eval_every}",
            "trainer.log_every=1", "trainer.progress=false", "trainer.checkpoint_every=0",
            f"seed={args.seed}"]


def evaluation_seconds(overrides: list[str], repeats: int = 3) -> float:
    """Rank 0's evaluation of the test set, measured in this process (1 thread, median)."""
    import torch

    from agc_pipeline.train import build_trainer

    torch.set_num_threads(1)
    runtime = build_trainer(compose_train(overrides))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.workload.evaluate()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(args: argparse.Namespace, out: Path) -> int:
    sleeps, described = straggler_overrides(args.regime, args.stall_s, args.time_scale)
    common = [*common_overrides(args), *sleeps]
    plan = runs(args.n, args.s, args.ms)
    for overrides in plan.values():  # refuse a bad configuration before building anything
        compose_train([*common, *overrides])
    eval_s = evaluation_seconds([*common, *plan["DDP"]])
    print(f"bench_emulated_arena: {args.rate_mbit:g} Mbit/s, n = {args.n}, ignore s = {args.s}, "
          f"MLP 784-{args.hidden}-10, {args.samples} samples per worker, minibatch "
          f"{args.batch}, lr {args.lr:g}, {args.iterations} iterations, test accuracy on "
          f"{args.test_size} images every {args.eval_every} ({1e3 * eval_s:.0f} ms each in "
          f"process); {described}; {load()}", flush=True)
    outcomes = []
    with emulated.Star(args.n, args.rate_mbit, args.delay_ms) as star:
        print(f"  {star.describe()}", flush=True)
        for i, (label, overrides) in enumerate(plan.items()):
            slug = "".join(c if c.isalnum() else "_" for c in label)
            run_dir = out / slug
            argv = [sys.executable, "-m", "agc_pipeline.train", *common, *overrides,
                    f"hydra.run.dir={run_dir}"]
            started = time.perf_counter()
            try:
                run_ranks(star, args.n, argv, args.port + i, out / f"{slug}_logs",
                          args.timeout_s)
            except RuntimeError as err:  # say so in the table, run the others
                print(f"  {label}: failed: {str(err)[:2000]}", flush=True)
                continue
            rows = [json.loads(line) for line in
                    (run_dir / "metrics.jsonl").read_text().splitlines()]
            summary = json.loads((run_dir / "summary.json").read_text())
            result = outcome(label, rows, summary, args.target)
            outcomes.append(result)
            print(f"  {label}: {len(rows)} iterations, {time.perf_counter() - started:5.1f} s "
                  f"end to end, {result.s_per_iteration:.3f} s/iteration, final accuracy "
                  f"{result.final_accuracy}", flush=True)
    if not outcomes or outcomes[0].label != "DDP":
        print("bench_emulated_arena: DDP did not run; no table", file=sys.stderr)
        return 1
    print()
    print("\n".join(table(outcomes, args.target)))
    print(f"  (to acc: wall_time at the end of the iteration whose parameters first reached "
          f"the target, evaluations included: {1e3 * eval_s:.0f} ms each in process, one per "
          f"{args.eval_every} iterations; s/iter: the mean over the iterations without one)")
    print(f"\n{load()}; run dirs: {out}")
    print(last_line(outcomes, args.regime, args.rate_mbit, args.n))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", default="stall_frequent", help="conf/regime/ name")
    parser.add_argument("--stall-s", type=emulated.at_least(0, strict=True), default=0.5,
                        help="stall regimes: seconds a stall lasts (sets trainer.time_scale)")
    parser.add_argument("--time-scale", type=emulated.at_least(0, strict=True), default=None,
                        help="seconds slept per straggler time unit (overrides --stall-s)")
    parser.add_argument("--rate-mbit", type=emulated.at_least(0, strict=True), default=100.0)
    parser.add_argument("--delay-ms", type=emulated.at_least(0), default=0.0,
                        help="one way (needs netem)")
    parser.add_argument("--n", type=emulated.at_least(2, int), default=4,
                        help="workers (processes)")
    parser.add_argument("--s", type=emulated.at_least(0, int), default=1,
                        help="slowest workers ignored")
    parser.add_argument("--ms", type=emulated.at_least(1, int), nargs="+", default=[2, 4],
                        help="construction (7)'s m (conf/mitigation/code7_m<m>.yaml)")
    parser.add_argument("--hidden", type=emulated.at_least(1, int), default=1270,
                        help="d = 795·hidden + 10")
    parser.add_argument("--samples", type=emulated.at_least(1, int), default=1000,
                        help="training images per worker")
    parser.add_argument("--batch", type=emulated.at_least(1, int), default=32,
                        help="minibatch per worker and step")
    parser.add_argument("--test-size", type=emulated.at_least(1, int), default=1000)
    parser.add_argument("--lr", type=emulated.at_least(0, strict=True), default=0.3)
    parser.add_argument("--iterations", type=emulated.at_least(1, int), default=60)
    parser.add_argument("--eval-every", type=emulated.at_least(1, int), default=5)
    parser.add_argument("--target", type=float, default=0.85, help="test accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=emulated.at_least(1024, int), default=29600)
    parser.add_argument("--timeout-s", type=emulated.at_least(0, strict=True), default=400.0,
                        help="per run")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    args = parser.parse_args(argv)
    from agc_pipeline.conf_path import CONFIG_DIR

    regimes = sorted(p.stem for p in (CONFIG_DIR / "regime").glob("*.yaml"))
    if args.regime not in regimes:
        parser.error(f"--regime {args.regime}: not in conf/regime/ ({', '.join(regimes)})")
    ms = sorted(int(p.stem.removeprefix("code7_m"))
                for p in (CONFIG_DIR / "mitigation").glob("code7_m*.yaml"))
    if not set(args.ms) <= set(ms):
        parser.error(f"--ms {' '.join(map(str, args.ms))}: construction (7) has mitigations "
                     f"for m in {ms} only (conf/mitigation/code7_m<m>.yaml)")
    return emulated.run_bench("bench_emulated_arena", args.out, lambda out: bench(args, out))


if __name__ == "__main__":
    sys.exit(main())
