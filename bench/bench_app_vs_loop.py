"""The train app against a plain PyTorch loop of the same training, end to end, interleaved.

    python bench/bench_app_vs_loop.py                    # experiment=mnist_cnn, 3 pairs
    python bench/bench_app_vs_loop.py --iterations 300 --repeats 1

(a) **the app**: ``experiment=mnist_cnn`` (coded SGD of the residual CNN on MNIST, simulated
    cluster, k = 7 subsets × 10 images per iteration, AdamW + cosine) through
    ``agc_pipeline.train.run_training`` in this process, with ``trainer.threads=1``: building
    the run (data, model, checks, α), the iterations with their evaluations, metrics rows and
    checkpoints, the final evaluation and summary.json.
(b) **a plain loop** written here, what a user of PyTorch writes for the same training:
    the data set and the model built by the app's own builders (the same class and the same
    seeded initialisation), the same samples in the same order (iteration t takes the union
    of the k subsets' minibatches of t, :class:`~agc_pipeline.training.workload.Workload`'s
    draw), ``loss.backward()`` of the mean loss over those k·b samples, the same optimizer
    and schedule (``optimizer=`` and ``scheduler=`` instantiated as the app does), the test
    set evaluated at the same points (before the update of every ``trainer.eval_every``-th
    iteration, and at the end) in forwards of the app's ``EVAL_CHUNK`` samples; no
    checkpoints, no metrics file, no final pass over the training set.

Both run with one torch thread, in this process, alternately (a b a b …), after one short
warm-up of each (imports, the data set's cache). Times are wall-clock, end to end (for the
app: ``run_training``'s, from composing the run to summary.json; for the loop: from building
the data set to the final evaluation). Time to accuracy: from the start to the first
evaluation whose test accuracy reaches the app's final one (the app's own: its final
evaluation unless an earlier one reached it; rows' ``iteration`` give the point, the wall
time of the app's rows is not recorded, so the app's time to it is its whole run unless an
in-loop evaluation reached it: then the fraction of its iterations, plus its start-up).
Medians over ``--repeats`` pairs (the ratios: medians of each pair's ratio). The iterates
differ (the app's gradient is the decoded coded estimate under stragglers, the loop's the
exact minibatch gradient), so the ratio to the same accuracy mixes speed per iteration with
progress per iteration.

Last line: ``app vs plain loop: whole run <r1>x, to accuracy <acc> <r2>x (load <l>)`` with
r1 = app / loop wall time and r2 = app / loop time to the app's final test accuracy.
Target (the issue "the app at the speed of a plain loop"): r2 ≤ 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from agc_pipeline.build import (
    build_assignment,
    build_dataset,
    build_model,
    build_optimizer,
    build_scheduler,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.data import split_subsets
from agc_pipeline.errors import ConfigError
from agc_pipeline.train import run_training
from agc_pipeline.training.batches import batch_indices
from agc_pipeline.training.workload import EVAL_CHUNK

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least  # noqa: E402

TARGET = 1.3


def compose_train(overrides: list[str]):  # noqa: ANN201 - DictConfig
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def run_app(overrides: list[str], out: Path) -> dict[str, Any]:
    """The app end to end: wall time, its evaluations [(iteration, accuracy)] and the final
    accuracy (at ``iterations``)."""
    started = time.perf_counter()
    summary = run_training(compose_train(overrides), out)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["iteration"], r["test_accuracy"]) for r in rows
             if r.get("test_accuracy") is not None]
    evals.append((summary["iterations"], summary["test_accuracy"]))
    startup = summary.get("startup_seconds") or 0.0
    return {"seconds": seconds, "evals": evals, "accuracy": summary["test_accuracy"],
            "iterations": summary["iterations"], "startup": startup,
            "train": summary["train_seconds"]}


def app_time_to(result: dict[str, Any], accuracy: float) -> float:
    """The app's time to ``accuracy``: its whole run if only the final evaluation reaches
    it, else its start-up plus the share of its training time up to that evaluation."""
    for iteration, acc in result["evals"]:
        if acc is not None and acc >= accuracy:
            if iteration >= result["iterations"]:
                return result["seconds"]
            share = iteration / max(result["iterations"], 1)
            return result["startup"] + share * result["train"]
    return result["seconds"]


def run_plain(overrides: list[str]) -> dict[str, Any]:
    """The plain PyTorch loop (see the module docstring): wall time and [(iteration,
    accuracy, seconds since the start)] of its evaluations."""
    cfg = compose_train(overrides)
    started = time.perf_counter()
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    s = cfg.trainer
    iterations, eval_every, batch = int(s.iterations), int(s.eval_every), int(s.batch_size)
    k = int(build_assignment(cfg).k)
    seed = int(cfg.seed)
    subsets = split_subsets(int(dataset.y_train.shape[0]), k, seed,
                            partition=dataset.partition, labels=dataset.y_train)
    x_all, y_all = dataset.x_train[subsets], dataset.y_train[subsets]  # (k, |D_i|, …)
    size = int(subsets.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg)(params)
    scheduler = build_scheduler(cfg, iterations)(optimizer)
    rows = torch.arange(k)[:, None]
    evals: list[tuple[int, float, float]] = []

    def evaluate(t: int) -> None:  # in forwards of EVAL_CHUNK samples, as the app does
        with torch.no_grad():
            out = torch.cat([model(part) for part in torch.split(dataset.x_test, EVAL_CHUNK)])
            acc = model.metric(out, dataset.y_test)
        evals.append((t, float(acc), time.perf_counter() - started))

    for t in range(iterations):
        if eval_every > 0 and t % eval_every == 0:
            evaluate(t)
        index = batch_indices(seed, t, list(range(k)), size, batch)
        x = x_all[rows, index].reshape(-1, *x_all.shape[2:])
        y = y_all[rows, index].reshape(-1, *y_all.shape[2:])
        loss = model.loss_sum(model(x), y) / y.shape[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    evaluate(iterations)
    return {"seconds": time.perf_counter() - started, "evals": evals,
            "accuracy": evals[-1][1]}


def plain_time_to(result: dict[str, Any], accuracy: float) -> float | None:
    """The loop's time to its first evaluation reaching ``accuracy`` (None: never)."""
    return next((sec for _, acc, sec in result["evals"] if acc >= accuracy), None)


