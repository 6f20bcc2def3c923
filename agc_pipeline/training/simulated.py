"""Coded SGD on a simulated cluster: n workers and the parameter server in one process.

Each iteration t (paper Sections II, III and VII):

1. the minibatch of iteration t: ``trainer.batch_size`` samples of every data subset D_i
   (:meth:`~agc_pipeline.training.core.CodedTraining.minibatch`; all of D_i by default);
2. the encoding matrix B of iteration t (:func:`~agc_pipeline.training.coded_step.encoder_rng`
   for randomised schemes such as construction (7));
3. the straggler model's draw for iteration t (seeded by (seed, t): common random numbers
   across schemes) — the survivor set 𝓕 and the PS's waiting time;
4. decoding R at the PS and the estimate ĝ = Z (B R) — identical to combining the survivors'
   messages Z B(:, j) — formed in one weighted backward pass
   (``trainer.coded_gradient=weighted``, :mod:`~agc_pipeline.training.coded_gradient`) or
   from the k partial gradients in float64 (``per_subset``; ``materialize_messages`` builds
   the messages explicitly), divided by α when ``decoder.rescale``, and the optimizer step.
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

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agc_pipeline.training.coded_step import check_finite
from agc_pipeline.training.core import CodedTraining, Pending, Totals
from agc_pipeline.training.settings import TrainerSettings

__all__ = ["SimulatedRuntime", "SimulatedSettings"]


@dataclass
class SimulatedSettings(TrainerSettings):
    """``trainer=simulated`` options (``conf/trainer/simulated.yaml``): the shared keys of
    :class:`~agc_pipeline.training.settings.TrainerSettings`."""

    runtime: ClassVar[str] = "agc_pipeline.training.simulated.SimulatedRuntime"


class SimulatedRuntime:
    """n workers and the PS in one process: the survivors' messages are combined in closed
    form, ĝ = Z (B R), and time is the straggler model's virtual clock."""

    name = "simulated"

    def __init__(self, core: CodedTraining) -> None:
        self.core = core

    @contextlib.contextmanager
    def session(self, extra_state: dict[str, Any], run_dir: Path) -> Iterator[None]:
        """Nothing to start: the cluster is simulated."""
        yield

    def step(self, evaluate: bool = False) -> dict[str, Any]:
        """Run iteration ``core.iteration``; return its metrics row (at the parameters before
        the update: ``train_loss``, test metrics when ``evaluate``)."""
        core = self.core
        t, m = core.iteration, core.m
        row: dict[str, Any] = {"iteration": t}
        if evaluate:
            row.update(core.evaluate())
        x, y = core.minibatch(t)
        b = core.coded.encoding(t)
        draw = core.draw(b, t)
        mask = draw.survivors
        if mask.any():
            dec = core.coded.decode(b, mask)
            weights = core.coded.weights(b, dec.r)  # B R, (mk × m)
            condition, approx = dec.condition_number, dec.error
        else:
            dec, weights = None, np.zeros((core.k * m, m))
            condition, approx = math.inf, core.coded.target_norm2
        estimate, exact, loss = core.coded_gradient(x, y, b, weights, mask, dec)
        row["train_loss"] = loss / core.batch_samples
        if core.decoder.rescale and dec is not None:
            assert core.alpha is not None, "call estimate_alpha() before training"
            estimate = estimate / core.alpha.value
        if exact is None:  # a NaN/Inf entry is caught by the optimizer's guard (commit)
            error = None
        else:
            diff2 = float((estimate.to(exact.dtype) - exact).square().sum())
            if not math.isfinite(diff2):  # the only full NaN/Inf scan, when something is off
                check_finite(estimate, t)
            norm2 = float(exact.square().sum())
            error = diff2 / norm2 if norm2 > 0 else math.nan
        survivors = int(mask.sum())
        sent = survivors * core.length * core.wire_bytes
        pending = Pending(core.clock.virtual_time, Totals(**asdict(core.totals)), estimate)
        pending.virtual_time = core.clock.after(draw)
        tot = pending.totals
        tot.iterations, tot.survivors = t + 1, tot.survivors + survivors
        tot.bytes_to_ps += sent
        tot.skipped += int(survivors == 0)
        tot.grad_error += error if error is not None and math.isfinite(error) else 0.0
        row.update(grad_error=error, survivors=survivors, bytes_to_ps=sent,
                   total_bytes_to_ps=tot.bytes_to_ps, virtual_time=pending.virtual_time,
                   iteration_time=float(draw.iteration_time), decode_condition=condition,
                   approx_error=float(approx), skipped=survivors == 0)
        core.commit(pending, update=survivors > 0)
        return row

    def state_dict(self) -> dict[str, Any]:
        """The shared state (model, optimizer, clock, totals, α)."""
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.core.load_state_dict(state)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json fields of the simulated runtime."""
        return {"runtime": self.name, "clock": "virtual"}
