"""Straggler and delay models: which workers' messages reach the PS in each iteration.

A model's :meth:`StragglerModel.draw` returns a :class:`StragglerDraw` — the survivor mask
(the non-straggler set 𝓕 of Section III), each worker's arrival time at the PS and the time the
PS waits. Randomness comes only from ``numpy.random.default_rng([seed, iteration, 0x57A6])``:
common random numbers, so two schemes run with the same seed see the same straggler pattern
in every iteration, whatever their message lengths (the survivors of :class:`Bernoulli`,
:class:`FixedCount` and ``Delay(wait_for="first")`` never depend on the message length).

Timing: a worker computes for ``compute_time`` (default 1 time unit; :class:`Delay` draws it,
optionally in proportion to the samples the worker processes, with random slow workers) and
then sends a message of ``message_length`` scalars (d/m for a code with reduction factor
m) taking ``comm_per_unit · message_length``. Stragglers have arrival time ``inf``. Models
other than :class:`Delay` model a fixed time window: the PS waits ``compute_time + comm``.
:class:`Stall` (random stalls) and :class:`Persistent` (slow hosts) are
Delay models too (the regimes of the baseline comparison). :class:`VirtualClock` adds the
waiting times (and a PS decode cost) into a simulated clock.
"""

from agc_pipeline.coding.stragglers.base import (
    StragglerContext,
    StragglerDraw,
    StragglerModel,
    VirtualClock,
    worker_samples,
)
from agc_pipeline.coding.stragglers.delay import Delay, Slowdown
from agc_pipeline.coding.stragglers.regimes import Persistent, Stall
from agc_pipeline.coding.stragglers.window import (
    Adversarial,
    Bernoulli,
    FixedCount,
    NoStragglers,
    claim1_choice,
)

__all__ = [
    "Adversarial",
    "Bernoulli",
    "Delay",
    "FixedCount",
    "NoStragglers",
    "Persistent",
    "Slowdown",
    "Stall",
    "StragglerContext",
    "StragglerDraw",
    "StragglerModel",
    "VirtualClock",
    "claim1_choice",
    "worker_samples",
]
