"""bench/bench_emulated.py's pure parts (no namespaces needed): the issue's last-line format
``emulated <rate> n=<n> d=<d>: sharded <r1>x DDP, PS <r2>x DDP, model error <e>%``, the
runs ``--runtimes`` selects, and the calibration's CPU-per-byte fit
(bench/emulated_calibration.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
_SPEC = importlib.util.spec_from_file_location("bench_emulated", ROOT / "bench" /
                                               "bench_emulated.py")
assert _SPEC is not None and _SPEC.loader is not None
bench_emulated = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_emulated)
import emulated  # noqa: E402  (bench/, on the path above)
import emulated_calibration  # noqa: E402

LAST = re.compile(r"^emulated (\d+(?:\.\d+)?)mbit n=(\d+) d=(\d+): sharded (\d+\.\d\dx|n/a) "
                  r"DDP, PS (\d+\.\d\dx|n/a) DDP, model error ([+-]\d+)%$")


def test_last_line_takes_each_runtimes_best_m() -> None:
    seconds = {"DDP": 0.5, "PS m=1": 2.5, "PS m=4": 1.5, "sharded m=2": 0.45,
               "sharded m=4": 0.4}
    line = bench_emulated.last_line(100.0, 4, 1009660, seconds, -0.213)
    assert line == ("emulated 100mbit n=4 d=1009660: sharded 0.80x DDP, PS 3.00x DDP, "
                    "model error -21%")
    assert LAST.match(line)


def test_last_line_without_a_runtime_says_n_a() -> None:
    line = bench_emulated.last_line(200.0, 8, 10001, {"DDP": 1.0, "sharded m=2": 0.7}, 0.05)
    assert LAST.match(line), line
    assert "PS n/a DDP" in line and "sharded 0.70x DDP" in line and "+5%" in line


def test_runtimes_select_the_runs() -> None:
    both = bench_emulated.schemes(4, [2, 4])
    assert list(both) == ["DDP", "PS m=2", "PS m=4", "sharded m=2", "sharded m=4"]
    only = bench_emulated.schemes(8, [2], ("sharded",))
    assert list(only) == ["DDP", "sharded m=2"]
    overrides, world = only["sharded m=2"]
    assert world == 8 and "trainer=sharded" in overrides and "m=2" in overrides
    assert bench_emulated.schemes(4, [1], ("PS",))["PS m=1"][1] == 5  # the PS's own node


def test_both_broadcasts_are_runs_of_their_own() -> None:
    runs = bench_emulated.schemes(4, [4], ("PS",), ("concurrent", "sequential"))
    assert list(runs) == ["DDP", "PS m=4", "PS seq m=4"]
    assert "trainer.broadcast=sequential" in runs["PS seq m=4"][0]
    assert "trainer.broadcast=concurrent" in runs["PS m=4"][0]
    line = bench_emulated.last_line(100.0, 4, 10, {"DDP": 1.0, "PS m=4": 3.0,
                                                   "PS seq m=4": 2.0}, 0.0)
    assert "PS 2.00x DDP" in line  # the best PS, either broadcast


def test_the_default_cluster_is_the_one_calibrated_at_the_rate() -> None:
    """Before, ``--rate-mbit 50`` predicted with emulated_100mbit's figures scaled, not the
    50 Mbit/s calibration (its CPU per byte and sharded efficiency differ)."""
    assert bench_emulated.default_cluster(50.0) == "emulated_50mbit"
    assert bench_emulated.default_cluster(200) == "emulated_200mbit"
    assert bench_emulated.default_cluster(75.0) == "emulated_100mbit"
    scaled = bench_emulated.cluster_model(bench_emulated.default_cluster(75.0), 75.0)
    full = bench_emulated.cluster_model("emulated_100mbit", 100.0)
    assert scaled.bandwidth == pytest.approx(0.75 * full.bandwidth)


def test_sharded_efficiency_is_the_lossless_model_over_the_measured_round() -> None:
    """n = 8, d = 1,009,660: W = 63,104 (m = 2) and 31,552 (m = 4) values; at β = 4e6 B/s
    and no latency the lossless rounds are 7·(W + 1)·4/β + 7·(m·W + 2)·4/β."""
    beta = 4e6
    lossless = {m: 7 * (w + 1) * 4 / beta + 7 * (m * w + 2) * 4 / beta
                for m, w in ((2, 63104), (4, 31552))}
    result = {"2": [2 * lossless[2], 9.0, 2 * lossless[2]], "4": [lossless[4] / 0.8] * 3}
    eff = emulated_calibration.sharded_efficiency(result, 8, beta, 0.0)
    assert eff[2] == pytest.approx((2 * lossless[2], lossless[2]))
    assert eff[4][1] / eff[4][0] == pytest.approx(0.8)


def test_cpu_per_byte_is_the_ping_pong_slope_over_four_with_the_idle_host_removed() -> None:
    """A round trip of S bytes is two transfers (4·S·c_b + 2·c_m of CPU); the host's idle
    background (0.25 cores here) is subtracted per second of each size's repeats."""
    c_b, c_m, repeats, idle = 2e-9, 4e-5, 5, 0.25
    result: dict[str, list[float]] = {"idle": [2.0, 0.5]}
    sizes = [1 << 20, 2 << 20, 4 << 20]
    for size in sizes:
        seconds = [size / 1e7] * repeats
        result[str(size)] = seconds
        loop = 1.1 * (repeats + 1) * size / 1e7  # the repeats, a warm-up and barriers
        result[f"busy{size}"] = [loop, (repeats + 1) * (4 * size * c_b + 2 * c_m) + idle * loop]
    assert emulated_calibration.idle_rate(result) == 0.25
    assert abs(emulated_calibration.excess_busy(result, 1 << 20, repeats)
               - (4 * (1 << 20) * c_b + 2 * c_m)) < 1e-12
    fitted = emulated_calibration.cpu_per_byte(result, np.array(sizes, dtype=float), repeats,
                                               4.0)
    assert abs(fitted / c_b - 1) < 1e-9


