"""Coded SGD against what users run today — PyTorch DDP — side by side, in one invocation.

    python bench/bench_vs_ddp.py                       # about 2 min on a 2-core CPU
    python bench/bench_vs_ddp.py --skip-a --time-scale 0.1
    python bench/bench_vs_ddp.py --calibrate           # also cluster=loopback measured now

Every run goes through the train app's ``run_training`` (this process is rank 0: DDP's
rank 0, or the parameter server) with worker processes on this machine (gloo, CPU):

(a) **no injected delays**, d ≈ 1M (the MLP 784-1270-10, 1,010,040 parameters), n = 8, a
    few samples per worker: the time per iteration of DDP (ring all-reduce, 2(n−1)/n · d · 4
    bytes per rank) and of the coded parameter server with construction (7), m = 2 (the PS
    sends the d parameters to every worker and receives ⌈d/2⌉ from each): median over the
    iterations after the first few, and the PS's decode share of an iteration.
(b) **time to a fixed training loss under stragglers**: MNIST (n·200 images), the paper's MLP
    (d = 101,770), n = 8, the delay model ``straggler=slowdown`` — worker j computes
    per_sample × (samples it processes) × (r = 10 with probability p = 0.1, else 1) time
    units, drawn from (seed, iteration), the same for every scheme; per_sample = 1/200 makes
    an uncoded (DDP) worker's compute 1 unit, a load-δ coded worker's δ units — slept by the
    workers at ``--time-scale`` seconds per unit. The real compute is kept small (a few ms
    per worker) so that the modelled (slept) time dominates, although the n + 1 processes
    share this machine's cores. Schemes: DDP, uncoded wait-for-all PS, exact FRC (load 4,
    the PS waits for the first n − 3), construction (7) with m = 2 (cyclic, load 2) and m = 4
    (cyclic, load 4), the PS waiting for the first n − 2, optimal decoding divided by α.
    Baselines besides DDP: the uncoded PS waiting for all, **backup workers**
    (``code=uncoded_ignore`` on the PS: it waits for the first n − 2 of the n uncoded
    workers and averages what came, fixed decoding) and **local SGD** (``trainer=local_sgd``:
    n gloo processes with PyTorch's PeriodicModelAverager, period 4: each rank takes 4 local
    steps on its subset, sleeping the same delays, then the n average their parameters).
    Its modelled time is its own clock (the slowest rank's summed delays per period).
    The PS's workers run with ``trainer.abandon_stale=true``: a worker still sleeping when the
    PS has moved on drops that iteration, so every iteration starts afresh as in the delay
    model (otherwise a slow worker's 10× delay spills into the following iterations).

Both parts also print the cost model's predicted iteration time (``cluster=loopback``,
costmodel.py) next to the measured one for every scheme (issue 12's calibration, target
within 25 %): in (b) the slept delays plus a worker's real compute; in (a) a worker's fixed
work per parameter plus 6·d flops per sample. Both take the shared host into account: an
iteration lasts at least the CPU work of all n + 1 processes (compute, decode, the kernel's
copies of every byte at both ends, a cost per message) over the cores; (a) also prints the
critical path alone (a core per process), which is what a cluster would see.

Prints the delay model's parameters, bytes per iteration next to the times, the load
(``uptime``) before and after, and as its last line
``vs DDP: iteration <r1>, time-to-loss speed-up <r2>; best baseline <name>, coded vs it <r3>``
with r1 = (a) coded PS / DDP, r2 = (b) DDP / (7) m=2, and r3 = (b) the best baseline's
time to the loss / the best coded scheme's (measured times; r3 < 1: coding loses).
Targets (issue 9): (a) ≤ 1.5, (b) ≥ 1.5; the numbers are this machine's, not a cluster's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from agc_pipeline.cluster.costmodel import ClusterModel, ddp_iteration_times, ps_iteration_times
from agc_pipeline.coding.stragglers import StragglerDraw, worker_samples
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.train import build_trainer, run_training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least, between  # noqa: E402

N = 8
PER_WORKER = 200  #: MNIST images per data subset in (b)
ITERATION_TARGET, SPEEDUP_TARGET = 1.5, 1.5
DDP = ["trainer=ddp", "code=uncoded_wait", f"assignment.n={N}"]
PS = ["trainer=distributed", "trainer.grad_error=false", "trainer.abandon_stale=true"]
CODE7_M2 = [*PS, "assignment=cyclic", f"assignment.n={N}", "assignment.s=0", "m=2",
            "scheme=random_diagonal", "decoder.rescale=true", "trainer.alpha_samples=300"]
LOCAL_SGD = "local SGD, period 4"
SCHEMES_B: dict[str, list[str]] = {
    "DDP": DDP,
    "uncoded PS, wait for all": [*PS, "code=uncoded_wait", f"assignment.n={N}"],
    "exact FRC, load 4, n-3": [*PS, "assignment=fractional", f"assignment.n={N}",
                               "assignment.s=3", "m=1", "scheme=frc", "straggler.s=3"],
    "backup workers, n-2": [*PS, "code=uncoded_ignore", f"assignment.n={N}", "straggler.s=2"],
    LOCAL_SGD: ["trainer=local_sgd", "code=uncoded_wait", f"assignment.n={N}",
                "trainer.period=4"],
    "(7) m=2, load 2, n-2": [*CODE7_M2, "straggler.s=2"],
    "(7) m=4, load 4, n-2": [*PS, "assignment=cyclic", f"assignment.n={N}", "assignment.s=0",
                             "m=4", "scheme=random_diagonal", "decoder.rescale=true",
                             "trainer.alpha_samples=300", "straggler.s=2"],
}
CODED = "(7) m=2, load 2, n-2"
#: the coded schemes of (b); the others are baselines
CODED_B = ("exact FRC, load 4, n-3", CODED, "(7) m=4, load 4, n-2")


def compose_train(overrides: list[str]):  # noqa: ANN201 - DictConfig
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def run(label: str, overrides: list[str], out: Path) -> tuple[dict[str, Any], list[dict]]:
    """One run through the train app's ``run_training``; (summary, metrics rows)."""
    run_dir = out / "".join(c if c.isalnum() else "_" for c in label)
    started = time.perf_counter()
    summary = run_training(compose_train(overrides), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"  {label:26s} {len(rows)} iterations, {time.perf_counter() - started:5.1f} s end "
          f"to end, final loss {summary['final_train_loss']:.4f}", flush=True)
    return summary, rows


