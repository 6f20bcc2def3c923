"""Calibrate ``cluster=loopback``: gloo point-to-point latency and bandwidth between two
processes on this machine, a worker's training FLOP/s and fixed work per parameter, the PS's
memory bandwidth, and the CPU that transfers cost when all the processes share the cores.

    python bench/bench_loopback.py            # ~25 s; prints the figures and a YAML block
    python bench/bench_loopback.py --repeats 50 --max-mb 64

Latency α: half the 10th percentile of the round trips of a 4-byte ping-pong. Bandwidth β:
a least-squares fit of the one-way time (half the 10th-percentile round trip) against the
message size over 1-64 MB (slope 1/β). The 10th percentile, not the median: on a machine
whose cores other processes share, the median round trip is bimodal (tens of µs, or a
scheduler quantum of ~2 ms when a peer is descheduled); the medians are printed too.
Worker compute: the CPU time of a plain training step of the MLP 784-1270-10 (d ≈ 1M, the
size of bench_vs_ddp's part (a)) on one torch thread at batch sizes 1-128, fitted by a line:
the slope gives worker_flops (6·d flops per sample), the intercept over d the fixed work per
parameter of an iteration (step_time_per_parameter: fresh gradient buffers, flattening, the
finiteness check, the update). PS memory bandwidth: a numpy float32 weighted sum of 8
vectors of 4M values (what decoding streams).

Shared host (the n + 1 processes of a loopback run share the cores): ``--world`` (8)
processes run gloo all-reduces of 1 value and of 1M values; the CPU time of all of them
(every thread, ``time.process_time``) per all-reduce of 1 value over its n·2(n−1) messages
gives message_cpu; world + 1 processes then run the PS's pattern (one process sends 1M
values to each of the others and receives half as many from each), and
transfer_cpu_per_byte is the least-squares fit of both large patterns' CPU, their messages'
taken off, against twice their bytes (both ends copy). The fit is printed next to each.

Copy the printed numbers into ``conf/cluster/loopback.yaml`` with the date and
the ``uptime`` load: every figure depends on how busy the two cores are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402

SMALL = 1  # float32 values of the latency message (4 bytes)
SIZES_MB = (1, 2, 4, 8, 16, 32, 64)
#: small messages (float32 values) shown for the latency curve
SMALL_SIZES = (1, 1024, 16384)


def _pingpong(rank: int, init: str, repeats: int, sizes: list[int], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = {}
    for values in sizes:
        buf = torch.zeros(values, dtype=torch.float32)
        times = []
        for i in range(repeats + 2):
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if i >= 2:  # two warm-up round trips
                times.append(time.perf_counter() - start)
        results[values] = (float(np.percentile(times, 10)) / 2.0,
                           statistics.median(times) / 2.0)
    if rank == 0:
        Path(out).write_text("\n".join(f"{v} {t!r} {med!r}"
                                        for v, (t, med) in results.items()))
    dist.barrier()
    dist.destroy_process_group()


def measure_links(repeats: int, max_mb: int,
                  ) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """(latency s, bandwidth bytes/s, one-way seconds (10th percentile, median) per message
    size in bytes)."""
    sizes = list(SMALL_SIZES) + [mb * 2**20 // 4 for mb in SIZES_MB if mb <= max_mb]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.txt")
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.spawn(_pingpong, args=(init, repeats, sizes, out), nprocs=2, join=True)
        rows = [line.split() for line in Path(out).read_text().splitlines()]
    one_way = {int(v) * 4: (float(t), float(med)) for v, t, med in rows}
    latency = one_way[SMALL * 4][0]
    big = np.array([[nbytes, t] for nbytes, (t, _) in one_way.items() if nbytes >= 2**20])
    slope, _ = np.polyfit(big[:, 0], big[:, 1], 1)
    return latency, 1.0 / slope, one_way


STEP_BATCHES = (1, 8, 32, 128)


def measure_step(repeats: int) -> tuple[float, float, dict[int, float]]:
    """(worker FLOP/s, fixed seconds per parameter, median CPU seconds per batch size) of a
    plain step of the MLP 784-1270-10: zero the gradients, forward, backward, flatten, check
    finiteness, update; a line through the medians (6·d flops per sample)."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(784, 1270), torch.nn.ReLU(),
                                torch.nn.Linear(1270, 10))
    d = sum(p.numel() for p in model.parameters())
    flat = torch.zeros(d)
    data = {batch: (torch.rand(batch, 784), torch.randint(0, 10, (batch,)))
            for batch in STEP_BATCHES}
    times: dict[int, list[float]] = {batch: [] for batch in STEP_BATCHES}
    for i in range(max(repeats, 10) + 2):  # the batch sizes interleaved: drifts hit all alike
        for batch, (x, y) in data.items():
            start = time.process_time()
            for p in model.parameters():
                p.grad = None
            torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            bool(torch.isfinite(grad).all())
            flat.add_(grad, alpha=-1e-3)
            if i >= 2:
                times[batch].append(time.process_time() - start)
    medians = {batch: statistics.median(t) for batch, t in times.items()}
    slope, intercept = np.polyfit(list(medians), list(medians.values()), 1)
    return 6.0 * d / slope, max(intercept, 0.0) / d, medians


