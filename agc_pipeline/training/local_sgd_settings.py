"""The local-SGD keys (``trainer=local_sgd`` and ``trainer=local_sgd_simulated``) and the
averaging rule of PyTorch's averagers, shared by both runtimes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agc_pipeline.build import Plan
from agc_pipeline.errors import require
from agc_pipeline.training.distributed import FaultSettings
from agc_pipeline.training.settings import ProcessKeys, WaitSettings
from agc_pipeline.validation import is_int, require_int

__all__ = ["LocalSgdProcessSettings", "LocalSgdSettings", "averaging_group", "check_hierarchy",
           "check_local_plan"]


@dataclass
class LocalSgdSettings(WaitSettings):
    """The local-SGD keys (``trainer=local_sgd_simulated``; ``trainer=local_sgd`` adds the
    processes' keys)."""

    period: int = 4  #: local steps between averages (PeriodicModelAverager's period)
    warmup_steps: int = 0  #: synchronous steps first (PostLocalSGD's warm-up)
    #: {period: group size} as HierarchicalModelAverager takes it (None: periodic averaging)
    hierarchy: dict[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int(self.period, "trainer.period", minimum=1)
        require_int(self.warmup_steps, "trainer.warmup_steps", minimum=0)
        if self.hierarchy is not None:
            self.hierarchy = check_hierarchy(self.hierarchy)


def check_hierarchy(hierarchy: Any) -> dict[int, int]:
    """``trainer.hierarchy`` as {period: group size}: positive integers, increasing periods
    and group sizes (the last group size is checked against n by the runtime's rules)."""
    name = "trainer.hierarchy"
    require(isinstance(hierarchy, Mapping) and len(hierarchy) > 0,
            f"{name} must be a non-empty mapping {{period: group size}} (got {hierarchy!r})")
    pairs = []
    for period, size in hierarchy.items():
        key = int(period) if isinstance(period, str) and period.isdigit() else period
        require(is_int(key) and key >= 1 and is_int(size) and size >= 1,
                f"{name} maps periods to group sizes, both positive integers (got "
                f"{period!r}: {size!r})")
        pairs.append((int(key), int(size)))
    periods, sizes = [p for p, _ in pairs], [g for _, g in pairs]
    require(periods == sorted(set(periods)) and sizes == sorted(sizes),
            f"{name} needs increasing periods with non-decreasing group sizes (got {hierarchy!r})")
    return dict(pairs)


def averaging_group(t: int, settings: LocalSgdSettings, n: int) -> int | None:
    """The group size that averages after step t (n: all workers; None: no averaging):
    PeriodicModelAverager's or HierarchicalModelAverager's rule (module docstring)."""
    if t < settings.warmup_steps:
        return None
    if settings.hierarchy is None:
        return n if (t - settings.warmup_steps) % settings.period == 0 else None
    for period in reversed(list(settings.hierarchy)):
        if t % period == 0:
            return settings.hierarchy[period]
    return None



def check_local_plan(plan: Plan) -> None:
    """The hierarchy against n: every group size divides n and the last (largest period)
    is n, as HierarchicalModelAverager requires."""
    settings, n = plan.settings, plan.scheme.n
    kill = getattr(getattr(settings, "fault", None), "kill_worker", None)
    require(kill is None or 1 <= kill < n,
            f"trainer.fault.kill_worker must be null or a rank 1..n-1 = {n - 1} for "
            f"trainer=local_sgd (rank 0 is the app; got {kill!r})")
    if settings.hierarchy is not None:
        sizes = list(settings.hierarchy.values())
        require(sizes[-1] == n and all(n % g == 0 for g in sizes),
                f"trainer.hierarchy={settings.hierarchy}: the group sizes must divide n = {n} "
                "and the last (largest period) must be n, as HierarchicalModelAverager requires")


@dataclass
class LocalSgdProcessSettings(LocalSgdSettings, ProcessKeys):
    """``trainer=local_sgd`` options (``conf/trainer/local_sgd.yaml``): the local-SGD keys and
    the processes' keys (:class:`~agc_pipeline.training.settings.ProcessKeys`); gloo only."""

    fault: Any = None  #: FaultSettings (kill_worker = a rank 1..n−1, at_iteration)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_processes()
        fault = FaultSettings.from_config(self.fault)
        require(fault.bad_message_worker is None,
                "trainer.fault.bad_message_worker does not apply to trainer=local_sgd (no "
                "messages to corrupt: the ranks all-reduce)")
        self.fault = fault
        require(self.torch_device.type == "cpu",
                "trainer=local_sgd runs on the CPU over gloo; use trainer.device=cpu")