def settled(rows: list[dict], key: str = "iteration_time", skip: int = 3) -> float:
    """Median of ``key`` over the iterations after the first ``skip`` (warm-up)."""
    return statistics.median(r[key] for r in rows[skip:] or rows)


def bytes_per_iteration(summary: dict[str, Any], rows: list[dict]) -> str:
    """The busiest link's traffic per iteration: per rank for DDP, in/out at the PS."""
    if summary["runtime"] == "local_sgd":
        per = summary["total_bytes_per_rank"] / max(summary["iterations"], 1) / 1e6
        return f"{per:.2f} MB per rank (mean: an all-reduce every 4th)"
    if summary["runtime"] == "ddp":
        return f"{summary['ddp']['bytes_per_rank_per_iteration'] / 1e6:.2f} MB per rank"
    into = statistics.mean(r["bytes_received"] for r in rows) / 1e6
    out = statistics.mean(r["bytes_from_ps"] for r in rows) / 1e6
    return f"PS in {into:.2f} + out {out:.2f} MB"


def modelled_times(cfg: Any, iterations: int, time_scale: float,
                   cluster: ClusterModel | None = None, allreduces: int | None = None,
                   ) -> tuple[list[float], list[float]]:
    """The run ``cfg``'s iteration times, built without starting any process: the delay
    model's alone (time units: the draw the runtime's workers sleep, and how long the PS, or
    DDP, waits for it), and the cost model's prediction in seconds (``cluster=loopback``:
    those sleeps plus the real compute, then the PS's broadcast, FIFO uploads of ⌈d/m⌉ values,
    decode and update, or DDP's ring all-reduce, and at least the CPU work over the shared
    cores; costmodel.py). ``cluster``: default ``cluster=loopback``; ``allreduces``: DDP's
    per iteration (default :func:`ddp_allreduces` with one bucket)."""
    trainer = build_trainer(cfg)
    ddp, d, scheme = not trainer.coded, trainer.d, trainer.spec.scheme
    batch = trainer.settings.batch_size or trainer.workload.subset_size
    work = worker_samples(scheme.assignment.matrix, batch)
    cluster = cluster or loopback()
    allreduces = allreduces or ddp_allreduces(cfg, None)
    # the real compute of a worker (its samples: a DDP rank its subset, a coded worker its
    # load), on a core, next to the slept delay, which uses none
    cpu = cluster.worker_compute(work, 6.0 * d, d)
    modelled, predicted = [], []
    for t in range(iterations):
        draw = modelled_draw(trainer, t)
        modelled.append(float(draw.iteration_time))
        compute = np.asarray(draw.finish_times, dtype=np.float64) * time_scale + cpu
        if ddp:
            predicted.append(float(ddp_iteration_times(cluster, compute, d, 4.0, cpu=cpu,
                                                       allreduces=allreduces)))
        else:
            wait = int(np.asarray(draw.survivors).sum())
            predicted.append(float(ps_iteration_times(cluster, compute, wait, d, scheme.m,
                                                      scheme.k, 4.0, 4.0, cpu=cpu)))
    return modelled, predicted