BIG = 1_009_660  #: values of the large all-reduce and of the PS's broadcast (part (a)'s d)


def _shared(rank: int, world: int, init: str, repeats: int, out: str) -> None:
    """Rank ``rank`` of ``world``: all-reduces of 1 and BIG values, then the PS pattern
    (rank 0 sends BIG values to every other rank and receives ⌈BIG/2⌉ from each); writes
    its CPU seconds per operation."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    tiny, big, half = torch.ones(1), torch.ones(BIG), torch.ones((BIG + 1) // 2)

    def ps_round() -> None:
        if rank == 0:
            for j in range(1, world):
                dist.send(big, j)
            for request in [dist.irecv(torch.empty_like(half), j) for j in range(1, world)]:
                request.wait()
        else:
            dist.recv(big, 0)
            dist.send(half, 0)

    cpu = {}
    for name, op in (("tiny", lambda: dist.all_reduce(tiny)),
                     ("big", lambda: dist.all_reduce(big)), ("ps", ps_round)):
        op()  # warm-up
        dist.barrier()
        start = time.process_time()
        for _ in range(repeats):
            op()
        cpu[name] = (time.process_time() - start) / repeats
        dist.barrier()
    Path(f"{out}.{rank}").write_text(" ".join(f"{k}={v!r}" for k, v in cpu.items()))
    dist.barrier()
    dist.destroy_process_group()


def _cpu_of(world: int, repeats: int) -> dict[str, float]:
    """CPU seconds per operation of ``world`` processes together (see :func:`_shared`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cpu")
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.spawn(_shared, args=(world, init, repeats, out), nprocs=world, join=True)
        total: dict[str, float] = {}
        for rank in range(world):
            for item in Path(f"{out}.{rank}").read_text().split():
                key, value = item.split("=")
                total[key] = total.get(key, 0.0) + float(value)
    return total


def measure_shared_host(world: int, repeats: int) -> dict[str, float]:
    """message_cpu from ``world`` processes' all-reduce of 1 value (over its n·2(n−1)
    messages) and transfer_cpu_per_byte fitted by least squares to two patterns with their
    messages' CPU taken off: the all-reduce of BIG values (n·2(n−1) chunks of BIG/n) and the
    PS's on world + 1 processes (n copies of BIG values out, n of ⌈BIG/2⌉ in); both ends
    copy every byte. Returns the figures and each pattern's CPU, measured and modelled."""
    n = world
    ring = _cpu_of(n, repeats)
    ps = _cpu_of(n + 1, repeats)["ps"]
    ring_messages, ps_messages = n * 2 * (n - 1), 2 * n
    message_cpu = ring["tiny"] / ring_messages
    ring_bytes = 2 * (n - 1) * BIG * 4  # every rank sends 2(n−1) chunks of BIG/n values
    ps_bytes = n * BIG * 4 + n * ((BIG + 1) // 2) * 4
    x = np.array([2.0 * ring_bytes, 2.0 * ps_bytes])
    y = np.array([ring["big"] - ring_messages * message_cpu, ps - ps_messages * message_cpu])
    per_byte = max(float(x @ y / (x @ x)), 0.0)
    return {"message_cpu": message_cpu, "transfer_cpu_per_byte": per_byte,
            "ring_tiny_cpu": ring["tiny"], "ring_big_cpu": ring["big"], "ps_cpu": ps,
            "ring_big_model": x[0] * per_byte + ring_messages * message_cpu,
            "ps_model": x[1] * per_byte + ps_messages * message_cpu}


def measure_ps_memory_bandwidth(repeats: int) -> float:
    """Bytes/s of a float32 weighted sum of 8 messages of 4M values (read once)."""
    msgs = np.random.default_rng(0).random((8, 4 * 2**20), dtype=np.float32)
    coef = np.ones(8, dtype=np.float32)
    best = np.inf
    for _ in range(max(repeats // 4, 5)):
        start = time.perf_counter()
        coef @ msgs
        best = min(best, time.perf_counter() - start)
    return msgs.nbytes / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=at_least(1, int), default=20)
    parser.add_argument("--max-mb", type=at_least(1, int), default=64)
    parser.add_argument("--world", type=at_least(2, int), default=8,
                        help="processes of the shared-host all-reduces (bench_vs_ddp's n)")
    args = parser.parse_args(argv)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    latency, bandwidth, one_way = measure_links(args.repeats, args.max_mb)
    flops, per_parameter, steps = measure_step(args.repeats)
    membw = measure_ps_memory_bandwidth(args.repeats)
    shared = measure_shared_host(args.world, args.repeats)
    cores = len(os.sched_getaffinity(0))
    print(f"uptime: {load}")
    for nbytes, (t, med) in one_way.items():
        print(f"  gloo one-way {nbytes:>10d} B: p10 {t * 1e6:10.1f} us "
              f"({nbytes / t / 1e9:.2f} GB/s), median {med * 1e6:10.1f} us")
    print("  plain step of the MLP 784-1270-10, CPU ms by batch size: "
          + ", ".join(f"{b}: {1e3 * t:.2f}" for b, t in steps.items()))
    print(f"  shared host: all-reduce of 1 value on {args.world} processes "
          f"{1e3 * shared['ring_tiny_cpu']:.2f} CPU ms; of {BIG:,} values "
          f"{1e3 * shared['ring_big_cpu']:.2f} CPU ms (fit {1e3 * shared['ring_big_model']:.2f});"
          f" the PS pattern on {args.world + 1} {1e3 * shared['ps_cpu']:.2f} CPU ms (fit "
          f"{1e3 * shared['ps_model']:.2f})")
    print(f"latency {latency * 1e6:.1f} us, bandwidth {bandwidth / 1e9:.3f} GB/s, "
          f"worker {flops / 1e9:.2f} GFLOP/s + {per_parameter * 1e9:.2f} ns per parameter, "
          f"PS memory {membw / 1e9:.2f} GB/s, {cores} cores, "
          f"{shared['transfer_cpu_per_byte'] * 1e9:.3f} CPU ns per byte at each end, "
          f"{shared['message_cpu'] * 1e6:.1f} CPU us per message")
    print(f"# measured {time.strftime('%Y-%m-%d')} by bench/bench_loopback.py; load: "
          f"{load.split('load average:')[-1].strip()}")
    print(f"bandwidth: {bandwidth:.4g}\nlatency: {latency:.4g}\nworker_flops: {flops:.4g}\n"
          f"ps_memory_bandwidth: {membw:.4g}\nstep_time_per_parameter: {per_parameter:.4g}\n"
          f"shared_cores: {cores}\n"
          f"transfer_cpu_per_byte: {shared['transfer_cpu_per_byte']:.4g}\n"
          f"message_cpu: {shared['message_cpu']:.4g}")


if __name__ == "__main__":
    main()
