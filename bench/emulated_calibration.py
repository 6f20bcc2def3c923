"""``python bench/bench_emulated.py --calibrate``: the emulated links' figures for
``conf/cluster/emulated_<rate>mbit.yaml``, measured apart from the runs they predict.

Plain gloo point-to-point ping-pongs of 4 B-4 MB between nodes 0 and 1 (one-way = half the
median round trip; latency: the 4-byte one; bandwidth: the slope over 1-4 MB, as the token
bucket's 32 KiB burst bends the line below), a train of 64 tiny sends (per-message cost),
all-reduces over n nodes against the ring model with the fitted figures, the host's CPU per
byte sent (``transfer_cpu_per_byte``), and the sharded runtime's two patterns timed alone
(its reduce-scatter: slices one at a time in rotated order; gloo's ``all_gather`` of one
shard per node) and the two together, in rounds as the runtime sends them (no barrier, no
compute): the fraction of the rate they reach is ``sharded_link_efficiency``. CPU per byte:
the host's busy core-seconds (``/proc/stat``, every namespace and the kernel's packet work
together) during the all-reduces of ≥ 1 MB, less the idle host's, against their bytes
(2(n−1)·S sent in all, each counted at both ends), as in the runtimes every node sends and
receives at once; the ping-pongs' figure (one flow at a time: a round trip of S bytes is
``4·S·c_b + 2·c_m``) is printed beside it. On a 2-core host the shaped veths, the bridge and
the token buckets cost far more CPU per byte than loopback; the cost model's shared-host
bound needs that figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated  # noqa: E402
from bench_emulated import load, run_ranks  # noqa: E402

from agc_pipeline.training.sharded_maths import ShardLayout  # noqa: E402

P2P_SIZES = (4, 65536, 262144, 1 << 20, 2 << 20, 4 << 20)
ALLREDUCE_SIZES = (4, 1 << 20, 4 << 20)
SCATTER_SIZES = (1 << 17, 1 << 19)  #: bytes per slice
SHARDED_D = 795 * 1270 + 10  #: bench_emulated.py's MLP (d for ``--child sharded``)
SHARDED_MS = (2, 4)  #: the m of ``--child sharded``
SHARDED_WARMUP = 2  #: rounds of ``--child sharded`` left out of its median
TRAIN_MESSAGES = 64
MESSAGE_CPU = 3.95e-5  #: core-s per message, both ends (conf/cluster/loopback.yaml)
IDLE_S = 1.0  #: the pause that measures the host's background CPU


def child(kind: str, repeats: int) -> None:
    """A rank of the calibration (``--child``): gloo over env://; rank 0 prints JSON
    {size: [seconds, …]} (p2p: round trips; train: 64 sends + 1 reply; allreduce; scatter:
    :func:`scatter`)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    if kind == "sharded":
        sharded_rounds(repeats)
        return
    sizes = {"p2p": P2P_SIZES, "train": (4,), "allreduce": ALLREDUCE_SIZES,
             "scatter": SCATTER_SIZES, "allgather": SCATTER_SIZES}[kind]
    results: dict[str, list[float]] = {}
    dist.barrier()
    idle_start, busy_start = time.perf_counter(), host_busy()
    time.sleep(IDLE_S)  # every rank: the host's background CPU while nothing is sent
    results["idle"] = [time.perf_counter() - idle_start, host_busy() - busy_start]
    for size in sizes:
        buf = torch.zeros(max(1, size // 4))
        shards = torch.zeros(dist.get_world_size(), buf.numel())
        times = []
        dist.barrier()
        loop_start, busy_start = time.perf_counter(), host_busy()  # around all repeats
        for _ in range(repeats + 1):  # the first is a warm-up
            dist.barrier()
            start = time.perf_counter()
            if kind == "allreduce":
                dist.all_reduce(buf)
            elif kind == "scatter":
                scatter(buf, rank, dist.get_world_size())
            elif kind == "allgather":  # trainer=sharded's shards: gloo's list all_gather
                dist.all_gather(list(shards.unbind(0)), buf)
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
        results[str(size)] = times[1:]
        results[f"busy{size}"] = [time.perf_counter() - loop_start, host_busy() - busy_start]
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def scatter(buf: Any, rank: int, world: int, group: Any = None) -> None:
    """``trainer=sharded``'s reduce-scatter traffic: every node sends one slice of ``buf`` to
    each other node, one at a time in rotated order (rank + 1, rank + 2, …), while it
    receives one from each (all posted at once); on ``group`` (None: the default group)."""
    import torch.distributed as dist

    inbox = [buf.clone() for _ in range(world - 1)]
    recvs = [dist.irecv(inbox[i], src=(rank - 1 - i) % world, group=group)
             for i in range(world - 1)]
    for r in range(1, world):
        dist.isend(buf, dst=(rank + r) % world, group=group).wait()
    for work in recvs:
        work.wait()


def sharded_rounds(repeats: int) -> None:
    """``trainer=sharded``'s traffic alone, as the runtime sends it, for each m of
    ``SHARDED_MS`` at d = ``SHARDED_D``: rounds of the rotated scatter (each node's n − 1
    slices of W + 1 values posted one after another, its receives all posted) then gloo's
    ``all_gather`` of one shard (m·W + 2 values) per node, with no barrier between rounds
    (a node starts its next scatter as it leaves the all-gather, as in the runtime), no
    compute. Rank 0 prints {m: [seconds of each round after SHARDED_WARMUP]}."""
    import torch
    import torch.distributed as dist

    rank, n = dist.get_rank(), dist.get_world_size()
    p2p, gather = dist.new_group(backend="gloo"), dist.new_group(backend="gloo")
    results: dict[str, list[float]] = {}
    for m in SHARDED_MS:
        width = ShardLayout(SHARDED_D, m, n).width
        frame, mine = torch.zeros(width + 1), torch.zeros(m * width + 2)
        out = torch.empty(n, m * width + 2)
        ends = []
        dist.barrier()
        for _ in range(repeats + SHARDED_WARMUP + 1):
            scatter(frame, rank, n, group=p2p)
            dist.all_gather(list(out.unbind(0)), mine, group=gather)
            ends.append(time.perf_counter())
        results[str(m)] = list(np.diff(ends)[SHARDED_WARMUP:])
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def sharded_efficiency(result: dict[str, list[float]], n: int, bandwidth: float,
                       latency: float) -> dict[int, tuple[float, float]]:
    """m -> (measured median seconds per round, lossless model: the scatter ``α + (n−1)·(W +
    1)·4/β`` then the all-gather ``(n−1)·(α + (m·W + 2)·4/β)``)."""
    out = {}
    for m in SHARDED_MS:
        width = ShardLayout(SHARDED_D, m, n).width
        model = (latency + (n - 1) * (width + 1) * 4 / bandwidth
                 + (n - 1) * (latency + (m * width + 2) * 4 / bandwidth))
        out[m] = (statistics.median(result[str(m)]), model)
    return out


def host_busy() -> float:
    """Core-seconds this host's CPUs have been busy since boot (``/proc/stat``: user, nice,
    system, irq, softirq, steal; every namespace, the kernel's packet work included)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(star: emulated.Star, kind: str, world: int, repeats: int, port: int,
              log_dir: Path) -> dict[str, list[float]]:
    """Run ``--child kind`` on ranks 0..world−1; rank 0's results: ``{"<size>": [seconds of
    each repeat], "busy<size>": [seconds, host core-seconds] around all repeats, "idle": [seconds,
    core-seconds] of a pause before}``."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
            "--repeats", str(repeats)]
    run_ranks(star, world, argv, port, log_dir / kind, 300.0)
    for line in (log_dir / kind / "rank0.log").read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"calibration {kind}: no result in {log_dir / kind / 'rank0.log'}")


