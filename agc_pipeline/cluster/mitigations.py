"""The baselines the planner compares gradient codes with (issue 18), from the cost model's
figures: synchronous SGD (DDP), backup workers, and local / hierarchical SGD.

* **DDP** (:func:`~agc_pipeline.cluster.costmodel.ddp_iteration_times`): every step waits for
  the slowest of the n workers, then a ring all-reduce of the d gradient values.
* **Backup workers** (synchronous SGD that takes the first n − s of n workers and averages
  what came — this repository's ``code=uncoded_ignore``): the PS model of
  :mod:`~agc_pipeline.cluster.costmodel` with A = I: each worker computes 1/n of the batch,
  the PS sends n copies of the d parameters and takes the first n − s messages of d values
  (the late ones are cancelled and take no bandwidth); the gradient sums n − s of the n
  partial gradients (Err = s under optimal decoding, eq. 3).
* **Local SGD** (PyTorch's ``PostLocalSGDOptimizer`` + ``PeriodicModelAverager``): every
  worker takes ``period`` = H local steps on its own B/n samples, then the n workers average
  their parameters (a ring all-reduce of d values). The averaging waits for the slowest
  worker *over the whole period*, so a straggler's delay is paid once per period and can be
  absorbed by its own fast steps:

      step time = E[ max_j Σ_{t=1..H} c_{j,t} + T_ring(n) ] / H.

* **Hierarchical SGD** (``HierarchicalModelAverager``): groups of g workers average among
  themselves every H steps, and all n workers every G steps (G a multiple of H; at a step
  that is a multiple of G only the global average runs, as PyTorch does). Between global
  averages each group advances independently through its G/H segments:

      T_group = Σ_{segments σ} max_{j ∈ group} Σ_{t ∈ σ} c_{j,t} + (G/H − 1)·T_ring(g),
      step time = E[ max_groups T_group + T_ring(n) ] / G.

  Plain local SGD is the case g = n, G = H.

Example (the stall regime, additive): compute c each step and a 1 s stall with probability p
per worker and step. Synchronous SGD pays c + E[max_j stall_j] = c + (1 − (1 − p)^n) s per
step; local SGD pays at most c + E[max_j (stalls of j in H steps)]/H — about (1 − (1 −
p)^{nH})/H s for small p — plus T_ring/H.

What these formulas ignore: the warm-up of ``PostLocalSGDOptimizer`` (synchronous steps
before local SGD starts), any faster intra-group link (a group's ring uses the cluster's
link), the shared-host CPU bound of ``cluster=loopback`` for local SGD, and — for the time to
the loss — any change in the iterations needed (not measured here; labelled as such).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agc_pipeline.cluster.costmodel import ClusterModel
from agc_pipeline.errors import require
from agc_pipeline.validation import require_int

__all__ = ["Averaging", "averaging_step_times", "averaging_spec", "local_sgd_row"]


@dataclass(frozen=True)
class Averaging:
    """A local-SGD schedule: groups of ``group_size`` workers (None: all n) average every
    ``period`` steps, all n every ``global_period`` steps (None: = period, plain local SGD)."""

    kind: str  #: ``local_sgd`` or ``hierarchical_sgd``
    period: int
    group_size: int | None = None
    global_period: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "local_sgd":
            return f"local SGD H={self.period}"
        return (f"hierarchical SGD g={self.group_size} H={self.period} "
                f"G={self.global_period}")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "period": self.period, "group_size": self.group_size,
                "global_period": self.global_period}


def averaging_spec(node: Any, kind: str) -> Averaging | None:
    """``plan.local_sgd`` / ``plan.hierarchical_sgd`` (a mapping, or null: not evaluated) as a
    validated :class:`Averaging`."""
    if node is None:
        return None
    name = f"plan.{kind}"
    require(hasattr(node, "get"), f"{name} must be a mapping or null (got {node!r})")
    keys = {"period"} if kind == "local_sgd" else {"period", "group_size", "global_period"}
    extra = sorted(set(node) - keys)
    require(not extra, f"{name}: unknown key(s) {', '.join(map(str, extra))} (known: "
                       f"{', '.join(sorted(keys))})")
    period = require_int(node.get("period"), f"{name}.period", minimum=1)
    if kind == "local_sgd":
        return Averaging(kind, period)
    group = require_int(node.get("group_size"), f"{name}.group_size", minimum=1)
    top = require_int(node.get("global_period"), f"{name}.global_period", minimum=1)
    require(top % period == 0, f"{name}.global_period must be a multiple of {name}.period "
                               f"(got {top} and {period})")
    return Averaging(kind, period, group, top)


def averaging_step_times(compute: np.ndarray, group_size: int, period: int,
                         global_period: int, t_group: float, t_global: float) -> np.ndarray:
    """Mean step time of each global period (P,), P = draws // global_period, for per-step
    compute times ``compute`` (draws, n) consumed in order (the formulas of the module
    docstring; the last ``draws mod global_period`` draws are unused)."""
    compute = np.asarray(compute, dtype=np.float64)
    draws, n = compute.shape
    require(n % group_size == 0, f"group size {group_size} must divide n = {n}")
    require(global_period % period == 0, "global_period must be a multiple of period")
    periods = draws // global_period
    require(periods >= 1, f"plan.draws = {draws} must be ≥ the averaging period "
                          f"{global_period}")
    segments = global_period // period
    c = compute[: periods * global_period].reshape(periods, segments, period,
                                                   n // group_size, group_size)
    slowest = c.sum(axis=2).max(axis=-1)  # (P, segments, groups): each group's slowest member
    group_time = slowest.sum(axis=1) + (segments - 1) * t_group  # (P, groups)
    return (group_time.max(axis=-1) + t_global) / global_period


def local_sgd_row(cluster: ClusterModel, spec: Averaging, compute: np.ndarray, d: int,
                  value_bytes: float) -> dict[str, Any]:
    """Expected step time of ``spec`` for per-step compute ``compute`` (draws, n): the
    ``scheme``, ``family``, ``iteration_time`` and the schedule, or ``available: False`` with
    the reason (a group size that does not divide n)."""
    n = compute.shape[-1]
    group = n if spec.group_size is None else spec.group_size
    top = spec.period if spec.global_period is None else spec.global_period
    out: dict[str, Any] = {"scheme": spec.label, "family": spec.kind, **spec.describe()}
    if n % group:
        return {**out, "available": False,
                "why": f"group size {group} does not divide n = {n}"}
    t_group = cluster.ring_allreduce_time(group, d, value_bytes)
    t_global = cluster.ring_allreduce_time(n, d, value_bytes)
    times = averaging_step_times(compute, group, spec.period, top, t_group, t_global)
    return {**out, "available": True, "iteration_time": float(np.mean(times))}
