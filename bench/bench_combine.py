"""The distributed PS's combine (``combine_into``) against the memory-bandwidth bound.

    python bench/bench_combine.py                      # d = 50M, n = 8, m = 2, one thread
    python bench/bench_combine.py --threads 2          # torch's intra-op threads
    python bench/bench_combine.py --chunks 16384,65536 # other tile widths beside the default
    python bench/bench_combine.py --d 20000000         # a smaller d where memory is short

The PS forms ĝ = Σ_{j∈𝓕} R(j, :)ᵀ message_j from the (n × ⌈d/m⌉) float32 message matrix
(:func:`~agc_pipeline.training.coded_step.combine_into`). Streaming every message once and
writing ĝ once moves (n·⌈d/m⌉ + d)·4 bytes (all n survive); the bound is that over the
copy bandwidth measured in the same run (a ``dst.copy_(src)`` of a large float32 tensor,
counting its bytes read plus written, with the same threads). Printed for every survivor
and one missing survivor in the middle (two runs of survivors: reads (n − 1)·⌈d/m⌉·4
bytes); target: within 1.5× of the bound. Rounds are interleaved (the copy, then every
variant, in each round) so that the bound and the combine see the same load; medians of
``--repeats`` rounds; the load is printed before and after. Beside the default tile width
(``COMBINE_CHUNK``) the ``--chunks`` widths, and ``untiled`` (one product per run of
survivors over all columns: a second pass over ĝ per further run, the path before tiling).
Exit status 1 when the default misses the target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from agc_pipeline.training import coded_step
from agc_pipeline.training.coded_step import block_length, combine_into

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least, int_list  # noqa: E402

TARGET = 1.5


def untiled(messages: torch.Tensor, r: np.ndarray, mask: np.ndarray,
            out: torch.Tensor) -> torch.Tensor:
    """The combine before tiling: one product per run of survivors over every column."""
    coef = torch.as_tensor(np.asarray(r, dtype=np.float64)).to(out.dtype)
    index = np.flatnonzero(mask)
    starts = np.flatnonzero(np.diff(index) != 1) + 1
    runs = [(int(index[lo]), int(index[hi - 1]) + 1)
            for lo, hi in zip(np.r_[0, starts], np.r_[starts, index.size], strict=True)]
    (a, b), rest = runs[0], runs[1:]
    torch.mm(coef[a:b].T, messages[a:b], out=out)
    for a2, b2 in rest:
        out.addmm_(coef[a2:b2].T, messages[a2:b2])
    return out


def tiled(chunk: int) -> Callable[..., torch.Tensor]:
    """``combine_into`` with tiles of ``chunk`` columns."""
    def run(*args: object) -> torch.Tensor:
        saved, coded_step.COMBINE_CHUNK = coded_step.COMBINE_CHUNK, chunk
        try:
            return combine_into(*args)  # type: ignore[arg-type]
        finally:
            coded_step.COMBINE_CHUNK = saved
    return run


def load() -> str:
    """The 1-min load average and the processes running now (/proc/loadavg)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            fields = f.read().split()
        return f"{fields[0]} (1-min), {fields[3].split('/')[0]} running"
    except OSError:  # pragma: no cover - not on Linux
        return f"{os.getloadavg()[0]:.2f} (1-min)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=at_least(1, int), default=50_000_000)
    parser.add_argument("--n", type=at_least(2, int), default=8,
                        help="workers (≥ 2: the second case leaves one out)")
    parser.add_argument("--m", type=at_least(1, int), default=2)
    parser.add_argument("--repeats", type=at_least(1, int), default=7)
    parser.add_argument("--threads", type=at_least(1, int), default=1)
    parser.add_argument("--chunks", type=int_list(1), default=[],
                        help="comma-separated tile widths to time beside COMBINE_CHUNK")
    parser.add_argument("--no-untiled", action="store_true",
                        help="leave out the untiled product (the path before tiling)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    d, n, m = args.d, args.n, args.m
    length = block_length(d, m)
    default = coded_step.COMBINE_CHUNK
    print(f"load before: {load()}; torch threads {torch.get_num_threads()}, d = {d:,}, "
          f"n = {n}, m = {m}, float32, {args.repeats} interleaved rounds, medians")
    variants: dict[str, Callable[..., torch.Tensor]] = {f"tiles of {default}": combine_into}
    for chunk in args.chunks:
        if chunk != default:
            variants[f"tiles of {chunk}"] = tiled(chunk)
    if not args.no_untiled:
        variants["untiled"] = untiled
    elements = max(n * length, d)
    src, dst = torch.rand(elements), torch.empty(elements)
    messages = torch.randn(n, length)
    out = torch.empty(m, length)
    r = np.random.default_rng(0).normal(size=(n, m))
    cases = {"all survive": np.ones(n, dtype=bool), "one missing": np.ones(n, dtype=bool)}
    cases["one missing"][n // 2] = False
    jobs: dict[tuple[str, str], Callable[[], object]] = {("copy", ""): lambda: dst.copy_(src)}
    for case, mask in cases.items():
        for name, fn in variants.items():
            jobs[(case, name)] = lambda fn=fn, mask=mask: fn(messages, r, mask, out)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for fn in jobs.values():
        fn()  # warm-up (faults the pages in)
    for _ in range(args.repeats):
        for key, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    median = {key: statistics.median(values) for key, values in times.items()}
    bandwidth = 2 * elements * 4 / median[("copy", "")]
    print(f"copy bandwidth: {bandwidth / 1e9:.2f} GB/s (read + write, "
          f"{elements * 4 / 2**20:.0f} MiB copied)")
    worst = 0.0
    for case, mask in cases.items():
        moved = (int(mask.sum()) * length + m * length) * 4
        bound = moved / bandwidth
        print(f"{case}: bound {bound * 1e3:.1f} ms ({moved / 2**20:.0f} MiB at the copy "
              f"bandwidth)")
        for name in variants:
            seconds = median[(case, name)]
            if name == f"tiles of {default}":
                worst = max(worst, seconds / bound)
            print(f"    {name:<16} {seconds * 1e3:8.1f} ms   {seconds / bound:.2f}x")
    print(f"load after: {load()}")
    ok = worst <= TARGET
    print(f"combine (tiles of {default}) vs bound: worst {worst:.2f}x (target ≤ {TARGET}): "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
