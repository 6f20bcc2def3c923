"""Measure the arena's compute: the seconds of one plain forward + backward + optimizer step
of a model at 1, 2 and 3 times the arena's per-worker batch, fitted as per_step + per_sample ×
samples (a coded worker of load δ processes δ batches).

    python bench/arena_compute.py                       # model=cnn on MNIST, batch 10
    python bench/arena_compute.py model=gpt dataset=text --batch 8

Prints the 10th percentile of repeated steps (1 torch thread, after a warm-up) at each batch
and the least-squares ``straggler.per_step`` and ``straggler.per_sample``
(conf/experiment/arena.yaml states the values it uses, when and where they were measured).
The virtual clock of the arena charges each worker per_step + per_sample × the samples it
processes (load δ × batch for a code of load δ), so the straggler models' delays are in real
seconds of this machine's compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from agc_pipeline.build import build_run
from agc_pipeline.conf_path import CONFIG_DIR

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train-app overrides (model=..., dataset=...)")
    parser.add_argument("--batch", type=at_least(1, int), default=10,
                        help="samples per step (default 10)")
    parser.add_argument("--steps", type=at_least(1, int), default=60,
                        help="timed steps (default 60)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=["model=cnn", *args.overrides])
    run = build_run(cfg)
    model = run.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [args.batch, 2 * args.batch, 3 * args.batch]
    medians = []
    for batch in batches:
        x, y = run.dataset.x_train[:batch], run.dataset.y_train[:batch]
        times = []
        for step in range(args.steps + 10):
            start = time.perf_counter()
            optimizer.zero_grad()
            model.loss_sum(model(x), y).backward()
            optimizer.step()
            if step >= 10:
                times.append(time.perf_counter() - start)
        medians.append(float(np.percentile(times, 10)))  # robust to load from others
        print(f"batch {batch}: 10th-percentile step {medians[-1] * 1e3:.2f} ms")
    per_sample, per_step = np.polyfit(batches, medians, 1)
    print(f"load {os.getloadavg()[0]:.2f}; {type(model).__name__} d = "
          f"{sum(p.numel() for p in model.parameters()):,}: "
          f"straggler.per_step={per_step:.3g} straggler.per_sample={per_sample:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
