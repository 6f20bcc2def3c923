"""Faults on real links (bench/bench_faults.py, bench/emulated_faults.py).

* The PS holds back parameters from a worker whose link is backed up (at most
  ``MAX_IN_FLIGHT`` sends in transit) and posts it the newest ones once it drains: a unit
  test with fake sends, always run.
* The emulated star's fault methods (link down/up, rate change): need root (or
  CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2, skipped with the reason otherwise.
* ``trainer=distributed`` with a worker's link at a tenth of its rate finishes with every
  rank exiting by itself (it was SIGKILLed by the PS at the end, its STOP queued behind an
  unbounded backlog of parameters): slow, needs the same privileges.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from agc_pipeline.training.processes import MAX_IN_FLIGHT, Cluster, _Peer
from agc_pipeline.training.wire import PARAMS_PREFIX, WireFormat

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
# the PS's sends to a backed-up link


class FakeWork:
    def __init__(self) -> None:
        self.done = False

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout: Any = None) -> bool:
        return True


class FakeTransport:
    def __init__(self) -> None:
        self.posted: list[tuple[int, int, FakeWork]] = []  #: (worker, iteration, work)

    def send(self, msg: torch.Tensor, dst: int, tag: int) -> FakeWork:
        work = FakeWork()
        iteration = int(msg[:PARAMS_PREFIX].view(torch.float64)[0])
        self.posted.append((dst - 1, iteration, work))
        return work

    def empty(self, size: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        return torch.zeros(size, dtype=dtype)


def fake_cluster(n: int) -> tuple[Cluster, FakeTransport]:
    cluster = Cluster.__new__(Cluster)
    transport = FakeTransport()
    cluster.settings = SimpleNamespace(timeout_s=20.0)
    cluster.peers = [_Peer() for _ in range(n)]
    cluster.transport = transport
    cluster.wire = WireFormat(d=5, length=3, grad_dtype=torch.float32,
                              param_dtype=torch.float32)
    cluster.events, cluster._graveyard = [], []
    cluster._pending, cluster._spare, cluster._current = {}, [], None
    return cluster, transport


def test_a_backed_up_link_gets_at_most_two_sends_then_the_newest() -> None:
    """Worker 1's sends never complete (its link is slow): after MAX_IN_FLIGHT of them the
    PS skips it (worker 0 gets every iteration); once they complete, catch_up posts the
    current iteration, not the ones in between."""
    cluster, transport = fake_cluster(2)
    params = [torch.ones(5)]
    for t in range(6):
        cluster.send_params(t, params)
        assert cluster.catch_up() == 0  # nothing drained
        for j, it, work in transport.posted:
            if j == 0 and it == t:
                work.done = True
                cluster.release(0, t)
    to_slow = [it for j, it, _ in transport.posted if j == 1]
    assert to_slow == list(range(MAX_IN_FLIGHT))
    assert [it for j, it, _ in transport.posted if j == 0] == list(range(6))
    assert cluster.peers[1].owed
    for j, _, work in transport.posted:
        if j == 1:
            work.done = True
    assert cluster.catch_up() > 0
    assert [it for j, it, _ in transport.posted if j == 1][-1] == 5  # the newest
    assert not cluster.peers[1].owed
    assert cluster.catch_up() == 0  # once


def test_a_message_still_owed_is_not_reused() -> None:
    """The current message, released by the fast worker, stays out of the pool until the
    next iteration (catch_up may still post it); then it is reused."""
    cluster, transport = fake_cluster(1)
    cluster.send_params(0, [torch.ones(5)])
    first = cluster._current[1]
    transport.posted[0][2].done = True
    cluster.release(0, 0)
    assert first not in cluster._spare
    cluster.send_params(1, [torch.ones(5)])
    assert cluster._current[1] is first  # back in the pool, then reused


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
# the PS with a slow link (regression)


@needs_netns
@pytest.mark.slow
@pytest.mark.watchdog(300)
def test_the_ps_with_a_worker_at_a_tenth_of_its_rate_ends_cleanly(tmp_path: Path) -> None:
    """Before: the PS queued one parameter message per iteration to the slow worker; its STOP
    waited behind ~30 MB and the PS SIGKILLed it at the end (exit -9). Now every rank exits
    0, the slow worker is a straggler (s = 1), and no rank is left hanging."""
    argv = ["--runtimes", "distributed", "--faults", "worker_slow", "--n", "3",
            "--iterations", "60", "--case-timeout-s", "120", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_faults.py"), *argv],
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "distributed worker_slow finished 0 0 0 0" in proc.stdout, proc.stdout[-3000:]