def test_cpu_per_byte_is_never_negative() -> None:
    """A noisy host (more CPU at the small size) fits a falling line: 0, not a negative
    figure the cost model would refuse."""
    result = {"idle": [1.0, 0.0], "1": [0.1], "busy1": [0.2, 1.0], "2": [0.1],
              "busy2": [0.2, 0.5]}
    assert emulated_calibration.cpu_per_byte(result, np.array([1.0, 2.0]), 1, 4.0) == 0.0


def test_cpu_per_byte_of_a_ring_counts_every_node_s_bytes_at_both_ends() -> None:
    """An all-reduce of S bytes over n sends 2(n − 1)·S bytes in all: CPU 4(n − 1)·S·c_b plus
    its messages; the fit divides the slope by 4(n − 1)."""
    n, c_b, repeats = 8, 6e-9, 3
    result: dict[str, list[float]] = {"idle": [1.0, 0.0]}
    sizes = [1 << 20, 4 << 20]
    for size in sizes:
        result[str(size)] = [0.1] * repeats
        result[f"busy{size}"] = [1.0, (repeats + 1) * (4 * (n - 1) * size * c_b + 1e-3)]
    fitted = emulated_calibration.cpu_per_byte(result, np.array(sizes, dtype=float), repeats,
                                               4.0 * (n - 1))
    assert abs(fitted / c_b - 1) < 1e-9


@pytest.mark.parametrize(("argv", "message"), [
    (["--rate-mbit", "-5"], "argument --rate-mbit: must be > 0 (got -5)"),
    (["--rate-mbit", "nan"], "argument --rate-mbit: must be > 0 (got nan)"),
    (["--host-queue", "-1"], "argument --host-queue: must be ≥ 0 (got -1)"),
    (["--n", "1"], "argument --n: must be ≥ 2 (got 1)"),
    (["--delay-ms", "x"], "argument --delay-ms: not a number: 'x'"),
    (["--repeats", "0"], "argument --repeats: must be ≥ 1 (got 0)"),
    (["--iterations", "0"], "argument --iterations: must be ≥ 1 (got 0)"),
    (["--ms", "2", "0"], "argument --ms: must be ≥ 1 (got 0)"),
    (["--cluster", "none"], "argument --cluster: invalid choice: 'none'"),
])
def test_bad_link_arguments_are_refused_in_one_line_before_building(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """They were a traceback from deep inside (a ConfigError of the cost model, a ValueError
    of the star, Hydra's MissingConfigException, an empty median after the calibration)."""
    with pytest.raises(SystemExit) as exit_info:
        bench_emulated.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)



@pytest.mark.parametrize(("argv", "message"), [
    (["--burst-bytes", "10"], "argument --burst-bytes: must be ≥ 1600 (got 10)"),
    (["--nodes", "300"], "nodes must lie in [1, 250] (got 300)"),
    (["--nodes", "0"], "nodes must lie in [1, 250] (got 0)"),
])
def test_bad_star_arguments_are_one_usage_line(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """They were the star's ValueError as a traceback; now argparse's usage error, exit 2,
    before anything is built (no privileges needed to see it)."""
    with pytest.raises(SystemExit) as exit_info:
        emulated.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
