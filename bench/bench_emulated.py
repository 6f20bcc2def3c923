"""DDP and the parameter server on an emulated cluster: one process per network namespace of
an emulated star (bench/emulated.py: tbf-shaped links, both directions), env:// rendezvous.

    python bench/bench_emulated.py                       # 100 Mbit/s, n = 4, d ≈ 1M: minutes
    python bench/bench_emulated.py --n 8 --ms 1 2 4 --iterations 10
    python bench/bench_emulated.py --calibrate           # link figures for conf/cluster/
    python bench/bench_emulated.py --runtimes PS --broadcast concurrent sequential

Runs (no stragglers, MNIST, the MLP 784-``hidden``-10: d = 1,009,660 at hidden = 1270,
``--samples`` per worker): DDP (``trainer=ddp code=uncoded_wait``, rank r in node r), the
PS (``trainer=distributed``, the PS in node 0, worker j in node j + 1) and the sharded
coded aggregation (``trainer=sharded``, node r in node r) with m = 1 (the uncoded
wait-for-all code) and m = 2, 4 (construction (7): ``assignment=cyclic``, load m,
``scheme=random_diagonal``). Every rank runs ``python -m agc_pipeline.train`` in its
namespace with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (node 0), ``MASTER_PORT`` and
``GLOO_SOCKET_IFNAME=eth0``; rank 0 writes the run dir. Seconds per iteration: the median
``iteration_time`` of ``metrics.jsonl`` after the first 3 iterations (start-up excluded).

Prediction: the cost model (costmodel.py ``ddp_iteration_times``/``ps_iteration_times``/
``sharded_iteration_times``)
with ``--cluster`` (default ``emulated_100mbit``; its bandwidth scaled by ``--rate-mbit`` /
100), each worker's compute from its samples (``worker_compute``), and the shared-host
bound (all processes share this host's cores). Last line:
``emulated <rate> n=<n> d=<d>: sharded <t_sh/t_DDP>x DDP, PS <t_PS/t_DDP>x DDP, model
error <e>%`` (ratios of seconds per iteration, each runtime's best m; e: the largest
|predicted/measured − 1| over the runs, with its sign). The PS is predicted as it really
sends: ``trainer.broadcast=concurrent`` (the default) as the model's ``concurrent`` (all n
copies posted at once share its link, so every worker starts after n copies), ``PS seq``
runs (``--broadcast sequential``: one copy after another) as ``unicast`` (the j-th worker
starting after j + 1 copies); the table also shows the ``unicast`` prediction of every PS
run (``one by one``).

``--calibrate`` (separate from the runs it predicts; about a minute): plain gloo point-to-
point ping-pongs of 4 B-4 MB between nodes 0 and 1 (one-way = half the median round trip,
latency: the 4-byte one; bandwidth: the slope over 1-4 MB, as the token bucket's 32 KiB burst
bends the line below), a train of 64 tiny sends (per-message cost), and
all-reduces over n nodes against the ring model with the fitted figures; prints the YAML
figures for ``conf/cluster/emulated_100mbit.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SKIP = 3  #: warm-up iterations left out of the median
P2P_SIZES = (4, 65536, 262144, 1 << 20, 2 << 20, 4 << 20)
ALLREDUCE_SIZES = (4, 1 << 20, 4 << 20)
TRAIN_MESSAGES = 64


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def rank_env(star: emulated.Star, rank: int, world: int, port: int) -> dict[str, str]:
    """The env:// contract of a rank (torchrun's variables) inside the star."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(world),
            "MASTER_ADDR": star.address(0), "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "eth0", "AGC_STARTUP_TIMEOUT_S": "120",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def run_ranks(star: emulated.Star, world: int, argv: list[str], port: int, log_dir: Path,
              timeout_s: float) -> None:
    """``argv`` as ranks 0..world−1, rank r in node r; raise with the logs' tails if one
    fails or the whole takes longer than ``timeout_s``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for rank in range(world):
        log = open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(star.popen(rank, argv, env=rank_env(star, rank, world, port), cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()
    failed = [r for r, proc in enumerate(procs) if proc.returncode != 0]
    if failed:
        tails = "\n".join(f"--- rank {r} (exit {procs[r].returncode}):\n"
                          + (log_dir / f"rank{r}.log").read_text()[-1500:] for r in failed)
        raise RuntimeError(f"{' '.join(argv[:4])}…: ranks {failed} failed\n{tails}")


RUNTIMES = ("PS", "sharded")


def schemes(n: int, ms: list[int], runtimes: tuple[str, ...] = RUNTIMES,
            broadcasts: tuple[str, ...] = ("concurrent",),
            ) -> dict[str, tuple[list[str], int]]:
    """label -> (overrides, world size): DDP, then the PS (with each of ``broadcasts``:
    ``PS`` concurrent, ``PS seq`` sequential) and the sharded runtime (those of
    ``runtimes``) with each m (m = 1: the uncoded wait-for-all code; m > 1: construction (7)
    on the cyclic assignment of load m)."""
    out = {"DDP": (["trainer=ddp", "code=uncoded_wait", f"assignment.n={n}"], n)}
    trainers: dict[str, tuple[list[str], int]] = {}
    if "PS" in runtimes:
        for broadcast in broadcasts:
            label = "PS" if broadcast == "concurrent" else "PS seq"
            trainers[label] = (["trainer=distributed", "trainer.grad_error=false",
                                f"trainer.broadcast={broadcast}"], n + 1)
    if "sharded" in runtimes:
        trainers["sharded"] = (["trainer=sharded"], n)
    for name, (trainer, world) in trainers.items():
        for m in ms:
            code = (["code=uncoded_wait", f"assignment.n={n}"] if m == 1 else
                    ["assignment=cyclic", f"assignment.n={n}", "assignment.s=0", f"m={m}",
                     "scheme=random_diagonal", "decoder.rescale=false",
                     "trainer.alpha_samples=0"])
            out[f"{name} m={m}"] = ([*trainer, *code], world)
    return out


def common_overrides(args: argparse.Namespace) -> list[str]:
    return ["dataset=mnist", f"dataset.train_size={args.n * args.samples}",
            "dataset.test_size=10", "model=mlp", f"model.hidden={args.hidden}",
            "straggler=none", "trainer.time_scale=0", f"trainer.iterations={args.iterations}",
            "trainer.lr=0.1", "trainer.progress=false", "trainer.eval_every=0",
            "trainer.checkpoint_every=0", f"seed={args.seed}"]


def compose_train(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from agc_pipeline.conf_path import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def cluster_model(name: str, rate_mbit: float) -> Any:
    """``conf/cluster/<name>.yaml``, its bandwidth scaled to ``rate_mbit`` when the name
    says ``<rate>mbit`` and the rates differ."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from agc_pipeline.conf_path import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR / "cluster"), version_base="1.3"):
        cluster = instantiate(compose(config_name=name))
    digits = "".join(c for c in name.split("_")[-1] if c.isdigit())
    if digits and float(digits) != rate_mbit:
        cluster = replace(cluster, name=f"{name} scaled to {rate_mbit:g} Mbit/s",
                          bandwidth=cluster.bandwidth * rate_mbit / float(digits))
    return cluster


