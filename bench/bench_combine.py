"""The distributed PS's combine (``combine_into``) against the memory-bandwidth bound.

    python bench/bench_combine.py                 # d = 50M, n = 8, m = 2
    python bench/bench_combine.py --d 20000000    # a smaller d where memory is short

The PS forms ĝ = Σ_{j∈𝓕} R(j, :)ᵀ message_j from the (n × ⌈d/m⌉) float32 message matrix
(:func:`~agc_pipeline.training.coded_step.combine_into`). Streaming every message once and
writing ĝ once moves (n·⌈d/m⌉ + d)·4 bytes (all n survive); the bound is that over the
copy bandwidth measured in the same run (a ``dst.copy_(src)`` of a large float32 tensor,
counting its bytes read plus written). Printed for every survivor and one missing survivor
in the middle (two runs of survivors: reads (n − 1)·⌈d/m⌉·4 bytes); target: within 1.5× of
the bound. Medians of ``--repeats``, one torch thread by default; quote the load printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from agc_pipeline.training.coded_step import block_length, combine_into

TARGET = 1.5


def _median_time(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up (faults the pages in)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(elements: int, repeats: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) for float32 tensors."""
    src = torch.rand(elements)
    dst = torch.empty_like(src)
    seconds = _median_time(lambda: dst.copy_(src), repeats)
    return 2 * elements * 4 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=50_000_000)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d, n, m = args.d, args.n, args.m
    length = block_length(d, m)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), torch threads "
          f"{torch.get_num_threads()}, d = {d:,}, n = {n}, m = {m}, float32, "
          f"{args.repeats} repeats, medians")
    bandwidth = copy_bandwidth(max(n * length, d), args.repeats)
    print(f"copy bandwidth: {bandwidth / 1e9:.2f} GB/s (read + write, "
          f"{max(n * length, d) * 4 / 2**20:.0f} MiB copied)")
    messages = torch.randn(n, length)
    out = torch.empty(m, length)
    r = np.random.default_rng(0).normal(size=(n, m))
    worst = 0.0
    for label, missing in (("all survive", []), ("one missing", [n // 2])):
        mask = np.ones(n, dtype=bool)
        mask[missing] = False
        seconds = _median_time(lambda mask=mask: combine_into(messages, r, mask, out),
                               args.repeats)
        moved = (int(mask.sum()) * length + m * length) * 4
        bound = moved / bandwidth
        worst = max(worst, seconds / bound)
        print(f"{label:<12} combine {seconds * 1e3:8.1f} ms   bound {bound * 1e3:8.1f} ms "
              f"({moved / 2**20:.0f} MiB at the copy bandwidth)   {seconds / bound:.2f}x")
    ok = worst <= TARGET
    print(f"combine vs bound: worst {worst:.2f}x (target ≤ {TARGET}): "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
