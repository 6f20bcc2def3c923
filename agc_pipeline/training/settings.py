"""Trainer settings (``conf/trainer/<runtime>.yaml``): the keys every runtime shares
(:class:`TrainerSettings`, defaults in ``conf/trainer/base.yaml``) and those of the coded
runtimes (:class:`CodedSettings`); each runtime's module adds a subclass with its own keys.

The dataclass defaults equal the YAML defaults (a test checks it), so settings built without
Hydra behave as the app's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from agc_pipeline.errors import ConfigError, require
from agc_pipeline.training.startup import FAULT_POINTS
from agc_pipeline.validation import (
    is_number,
    require_bool,
    require_choice,
    require_finite,
    require_int,
)

__all__ = ["CodedSettings", "ProcessKeys", "TrainerSettings", "WaitSettings", "torch_device"]


@dataclass
class TrainerSettings:
    """The keys every runtime shares, validated at start."""

    iterations: int = 300  #: SGD iterations
    lr: float = 0.5  #: learning rate η of the PS's optimizer
    log_every: int = 1  #: one metrics row every this many iterations (and the last)
    eval_every: int = 50  #: test metrics every this many iterations (0: only at the end)
    checkpoint_every: int = 100  #: checkpoint every this many iterations (0: start/end/error)
    resume: bool = False  #: continue from ``checkpoint.pt`` in the run dir
    overwrite: bool = False  #: replace a run already in the run dir (else refuse)
    progress: bool = True  #: tqdm progress bar on stderr
    device: str = "cpu"  #: cpu | cuda | cuda:N | auto
    batch_size: int | None = None  #: samples per data subset per iteration (None: all)
    clip_grad_norm: float | None = None  #: rescale the gradient to at most this 2-norm
    threads: int | None = None  #: torch intra-op threads; None: cores // n_jobs under joblib
    #: the final training loss over this many training samples (a fixed sample drawn from the
    #: seed); None, or at least the N samples used: all of them
    train_loss_samples: int | None = None
    skip_finished: bool = True  #: multirun: skip jobs whose complete run is in their dir

    def __post_init__(self) -> None:
        for name in ("iterations", "log_every"):
            require_int(getattr(self, name), f"trainer.{name}", minimum=1)
        for name in ("eval_every", "checkpoint_every"):
            require_int(getattr(self, name), f"trainer.{name}", minimum=0)
        for name in ("threads", "batch_size", "train_loss_samples"):
            if getattr(self, name) is not None:
                require_int(getattr(self, name), f"trainer.{name}", minimum=1)
        require_finite(self.lr, "trainer.lr", minimum=0.0, strict_minimum=True)
        clip = self.clip_grad_norm
        require(clip is None or (is_number(clip) and math.isfinite(clip) and clip > 0),
                f"trainer.clip_grad_norm must be a finite number > 0 or null (got {clip!r})")
        for name in ("resume", "overwrite", "progress", "skip_finished"):
            require_bool(getattr(self, name), f"trainer.{name}")
        require(not (self.resume and self.overwrite),
                "trainer.resume=true and trainer.overwrite=true exclude each other: continue "
                "the run in the run dir, or replace it")
        self.torch_device = torch_device(self.device)


@dataclass
class WaitSettings(TrainerSettings):
    """Plus waiting for every worker (``conf/trainer/common/wait.yaml``): the coded runtimes
    and DDP, whose ranks sleep the straggler model's times of a wait-for-all draw."""

    wait_for_all: bool = False  #: the PS uses every message (uncoded wait-for-all baseline)
    straggler_slowdown: float = 4.0  #: wait_for_all: a straggler's compute time multiplier

    def __post_init__(self) -> None:
        super().__post_init__()
        require_bool(self.wait_for_all, "trainer.wait_for_all")
        require_finite(self.straggler_slowdown, "trainer.straggler_slowdown", minimum=1.0)


@dataclass
class CodedSettings(WaitSettings):
    """The keys of the coded runtimes (``trainer=simulated|distributed``,
    ``conf/trainer/common/coded.yaml``): α (Section VII) and how the coded gradient is
    formed (Section III)."""

    alpha_samples: int = 1000  #: Monte Carlo draws for α (0: skip; rescale needs ≥ 2)
    coded_gradient: str = "weighted"  #: weighted (one pass) | per_subset (k gradients)
    grad_error: bool = True  #: also compute the true gradient to log grad_error

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int(self.alpha_samples, "trainer.alpha_samples", minimum=0)
        require(self.coded_gradient in ("weighted", "per_subset"),
                f"trainer.coded_gradient must be weighted or per_subset (got "
                f"{self.coded_gradient!r})")
        require_bool(self.grad_error, "trainer.grad_error")


@dataclass
class ProcessKeys:
    """The launch and liveness keys of the multi-process runtimes
    (``conf/trainer/common/processes.yaml``), mixed into their settings."""

    start_method: str = "forkserver"  #: local launch: forkserver | spawn
    time_scale: float | None = None  #: s per time unit; null = straggler.time_scale or 0.1
    timeout_s: float = 60.0  #: a peer silent (a collective incomplete) this long is lost
    startup_timeout_s: float = 300.0  #: rendezvous, configuration and start handshake
    startup_fault_rank: int | None = None  #: injected: this rank exits during the start-up ...
    startup_fault_point: str = "rendezvous"  #: ... here: rendezvous | joined (startup.py)

    def validate_processes(self) -> None:
        """Raise ConfigError for impossible values."""
        require_choice(self.start_method, "trainer.start_method", ("forkserver", "spawn"))
        if self.startup_fault_rank is not None:
            require_int(self.startup_fault_rank, "trainer.startup_fault_rank", minimum=0)
        require_choice(self.startup_fault_point, "trainer.startup_fault_point", FAULT_POINTS)
        if self.time_scale is not None:
            require_finite(self.time_scale, "trainer.time_scale", minimum=0.0)
        for name in ("timeout_s", "startup_timeout_s"):
            require_finite(getattr(self, name), f"trainer.{name}", minimum=0.0,
                           strict_minimum=True)


def torch_device(name: Any) -> torch.device:
    """``trainer.device`` as a torch device (``auto``: CUDA when available)."""
    require(isinstance(name, str), f"trainer.device must be a string (got {name!r})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device must be cpu, cuda, cuda:N or auto (got {name!r})") \
            from None
    require(device.type in ("cpu", "cuda"),
            f"trainer.device must be cpu, cuda, cuda:N or auto (got {name!r})")
    require(device.type != "cuda" or torch.cuda.is_available(),
            f"trainer.device={name} but CUDA is not available; use trainer.device=cpu")
    return device
