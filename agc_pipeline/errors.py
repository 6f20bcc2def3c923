"""The exception types the apps report as one line: impossible configurations and files that
cannot be written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


class ConfigError(ValueError):
    """A parameter breaks a rule; the message names the parameter and the rule.

    Raised at start-up, before any long computation, and reported by the apps as one line.
    """


class WriteFailed(Exception):
    """A file could not be written (no space left on device, a read-only file system, ...);
    the message names the file and the system's reason. The apps report it as one line and
    exit with status 1."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; an import error (e.g. a ``_target_`` whose module does
    not import) with the error that caused it, in place of that error's repr."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    inner = exc.__cause__
    if isinstance(exc, ImportError) and inner is not None and len(lines) >= 2:
        first = " ".join(str(inner).split())
        lines[1] = f"{type(inner).__name__}: {first}" + ("" if len(lines) < 3 else ";")
    return " ".join(lines) or type(exc).__name__


def write_failed(path: Path | str, exc: OSError) -> WriteFailed:
    """The :class:`WriteFailed` of ``exc`` (an OSError raised writing ``path``)."""
    return WriteFailed(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write(fh)`` into ``<path>.tmp``, then rename it over
    ``path``. On any failure (an OSError, an interruption) the temporary file is removed and
    ``path`` keeps its previous contents; an OSError is raised as :class:`WriteFailed`."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_failed(path, exc) from None
        raise
