"""Speed of the train app's simulated coded iteration against a plain full-batch SGD step.

    python bench/bench_train.py            # side-by-side ratio + 300 Fig. 6 iterations
    python bench/bench_train.py --quick    # side-by-side ratio only

1. Side by side, in one process, interleaved, on the same MNIST training data (the bundled
   10k set, 8000 training images, 7992 used: 27 subsets of 296): one simulated coded
   iteration (the paper's MLP, n = 54 workers on the (27,2,5) coset graph, m = 2,
   construction (7) with ε = 0.1, optimal decoding, Bernoulli q = 0.25; all 27 partial
   gradients, encoding, straggler draw, decoding, ĝ = Z B R in float64, gradient error and
   the SGD step) against one plain full-batch step (forward, backward of the mean loss,
   ``optimizer.step``) of an identical model. Prints medians and their ratio (target ≤ 2).
2. 300 iterations of each Fig. 6 preset (one scheme, one seed) through ``run_training``,
   timed end to end (target < 60 s each on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training.loop import advance

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402

RATIO_TARGET = 2.0
FIG6_TARGET_S = 60.0


def compose_train(overrides: list[str]):  # noqa: ANN201 - DictConfig
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def side_by_side(repeats: int) -> float:
    """Median coded-iteration time / median plain-step time, printed and returned."""
    cfg = compose_train(["experiment=fig6_coset27", "dataset.train_size=8000",
                         "trainer.progress=false"])
    trainer = build_trainer(cfg)
    trainer.estimate_alpha()
    plain_model = copy.deepcopy(trainer.model)
    work = trainer.workload  # (k, |D_i|, …): every subset's samples, the full batch
    x = work.x.reshape(-1, *work.x.shape[2:])
    y = work.y.reshape(-1, *work.y.shape[2:])
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=trainer.settings.lr)

    def plain_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = plain_model.loss_sum(plain_model(x), y) / x.shape[0]
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        plain_step()
        advance(trainer)
    plain, coded = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        plain_step()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        advance(trainer)
        coded.append(time.perf_counter() - start)
    p, c = statistics.median(plain), statistics.median(coded)
    ratio = c / p
    scheme = trainer.spec.scheme
    print(f"MNIST {x.shape[0]} samples, paper MLP (d = {trainer.d}), n = {scheme.n} workers, "
          f"k = {scheme.k}, m = {scheme.m}, {torch.get_num_threads()} threads")
    print(f"  plain full-batch step : {p * 1e3:8.1f} ms (median of {repeats})")
    print(f"  coded iteration       : {c * 1e3:8.1f} ms (median of {repeats})")
    print(f"  ratio                 : {ratio:8.2f}x  (target <= {RATIO_TARGET}x) "
          f"{'OK' if ratio <= RATIO_TARGET else 'SLOW'}")
    return ratio


def fig6_runs(iterations: int) -> dict[str, float]:
    """End-to-end seconds of ``iterations`` iterations of each Fig. 6 preset."""
    out = {}
    for preset in ("fig6_bibd7", "fig6_coset27"):
        cfg = compose_train([f"experiment={preset}", f"trainer.iterations={iterations}",
                             "trainer.progress=false"])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = run_training(cfg, Path(tmp))
            out[preset] = time.perf_counter() - start
        print(f"  {preset}: {iterations} iterations in {out[preset]:.1f} s "
              f"(final train loss {summary['final_train_loss']:.4f}; target < "
              f"{FIG6_TARGET_S:.0f} s) {'OK' if out[preset] < FIG6_TARGET_S else 'SLOW'}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="side-by-side ratio only")
    parser.add_argument("--repeats", type=at_least(1, int), default=15)
    parser.add_argument("--iterations", type=at_least(1, int), default=300)
    args = parser.parse_args(argv)
    ratio = side_by_side(args.repeats)
    slow = ratio > RATIO_TARGET
    if not args.quick:
        print("Fig. 6 presets, end to end:")
        slow |= any(s >= FIG6_TARGET_S for s in fig6_runs(args.iterations).values())
    sys.exit(1 if slow else 0)


if __name__ == "__main__":
    main()
