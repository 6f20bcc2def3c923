"""A rank lost during the start-up of a multi-process runtime (issue 20): every rank leaves at
once with one line naming the lost rank, no traceback, no process left behind.

The protocol (:mod:`agc_pipeline.training.startup`) is tested in this process on a real
rendezvous store with stand-in processes; the apps run as subprocesses with
``trainer.startup_fault_rank`` making one rank exit at a fixed point of the start-up.
``subprocess.run`` returns only once every process holding the app's stderr has closed it:
the ranks, the fork server and the resource tracker inherit it, so a run that returns in
time left no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.distributed as dist

from agc_pipeline.errors import ConfigError
from agc_pipeline.training import startup
from agc_pipeline.training.launch import Launch
from agc_pipeline.training.startup import (
    ABORT,
    GO,
    UP,
    StartupLost,
    answer_roll_call,
    how_it_ended,
    peer_lost,
    roll_call,
)
from tests.conftest import ROOT

#: every start-up test ends the session, saying so, if it runs over 5 min
pytestmark = pytest.mark.watchdog(300)

#: the tiniest run: linear regression, 3 iterations, no stragglers, no files but the run's
TINY = ["dataset=synthetic_linear", "dataset.n_samples=120", "model=linear",
        "code=uncoded_wait", "trainer.iterations=3", "trainer.progress=false",
        "trainer.eval_every=0", "trainer.checkpoint_every=0", "straggler=none",
        "trainer.time_scale=0", "trainer.timeout_s=30", "trainer.startup_timeout_s=60",
        "logger=none"]


@dataclass
class Proc:
    """A stand-in for a started rank's process (``exitcode`` None: running)."""

    exitcode: int | None = None


def store(tmp_path: Path, name: str = "rendezvous", world: int = 3) -> dist.FileStore:
    """A rendezvous store as the ranks share it (its folder must exist: the store would
    retry opening the file until its timeout)."""
    return dist.FileStore(str(tmp_path / name), world)


# ------------------------------------------------------------------------------------------
# the protocol


