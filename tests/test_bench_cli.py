"""Every benchmark refuses a bad argument in one usage line (exit status 2) before it builds
or times anything: they were tracebacks from deep inside (an empty median for --repeats -3,
set_num_threads for --threads 0, a negative tensor size for --d -5, a zero range step for
--chunks 0, an IndexError with one worker), or a silent default (--repeats 0 ran 9)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_cli  # noqa: E402  (bench/, on the path above)


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [
    ("bench_coded_gradient", ["--repeats", "0"], "argument --repeats: must be ≥ 1 (got 0)"),
    ("bench_coded_gradient", ["--repeats", "-3"], "argument --repeats: must be ≥ 1 (got -3)"),
    ("bench_coded_gradient", ["--threads", "0"], "argument --threads: must be ≥ 1 (got 0)"),
    ("bench_coded_gradient", ["--device", "gpu"],
     "argument --device: must be cpu, cuda or cuda:N (got 'gpu')"),
    ("bench_combine", ["--d", "-5"], "argument --d: must be ≥ 1 (got -5)"),
    ("bench_combine", ["--chunks", "8192,0"], "argument --chunks: must be ≥ 1 (got 0)"),
    ("bench_combine", ["--chunks", "abc"], "argument --chunks: not an integer: 'abc'"),
    ("bench_combine", ["--n", "1"], "argument --n: must be ≥ 2 (got 1)"),
    ("bench_combine", ["--m", "0"], "argument --m: must be ≥ 1 (got 0)"),
    ("bench_combine", ["--repeats", "0"], "argument --repeats: must be ≥ 1 (got 0)"),
    ("bench_app_vs_loop", ["--repeats", "0"], "argument --repeats: must be ≥ 1 (got 0)"),
    ("bench_app_vs_loop", ["--experiment", "fig3"], "argument --experiment: invalid choice"),
    ("bench_app_vs_loop", ["--experiment", "fig6_bibd7"],
     "argument --experiment: invalid choice"),  # whole subsets: no minibatches to share
    ("arena_compute", ["--steps", "0"], "argument --steps: must be ≥ 1 (got 0)"),
    ("arena_crosscheck", ["--n", "4", "--s", "4"], "argument --s: must be < --n = 4 (got 4)"),
    ("arena_crosscheck", ["--duration", "0"], "argument --duration: must be > 0 (got 0)"),
    ("bench_analyze", ["--authors-draw-step", "0"],
     "argument --authors-draw-step: must be ≥ 1 (got 0)"),
    ("bench_distributed", ["--seed", "-1"], "argument --seed: must be ≥ 0 (got -1)"),
    ("bench_loopback", ["--world", "1"], "argument --world: must be ≥ 2 (got 1)"),
    ("bench_train", ["--iterations", "0"], "argument --iterations: must be ≥ 1 (got 0)"),
    ("bench_vs_ddp", ["--p", "1.5"], "argument --p: must lie in [0, 1] (got 1.5)"),
    ("bench_vs_ddp", ["--r", "0.5"], "argument --r: must be ≥ 1 (got 0.5)"),
    ("measure_convergence", ["--window", "0"], "argument --window: must be ≥ 1 (got 0)"),
]


@pytest.mark.parametrize(("name", "argv", "message"), CASES,
                         ids=[f"{n} {' '.join(a)}" for n, a, _ in CASES])
def test_a_bad_argument_is_one_usage_line(name: str, argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    module = bench_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err), err


def test_the_types_parse_what_they_accept() -> None:
    assert bench_cli.at_least(1, int)("3") == 3
    assert bench_cli.at_least(0, strict=True)("0.5") == 0.5
    assert bench_cli.between(0, 1)("1") == 1.0
    assert bench_cli.int_list(1)(" 8192, 16384 ,") == [8192, 16384]
    assert bench_cli.int_list(1)("") == []
    assert bench_cli.device("cuda:1") == "cuda:1" and bench_cli.device("cpu") == "cpu"
    for parse, text in [(bench_cli.at_least(0), "nan"), (bench_cli.at_least(1, int), "1.5"),
                        (bench_cli.between(0, 1), "nan"), (bench_cli.device, "cpu:0"),
                        (bench_cli.device, "cuda:")]:
        with pytest.raises(Exception, match="must|not an integer"):
            parse(text)
    assert math.isinf(bench_cli.at_least(0)("inf"))


@pytest.mark.slow
def test_bench_train_times_its_full_batch_step() -> None:
    """bench_train's plain step flattened the images to their last axis (28 values: a shape
    error in the first layer) since the workload keeps images as (C, H, W)."""
    ratio = bench_module("bench_train").side_by_side(1)
    assert ratio > 0
