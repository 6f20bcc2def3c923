"""``trainer=ddp`` settings (``conf/trainer/ddp.yaml``): the shared keys, waiting for every
rank, and the launch and liveness keys of :mod:`~agc_pipeline.training.ddp`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agc_pipeline.errors import require
from agc_pipeline.training.distributed import FaultSettings
from agc_pipeline.training.settings import ProcessKeys, WaitSettings
from agc_pipeline.validation import require_choice, require_finite, require_int

__all__ = ["DdpSettings", "ring_allreduce_bytes"]


def ring_allreduce_bytes(n: int, d: int, element_size: int = 4) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of d values over n ranks:
    2(n−1)/n · d · element_size (reduce-scatter, then all-gather)."""
    return (2 * (n - 1) * d * element_size) // n


@dataclass
class DdpSettings(WaitSettings, ProcessKeys):
    """``trainer=ddp`` options: :class:`~agc_pipeline.training.settings.WaitSettings`, the
    processes' keys (:class:`~agc_pipeline.training.settings.ProcessKeys`) and DDP's own."""

    backend: str | None = None  #: gloo | nccl; null = nccl on CUDA, gloo on the CPU
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
        self.validate_processes()
        require_finite(self.bucket_cap_mb, "trainer.bucket_cap_mb", minimum=0.0,
                       strict_minimum=True)
        if self.min_workers is not None:
            require_int(self.min_workers, "trainer.min_workers", minimum=1)
        fault = FaultSettings.from_config(self.fault)
        require(fault.bad_message_worker is None,
                "trainer.fault.bad_message_worker does not apply to trainer=ddp (no messages "
                "to corrupt: DDP all-reduces)")
        self.fault = fault
