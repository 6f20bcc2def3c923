"""What reproduces a run: package version and git commit, library versions, host, command.

Both apps put :func:`record` into their output (``summary.json`` of ``train``, ``results.json``
and ``summary.json`` of ``analyze``) and the W&B sink adds it to the run's config. Nothing here
fails: a missing git, a copy outside a checkout or an absent library gives ``None``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import agc_pipeline

#: distribution names of the libraries recorded, under the key they are recorded as
LIBRARIES = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "hydra": "hydra-core",
             "omegaconf": "omegaconf", "wandb": "wandb", "matplotlib": "matplotlib",
             "networkx": "networkx"}
#: the source checkout the package is imported from, if any
REPO_ROOT = Path(agc_pipeline.__file__).resolve().parents[1]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def library_versions() -> dict[str, str | None]:
    """agc_pipeline, Python and the libraries of :data:`LIBRARIES` (None when not installed)."""
    return {"agc_pipeline": agc_pipeline.__version__, "python": platform.python_version(),
            **{key: _version(dist) for key, dist in LIBRARIES.items()}}


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.cache
def git_state(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty", "branch"}`` of the checkout at ``root``; None when the package is
    not run from a git checkout or git is not installed. ``dirty``: tracked or untracked
    (not ignored) changes, i.e. the commit alone does not reproduce the code."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD")}


def _hydra_overrides() -> list[str] | None:
    """The command-line overrides of this Hydra job (the sweep's values included)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def provenance() -> dict[str, Any]:
    """Package version, git state, host, command line, Hydra overrides and torch threads."""
    torch = sys.modules.get("torch")
    return {"package": "agc_pipeline", "version": agc_pipeline.__version__,
            "git": git_state(), "hostname": socket.gethostname(),
            "platform": platform.platform(), "argv": list(sys.argv),
            "overrides": _hydra_overrides(), "cwd": os.getcwd(),
            "torch_threads": torch.get_num_threads() if torch is not None else None}


def record() -> dict[str, Any]:
    """The block every run output carries: ``{"versions": ..., "provenance": ...}``."""
    return {"versions": library_versions(), "provenance": provenance()}
