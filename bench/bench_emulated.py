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
``sharded_iteration_times``) with ``--cluster`` (default ``emulated_<rate>mbit`` where it
exists, else ``emulated_100mbit`` with its bandwidth scaled by ``--rate-mbit`` / 100), each
worker's compute from its samples (``worker_compute``), and the shared-host bound (all
processes share this host's cores). Last line:
``emulated <rate> n=<n> d=<d>: sharded <t_sh/t_DDP>x DDP, PS <t_PS/t_DDP>x DDP, model
error <e>%`` (ratios of seconds per iteration, each runtime's best m; e: the largest
|predicted/measured − 1| over the runs, with its sign). The PS is predicted as it really
sends: ``trainer.broadcast=concurrent`` (the default) as the model's ``concurrent`` (all n
copies posted at once share its link, so every worker starts after n copies), ``PS seq``
runs (``--broadcast sequential``: one copy after another) as ``unicast`` (the j-th worker
starting after j + 1 copies); the table also shows the ``unicast`` prediction of every PS
run (``one by one``).

``--calibrate`` (separate from the runs it predicts; about a minute; bench/
emulated_calibration.py): gloo ping-pongs (latency, bandwidth), a train of tiny sends (per-
message cost), all-reduces against the ring model, the host's CPU per byte sent, and the
sharded runtime's traffic alone (the rate it reaches: ``sharded_link_efficiency``); prints
the figures for ``conf/cluster/emulated_<rate>mbit.yaml``.
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


def default_cluster(rate_mbit: float) -> str:
    """``emulated_<rate>mbit`` where ``conf/cluster/`` has it (calibrated at that rate), else
    ``emulated_100mbit`` (its bandwidth then scaled by :func:`cluster_model`)."""
    name = f"emulated_{rate_mbit:g}mbit"
    return name if (ROOT / "conf" / "cluster" / f"{name}.yaml").is_file() else "emulated_100mbit"


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
    cluster = cluster_model(args.cluster or default_cluster(args.rate_mbit), args.rate_mbit)
    runs = schemes(args.n, args.ms, tuple(args.runtimes), tuple(args.broadcast))
    common = common_overrides(args)
    results: dict[str, tuple[float, float, float | None, str, int]] = {}
    losses: dict[str, tuple[float, float]] = {}  # TCP retransmissions, timeouts per iteration
    print(f"bench_emulated: {args.rate_mbit:g} Mbit/s, n = {args.n}, MLP 784-{args.hidden}-10, "
          f"{args.samples} samples per worker, {args.iterations} iterations (median after "
          f"the first {SKIP}); {load()}", flush=True)
    with emulated.Star(args.n + 1, args.rate_mbit, args.delay_ms,
                       host_queue=args.host_queue or None) as star:
        print(f"  {star.describe()}", flush=True)
        for i, (label, (overrides, world)) in enumerate(runs.items()):
            run_dir = out / label.replace(" ", "_").replace("=", "")
            argv = [sys.executable, "-m", "agc_pipeline.train", *common, *overrides,
                    f"hydra.run.dir={run_dir}"]
            started, before = time.perf_counter(), emulated.tcp_losses(star)
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
            after = emulated.tcp_losses(star)
            losses[label] = ((after[0] - before[0]) / len(rows), (after[1] - before[1]) / len(rows))
            print(f"  {label:11s} {len(rows)} iterations, {time.perf_counter() - started:5.1f} s "
                  f"end to end, {measured:.3f} s/iteration", flush=True)
    t_ddp = results["DDP"][0]
    print(f"\n  {'run':11s} {'s/iter':>7s} {'vs DDP':>7s} {'model':>7s} {'error':>7s} "
          f"{'one by one':>14s} {'retx':>6s} {'RTO':>5s}  bytes per iteration (cost model: "
          f"{cluster.name})")
    errors = []
    for label, (measured, predicted, unicast, traffic, _) in results.items():
        error = predicted / measured - 1.0
        errors.append(error)
        other = ("" if unicast is None else
                 f"{unicast:.3f} {100 * (unicast / measured - 1):+4.0f}%")
        print(f"  {label:11s} {measured:7.3f} {measured / t_ddp:7.2f} {predicted:7.3f} "
              f"{100 * error:+6.1f}% {other:>14s} {losses[label][0]:6.1f} "
              f"{losses[label][1]:5.2f}  {traffic}")
    print("  (model: costmodel.py, the PS's n copies posted at once share its link, every "
          "worker starts when all are through; one by one: the copies one after another; "
          "retx, RTO: TCP segments retransmitted and retransmission timeouts per iteration, "
          "all nodes, start-up included; the model has losses only in sharded's traffic, "
          "through the cluster's sharded_link_efficiency)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-mbit", type=emulated.at_least(0, strict=True), default=100.0)
    parser.add_argument("--delay-ms", type=emulated.at_least(0), default=0.0,
                        help="one way (needs netem)")
    parser.add_argument("--host-queue", type=emulated.at_least(0, int), default=0,
                        help="packets a node's own egress queues (a pfifo under its tbf; "
                        f"e.g. {emulated.HOST_QUEUE}); 0 (default): the tbf's byte limit, "
                        "as the switch ports")
    parser.add_argument("--n", type=emulated.at_least(2, int), default=4,
                        help="workers (DDP ranks)")
    parser.add_argument("--ms", type=emulated.at_least(1, int), nargs="+", default=[1, 2, 4])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="besides DDP (always run: the ratios' denominator)")
    parser.add_argument("--broadcast", nargs="+", choices=("concurrent", "sequential"),
                        default=["concurrent"], help="the PS's trainer.broadcast (each a run)")
    parser.add_argument("--hidden", type=emulated.at_least(1, int), default=1270,
                        help="d = 795·hidden + 10")
    parser.add_argument("--samples", type=emulated.at_least(1, int), default=16,
                        help="samples per worker")
    parser.add_argument("--iterations", type=emulated.at_least(1, int), default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default=None,
                        help="conf/cluster/ name (default: emulated_<rate>mbit where it exists, "
                        "else emulated_100mbit with its bandwidth scaled)",
                        choices=sorted(f.stem for f in (ROOT / "conf" / "cluster").glob("*.yaml")
                                       if f.stem != "none"))
    parser.add_argument("--port", type=emulated.at_least(1024, int), default=29500)
    parser.add_argument("--timeout-s", type=emulated.at_least(0, strict=True), default=400.0,
                        help="per run")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the links (gloo) and print the cluster figures")
    parser.add_argument("--repeats", type=emulated.at_least(1, int), default=5,
                        help="--calibrate: per size")
    args = parser.parse_args(argv)
    if args.calibrate:
        from emulated_calibration import calibrate as run
    else:
        run = bench
    return emulated.run_bench("bench_emulated", args.out, lambda out: run(args, out))


if __name__ == "__main__":
    sys.exit(main())