def train_experiments() -> list[str]:
    """The train app's presets that take minibatches (conf/experiment/*.yaml with ``app:
    train`` and a ``batch_size``): the plain loop here draws the same minibatches."""
    texts = {p.stem: p.read_text() for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    return sorted(name for name, text in texts.items() if "\napp: train\n" in "\n" + text
                  and re.search(r"^\s+batch_size: \d+", text, re.MULTILINE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="mnist_cnn", choices=train_experiments())
    parser.add_argument("--iterations", type=at_least(1, int), default=None,
                        help="trainer.iterations (default: the preset's)")
    parser.add_argument("--repeats", type=at_least(1, int), default=3, help="interleaved pairs")
    parser.add_argument("--out", default=None, help="run dirs (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        bench(args)
    except ConfigError as exc:  # e.g. --iterations shorter than the preset's warm-up
        print(f"bench_app_vs_loop: {exc}", file=sys.stderr)
        sys.exit(2)


def bench(args: argparse.Namespace) -> None:
    """The interleaved pairs and the summary (see the module docstring)."""
    torch.set_num_threads(1)
    overrides = [f"experiment={args.experiment}", "trainer.threads=1", "trainer.progress=false",
                 "trainer.overwrite=true"]
    if args.iterations is not None:
        overrides.append(f"trainer.iterations={args.iterations}")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_app_vs_loop_"))
    print(f"experiment={args.experiment}, {args.repeats} interleaved pairs, one torch thread; "
          f"load before {load()} ({os.cpu_count()} cores)", flush=True)
    warm = [*overrides, "trainer.iterations=2", "trainer.eval_every=1"]
    if "warmup" in compose_train(overrides).scheduler:  # a warm-up longer than 2 is refused
        warm.append("scheduler.warmup=0")
    run_app(warm, out / "warmup")
    run_plain(warm)
    apps, plains = [], []
    for r in range(args.repeats):
        apps.append(run_app(overrides, out / f"app{r}"))
        plains.append(run_plain(overrides))
        a, p = apps[-1], plains[-1]
        print(f"  pair {r}: app {a['seconds']:6.1f} s (outside the iterations, before the "
              f"final evaluation {a['startup']:.1f} s), accuracy {a['accuracy']:.4f}; plain "
              f"loop {p['seconds']:6.1f} s, accuracy {p['accuracy']:.4f}; load {load()}",
              flush=True)
    accuracy = apps[0]["accuracy"]
    assert all(a["accuracy"] == accuracy for a in apps), "the app is deterministic"
    app_s = statistics.median(a["seconds"] for a in apps)
    plain_s = statistics.median(p["seconds"] for p in plains)
    app_to = statistics.median(app_time_to(a, accuracy) for a in apps)
    reached = [plain_time_to(p, accuracy) for p in plains]
    first = next((t for t, acc, _ in plains[0]["evals"] if acc >= accuracy), None)
    print("\nplain loop evaluations (iteration: accuracy): " + ", ".join(
        f"{t}: {acc:.4f}" for t, acc, _ in plains[0]["evals"]))
    print("app evaluations (iteration: accuracy):        " + ", ".join(
        f"{t}: {acc:.4f}" for t, acc in apps[0]["evals"]))
    print(f"\n{'':12s} {'wall s':>8s} {'final acc':>10s} {'to ' + f'{accuracy:.4f}':>10s}")
    print(f"{'app':12s} {app_s:8.1f} {accuracy:10.4f} {app_to:10.1f}")
    if any(t is None for t in reached):
        plain_to = plain_s
        note = " (the plain loop never reached it: its whole run)"
    else:
        plain_to = statistics.median(t for t in reached if t is not None)
        note = f" (the plain loop's evaluation at iteration {first})"
    print(f"{'plain loop':12s} {plain_s:8.1f} {plains[0]['accuracy']:10.4f} "
          f"{plain_to:10.1f}{note}")
    # the ratios: medians of the pairs' own (the load moves both runs of a pair alike)
    r1 = statistics.median(a["seconds"] / p["seconds"] for a, p in zip(apps, plains, strict=True))
    r2 = statistics.median(app_time_to(a, accuracy) / (t if t is not None else p["seconds"])
                           for a, p, t in zip(apps, plains, reached, strict=True))
    print(f"target to accuracy ≤ {TARGET}: {'met' if r2 <= TARGET else 'missed'}")
    print(f"app vs plain loop: whole run {r1:.2f}x, to accuracy {accuracy:.4f} {r2:.2f}x "
          f"(load {load()})")


if __name__ == "__main__":
    main()