def run_shape(overrides: list[str]) -> tuple[np.ndarray, int, int, int]:
    """``(samples per worker, d, m, k)`` of the run ``overrides`` (built, not run)."""
    from agc_pipeline.coding.stragglers import worker_samples
    from agc_pipeline.train import build_trainer

    runtime = build_trainer(compose_train(overrides))
    a = runtime.spec.scheme.assignment
    work = worker_samples(a.matrix, runtime.settings.batch_size or runtime.workload.subset_size)
    return np.asarray(work, dtype=np.float64), runtime.d, runtime.spec.scheme.m, a.k


def predict(cluster: Any, overrides: list[str], summary: dict[str, Any]) -> float:
    """The cost model's seconds per iteration of the run ``overrides`` (built, not run)."""
    from agc_pipeline.cluster.costmodel import (
        ddp_iteration_times,
        ps_iteration_times,
        sharded_iteration_times,
    )

    work, d, m, k = run_shape(overrides)
    cpu = cluster.worker_compute(work, 6.0 * d, d)
    n = cpu.shape[-1]
    if summary.get("runtime") == "ddp":
        buckets = (summary.get("ddp") or {}).get("buckets") or 1
        log_every = int(compose_train(overrides).trainer.get("log_every", 0))
        allreduces = int(buckets) + (1 if log_every == 1 else 0)
        return float(ddp_iteration_times(cluster, cpu, d, 4.0, cpu=cpu, allreduces=allreduces))
    if summary.get("runtime") == "sharded":
        return float(sharded_iteration_times(cluster, cpu, n, d, m, k, 4.0, cpu=cpu))
    sequential = (summary.get("distributed") or {}).get("broadcast") == "sequential"
    return float(ps_iteration_times(cluster, cpu, n, d, m, k, 4.0, 4.0, cpu=cpu,
                                    broadcast="unicast" if sequential else "concurrent"))