def modelled_draw(trainer: Any, t: int) -> StragglerDraw:
    """Iteration t's straggler draw as the runtime's processes sleep it: a coded runtime's
    (its code's B of iteration t), or DDP's wait-for-all times."""
    if trainer.coded:
        return trainer.coded_part.draw(trainer.coded_part.code.encoding(t), t)
    times = trainer.modelled_times(t)
    return StragglerDraw(np.ones(len(times), dtype=bool), times, float(times.max()))


def loopback() -> ClusterModel:
    """``cluster=loopback`` as configured (its figures were measured on the date it states)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR / "cluster"), version_base="1.3"):
        return instantiate(compose(config_name="loopback"))


def measured_loopback() -> ClusterModel:
    """``cluster=loopback``'s figures measured now by bench_loopback.py (about 25 s): the
    same machine state as the runs that follow."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_loopback as calibrate

    latency, bandwidth, _ = calibrate.measure_links(20, 64)
    flops, per_parameter, _ = calibrate.measure_step(20)
    shared = calibrate.measure_shared_host(N, 20)
    return replace(loopback(), name="loopback, measured now", latency=latency,
                   bandwidth=bandwidth, worker_flops=flops,
                   ps_memory_bandwidth=calibrate.measure_ps_memory_bandwidth(20),
                   step_time_per_parameter=per_parameter,
                   shared_cores=len(os.sched_getaffinity(0)),
                   transfer_cpu_per_byte=shared["transfer_cpu_per_byte"],
                   message_cpu=shared["message_cpu"])


def ddp_allreduces(cfg: Any, summary: dict[str, Any] | None) -> int:
    """DDP's all-reduces per iteration: its gradient buckets (the run's summary; 1 without
    one) and, when every iteration is logged, the training loss's."""
    buckets = ((summary or {}).get("ddp") or {}).get("buckets") or 1
    return int(buckets) + (1 if int(cfg.trainer.get("log_every", 0)) == 1 else 0)


def time_to_loss(rows: list[dict], target: float) -> tuple[float, int] | None:
    """(seconds, iteration) when the parameters first have train_loss ≤ target: the wall
    time of the iterations before (the row's loss is measured before its update)."""
    for r in rows:
        if r["train_loss"] is not None and r["train_loss"] <= target:
            return r["wall_time"] - r["iteration_time"], r["iteration"]
    return None


