"""Progress display of the apps: a tqdm bar, or whole lines in parallel sweeps.

Jobs of a parallel sweep (``hydra/launcher=local``) share one terminal: their tqdm bars would
overwrite each other. There :func:`use_lines` (called by
:mod:`agc_pipeline.reporting.jobs`) switches
every later :func:`progress` to :class:`LineProgress`, which prints one complete line, led by
the job's label, at each quarter of the work; nothing is redrawn. When stderr is not a terminal
(a log file, a pipe, CI), a bar's carriage-return frames would fill the file: there
:func:`progress` prints :data:`FILE_PARTS` whole lines to stderr instead (one every 10 % of the
work).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LineProgress", "emit", "progress", "use_lines"]

#: lines a progress display writes when stderr is not a terminal (one every 10 % of the work)
FILE_PARTS = 10
#: the job label of line mode (None: tqdm bars)
_LABEL: list[str | None] = [None]


def use_lines(label: str | None) -> None:
    """Show progress as whole lines led by ``label`` (None: back to tqdm bars)."""
    _LABEL[0] = label


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` as one line in one write (lines of parallel jobs never interleave)."""
    out = stream or sys.stdout
    out.write(text.rstrip("\n") + "\n")
    out.flush()


class LineProgress:
    """The part of tqdm's interface the apps use (``update``, ``set_postfix``, ``close``,
    iteration), printed as ``<label>: <desc> 150/300 it (50%), loss=0.43, 12.1 s`` lines at
    25, 50, 75 and 100 % of ``total``."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 initial: int = 0, desc: str = "", unit: str = "it", label: str = "",
                 stream: TextIO | None = None, parts: int = 4) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.label, self.stream, self.parts = label, stream, parts
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._shown = self._part(initial)

    def _part(self, n: int) -> int:
        return 0 if not self.total else n * self.parts // self.total

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        part = self._part(self.n)
        if part > self._shown:
            self._shown = part
            self._show()

    def _show(self) -> None:
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        lead = f"{self.label}: " if self.label else ""
        emit(f"{lead}{self.desc} {done}{share}{extra}, "
             f"{time.perf_counter() - self.started:.1f} s", self.stream)

    def close(self) -> None:
        """Nothing to clear (no bar was drawn)."""

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None,
             initial: int = 0, desc: str = "", unit: str = "it",
             disable: bool = False) -> Any:
    """A tqdm bar on a terminal; a :class:`LineProgress` after :func:`use_lines`, or on stderr
    when stderr is not a terminal (nothing when ``disable``)."""
    if _LABEL[0] is not None and not disable:
        return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit,
                            label=_LABEL[0])
    if not disable and not _is_terminal(sys.stderr):
        return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit,
                            stream=sys.stderr, parts=FILE_PARTS)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                dynamic_ncols=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