def predict_unicast(cluster: Any, overrides: list[str]) -> float | None:
    """The PS's iteration with the broadcast the cost model assumed before 2026-12-07 (the
    copies one after another, worker j starting at ``α + (j+1)·d·4/β``: ``broadcast=
    unicast``), for comparison with :func:`predict` (the ``concurrent`` broadcast the PS
    really does); None for DDP and sharded."""
    from agc_pipeline.cluster.costmodel import ps_iteration_times

    if "trainer=distributed" not in overrides:
        return None
    work, d, m, k = run_shape(overrides)
    cpu = cluster.worker_compute(work, 6.0 * d, d)
    n = cpu.shape[-1]
    return float(ps_iteration_times(cluster, cpu, n, d, m, k, 4.0, 4.0, broadcast="unicast",
                                    cpu=cpu))


def bench(args: argparse.Namespace, out: Path) -> int:
    cluster = cluster_model(args.cluster, args.rate_mbit)
    runs = schemes(args.n, args.ms, tuple(args.runtimes), tuple(args.broadcast))
    common = common_overrides(args)
    results: dict[str, tuple[float, float, float | None, str, int]] = {}
    print(f"bench_emulated: {args.rate_mbit:g} Mbit/s, n = {args.n}, MLP 784-{args.hidden}-10, "
          f"{args.samples} samples per worker, {args.iterations} iterations (median after "
          f"the first {SKIP}); {load()}", flush=True)
    with emulated.Star(args.n + 1, args.rate_mbit, args.delay_ms) as star:
        print(f"  {star.describe()}", flush=True)
        for i, (label, (overrides, world)) in enumerate(runs.items()):
            run_dir = out / label.replace(" ", "_").replace("=", "")
            argv = [sys.executable, "-m", "agc_pipeline.train", *common, *overrides,
                    f"hydra.run.dir={run_dir}"]
            started = time.perf_counter()
            run_ranks(star, world, argv, args.port + i, run_dir.parent / f"{run_dir.name}_logs",
                      args.timeout_s)
            rows = [json.loads(line) for line in
                    (run_dir / "metrics.jsonl").read_text().splitlines()]
            summary = json.loads((run_dir / "summary.json").read_text())
            measured = statistics.median(r["iteration_time"] for r in rows[SKIP:] or rows)
            predicted = predict(cluster, [*common, *overrides], summary)
            unicast = predict_unicast(cluster, [*common, *overrides])
            d = int(summary["parameters"])
            results[label] = (measured, predicted, unicast, _traffic(summary, rows), d)
            print(f"  {label:11s} {len(rows)} iterations, {time.perf_counter() - started:5.1f} s "
                  f"end to end, {measured:.3f} s/iteration", flush=True)
    t_ddp = results["DDP"][0]
    print(f"\n  {'run':11s} {'s/iter':>7s} {'vs DDP':>7s} {'model':>7s} {'error':>7s} "
          f"{'one by one':>14s}  bytes per iteration (cost model: {cluster.name})")
    errors = []
    for label, (measured, predicted, unicast, traffic, _) in results.items():
        error = predicted / measured - 1.0
        errors.append(error)
        other = ("" if unicast is None else
                 f"{unicast:.3f} {100 * (unicast / measured - 1):+4.0f}%")
        print(f"  {label:11s} {measured:7.3f} {measured / t_ddp:7.2f} {predicted:7.3f} "
              f"{100 * error:+6.1f}% {other:>14s}  {traffic}")
    print("  (model: costmodel.py, the PS's n copies posted at once share its link, every "
          "worker starts when all are through; one by one: the copies one after another)")
    worst = max(errors, key=abs)
    d = results["DDP"][4]
    print(f"\n{load()}; run dirs: {out}")
    print(last_line(args.rate_mbit, args.n, d, {k: v[0] for k, v in results.items()}, worst))
    return 0


