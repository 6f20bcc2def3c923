"""``trainer=ddp`` settings (``conf/trainer/ddp.yaml``): the shared keys, waiting for every
rank, and the launch and liveness keys of :mod:`~agc_pipeline.training.ddp`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agc_pipeline.errors import require
from agc_pipeline.training.distributed import FaultSettings
from agc_pipeline.training.settings import WaitSettings
from agc_pipeline.validation import require_choice, require_finite, require_int

__all__ = ["DdpSettings", "ring_allreduce_bytes"]


def ring_allreduce_bytes(n: int, d: int, element_size: int = 4) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of d values over n ranks:
    2(n−1)/n · d · element_size (reduce-scatter, then all-gather)."""
    return (2 * (n - 1) * d * element_size) // n


@dataclass
class DdpSettings(WaitSettings):
    """``trainer=ddp`` options: :class:`~agc_pipeline.training.settings.WaitSettings` plus
    the launch and liveness keys (as ``trainer=distributed``'s, where they apply)."""

    backend: str | None = None  #: gloo | nccl; null = nccl on CUDA, gloo on the CPU
    start_method: str = "forkserver"  #: local launch: forkserver | spawn
    time_scale: float | None = None  #: s per time unit; null = straggler.time_scale or 0.1
    timeout_s: float = 60.0  #: a collective incomplete this long: a rank is lost
    startup_timeout_s: float = 300.0  #: rendezvous, configuration and start handshake
    min_workers: int | None = None  #: null or n: DDP cannot continue without a rank
    bucket_cap_mb: float = 25.0  #: DDP's gradient bucket size
    fault: Any = None  #: FaultSettings (kill_worker = a rank 1..n−1, at_iteration)

    def __post_init__(self) -> None:
        super().__post_init__()
        cuda = self.torch_device.type == "cuda"
        if self.backend is None:
            self.backend = "nccl" if cuda else "gloo"
        require_choice(self.backend, "trainer.backend", ("gloo", "nccl"))
        require(self.backend != "nccl" or cuda,
                "trainer.backend=nccl needs trainer.device=cuda (NCCL all-reduces CUDA tensors); "
                "use trainer.backend=gloo on the CPU")
        require_choice(self.start_method, "trainer.start_method", ("forkserver", "spawn"))
        if self.time_scale is not None:
            require_finite(self.time_scale, "trainer.time_scale", minimum=0.0)
        for name in ("timeout_s", "startup_timeout_s", "bucket_cap_mb"):
            require_finite(getattr(self, name), f"trainer.{name}", minimum=0.0,
                           strict_minimum=True)
        if self.min_workers is not None:
            require_int(self.min_workers, "trainer.min_workers", minimum=1)
        fault = FaultSettings.from_config(self.fault)
        require(fault.bad_message_worker is None,
                "trainer.fault.bad_message_worker does not apply to trainer=ddp (no messages "
                "to corrupt: DDP all-reduces)")
        self.fault = fault
