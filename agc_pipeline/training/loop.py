"""The training loop every runtime plugs into: progress, metrics rows, checkpoint cadence and
graceful stop (SIGINT/SIGTERM at an iteration boundary).

:func:`fit` runs the remaining iterations of a :class:`~agc_pipeline.training.runtime.Runtime`
and commits each one (as :func:`advance` does): a checkpoint before the first iteration (a
run killed at any point can be resumed), every ``trainer.checkpoint_every`` iterations, at
the end and on any error or interruption — always the state after the last completed
iteration, with the number of metrics rows logged up to it. A Ctrl-C never cuts a commit or
a checkpoint write (it only asks to stop there).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agc_pipeline.reporting.progress import progress
from agc_pipeline.reporting.sinks import Sink
from agc_pipeline.training.checkpoint import save_checkpoint
from agc_pipeline.training.runtime import Runtime

__all__ = ["TrainingInterrupted", "advance", "fit"]


class TrainingInterrupted(RuntimeError):
    """The run was stopped (SIGINT/SIGTERM) at an iteration boundary; a checkpoint is saved."""

    exit_status = 130  #: the train app's exit status


class _Stop:
    requested = False


def advance(runtime: Runtime, evaluate: bool = False) -> dict[str, Any]:
    """One iteration: ``runtime.step`` and the commit of its result (optimizer step with
    the one divergence check, totals, clock, iteration). Returns the metrics row."""
    result = runtime.step(evaluate=evaluate)
    runtime.state.commit(result)
    return result.row


def fit(runtime: Runtime, sink: Sink, checkpoint: Path, extra_state: dict[str, Any],
        logged_rows: int = 0, *, config: dict[str, Any], run_dir: Path) -> None:
    """Run ``runtime``'s remaining iterations inside its session (started with the resolved
    ``config`` and the ``run_dir``), logging rows to ``sink`` (every ``trainer.log_every``
    iterations, the last one and every skipped one) and checkpointing to ``checkpoint``
    with ``extra_state`` (see the module docstring); ``logged_rows`` rows were logged before."""
    state, s = runtime.state, runtime.settings
    rows = logged_rows
    stop = _Stop()
    lap = [time.perf_counter()]

    def save() -> None:
        now = time.perf_counter()
        state.totals.seconds += now - lap[0]
        lap[0] = now
        with _deferred_stop(stop):  # a Ctrl-C while saving waits for the checkpoint
            save_checkpoint(checkpoint, {**runtime.state_dict(), "metrics_rows": rows,
                                         **extra_state})

    bar = progress(total=s.iterations, initial=state.iteration, disable=not s.progress,
                   desc="train", unit="it")
    try:
        with runtime.session(config, Path(run_dir)):
            lap[0] = time.perf_counter()  # the session's start-up (e.g. workers) is not training
            save()
            with _graceful_stop(stop):
                while state.iteration < s.iterations:
                    t = state.iteration
                    result = runtime.step(evaluate=s.eval_every > 0 and t % s.eval_every == 0)
                    with _deferred_stop(stop):  # a second Ctrl-C never cuts an update
                        state.commit(result)
                    row = result.row
                    if t % s.log_every == 0 or t == s.iterations - 1 or row["skipped"]:
                        sink.log(row, step=t)
                        rows += 1
                    if row.get("train_loss") is not None:  # None on rows not logged
                        bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
                    bar.update(1)
                    if s.checkpoint_every and state.iteration % s.checkpoint_every == 0:
                        save()
                    if stop.requested:
                        raise TrainingInterrupted(
                            f"stopped after iteration {t} (checkpoint {checkpoint}); continue "
                            "with trainer.resume=true and the same hydra.run.dir")
    finally:
        bar.close()
        save()


@contextlib.contextmanager
def _graceful_stop(stop: _Stop) -> Iterator[None]:
    """SIGTERM, or a first SIGINT, asks the loop to stop at the end of the iteration
    (a second SIGINT interrupts at once, but never a checkpoint being written: see
    :func:`_deferred_stop`). Only in the main thread; handlers are restored."""

    def handler(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    with _handling(handler):
        yield


@contextlib.contextmanager
def _deferred_stop(stop: _Stop) -> Iterator[None]:
    """SIGINT and SIGTERM only ask to stop during the block (a checkpoint being written):
    a second Ctrl-C there would cut the write, lose the checkpoint and end in a
    KeyboardInterrupt traceback."""

    def handler(signum: int, frame: object) -> None:
        stop.requested = True

    with _handling(handler):
        yield


@contextlib.contextmanager
def _handling(handler: Any) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM during the block (main thread only; restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