def last_line(rate_mbit: float, n: int, d: int, seconds: dict[str, float],
              worst_error: float) -> str:
    """``emulated <rate> n=<n> d=<d>: sharded <r1>x DDP, PS <r2>x DDP, model error <e>%``:
    each runtime's best m over DDP's seconds per iteration (``n/a`` where not run)."""
    def ratio(prefix: str) -> str:
        times = [t for label, t in seconds.items() if label.startswith(prefix + " ")]
        return f"{min(times) / seconds['DDP']:.2f}x" if times else "n/a"

    return (f"emulated {rate_mbit:g}mbit n={n} d={d}: sharded {ratio('sharded')} DDP, "
            f"PS {ratio('PS')} DDP, model error {100 * worst_error:+.0f}%")


def _traffic(summary: dict[str, Any], rows: list[dict]) -> str:
    if summary.get("runtime") == "ddp":
        return f"{summary['ddp']['bytes_per_rank_per_iteration'] / 1e6:.2f} MB per rank"
    if summary.get("runtime") == "sharded":
        per_node = summary["sharded"]["bytes_per_node_per_iteration"]
        return f"{per_node / 1e6:.2f} MB per node"
    into = statistics.mean(r["bytes_received"] for r in rows) / 1e6
    sent = statistics.mean(r["bytes_from_ps"] for r in rows) / 1e6
    return f"PS in {into:.2f} + out {sent:.2f} MB"


# ----------------------------------------------------------------- calibration

