"""A coded iteration of the simulated trainer against a plain minibatch step, side by side.

    python bench/bench_coded_gradient.py            # every model below, k ∈ {7, 27, 91} (~5 min)
    python bench/bench_coded_gradient.py --quick    # one model of each kind (CNN, MLP, GPT), k = 7
    python bench/bench_coded_gradient.py --models gpt_1m mlp_1m
    python bench/bench_coded_gradient.py --device cuda --models gpt_10m   # on a GPU

For each model and each k (the Fano plane, the (27,2,5) coset graph and PG(2,9): k = 7, 27,
91 data subsets; construction (7), m = 2, optimal decoding, Bernoulli q = 0.25) the script
builds the train app's simulated trainer with ``trainer.batch_size=b`` and measures, in one
process and interleaved:

* **coded**: ``advance(trainer)`` — minibatch of b samples from every subset, encoder draw,
  straggler draw, decoding, ĝ = Z (B R) by the one-pass weighted coded gradient
  (``trainer.coded_gradient=weighted``, ``trainer.grad_error=false``) and the optimizer step;
* **plain**: what a user would run instead on the same k·b samples: ``zero_grad``, forward,
  backward of the mean loss and ``torch.optim.SGD.step`` on an identical model.

Peak memory of each (the rise of the process's peak RSS over one step after a warm-up,
measured in a fresh child process each, with glibc mapping and unmapping every block of
64 KiB or more so that memory kept from the warm-up does not hide the step's own peak) is
printed beside the times. Times are the process's CPU time per step (median of interleaved
pairs), with one torch thread by default (``--threads``): a worker process's setting, and a
measure that other jobs on the machine's cores do not distort (the wall-time ratio is
printed too; with several threads on a busy machine it mostly measures OpenMP waiting).
With ``--device cuda`` both run on the GPU, times are wall times taken after
``torch.cuda.synchronize`` and memory is the rise of ``torch.cuda.max_memory_allocated``
over one step. Targets (issue 8): coded ≤ 1.3× plain at every k, peak memory ≤ 2× plain.
Unless ``--allocator default``, glibc's malloc keeps freed memory in the timing process
(:func:`keep_freed_memory`), for both steps alike.
The exit status is 1 if a target is missed; the last line summarises the worst ratios.
Quote the load (``uptime``) with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.train import build_trainer
from agc_pipeline.training.loop import advance

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import at_least, device  # noqa: E402

TIME_TARGET = 1.3
MEMORY_TARGET = 2.0

#: k → the assignment (all with construction (7), m = 2)
DESIGNS = {
    7: ["assignment=bibd", "assignment.design=fano"],
    27: ["assignment=coset", "assignment.k=27", "assignment.delta=5", "assignment.m=2",
         "scheme.epsilon=0.1"],
    91: ["assignment=bibd", "assignment.design=projective_plane", "assignment.q=9"],
}

#: model name → (overrides, samples per subset b)
MODELS = {
    "gpt_1m": (["dataset=text", "dataset.context=32", "model=gpt", "model.layers=4",
                "model.width=128", "model.heads=4"], 4),
    "gpt_10m": (["dataset=text", "dataset.context=64", "model=gpt", "model.layers=8",
                 "model.width=320", "model.heads=8"], 1),
    "mlp_1m": (["model=mlp", "model.hidden=1270"], 16),
    # the residual CNN (d ≈ 77.6k) on MNIST 28×28 and on CIFAR-10-shaped 32×32×3 images
    # (random pixels in a temporary folder: the timing does not depend on their values)
    "cnn_mnist": (["model=cnn", "dataset=mnist"], 10),
    "cnn_cifar": (["model=cnn", "dataset=cifar10", "dataset.train_size=1000",
                   "dataset.test_size=10"], 10),
    # the paper's Fig. 6 MLP (784-128-10), 16 and 10 samples per subset
    "paper_mlp": (["model=paper_mlp", "dataset=mnist"], 16),
    "paper_mlp_10": (["model=paper_mlp", "dataset=mnist"], 10),
}

#: ``--quick``: one model of each kind
QUICK_MODELS = ["cnn_mnist", "paper_mlp", "gpt_1m"]


def fake_cifar_root() -> str:
    """A folder with CIFAR-10-format batches of random pixels (200 images each), made once
    per process (``dataset.root`` of ``cnn_cifar``)."""
    import pickle
    import tempfile

    import numpy as np

    global _CIFAR_ROOT
    _CIFAR_ROOT = _CIFAR_ROOT or os.environ.get("BENCH_CIFAR_ROOT")
    if _CIFAR_ROOT is None:
        root = tempfile.mkdtemp(prefix="bench_cifar_")
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder)
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"labels": [int(v) for v in rng.integers(0, 10, size=200)],
                     b"data": rng.integers(0, 256, size=(200, 3072), dtype=np.uint8)}
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump(batch, f)
        _CIFAR_ROOT = os.environ["BENCH_CIFAR_ROOT"] = root  # the memory children's too
    return _CIFAR_ROOT


_CIFAR_ROOT: str | None = None


def overrides_for(model: str, k: int, device: str = "cpu") -> list[str]:
    extra, batch = MODELS[model]
    if "dataset=cifar10" in extra:
        extra = [*extra, f"dataset.root={fake_cifar_root()}"]
    return [f"trainer.device={device}", *DESIGNS[k], "scheme=random_diagonal", "m=2",
            "straggler=bernoulli", "straggler.q=0.25", "decoder=optimal", *extra,
            f"trainer.batch_size={batch}",
            "trainer.coded_gradient=weighted", "trainer.grad_error=false",
            "trainer.alpha_samples=0", "trainer.progress=false", "trainer.lr=0.01"]


def build(model: str, k: int, device: str = "cpu"):  # noqa: ANN201 - (trainer, plain step)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides_for(model, k, device))
    trainer = build_trainer(cfg)
    plain_model = copy.deepcopy(trainer.model)
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    state = {"t": 0}

    def plain_step() -> None:
        # the same k·b samples the coded iteration takes (its next minibatch)
        x, y = trainer.workload.minibatch(state["t"])
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        optimizer.zero_grad(set_to_none=True)
        (plain_model.loss_sum(plain_model(x), y) / x.shape[0]).backward()
        optimizer.step()
        state["t"] += 1

    plain_step.model = plain_model  # type: ignore[attr-defined]
    return trainer, plain_step


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def memory_child(model: str, k: int, which: str, device: str = "cpu") -> None:
    """In a fresh process: the rise of peak RSS (GPU: of allocated memory) over one step
    (after a warm-up step)."""
    trainer, plain_step = build(model, k, device)
    step = plain_step if which == "plain" else trainer.step
    step()
    # what persists between steps is not the step's: the plain step's .grad buffers (freed by
    # its zero_grad) go now, as the coded step keeps none
    plain_step.model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        print(json.dumps({"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}))
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss_kb("VmRSS:")
    step()
    print(json.dumps({"peak_mb": (_rss_kb("VmHWM:") - before) / 1024}))


def peak_mb(model: str, k: int, which: str, threads: int, device: str = "cpu") -> float:
    # every large block mmapped (and unmapped when freed), so that the peak RSS of the
    # measured step is its own and not hidden by memory the allocator kept from the warm-up
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--memory-child", model, str(k), which,
                          "--threads", str(threads), "--device", device],
                         capture_output=True, text=True, check=True, timeout=900, env=env)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def side_by_side(model: str, k: int, repeats: int, device: str = "cpu") -> dict[str, float]:
    """Medians over ``repeats`` interleaved pairs: CPU time of the process (what a step
    costs, not hidden by other jobs' use of the cores; wall time after a synchronisation on
    a GPU) and wall time of each step."""
    trainer, plain_step = build(model, k, device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up
        plain_step()
        advance(trainer)
    times: dict[str, list[float]] = {"plain": [], "coded": [], "plain_wall": [],
                                     "coded_wall": []}
    for _ in range(repeats):
        for name, step in (("plain", plain_step), ("coded", lambda: advance(trainer))):
            sync()
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            sync()
            wall = time.perf_counter() - w0
            times[name].append(wall if cuda else time.process_time() - c0)
            times[f"{name}_wall"].append(wall)
    out = {name: statistics.median(values) for name, values in times.items()}
    out.update(d=trainer.d, samples=trainer.workload.batch_samples)
    return out


def keep_freed_memory() -> str:
    """Let glibc's malloc keep freed memory for reuse (no mmap per large block, no trimming),
    for both steps of the timing process. With its defaults, blocks of tens of MiB (the
    activations at k·b samples) are mapped and unmapped each step, and either step's
    page-fault (system) time varied by 0–0.8 s between identical steps of gpt_10m at k = 91;
    a long-running trainer under jemalloc/tcmalloc, or these settings, pays it once."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        if libc.mallopt(m_mmap_max, 0) != 1 or libc.mallopt(m_trim_threshold, 2**31 - 1) != 1:
            return "glibc defaults (mallopt refused)"
    except OSError:
        return "the platform's defaults (no glibc)"
    return "glibc keeps freed memory (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB), both steps"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_MODELS)} at k = 7 only, 3 repeats")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--repeats", type=at_least(1, int), default=None)
    parser.add_argument("--threads", type=at_least(1, int), default=1,
                        help="torch threads of both steps (default 1: one worker process's "
                             "setting, and what stays fair on a loaded machine)")
    parser.add_argument("--device", type=device, default="cpu",
                        help="cpu | cuda | cuda:N (trainer.device)")
    parser.add_argument("--designs", nargs="+", type=int, choices=sorted(DESIGNS), default=None,
                        help="k values (default: all)")
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep (default): glibc keeps freed memory for reuse in the timing "
                             "process (both steps); default: glibc's own settings")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "K", "WHICH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        model, k, which = args.memory_child
        memory_child(model, int(k), which, args.device)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench_coded_gradient: --device {args.device} but CUDA is not available",
              file=sys.stderr)
        return 2
    allocator = keep_freed_memory() if args.allocator == "keep" else "glibc defaults"
    # by default every case of the targets (the residual CNN, the paper's MLP at 16 and 10
    # samples per subset, an MLP and a GPT at d ≈ 1M, the GPT at d ≈ 10M): where they are
    # missed is printed beside where they are met
    models = args.models or (QUICK_MODELS if args.quick else list(MODELS))
    designs = args.designs or ([7] if args.quick else list(DESIGNS))
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), torch threads "
          f"{torch.get_num_threads()}, device {args.device}, {repeats} interleaved repeats, "
          "medians")
    print(f"allocator: {allocator}")
    print("time: CPU time of the process per step (median; wall time on a GPU); wall x: the "
          "wall-time ratio, which other jobs on the cores distort")
    print(f"{'model':<8} {'d':>10} {'k':>3} {'samples':>7} {'plain ms':>9} {'coded ms':>9} "
          f"{'time x':>6} {'wall x':>6} {'plain MB':>8} {'coded MB':>8} {'mem x':>6}")
    worst_time = worst_memory = 0.0
    for model in models:
        for k in designs:
            r = side_by_side(model, k, repeats, args.device)
            plain, coded, d, samples = r["plain"], r["coded"], int(r["d"]), int(r["samples"])
            wall = r["coded_wall"] / r["plain_wall"]
            mem_plain = peak_mb(model, k, "plain", args.threads, args.device)
            mem_coded = peak_mb(model, k, "coded", args.threads, args.device)
            ratio, mem_ratio = coded / plain, mem_coded / max(mem_plain, 1e-9)
            worst_time, worst_memory = max(worst_time, ratio), max(worst_memory, mem_ratio)
            print(f"{model:<8} {d:>10,} {k:>3} {samples:>7} {plain * 1e3:>9.1f} "
                  f"{coded * 1e3:>9.1f} {ratio:>6.2f} {wall:>6.2f} {mem_plain:>8.1f} "
                  f"{mem_coded:>8.1f} {mem_ratio:>6.2f}", flush=True)
    ok = worst_time <= TIME_TARGET and worst_memory <= MEMORY_TARGET
    print(f"coded vs plain step: worst time ratio {worst_time:.2f} (target ≤ {TIME_TARGET}), "
          f"worst peak-memory ratio {worst_memory:.2f} (target ≤ {MEMORY_TARGET}): "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
