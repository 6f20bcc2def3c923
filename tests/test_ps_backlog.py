"""The PS's sends to a worker that cannot take them (a stopped process standing in for a slow
link, no network namespaces): at most two parameter messages in transit to it, the newest
posted once it drains, and the run's end stops every worker (exit 0, nobody killed).

The pause is counted in the PS's iterations, not in seconds: the test's wrapper of
``Cluster.send_params`` (the PS's own thread) SIGSTOPs worker 3 before iteration
:data:`PAUSE` and SIGCONTs it before iteration :data:`RESUME`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from agc_pipeline.training.outbox import MAX_IN_FLIGHT
from agc_pipeline.training.processes import Cluster
from agc_pipeline.training.safe_kill import safe_kill
from tests.test_distributed import FRC, train

pytestmark = pytest.mark.watchdog(180)

PAUSE, RESUME, ITERATIONS = 2, 20, 30
STOPPED = 3  #: the worker paused (0-based)


def test_a_stopped_worker_gets_at_most_two_messages_and_stops_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    send_params, teardown = Cluster.send_params, Cluster._teardown
    seen: dict[str, Any] = {"paused": None, "exitcodes": None}

    def paced(self: Cluster, iteration: int, params: list[torch.Tensor]) -> int:
        pid = self.peers[STOPPED].pid
        if iteration == PAUSE:
            safe_kill(pid, signal.SIGSTOP)
            seen["paused"] = pid
        elif iteration == RESUME:
            safe_kill(pid, signal.SIGCONT)
        return send_params(self, iteration, params)

    def recorded(self: Cluster) -> None:
        try:
            if seen["paused"] is not None:  # never leave it stopped, whatever failed
                safe_kill(seen["paused"], signal.SIGCONT)
            teardown(self)
        finally:
            seen["exitcodes"] = [p.exitcode for p in self.procs]

    monkeypatch.setattr(Cluster, "send_params", paced)
    monkeypatch.setattr(Cluster, "_teardown", recorded)
    caplog.set_level(logging.WARNING, logger="agc_pipeline.train")
    summary, out = train(tmp_path, *FRC, "trainer.s=1", f"trainer.iterations={ITERATIONS}",
                         "trainer.timeout_s=120")
    assert seen["paused"] is not None
    assert summary["status"] == "completed" and summary["dead_workers"] == []
    assert summary["distributed"]["max_sends_in_flight"] == MAX_IN_FLIGHT
    assert all(r["sends_in_flight"] <= MAX_IN_FLIGHT for r in out)
    # while it was stopped: after at most MAX_IN_FLIGHT + 1 iterations (one send may complete
    # into a receive it had posted), the PS held its parameters back every iteration
    window = out[PAUSE + MAX_IN_FLIGHT + 1:RESUME]
    assert [r["iteration"] for r in window] == list(range(PAUSE + MAX_IN_FLIGHT + 1, RESUME))
    assert all(r["held_back"] >= 1 for r in window), [r["held_back"] for r in out]
    full = out[0]["bytes_from_ps"]  # nothing in transit yet: all 4 workers
    assert all(r["bytes_from_ps"] <= full * 3 // 4 for r in window)  # none to worker 3
    # the end: STOP came behind at most two messages; every worker left by itself
    assert seen["exitcodes"] == [0, 0, 0, 0], seen["exitcodes"]
    assert "killed it" not in caplog.text and "did not stop" not in caplog.text