def part_a(args: argparse.Namespace, out: Path, clusters: list[ClusterModel]) -> float:
    """(a): iteration times without injected delays at d ≈ 1M; returns coded PS / DDP."""
    common = ["dataset=mnist", f"dataset.train_size={N * args.a_samples}",
              "dataset.test_size=10", "model=mlp", f"model.hidden={args.hidden}",
              "straggler=none", "trainer.time_scale=0", f"trainer.iterations={args.a_iterations}",
              "trainer.lr=0.1", "trainer.progress=false", "trainer.eval_every=0",
              "trainer.checkpoint_every=0", f"seed={args.seed}"]
    print(f"\n(a) no injected delays: MLP 784-{args.hidden}-10, n = {N}, {args.a_samples} "
          f"samples per worker, {args.a_iterations} iterations (median after the first 3)",
          flush=True)
    ddp, ddp_rows = run("DDP", [*common, *DDP], out / "a")
    coded, coded_rows = run("(7) m=2 PS", [*common, *CODE7_M2,
                                           "decoder.rescale=false", "trainer.alpha_samples=0"],
                            out / "a")
    t_ddp, t_ps = settled(ddp_rows), settled(coded_rows)
    decode = settled(coded_rows, "decode_time")
    print(f"  d = {ddp['parameters']:,}")
    print(f"  {'scheme':12s} {'s/iter':>7s} {'vs DDP':>7s}  bytes per iteration")
    print(f"  {'DDP':12s} {t_ddp:7.3f} {1.0:7.2f}  {bytes_per_iteration(ddp, ddp_rows)}")
    print(f"  {'(7) m=2 PS':12s} {t_ps:7.3f} {t_ps / t_ddp:7.2f}  "
          f"{bytes_per_iteration(coded, coded_rows)}")
    print(f"  PS decode: median {1e3 * decode:.1f} ms = {100 * decode / t_ps:.1f}% of an "
          f"iteration (target < 5%); coded PS iteration / DDP's = {t_ps / t_ddp:.2f} (target "
          f"≤ {ITERATION_TARGET}: {'met' if t_ps / t_ddp <= ITERATION_TARGET else 'NOT met'})")
    # the cost model (cluster=loopback): a worker's fixed work per parameter and 6·d flops
    # per sample (the coded workers: load 2, twice the samples); the ring, or the PS's traffic,
    # decode and update; and at least the CPU work of all the processes over the shared cores
    d = int(ddp["parameters"])
    allreduces = ddp_allreduces(compose_train([*common, *DDP]), ddp)
    ones = np.ones(N)
    for cluster in clusters:
        ddp_compute = cluster.worker_compute(args.a_samples, 6.0 * d, d, ones)
        ps_compute = cluster.worker_compute(2 * args.a_samples, 6.0 * d, d, ones)
        apart = replace(cluster, shared_cores=None)
        predicted = {
            "DDP": (ddp_iteration_times(cluster, ddp_compute, d, 4.0, allreduces=allreduces),
                    t_ddp, ddp_iteration_times(apart, ddp_compute, d, 4.0,
                                               allreduces=allreduces)),
            "(7) m=2 PS": (ps_iteration_times(cluster, ps_compute, N, d, 2, N, 4.0, 4.0), t_ps,
                           ps_iteration_times(apart, ps_compute, N, d, 2, N, 4.0, 4.0))}
        print(f"  cost model ({cluster.name}: the {N + 1} processes share "
              f"{cluster.shared_cores} cores; DDP {allreduces} all-reduces per iteration) "
              "against the measured median iteration time:")
        for label, (guess, measured, path) in predicted.items():
            print(f"  {label:12s} predicted {float(guess):6.3f} s, measured {measured:6.3f} s: "
                  f"{100 * (float(guess) / measured - 1):+5.1f}% (target within ±25%; the "
                  f"critical path alone, a core per process: {float(path):.3f} s)")
    return t_ps / t_ddp