def calibrate(args: argparse.Namespace, out: Path) -> int:
    from agc_pipeline.cluster.costmodel import ring_allreduce_time

    print(f"calibrating {args.rate_mbit:g} Mbit/s links: gloo point-to-point between 2 "
          f"namespaces, all-reduce over {args.n}; {args.repeats} repeats; {load()}", flush=True)
    with emulated.Star(max(2, args.n), args.rate_mbit, args.delay_ms,
                       host_queue=args.host_queue or None) as star:
        print(f"  {star.describe()}", flush=True)
        p2p = run_child(star, "p2p", 2, args.repeats, args.port, out)
        train = run_child(star, "train", 2, args.repeats, args.port + 1, out)
        ring = run_child(star, "allreduce", args.n, args.repeats, args.port + 2, out)
        spread = run_child(star, "scatter", args.n, args.repeats, args.port + 3, out)
        gather = run_child(star, "allgather", args.n, args.repeats, args.port + 4, out)
        rounds = run_child(star, "sharded", args.n, 2 * args.repeats, args.port + 5, out)
    sizes = np.array(sizes_of(p2p), dtype=np.float64)
    one_way = np.array([statistics.median(p2p[str(int(s))]) / 2 for s in sizes])
    # latency: the 4-byte one-way time; bandwidth: the slope over ≥ 1 MB (below that the
    # token bucket's burst, 32 KiB sent at once, bends the line)
    latency = float(one_way[0])
    large = sizes >= 1 << 20
    slope, intercept = np.polyfit(sizes[large], one_way[large], 1)
    bandwidth = 1.0 / slope
    # 64 tiny sends and one reply: 64 messages' cost beyond one round trip
    per_message = (statistics.median(train["4"]) - 2 * one_way[0]) / (TRAIN_MESSAGES - 1)
    # CPU per byte: from the all-reduce, where every node sends and receives at once, as in
    # the runtimes (2(n−1)·S bytes sent in all, each counted at both ends); the ping-pong's
    # one flow at a time costs less per byte and is printed beside it
    ring_sizes = np.array([s for s in sizes_of(ring) if s >= 1 << 20], dtype=np.float64)
    per_byte = cpu_per_byte(ring, ring_sizes, args.repeats, 4.0 * (args.n - 1))
    one_flow = cpu_per_byte(p2p, sizes[large], args.repeats, 4.0)
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
    for size in sizes_of(ring):
        measured = statistics.median(ring[str(size)])
        model = ring_allreduce_time(args.n, max(1, size // 4), 4.0, bandwidth, latency)
        # host CPU of one all-reduce beyond the idle host's, against every rank's ring
        # traffic (2(n−1)/n·size bytes in 2(n−1) messages) at the fitted per-byte CPU
        cpu = excess_busy(ring, size, args.repeats)
        ring_bytes = 2 * (args.n - 1) * size
        model_cpu = 2 * ring_bytes * per_byte + 2 * (args.n - 1) * args.n * MESSAGE_CPU
        print(f"  {size:9d} B: measured {measured:.4f} s, ring model {model:.4f} s "
              f"({100 * (model / measured - 1):+.0f}%); host CPU {cpu:.4f} core-s, "
              f"per-byte model {model_cpu:.4f} core-s")
    print(f"\n  sharded reduce-scatter over {args.n} nodes (slices one at a time, rotated):")
    for size in sizes_of(spread):
        measured = statistics.median(spread[str(size)])
        model = latency + (args.n - 1) * size / bandwidth
        cpu = excess_busy(spread, size, args.repeats)
        sent = args.n * (args.n - 1) * size
        print(f"  {size:9d} B per slice: measured {measured:.4f} s, model {model:.4f} s "
              f"({100 * (model / measured - 1):+.0f}%); host CPU {cpu:.4f} core-s = "
              f"{cpu / (2 * sent):.3g} core-s per byte at each end")
    print(f"\n  sharded all-gather over {args.n} nodes (gloo all_gather of one shard each):")
    for size in sizes_of(gather):
        measured = statistics.median(gather[str(size)])
        model = (args.n - 1) * (latency + size / bandwidth)
        print(f"  {size:9d} B per shard: measured {measured:.4f} s, ring model {model:.4f} s "
              f"({100 * (model / measured - 1):+.0f}%)")
    efficiency = sharded_efficiency(rounds, args.n, bandwidth, latency)
    print(f"\n  trainer=sharded's traffic alone over {args.n} nodes (d = {SHARDED_D}: the "
          "rotated scatter, then the all-gather, no barrier between rounds, no compute):")
    for m, (measured, model) in efficiency.items():
        print(f"  m = {m}: measured {measured:.4f} s per round, lossless model {model:.4f} s "
              f"({100 * (model / measured - 1):+.0f}%): efficiency {model / measured:.3f}")
    eta = min(1.0, statistics.mean(model / measured for measured, model in efficiency.values()))
    print(f"  host CPU per byte at each end of a transfer (the idle host's "
          f"{idle_rate(ring):.3f} cores subtracted): {per_byte:.3g} core-s from the "
          f"all-reduces >= 1 MB over {args.n} nodes (concurrent flows, the figure below); "
          f"{one_flow:.3g} from the ping-pongs >= 1 MB (one flow at a time)")
    print(f"\n{load()}\nfigures for conf/cluster/emulated_{args.rate_mbit:g}mbit.yaml:")
    print(f"bandwidth: {bandwidth:.4g}          # bytes/s per direction")
    print(f"latency: {latency:.3g}           # s, one way")
    print(f"transfer_cpu_per_byte: {per_byte:.3g}    # core-s per byte, each end")
    print(f"sharded_link_efficiency: {eta:.3g}    # trainer=sharded's traffic: rate reached")
    return 0


def sizes_of(result: dict[str, list[float]]) -> list[int]:
    """The message sizes a child timed (its ``"<size>"`` keys), ascending."""
    return sorted(int(k) for k in result if k.isdigit())


def idle_rate(result: dict[str, list[float]]) -> float:
    """Cores the host kept busy during the child's pause before sending anything."""
    seconds, busy = result["idle"]
    return busy / seconds


def excess_busy(result: dict[str, list[float]], size: int, repeats: int) -> float:
    """Host core-seconds of one repeat at ``size`` beyond the idle host's (measured around
    the ``repeats`` + 1 repeats, warm-up and barriers included: ``busy<size>`` is [seconds,
    core-seconds])."""
    seconds, busy = result[f"busy{size}"]
    return (busy - idle_rate(result) * seconds) / (repeats + 1)


def cpu_per_byte(result: dict[str, list[float]], sizes: np.ndarray, repeats: int,
                 ends: float) -> float:
    """The host's core-seconds per byte at each end of a transfer, c_b: the slope of a
    pattern's CPU against its size S over ``ends`` (bytes counted at both ends per byte of
    S): 4 for a ping-pong (two transfers of S: 4·S·c_b + 2·c_m), 4(n − 1) for a ring
    all-reduce over n (2(n − 1)·S bytes sent in all). Never negative."""
    cpu = [excess_busy(result, int(s), repeats) for s in sizes]
    return max(float(np.polyfit(sizes, cpu, 1)[0]) / ends, 0.0)


if __name__ == "__main__":  # a rank of the calibration, started by run_child
    parser = argparse.ArgumentParser(description="a rank of bench_emulated --calibrate")
    parser.add_argument("--child", choices=("p2p", "train", "allreduce", "scatter", "allgather",
                                            "sharded"),
                        required=True)
    parser.add_argument("--repeats", type=int, default=5)
    cli = parser.parse_args()
    child(cli.child, cli.repeats)
