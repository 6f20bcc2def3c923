"""Calibrate ``cluster=loopback``: gloo point-to-point latency and bandwidth between two
processes on this machine, a worker's training FLOP/s and the PS's memory bandwidth.

    python bench/bench_loopback.py            # ~30 s; prints the figures and a YAML block
    python bench/bench_loopback.py --repeats 50 --max-mb 64

Latency α: half the 10th percentile of the round trips of a 4-byte ping-pong. Bandwidth β:
a least-squares fit of the one-way time (half the 10th-percentile round trip) against the
message size over 1-64 MB (slope 1/β). The 10th percentile, not the median: on a machine
whose cores other processes share, the median round trip is bimodal (tens of µs, or a
scheduler quantum of ~2 ms when a peer is descheduled); the medians are printed too.
Worker FLOP/s: the MNIST MLP's forward + backward (paper_mlp, 6·d flops per sample) on
one torch thread, the work a simulated worker does. PS memory bandwidth: a numpy float32
weighted sum of 8 vectors of 4M values (what decoding streams). Copy the printed
numbers into ``agc_pipeline/conf/cluster/loopback.yaml`` with the date and the ``uptime``
load: every figure depends on how busy the two cores are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def measure_worker_flops(repeats: int) -> float:
    """FLOP/s of the paper's MLP (784-128-10) forward + backward, 6·d flops per sample."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    d = sum(p.numel() for p in model.parameters())
    x, y = torch.rand(500, 784), torch.rand(500, 10)
    best = np.inf
    for _ in range(max(repeats // 4, 5)):
        start = time.perf_counter()
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        best = min(best, time.perf_counter() - start)
    return 6.0 * d * x.shape[0] / best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-mb", type=int, default=64)
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    latency, bandwidth, one_way = measure_links(args.repeats, args.max_mb)
    flops = measure_worker_flops(args.repeats)
    membw = measure_ps_memory_bandwidth(args.repeats)
    print(f"uptime: {load}")
    for nbytes, (t, med) in one_way.items():
        print(f"  gloo one-way {nbytes:>10d} B: p10 {t * 1e6:10.1f} us "
              f"({nbytes / t / 1e9:.2f} GB/s), median {med * 1e6:10.1f} us")
    print(f"latency {latency * 1e6:.1f} us, bandwidth {bandwidth / 1e9:.3f} GB/s, "
          f"worker {flops / 1e9:.2f} GFLOP/s, PS memory {membw / 1e9:.2f} GB/s")
    print(f"# measured {time.strftime('%Y-%m-%d')} by bench/bench_loopback.py; load: "
          f"{load.split('load average:')[-1].strip()}")
    print(f"bandwidth: {bandwidth:.4g}\nlatency: {latency:.4g}\nworker_flops: {flops:.4g}\n"
          f"ps_memory_bandwidth: {membw:.4g}")


if __name__ == "__main__":
    main()