def child(kind: str, repeats: int) -> None:
    """A rank of the calibration (``--child``): gloo over env://; rank 0 prints JSON
    {size: [seconds, …]} (p2p: round trips; train: 64 sends + 1 reply; allreduce)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    sizes = {"p2p": P2P_SIZES, "train": (4,), "allreduce": ALLREDUCE_SIZES}[kind]
    results: dict[int, list[float]] = {}
    for size in sizes:
        buf = torch.zeros(max(1, size // 4))
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            dist.barrier()
            start = time.perf_counter()
            if kind == "allreduce":
                dist.all_reduce(buf)
            elif kind == "train":
                if rank == 0:
                    for _ in range(TRAIN_MESSAGES):
                        dist.send(buf, 1)
                    dist.recv(buf, 1)
                else:
                    for _ in range(TRAIN_MESSAGES):
                        dist.recv(buf, 0)
                    dist.send(buf, 0)
            elif rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append(time.perf_counter() - start)
        results[size] = times[1:]
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def run_child(star: emulated.Star, kind: str, world: int, repeats: int, port: int,
              log_dir: Path) -> dict[int, list[float]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
            "--repeats", str(repeats)]
    run_ranks(star, world, argv, port, log_dir / kind, 300.0)
    for line in (log_dir / kind / "rank0.log").read_text().splitlines():
        if line.startswith("RESULT "):
            return {int(k): v for k, v in json.loads(line[7:]).items()}
    raise RuntimeError(f"calibration {kind}: no result in {log_dir / kind / 'rank0.log'}")


def calibrate(args: argparse.Namespace, out: Path) -> int:
    from agc_pipeline.cluster.costmodel import ring_allreduce_time

    print(f"calibrating {args.rate_mbit:g} Mbit/s links: gloo point-to-point between 2 "
          f"namespaces, all-reduce over {args.n}; {args.repeats} repeats; {load()}", flush=True)
    with emulated.Star(max(2, args.n), args.rate_mbit, args.delay_ms) as star:
        print(f"  {star.describe()}", flush=True)
        p2p = run_child(star, "p2p", 2, args.repeats, args.port, out)
        train = run_child(star, "train", 2, args.repeats, args.port + 1, out)
        ring = run_child(star, "allreduce", args.n, args.repeats, args.port + 2, out)
    sizes = np.array(sorted(p2p), dtype=np.float64)
    one_way = np.array([statistics.median(p2p[int(s)]) / 2 for s in sizes])
    # latency: the 4-byte one-way time; bandwidth: the slope over ≥ 1 MB (below that the
    # token bucket's burst, 32 KiB sent at once, bends the line)
    latency = float(one_way[0])
    large = sizes >= 1 << 20
    slope, intercept = np.polyfit(sizes[large], one_way[large], 1)
    bandwidth = 1.0 / slope
    # 64 tiny sends and one reply: 64 messages' cost beyond one round trip
    per_message = (statistics.median(train[4]) - 2 * one_way[0]) / (TRAIN_MESSAGES - 1)
    print(f"\n  {'bytes':>9s} {'one-way s':>10s} {'fit':>10s}")
    for s, t in zip(sizes, one_way, strict=True):
        print(f"  {int(s):9d} {t:10.5f} {latency + s / bandwidth:10.5f}")
    print(f"  latency (4 B) {latency * 1e6:.0f} us; bandwidth (slope over >= 1 MB, intercept "
          f"{intercept * 1e3:+.2f} ms) {bandwidth / 1e6:.2f} MB/s "
          f"({8 * bandwidth / 1e6:.1f} Mbit/s = {800 * bandwidth / 1e6 / args.rate_mbit:.1f}% "
          f"of the tbf rate); per message (a train of {TRAIN_MESSAGES} 4-byte sends) "
          f"{per_message * 1e6:.0f} us")
    print(f"\n  all-reduce over {args.n} nodes (median) against the ring model with these "
          "figures:")
    for size in sorted(ring):
        measured = statistics.median(ring[size])
        model = ring_allreduce_time(args.n, max(1, size // 4), 4.0, bandwidth, latency)
        print(f"  {size:9d} B: measured {measured:.4f} s, ring model {model:.4f} s "
              f"({100 * (model / measured - 1):+.0f}%)")
    print(f"\n{load()}\nfigures for conf/cluster/emulated_{args.rate_mbit:g}mbit.yaml:")
    print(f"bandwidth: {bandwidth:.4g}          # bytes/s per direction")
    print(f"latency: {latency:.3g}           # s, one way")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one way (needs netem)")
    parser.add_argument("--n", type=int, default=4, help="workers (DDP ranks)")
    parser.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="besides DDP (always run: the ratios' denominator)")
    parser.add_argument("--broadcast", nargs="+", choices=("concurrent", "sequential"),
                        default=["concurrent"], help="the PS's trainer.broadcast (each a run)")
    parser.add_argument("--hidden", type=int, default=1270, help="d = 795·hidden + 10")
    parser.add_argument("--samples", type=int, default=16, help="samples per worker")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default="emulated_100mbit", help="conf/cluster/ name")
    parser.add_argument("--port", type=int, default=29500)
    parser.add_argument("--timeout-s", type=float, default=400.0, help="per run")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the links (gloo) and print the cluster figures")
    parser.add_argument("--repeats", type=int, default=5, help="--calibrate: per size")
    parser.add_argument("--child", choices=("p2p", "train", "allreduce"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.repeats)
        return 0
    run = calibrate if args.calibrate else bench
    return emulated.run_bench("bench_emulated", args.out, lambda out: run(args, out))


if __name__ == "__main__":
    sys.exit(main())
