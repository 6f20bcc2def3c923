"""Cross-check the arena's virtual clock against real processes: the same mitigation, regime
and seed run once in the simulated runtime (virtual seconds: the arena's measured compute
model, links from ``cluster=loopback``) and once on real processes on this host (the
parameter server with ``trainer=distributed``, or ``trainer=ddp``), whose workers compute for
real and sleep only the regime's stalls. Prints, per mitigation, the time to a target training
loss on both clocks and their ratio; the issue's bar is agreement within 25 %.

    python bench/arena_crosscheck.py                  # n = 4, stall_frequent, 40 iterations
    python bench/arena_crosscheck.py --n 4 --duration 0.3 --s 2 --iterations 40

The stalls are long (``--duration``, default 0.5 s, with probability 0.3 per worker and step)
and the PS ignores one straggler (``--s 1``), so that what the clock models — who waits for
whom — dominates what it does not (Python overheads of the runtimes, and the CPU contention
of n + 1 processes on a small host, which the simulation's one-processor-per-node clock
leaves out); the residual is printed as the per-iteration difference. Needs ~2 minutes on 2
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.reporting.targets import time_to_loss
from agc_pipeline.train import run_training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402

REAL = ["straggler.per_step=0", "straggler.per_sample=1e-9", "cluster=none"]
PAIRS: dict[str, tuple[list[str], list[str]]] = {
    "backup workers (PS)": (["mitigation=backup_workers"],
                            ["mitigation=backup_workers", "trainer=distributed",
                             "trainer.abandon_stale=true",
                             "trainer.grad_error=false", *REAL]),
    "(7) m=2 (PS)": (["mitigation=code7_m2"],
                     ["mitigation=code7_m2", "trainer=distributed", "trainer.grad_error=false",
                      "trainer.abandon_stale=true",
                      *REAL]),
    "DDP": (["mitigation=ddp"], ["code=uncoded_wait", "trainer=ddp", *REAL]),
}


def compose_train(overrides: list[str]):  # noqa: ANN201 - DictConfig
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=at_least(2, int), default=4, help="workers (default 4)")
    parser.add_argument("--iterations", type=at_least(1, int), default=40)
    parser.add_argument("--duration", type=at_least(0, strict=True), default=0.5,
                        help="stall length, s")
    parser.add_argument("--s", type=at_least(0, int), default=1,
                        help="stragglers the PS ignores (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args(argv)
    if args.s >= args.n:
        parser.error(f"argument --s: must be < --n = {args.n} (got {args.s})")
    common = ["experiment=arena", "regime=stall_frequent", f"straggler.duration={args.duration}",
              f"straggler.s={args.s}",
              f"assignment.n={args.n}", f"trainer.iterations={args.iterations}",
              "trainer.eval_every=0", "trainer.threads=1", "dataset.train_size=2400",
              "dataset.test_size=200", "seed=0"]
    out = args.out or Path(tempfile.mkdtemp(prefix="arena_crosscheck_"))
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); n = {args.n}, "
          f"stall {args.duration:g} s w.p. 0.3, {args.iterations} iterations; runs in {out}",
          flush=True)
    worst = 0.0
    for label, (simulated, real) in PAIRS.items():
        slug = "".join(c if c.isalnum() else "_" for c in label)
        sim_dir, real_dir = out / f"{slug}_simulated", out / f"{slug}_processes"
        run_training(compose_train([*common, *simulated, "cluster=loopback"]), sim_dir)
        run_training(compose_train([*common, *real]), real_dir)
        sim, measured = rows_of(sim_dir), rows_of(real_dir)
        # the target: the simulated run's smoothed loss at 3/4 of the run (both reach it)
        smooth = 5
        losses = [r["train_loss"] for r in sim]
        at = (3 * len(losses)) // 4
        target = max(sum(losses[at - smooth + 1:at + 1]) / smooth,
                     sum(r["train_loss"] for r in measured[at - smooth + 1:at + 1]) / smooth)
        hit_sim = time_to_loss(sim, "virtual", target, smooth)
        hit_real = time_to_loss(measured, "wall", target, smooth)
        if hit_sim.time is None or hit_real.time is None:
            print(f"{label:22s} target loss {target:.3f} not reached on both clocks "
                  f"(simulated {hit_sim}, processes {hit_real})")
            worst = float("inf")
            continue
        ratio = hit_real.time / hit_sim.time
        worst = max(worst, abs(ratio - 1.0))
        per_it = ((measured[-1]["wall_time"] - sim[-1]["virtual_time"]) / len(sim)) * 1e3
        print(f"{label:22s} loss ≤ {target:.3f}: simulated {hit_sim.time:6.2f} s (it "
              f"{hit_sim.iteration}), processes {hit_real.time:6.2f} s (it {hit_real.iteration})"
              f" -> measured/simulated {ratio:.2f}; end of run {sim[-1]['virtual_time']:.2f} vs "
              f"{measured[-1]['wall_time']:.2f} s ({per_it:+.1f} ms per iteration unmodelled)",
              flush=True)
    print(f"virtual clock vs processes: worst |ratio - 1| = {worst:.2f} "
          f"({'within' if worst <= 0.25 else 'NOT within'} 25 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
