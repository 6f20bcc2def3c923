"""Coded SGD on a simulated cluster: n workers and the parameter server in one process.

Each iteration t (paper Sections II, III and VII):

1. the minibatch of iteration t: ``trainer.batch_size`` samples of every data subset D_i
   (:meth:`~agc_pipeline.training.workload.Workload.minibatch`; all of D_i by default);
2. the encoding matrix B of iteration t (:func:`~agc_pipeline.training.coded_step.encoder_rng`
   for randomised schemes such as construction (7));
3. the straggler model's draw for iteration t (seeded by (seed, t): common random numbers
   across schemes) — the survivor set 𝓕 and the PS's waiting time;
4. decoding R at the PS and the estimate ĝ = Z (B R) — identical to combining the survivors'
   messages Z B(:, j) — formed in one weighted backward pass
   (``trainer.coded_gradient=weighted``, :mod:`~agc_pipeline.training.coded_gradient`) or
   from the k partial gradients in float64 (``per_subset``; ``materialize_messages`` builds
   the messages explicitly) and divided by α when ``decoder.rescale``; the shared loop takes
   the optimizer step (:meth:`~agc_pipeline.training.state.RunState.commit`).
   No survivors: the update is skipped (and logged). NaN/Inf in ĝ, or a step that would
   overflow the parameters: :class:`TrainingDiverged` (the state stays the last good one).

Metrics are evaluated at the parameters *before* iteration t's update; ``bytes_to_ps``
counts the survivors' messages in the parameters' dtype (|𝓕|·L·4 bytes for float32), as a
real runtime would send them; the virtual clock adds the straggler model's waiting time
(plus ``decode_cost``) per iteration.

``wait_for_all`` makes the PS use every worker's message (the uncoded wait-for-all baseline);
the iteration then lasts until the slowest worker arrives. Models without timing (all but
``delay``) have stragglers that never arrive; under ``wait_for_all`` they are taken to arrive
after ``straggler_slowdown × compute_time`` plus their communication time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.build import RunSpec
from agc_pipeline.coding.stragglers import VirtualClock
from agc_pipeline.training.coded_step import check_finite
from agc_pipeline.training.runtime import CodedRuntime
from agc_pipeline.training.settings import CodedSettings, TrainerSettings
from agc_pipeline.training.state import StepResult
from agc_pipeline.validation import require_bool, require_finite

__all__ = ["SimulatedRuntime", "SimulatedSettings"]


@dataclass
class SimulatedSettings(CodedSettings):
    """``trainer=simulated`` options (``conf/trainer/simulated.yaml``): the coded runtimes'
    keys plus the simulation's own."""

    decode_cost: float = 0.0  #: virtual time the PS spends decoding, per iteration
    materialize_messages: bool = False  #: build every worker's message (slower; a check)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_finite(self.decode_cost, "trainer.decode_cost", minimum=0.0)
        require_bool(self.materialize_messages, "trainer.materialize_messages")


class SimulatedRuntime(CodedRuntime):
    """n workers and the PS in one process: the survivors' messages are combined in closed
    form, ĝ = Z (B R), and time is the straggler model's virtual clock."""

    name: ClassVar[str] = "simulated"
    settings_class: ClassVar[type[TrainerSettings]] = SimulatedSettings
    virtual_clock: ClassVar[bool] = True

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec, materialize=spec.settings.materialize_messages)
        self.state = self._make_state(VirtualClock(decode_cost=spec.settings.decode_cost))

    def step(self, evaluate: bool = False) -> StepResult:
        """Run iteration ``state.iteration``: its metrics row (at the parameters before the
        update: ``train_loss``, test metrics when ``evaluate``) and ĝ to step with."""
        coded, work = self.coded_part, self.workload
        t, m = self.state.iteration, coded.m
        row: dict[str, Any] = {"iteration": t}
        if evaluate:
            row.update(work.evaluate())
        x, y = work.minibatch(t)
        b = coded.code.encoding(t)
        draw = coded.draw(b, t)
        mask = draw.survivors
        if mask.any():
            dec = coded.code.decode(b, mask)
            weights = coded.code.weights(b, dec.r)  # B R, (mk × m)
            condition, approx = dec.condition_number, dec.error
        else:
            dec, weights = None, np.zeros((coded.k * m, m))
            condition, approx = math.inf, coded.code.target_norm2
        estimate, exact, loss = coded.gradient(x, y, b, weights, mask, dec)
        row["train_loss"] = loss / work.batch_samples
        if coded.decoder.rescale and dec is not None:
            assert coded.alpha is not None, "call estimate_alpha() before training"
            estimate = estimate / coded.alpha.value
        error = self._error(estimate, exact, t)
        survivors = int(mask.sum())
        sent = survivors * coded.length * coded.wire_bytes
        assert self.state.clock is not None
        virtual_time = self.state.clock.after(draw)
        row.update(grad_error=error, survivors=survivors, bytes_to_ps=sent,
                   total_bytes_to_ps=self.state.totals.bytes_to_ps + sent,
                   virtual_time=virtual_time, iteration_time=float(draw.iteration_time),
                   decode_condition=condition, approx_error=float(approx),
                   skipped=survivors == 0)
        increments = {"survivors": survivors, "bytes_to_ps": sent,
                      "skipped": int(survivors == 0),
                      "grad_error": error if error is not None and math.isfinite(error)
                      else 0.0}
        return StepResult(row, estimate if survivors > 0 else None, increments, virtual_time)

    @staticmethod
    def _error(estimate: Any, exact: Any, t: int) -> float | None:
        """‖ĝ − g‖² / ‖g‖² (None without g); a NaN/Inf ĝ raises TrainingDiverged here, or
        at the optimizer's guard (the commit) when g is not formed."""
        if exact is None:
            return None
        diff2 = float((estimate.to(exact.dtype) - exact).square().sum())
        if not math.isfinite(diff2):  # the only full NaN/Inf scan, when something is off
            check_finite(estimate, t)
        norm2 = float(exact.square().sum())
        return diff2 / norm2 if norm2 > 0 else math.nan
