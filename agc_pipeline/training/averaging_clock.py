"""The straggler clock of the averaging runtimes (``trainer=local_sgd`` and
``trainer=local_sgd_simulated``): n uncoded workers, each on its own data subset, whose local
step takes the wait-for-all draw that DDP's ranks sleep, less the communication of the d
values the averaging pays apart (:mod:`agc_pipeline.cluster.mitigations`)."""

from __future__ import annotations

import numpy as np

from agc_pipeline.build import RunSpec
from agc_pipeline.coding.stragglers import worker_samples
from agc_pipeline.training.coded import draw_stragglers
from agc_pipeline.training.coded_step import CodedStep, block_length
from agc_pipeline.training.settings import TrainerSettings

__all__ = ["AveragingClock"]


class AveragingClock:
    """The draws of ``spec``'s straggler model for n workers processing ``settings.batch_size``
    (else ``subset_size``) samples each; ``comm`` is the model's time for d values."""

    def __init__(self, spec: RunSpec, settings: TrainerSettings, subset_size: int,
                 d: int) -> None:
        a = spec.scheme.assignment
        code = CodedStep(spec.scheme, spec.decoder, d, spec.seed)
        work = worker_samples(a.matrix, settings.batch_size or subset_size)
        self.straggler, self.settings, self.n = spec.straggler, settings, a.n
        self.context = code.straggler_context(code.encoding(0), a.matrix, work)
        self.length = block_length(d, 1)
        self.comm = float(spec.straggler.comm_time(self.length))

    def compute_times(self, t: int) -> np.ndarray:
        """Every worker's local-step time of iteration t (time units): the wait-for-all draw,
        less the communication of d values."""
        draw = draw_stragglers(self.straggler, t, self.n, self.length, self.context,
                               self.settings)
        return np.maximum(np.asarray(draw.finish_times, dtype=np.float64) - self.comm, 0.0)