def part_b(args: argparse.Namespace, out: Path,
           clusters: list[ClusterModel]) -> tuple[float | None, str | None, float | None]:
    """(b): time to the loss target under the delay model; returns (DDP / (7) m=2, the best
    baseline, its time / the best coded scheme's)."""
    delay = ["straggler=slowdown", f"straggler.p={args.p}", f"straggler.r={args.r}",
             f"straggler.per_sample={1 / PER_WORKER}", "straggler.comm_per_unit=0"]
    common = ["dataset=mnist", f"dataset.train_size={N * PER_WORKER}", "dataset.test_size=200",
              "model=paper_mlp", *delay, f"trainer.time_scale={args.time_scale}",
              f"trainer.iterations={args.iterations}", f"trainer.lr={args.lr}",
              "trainer.progress=false", "trainer.eval_every=0", "trainer.checkpoint_every=0",
              f"seed={args.seed}"]
    print(f"\n(b) time to train loss {args.target_loss} under stragglers: MNIST "
          f"{N * PER_WORKER} images, paper MLP, n = {N}, lr {args.lr}, {args.iterations} "
          "iterations\n  delay model (straggler=slowdown, the same draws for every scheme): "
          f"worker compute = per_sample {1 / PER_WORKER:g} x samples processed x (r = {args.r:g}"
          f" with probability p = {args.p:g}, else 1) time units; an uncoded worker (200 "
          f"samples) = 1 unit, load delta = delta units; slept at time_scale = "
          f"{args.time_scale:g} s per unit; the real compute (a few ms per worker) is small "
          "next to it, but the n + 1 processes share this machine's cores", flush=True)
    schemes = {label: overrides for label, overrides in SCHEMES_B.items()
               if label in ("DDP", CODED) or not args.short}
    results = {label: run(label, [*common, *overrides], out / "b")
               for label, overrides in schemes.items()}
    cfgs = {label: compose_train([*common, *overrides]) for label, overrides in schemes.items()}
    allreduces = ddp_allreduces(cfgs["DDP"], results["DDP"][0])
    both = {label: modelled_times(cfg, args.iterations, args.time_scale, clusters[0],
                                  allreduces) for label, cfg in cfgs.items()
            if label != LOCAL_SGD}
    modelled = {label: pair[0] for label, pair in both.items()}
    if LOCAL_SGD in results:  # its own clock: the slowest rank's summed delays per period
        clock = [0.0, *(r["modelled_time"] for r in results[LOCAL_SGD][1])]
        modelled[LOCAL_SGD] = list(np.diff(clock))
    reached = {label: time_to_loss(rows, args.target_loss)
               for label, (_, rows) in results.items()}
    print_table_b(args, results, modelled, reached)
    for cluster in clusters:
        print(f"\n  cost model ({cluster.name}) against the measured mean iteration time:")
        for label, (summary, _) in results.items():
            if label == LOCAL_SGD:
                continue
            predicted = statistics.mean(
                both[label][1] if cluster is clusters[0] else
                modelled_times(cfgs[label], args.iterations, args.time_scale, cluster,
                               allreduces)[1])
            measured = summary["mean_iteration_time"]
            print(f"  {label:26s} predicted {predicted:6.3f} s, measured {measured:6.3f} s: "
                  f"{100 * (predicted / measured - 1):+5.1f}% (target within ±25%)")
    ddp_reached, coded = reached["DDP"], reached[CODED]
    speedup = None if ddp_reached is None or coded is None else ddp_reached[0] / coded[0]
    if speedup is None:
        print(f"  the loss target {args.target_loss} was not reached by "
              f"{'DDP' if ddp_reached is None else CODED}: raise --iterations")
    return (speedup, *best_against_baselines(reached))


def best_against_baselines(reached: dict[str, tuple[float, int] | None],
                           ) -> tuple[str | None, float | None]:
    """The fastest baseline to the loss and its time / the fastest coded scheme's."""
    base = {k: v[0] for k, v in reached.items() if k not in CODED_B and v is not None}
    coded = {k: v[0] for k, v in reached.items() if k in CODED_B and v is not None}
    if not base or not coded:
        return (min(base, key=base.get) if base else None), None
    best = min(base, key=base.get)
    return best, base[best] / min(coded.values())