def test_rank0_stops_the_roll_call_when_a_rank_exits_and_says_which(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(f"{UP}1", "1")
    with pytest.raises(StartupLost) as lost:
        roll_call(s, [Proc(), Proc(exitcode=1)], timeout_s=60)
    assert str(lost.value) == "rank 2 was lost during start-up (exited with status 1)"
    assert s.get(ABORT).decode() == str(lost.value)  # the other ranks print it
    assert not s.check([GO])


def test_the_roll_call_names_ranks_as_the_runtime_does(tmp_path: Path) -> None:
    with pytest.raises(StartupLost, match=r"^worker 0 \(rank 1\) was lost during start-up "
                                          r"\(killed by SIGKILL\)$"):
        roll_call(store(tmp_path), [Proc(exitcode=-9), Proc()], timeout_s=60,
                  name=lambda r: f"worker {r - 1} (rank {r})")


def test_the_roll_call_says_go_once_every_rank_is_up(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(f"{UP}1", "1")
    s.set(f"{UP}2", "1")
    roll_call(s, [Proc(), Proc()], timeout_s=60)
    assert s.check([GO]) and not s.check([ABORT])


def test_a_rank_that_never_comes_up_is_named_after_the_timeout(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(f"{UP}1", "1")
    with pytest.raises(StartupLost, match=r"^rank 2 did not start within "
                                          r"trainer.startup_timeout_s = 0.05 s$"):
        roll_call(s, [Proc(), Proc()], timeout_s=0.05)
    assert s.check([ABORT])


def test_a_rank_reads_rank0s_abort(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(ABORT, "rank 2 was lost during start-up (exited with status 1)")
    with pytest.raises(StartupLost, match=r"^rank 2 was lost during start-up"):
        answer_roll_call(s, 1, timeout_s=60, rank0_alive=lambda: True)
    assert s.check([f"{UP}1"])  # it said it was up first


def test_a_rank_leaves_when_rank0_is_gone(tmp_path: Path) -> None:
    with pytest.raises(StartupLost, match=r"^rank 0 was lost during start-up$"):
        answer_roll_call(store(tmp_path), 1, timeout_s=60, rank0_alive=lambda: False)


def test_a_rank_joins_on_go(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(GO, "1")
    answer_roll_call(s, 2, timeout_s=60, rank0_alive=lambda: False)  # go wins
    assert s.check([f"{UP}2"])


def test_a_rank_whose_collective_broke_takes_rank0s_reason(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set(ABORT, "rank 1 was lost during start-up (killed by SIGKILL)")
    assert str(peer_lost(s, lambda: True, "Connection closed by peer")) == \
        "rank 1 was lost during start-up (killed by SIGKILL)"
    assert str(peer_lost(store(tmp_path, "other"), lambda: False, "Connection reset")) == \
        "rank 0 was lost during start-up (Connection reset)"


def test_without_a_reason_a_rank_says_what_it_knows_in_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "REASON_WAIT_S", 0.05)
    assert str(peer_lost(None, None, "Connection closed by peer")) == \
        "a rank was lost during start-up (Connection closed by peer)"
    assert str(peer_lost(store(tmp_path), lambda: True, "Connection closed by peer")) == \
        "a rank was lost during start-up (Connection closed by peer)"


def test_exit_statuses_in_words() -> None:
    assert how_it_ended(1) == "exited with status 1"
    assert how_it_ended(-9) == "killed by SIGKILL"
    assert how_it_ended(None) == "still running"


# ------------------------------------------------------------------------------------------
# the apps


def run_app(tmp_path: Path, trainer: str, n: int, rank: int, point: str,
            *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """The train app with ``rank`` exiting at ``point`` of the start-up; (process, seconds)."""
    args = [sys.executable, "-m", "agc_pipeline.train", *TINY, f"trainer={trainer}",
            f"assignment.n={n}", f"trainer.startup_fault_rank={rank}",
            f"trainer.startup_fault_point={point}", f"hydra.run.dir={tmp_path}", *extra]
    started = time.monotonic()
    # returns once every holder of the app's stderr (ranks, fork server) has exited
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=150)
    return proc, time.monotonic() - started


def check_lines(stderr: str, rank: int, point: str) -> list[str]:
    """No traceback; the lost rank's own line; every line one of the ranks' or the app's.
    Returns the other ranks' lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert f"agc rank {rank}: trainer.startup_fault_rank={rank}: exiting abruptly at " \
           f"start-up ({point})" in lines, stderr[-3000:]
    others = [x for x in lines
              if x.startswith("agc rank ") and not x.startswith(f"agc rank {rank}:")]
    for line in others:
        assert " start-up aborted: " in line and line.endswith("; exiting"), stderr[-3000:]
    return others


@pytest.mark.parametrize(("trainer", "n", "rank", "point", "name"), [
    pytest.param("ddp", 3, 2, "rendezvous", "rank 2", id="ddp-rank2-before-the-rendezvous"),
    pytest.param("sharded", 2, 1, "joined", "rank 1", id="sharded-rank1-after-joining"),
    pytest.param("distributed", 2, 1, "joined", "worker 0 (rank 1)",
                 id="distributed-worker0-after-joining"),
    pytest.param("ddp", 3, 1, "joined", "rank 1", id="ddp-rank1-after-joining",
                 marks=pytest.mark.slow),
    pytest.param("local_sgd", 3, 2, "rendezvous", "rank 2", id="local-sgd-rank2-before",
                 marks=pytest.mark.slow),
])
def test_a_rank_lost_during_start_up_stops_every_rank_in_one_line(
        tmp_path: Path, trainer: str, n: int, rank: int, point: str, name: str) -> None:
    """Status 4, the app's one line naming the lost rank, the others' one line each (before
    the rendezvous they name it too: rank 0 posted why), no traceback, no process or
    rendezvous file left, all well within trainer.startup_timeout_s = 60 s."""
    proc, seconds = run_app(tmp_path, trainer, n, rank, point)
    assert proc.returncode == 4, proc.stderr[-3000:]
    others = check_lines(proc.stderr, rank, point)
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("agc-train")]
    assert line.startswith(f"agc-train: start-up failed: {name} was lost during start-up "
                           "(exited with status 1)"), line
    if point == "rendezvous":
        assert len(others) == n - 2 and all(f"{name} was lost during start-up" in x
                                             for x in others), proc.stderr[-3000:]
    assert seconds < 60, f"{seconds:.0f} s: a rank waited out the start-up timeout"
    assert not list(tmp_path.glob("rendezvous-*"))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "workers_lost"


def test_the_other_ranks_leave_by_themselves_when_rank0_is_lost(tmp_path: Path) -> None:
    """Rank 0 (the app) exits right after starting the others: each says so in one line and
    exits, long before trainer.startup_timeout_s = 60 s."""
    proc, seconds = run_app(tmp_path, "ddp", 2, 0, "rendezvous")
    assert proc.returncode == 1, proc.stderr[-3000:]  # the injected fault's own status
    others = check_lines(proc.stderr, 0, "rendezvous")
    assert others == ["agc rank 1: start-up aborted: rank 0 was lost during start-up; "
                      "exiting"], proc.stderr[-3000:]
    assert seconds < 60, f"{seconds:.0f} s: the ranks waited out the start-up timeout"


def test_a_fault_rank_outside_the_world_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"startup_fault_rank must be null or a rank 0\.\.1 "
                                          r"\(got 5\)"):
        Launch(tmp_path, 2, "forkserver", 60.0, {}, startup_fault="5:rendezvous")
