"""Kills never reach the test session (issue 20): :func:`safe_kill` refuses pytest's own
process, group and lineage and every group or broadcast pid; every kill in the package and
the tests goes through it (the sources are checked); the launch kills a started rank only
while it runs.

Every test here replaces ``os.kill`` with a recorder first, so that a guard that let a kill
through fails the test instead of ending the session.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agc_pipeline.training import launch as launch_module
from agc_pipeline.training import safe_kill as safe_kill_module
from agc_pipeline.training.launch import Launch, _kill_started
from agc_pipeline.training.safe_kill import KillRefused, protected_pids, safe_kill
from tests.conftest import ROOT


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (pid, signal) pairs ``os.kill`` was called with (nothing is sent)."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append((pid, sig)))
    return calls


@pytest.mark.parametrize("pid", [0, -1, 1, -os.getpgrp(), os.getpgrp(), os.getpid(),
                                 os.getppid(), os.getsid(0), True, 2.5],
                         ids=["0-own-group", "-1-every-process", "1-init", "minus-own-group",
                              "own-group-leader", "pytest", "pytest-parent", "session-leader",
                              "bool", "float"])
def test_the_guard_refuses_the_session_and_every_group(pid: object,
                                                       sent: list[tuple[int, int]]) -> None:
    with pytest.raises(KillRefused, match="refusing to signal pid"):
        safe_kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    assert sent == []


def test_the_guard_protects_this_process_and_its_lineage() -> None:
    assert {os.getpid(), os.getppid(), os.getpgrp()} <= set(protected_pids())


def test_the_guard_signals_a_child_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert safe_kill(child.pid, signal.SIGKILL) is True
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_launch_never_kills_a_peer_reporting_this_process(
        tmp_path: Path, sent: list[tuple[int, int]]) -> None:
    """A torchrun peer's pid comes from the peer: one equal to this process, its parent or a
    non-positive pid is refused, not signalled."""
    launch = Launch(tmp_path, 3, "forkserver", 60.0, {})
    host = socket.gethostname()
    for pid in (os.getpid(), os.getppid(), os.getpgrp(), -1):
        launch.kill(7, pid, host)
    launch.kill(7, 0, host)  # pid unknown: nothing to do
    assert sent == []


class _Exited:
    """A started rank that has exited (its pid may belong to another process by now)."""

    name, pid = "agc-rank-1", 424242

    def is_alive(self) -> bool:
        return False


class _Running(_Exited):
    def is_alive(self) -> bool:
        return True


def test_a_started_rank_is_killed_only_while_it_runs(sent: list[tuple[int, int]]) -> None:
    _kill_started(_Exited())
    assert sent == []
    _kill_started(_Running())
    assert sent == [(424242, signal.SIGKILL)]


def test_the_launch_kills_through_the_guard(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    used: list[int] = []
    monkeypatch.setattr(launch_module, "safe_kill", lambda pid, sig: used.append(pid))
    launch = Launch(tmp_path, 3, "forkserver", 60.0, {})
    launch.procs.append(_Running())
    launch.kill(1)
    launch.kill(7, 5151, socket.gethostname())
    assert used == [424242, 5151]


#: what signals another process, or a group (written in two parts: this file names them)
RAW_KILLS = [re.escape(a + b) for a, b in (
    ("os.ki", "ll("), ("os.kill", "pg("), ("kill", "pg("), ("signal.raise_", "signal("),
    ("pthread_", "kill("), ("pki", "ll "), ("killa", "ll "), ("os.setp", "grp"),
    ("os.set", "sid"), ("start_new_", "session"))]
#: in the package also a process object's kill or terminate (Launch.kill has arguments)
PACKAGE_KILLS = [re.escape(a + b) for a, b in ((".kill", "()"), (".termin", "ate("),
                                               (".send_", "signal("))]


def test_every_kill_goes_through_the_guard() -> None:
    """No ``os.kill``/``killpg``/``setsid`` outside :mod:`safe_kill` in ``agc_pipeline/``
    and ``tests/`` (the tests' ``Popen.kill()``/``send_signal`` signal a direct child that
    cannot be reaped before: they stay), and none of a process object in the package."""
    guard = Path(safe_kill_module.__file__).resolve()
    found = []
    for folder, patterns in (("agc_pipeline", RAW_KILLS + PACKAGE_KILLS), ("tests", RAW_KILLS)):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() == guard:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#")[0]
                if any(re.search(p, code) for p in patterns):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)