def print_table_b(args: argparse.Namespace, results: dict[str, Any],
                  modelled: dict[str, list[float]],
                  reached: dict[str, tuple[float, int] | None]) -> None:
    """(b)'s table: measured and modelled time per iteration and to the loss, speed-ups."""
    ddp_reached = reached["DDP"]
    ddp_model = None if ddp_reached is None else \
        sum(modelled["DDP"][:ddp_reached[1]]) * args.time_scale
    print(f"\n  {'':26s} {'measured':^33s}  {'modelled (slept) only':^24s}")
    print(f"  {'scheme':26s} {'s/iter':>7s} {'to loss':>8s} {'iters':>5s} {'speed-up':>9s}  "
          f"{'s/iter':>7s} {'to loss':>7s} {'speed-up':>8s}  bytes per iteration")
    for label, (summary, rows) in results.items():
        hit = reached[label]
        model = [u * args.time_scale for u in modelled[label]]
        seconds = f"{hit[0]:8.1f}" if hit else f"{'-':>8s}"
        speedup = (f"{ddp_reached[0] / hit[0]:8.2f}x" if hit and ddp_reached
                   else f"{'-':>9s}")
        model_loss = None if hit is None else sum(model[:hit[1]])
        model_speedup = (f"{ddp_model / model_loss:7.2f}x" if model_loss and ddp_model
                         else f"{'-':>8s}")
        print(f"  {label:26s} {summary['mean_iteration_time']:7.3f} {seconds} "
              f"{hit[1] if hit else '-':>5} {speedup}  {statistics.mean(model):7.3f} "
              f"{'-' if model_loss is None else f'{model_loss:7.1f}':>7s} {model_speedup}  "
              f"{bytes_per_iteration(summary, rows)}")
    print("  (speed-up: DDP's time to the loss / the scheme's. modelled: the delay model's "
          "time alone — the PS's (n − s)-th\n  arrival, or the slowest of the n workers — "
          "over the same iterations: what the simulated trainer's clock shows; the measured\n"
          "  time adds the real compute, the messages and the PS's decode and logging on "
          "this machine's shared cores; local SGD's modelled time: the slowest rank's delays "
          "summed over each period)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=at_least(1, int), default=1270,
                        help="(a): MLP hidden units")
    parser.add_argument("--a-samples", type=at_least(1, int), default=16,
                        help="(a): samples per worker")
    parser.add_argument("--a-iterations", type=at_least(1, int), default=12)
    parser.add_argument("--iterations", type=at_least(1, int), default=42,
                        help="(b): SGD iterations")
    parser.add_argument("--time-scale", type=at_least(0, strict=True), default=0.1,
                        help="(b): s per unit")
    parser.add_argument("--p", type=between(0, 1), default=0.1)
    parser.add_argument("--r", type=at_least(1), default=10.0)
    parser.add_argument("--lr", type=at_least(0, strict=True), default=0.5)
    parser.add_argument("--target-loss", type=at_least(0, strict=True), default=0.9)
    parser.add_argument("--seed", type=at_least(0, int), default=0)
    parser.add_argument("--short", action="store_true",
                        help="(b): only DDP and (7) m=2 (e.g. with a larger --time-scale)")
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--calibrate", action="store_true",
                        help="also predict with cluster=loopback's figures measured now "
                             "(bench_loopback.py, about 25 s more)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_vs_ddp_"))
    started = time.perf_counter()
    print(f"bench_vs_ddp: gloo on this machine's CPU, n = {N}; {load()}", flush=True)
    clusters = [loopback()]
    if args.calibrate:
        print("calibrating cluster=loopback now (bench_loopback.py) ...", flush=True)
        clusters.append(measured_loopback())
        now = clusters[-1]
        print(f"  measured now: latency {now.latency * 1e6:.0f} us, bandwidth "
              f"{now.bandwidth / 1e9:.2f} GB/s, {now.worker_flops / 1e9:.0f} GFLOP/s + "
              f"{now.step_time_per_parameter * 1e9:.1f} ns per parameter, "
              f"{now.transfer_cpu_per_byte * 1e9:.3f} CPU ns per byte, "
              f"{now.message_cpu * 1e6:.1f} CPU us per message", flush=True)
    ratio = None if args.skip_a else part_a(args, out, clusters)
    speedup, baseline, against = (None, None, None) if args.skip_b else \
        part_b(args, out, clusters)
    print(f"\n{time.perf_counter() - started:.0f} s in all; {load()}; run dirs: {out}")
    iteration = "n/a" if ratio is None else f"{ratio:.2f}"
    faster = "n/a" if speedup is None else f"{speedup:.2f}"
    versus = "n/a" if against is None else f"{against:.2f}"
    print(f"vs DDP: iteration {iteration}, time-to-loss speed-up {faster}; best baseline "
          f"{baseline or 'n/a'}, coded vs it {versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
