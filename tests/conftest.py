"""Shared fixtures: Hydra config composition, small assignments and the watchdog of the
multi-process tests (``@pytest.mark.watchdog(seconds)``)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agc_pipeline.conf_path import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
#: the session's own stderr, kept at configure time (pytest's capture is suspended then)
_TERMINAL: list[IO[str]] = []
#: seconds a watchdog that cannot run Python (the GIL held) waits before faulthandler acts
_BACKSTOP_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "watchdog(seconds): end the session, saying so on its stderr, when the test "
                   "runs longer (a hung multi-process test fails CI instead of blocking it)")
    if not _TERMINAL:
        _TERMINAL.append(os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8",
                                   errors="replace"))


def terminal() -> IO[str]:
    """The session's stderr: what is written there is seen even when a test's output is
    captured (and lost with a session that ends)."""
    return _TERMINAL[0] if _TERMINAL else sys.__stderr__


@contextlib.contextmanager
def watchdog(seconds: float, what: str) -> Iterator[None]:
    """End the test session (exit status 1) when the block runs longer than ``seconds``,
    after writing why and every thread's stack to the session's stderr (:func:`terminal`).

    Issue 20: ``python -m pytest -q`` once stopped mid-line with status 1 and no summary, and
    a multi-process test run alone once exited 1 with no output at all. That was the old
    per-module watchdog, ``faulthandler.dump_traceback_later(180, exit=True)``: armed inside
    a test, it wrote its tracebacks to ``sys.stderr``, which pytest's capture had pointed at
    a temporary file, then called ``_exit(1)``: the explanation was lost with the session.
    No kill reached pytest (no code here signals a process group: see
    :mod:`agc_pipeline.training.safe_kill`). A test that runs app processes now gets a
    budget longer than its own subprocess timeouts (``@pytest.mark.watchdog``)."""
    out = terminal()

    def fire() -> None:
        out.write(f"\n\nwatchdog: {what} still running after {seconds:g} s: ending the test "
                  "session (exit status 1); every thread's stack follows\n")
        out.flush()
        faulthandler.dump_traceback(out, all_threads=True)
        out.flush()
        os._exit(1)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    # the backstop: faulthandler's own thread, should this process never run Python again
    faulthandler.dump_traceback_later(seconds + _BACKSTOP_S, exit=True, file=out)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """:func:`watchdog` around a test marked ``@pytest.mark.watchdog(seconds)`` (the closest
    marker: the test's own, else its module's)."""
    marker = request.node.get_closest_marker("watchdog")
    if marker is None:
        yield
        return
    with watchdog(float(marker.args[0]), request.node.nodeid):
        yield


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, as the app would."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _steady_thread_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs pick their torch threads from the load average alone, not from the
    processes running at that instant (reporting/sweeps.py::running_others): two runs of one
    test that a bit-for-bit comparison pairs must not get different thread counts because a
    previous test's subprocess was still exiting when one of them started."""
    monkeypatch.setattr("agc_pipeline.reporting.sweeps.running_others",
                        lambda path="/proc/loadavg": None)
