"""Faults on real links (bench/bench_faults.py, bench/emulated_faults.py).

* The emulated star's fault methods (link down/up, rate change): need root (or
  CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2, skipped with the reason otherwise.
* ``trainer=distributed`` with a worker's link down for 5 s, or at a tenth of its rate (at
  most 2 parameter messages in transit to it, so its STOP comes behind at most 2): finishes,
  every rank exit 0 (slow; docs/distributed.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(ROOT / "bench"))
emulated = _load("emulated")
emulated_faults = _load("emulated_faults")
MISSING = emulated.missing_requirements()
needs_netns = pytest.mark.skipif(bool(MISSING), reason="emulated cluster needs: "
                                 + "; ".join(MISSING))

# ------------------------------------------------------------------------------------------
# the emulated star's faults


@needs_netns
def test_link_down_up_and_rate_change() -> None:
    star = emulated_faults.FaultyStar(2, 40.0)
    with star:
        assert star.link_state(1) == "UP" and star.rate_of(1) == 40.0
        star.set_rate(1, 4.0)
        assert star.rate_of(1) == 4.0
        rate = emulated.tcp_throughput(star, 0, 1, 500_000, timeout_s=15)
        assert 0.75 * 4.0 <= rate / 1e6 <= 1.25 * 4.0, rate
        star.set_rate(1, 40.0)
        star.link_down(1)
        assert star.link_state(1) == "DOWN"
        eth0 = subprocess.run(["ip", "-o", "-n", star.netns(1), "link", "show", "eth0"],
                              capture_output=True, text=True, check=True).stdout
        assert "NO-CARRIER" in eth0
        star.link_up(1)
        assert star.link_state(1) == "UP"
        rate = emulated.tcp_throughput(star, 0, 1, 2_000_000, port=5202, timeout_s=15)
        assert 0.75 * 40.0 <= rate / 1e6 <= 1.25 * 40.0, rate
    assert [n for n in emulated.namespaces() if n.startswith(star.prefix + "-")] == []


@needs_netns
def test_a_transfer_survives_a_link_down_and_up() -> None:
    """TCP across a 2 s outage: the same connection resumes (no reset)."""
    import threading

    star = emulated_faults.FaultyStar(2, 40.0)
    with star:
        def outage() -> None:
            time.sleep(0.3)
            star.link_down(1)
            time.sleep(2.0)
            star.link_up(1)

        fault = threading.Thread(target=outage)
        fault.start()
        started = time.monotonic()
        emulated.tcp_throughput(star, 0, 1, 5_000_000, timeout_s=30)
        fault.join()
        assert time.monotonic() - started > 2.0  # it did wait out the outage
    assert [n for n in emulated.namespaces() if n.startswith(star.prefix + "-")] == []


# ------------------------------------------------------------------------------------------
# the PS on faulty links


def _bench_case(tmp_path: Path, fault: str) -> str:
    argv = ["--runtimes", "distributed", "--faults", fault, "--n", "3", "--iterations", "60",
            "--case-timeout-s", "120", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_faults.py"), *argv],
                          capture_output=True, text=True, timeout=200)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout


@needs_netns
@pytest.mark.slow
@pytest.mark.watchdog(300)
def test_the_ps_survives_a_worker_link_down_for_5_s(tmp_path: Path) -> None:
    """The worker is a straggler while its link is down (s = 1); every rank exits 0."""
    out = _bench_case(tmp_path, "worker_down")
    assert "distributed worker_down finished 0 0 0 0" in out, out[-3000:]


@needs_netns
@pytest.mark.slow
@pytest.mark.watchdog(300)
def test_the_ps_with_a_worker_at_a_tenth_of_its_rate_keeps_its_pace(tmp_path: Path) -> None:
    """The slow worker is a straggler with at most 2 parameter messages in transit; its STOP
    comes behind those only, so every rank exits 0, the slow worker too (before the cap: -9
    at n = 4, 80 iterations, the PS's grace over; 2026-12-07)."""
    out = _bench_case(tmp_path, "worker_slow")
    assert "distributed worker_slow finished 0 0 0 0" in out, out[-3000:]
