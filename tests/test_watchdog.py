"""The watchdog of the multi-process tests says why it ends a session (issue 20).

``python -m pytest -q`` once stopped mid-line with status 1 and no summary, and a
multi-process test run alone once exited 1 with no output at all: the old per-module
watchdog (``faulthandler.dump_traceback_later(180, exit=True)`` armed inside the test) wrote
its tracebacks into pytest's capture of the test it ended, and the session's ``_exit(1)``
lost them. Here a session whose test outlives its budget must name the test and show its
stack on the session's own stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

HANGS = '''
import time

import pytest


def test_before():
    pass


@pytest.mark.watchdog(1)
def test_hangs():
    time.sleep(120)  # far beyond its budget


def test_after():
    pass
'''


def test_a_hung_test_ends_the_session_saying_which_and_where(tmp_path: Path) -> None:
    # a setup.py in a parent folder (e.g. a stray /tmp/setup.py) made pytest take that parent
    # as the inner session's rootdir, and the node ids then began with the folders between:
    # the inner session names its own rootdir
    (tmp_path / "setup.py").write_text("")
    session = tmp_path / "session"
    session.mkdir()
    (session / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    (session / "test_hangs.py").write_text(HANGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(session), "test_hangs.py"], cwd=session, env=env,
                          capture_output=True, text=True,
                          timeout=110)  # returns long before the sleep's end
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert re.search(r"watchdog: test_hangs\.py::test_hangs still running after 1 s: ending "
                     r"the test session \(exit status 1\)", proc.stderr), out[-3000:]
    assert re.search(r'File ".*test_hangs\.py", line \d+ in test_hangs', proc.stderr), \
        out[-3000:]  # where it hung


def test_no_test_arms_faulthandler_itself() -> None:
    """Only :func:`tests.conftest.watchdog` arms faulthandler (whose output a test's
    capture would swallow)."""
    armed = [p.name for p in sorted((ROOT / "tests").glob("*.py"))
             if p.name not in ("conftest.py", "test_watchdog.py")  # this one: in its words
             and "dump_traceback_later" in p.read_text()]
    assert armed == []
