"""Measure the convergence curves the plan app scales (``agc-plan``, Section VII).

    python bench/measure_convergence.py        # ~3-5 min on a 2-core CPU
    python bench/measure_convergence.py --seeds 3 --iterations 600

Simulated coded SGD on the bundled MNIST with the paper's MLP (784-128-10, d = 101,770),
minibatches of ``--batch`` images from each of the k = 20 data subsets of the AG(2,4)
affine-plane BIBD (n = 16 workers = points, load 5), plain SGD: one exact run (stack,
m = 1, no stragglers: the full minibatch gradient) and approximate runs whose normalised
decoding error ē = E[Err_𝓕(B)]/(mk) ranges over (0, 0.5): construction (7) with m = 2 and
m = 4, and the stack (11) with m = 1, at s = 0 and s = 4 uniformly random stragglers
(``straggler=fixed``), optimal decoding divided by α (``decoder.rescale=true``: the
unbiased step of Section VII). Each run records its smoothed training loss per iteration
and its measured ē (the mean ``approx_error`` of its iterations over mk).

Writes ``agc_pipeline/data/convergence/mnist_mlp.json`` (``--out``; package data, the plan
app's default ``plan.convergence``): the curves averaged over seeds, and per run the measured ē.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.reporting.sinks import write_json
from agc_pipeline.train import run_training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "agc_pipeline" / "data" / "convergence"
BASE = ["assignment=bibd", "assignment.design=affine_plane", "assignment.q=4",
        "dataset=mnist", "model=paper_mlp", "optimizer=sgd", "scheduler=none",
        "trainer.progress=false", "trainer.grad_error=false", "trainer.eval_every=0",
        "trainer.checkpoint_every=0"]
#: label -> overrides (m, scheme, straggler)
RUNS = {
    "exact": ["m=1", "scheme=stack", "straggler=none", "trainer.alpha_samples=0"],
    "stack m=1 s=4": ["m=1", "scheme=stack", "straggler=fixed", "straggler.s=4"],
    "(7) m=2 s=0": ["m=2", "scheme=random_diagonal", "straggler=none"],
    "(7) m=2 s=4": ["m=2", "scheme=random_diagonal", "straggler=fixed", "straggler.s=4"],
    "(7) m=4 s=0": ["m=4", "scheme=random_diagonal", "straggler=none"],
    "(7) m=4 s=4": ["m=4", "scheme=random_diagonal", "straggler=fixed", "straggler.s=4"],
    "stack m=1 s=8": ["m=1", "scheme=stack", "straggler=fixed", "straggler.s=8"],
}


def run(label: str, overrides: list[str], seed: int, args: argparse.Namespace,
        tmp: Path) -> dict:
    rescale = [] if label == "exact" else ["decoder.rescale=true", "trainer.alpha_samples=400"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            *BASE, *overrides, *rescale, f"seed={seed}", f"trainer.iterations={args.iterations}",
            f"trainer.batch_size={args.batch}", f"trainer.lr={args.lr}"])
    out = tmp / f"{label.replace(' ', '_')}_{seed}"
    run_training(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss = np.array([r["train_loss"] for r in rows], dtype=np.float64)
    mk = int(cfg.m) * 20
    error = float(np.mean([r["approx_error"] for r in rows])) / mk
    return {"loss": loss, "normalised_error": error}


def smooth(loss: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first values average what there is)."""
    c = np.cumsum(np.insert(loss, 0, 0.0))
    idx = np.arange(1, len(loss) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=at_least(1, int), default=2)
    parser.add_argument("--iterations", type=at_least(1, int), default=500)
    parser.add_argument("--batch", type=at_least(1, int), default=10, help="images per data subset")
    parser.add_argument("--lr", type=at_least(0, strict=True), default=0.5)
    parser.add_argument("--window", type=at_least(1, int), default=25, help="moving-average window")
    parser.add_argument("--out", type=Path, default=OUT / "mnist_mlp.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in RUNS.items():
            got = [run(label, overrides, seed, args, Path(tmp)) for seed in range(args.seeds)]
            loss = smooth(np.mean([g["loss"] for g in got], axis=0), args.window)
            err = float(np.mean([g["normalised_error"] for g in got]))
            curves[label] = {"normalised_error": err, "loss": [round(x, 6) for x in loss]}
            print(f"{label:16s} ē = {err:.4f}  final smoothed loss {loss[-1]:.4f}", flush=True)
    data = {
        "description": "Simulated coded SGD, bundled MNIST (8000 training images), paper MLP "
                       "(d = 101,770), AG(2,4) BIBD (n = 16, k = 20, load 5), SGD, decoder "
                       "rescaled by alpha; training loss per iteration, moving average over "
                       f"{args.window} iterations, mean over {args.seeds} seeds",
        "made_by": "bench/measure_convergence.py",
        "date": time.strftime("%Y-%m-%d"), "load": load,
        "settings": {"iterations": args.iterations, "batch_per_subset": args.batch,
                     "samples_per_iteration": 20 * args.batch, "lr": args.lr,
                     "seeds": args.seeds, "window": args.window, "d": 101770, "n": 16,
                     "k": 20},
        "exact": "exact",
        "curves": curves,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, data)
    print(f"wrote {args.out} ({data['seconds']} s)")


if __name__ == "__main__":
    main()
