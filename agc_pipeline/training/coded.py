"""The coded part of a coded runtime (paper Sections II, III and VII): the code of each
iteration (:class:`~agc_pipeline.training.coded_step.CodedStep`: B of iteration t, decoding
R), the straggler draws (common random numbers across schemes; :func:`draw_stragglers`),
α, and the coded gradient ĝ = Z (B R) on a minibatch.

Only the coded runtimes (``coded = True``) build one; DDP draws its ranks' delays with
:func:`draw_stragglers` directly.
"""

from __future__ import annotations

import numpy as np
import torch

from agc_pipeline.cluster.costmodel import PS_BROADCAST, ClusterModel
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.decoding import Decoder, Decoding
from agc_pipeline.coding.stragglers import (
    StragglerContext,
    StragglerDraw,
    StragglerModel,
    worker_samples,
)
from agc_pipeline.rules import check_alpha
from agc_pipeline.training.coded_gradient import CodedGradient
from agc_pipeline.training.coded_step import (
    ALPHA_ITERATION_OFFSET,
    AlphaEstimate,
    CodedStep,
    apply_weights,
    combine,
    from_blocks,
    survivor_messages,
)
from agc_pipeline.training.gradients import pack_gradients, partial_gradients
from agc_pipeline.training.settings import CodedSettings, WaitSettings
from agc_pipeline.training.workload import Workload

__all__ = ["CodedPart", "draw_stragglers"]


def draw_stragglers(straggler: StragglerModel, iteration: int, n: int, length: int,
                    context: StragglerContext, settings: WaitSettings) -> StragglerDraw:
    """The straggler model's draw of ``iteration``, replaced by "everyone, wait for the
    slowest" under ``trainer.wait_for_all`` (stragglers that never arrive take
    ``straggler_slowdown`` × the compute time plus their communication time)."""
    draw = straggler.draw(iteration, n, length, context)
    if not settings.wait_for_all:
        return draw
    late = (settings.straggler_slowdown * straggler.compute_time
            + straggler.comm_time(length))
    finish = np.where(np.isfinite(draw.finish_times), draw.finish_times, late)
    return StragglerDraw(np.ones(n, dtype=bool), finish, float(finish.max()))


class CodedPart:
    """Code, straggler draws, α and the coded gradient of a run (see the module docstring).
    Built and checked at start: the weighted path's model contract on a few samples and a
    dry-run straggler draw (s < n, trace columns, …)."""

    def __init__(self, workload: Workload, scheme: Scheme, decoder: Decoder,
                 straggler: StragglerModel, settings: CodedSettings, seed: int,
                 cluster: ClusterModel | None = None, materialize: bool = False) -> None:
        self.workload = workload
        self.model = workload.model
        self.scheme, self.decoder, self.straggler = scheme, decoder, straggler
        self.settings = settings
        #: ``trainer.materialize_messages``: form every worker's message (simulated, a check)
        self.materialize = materialize
        #: ``cluster=``: link and compute figures for the virtual clock (None: the straggler
        #: model's comm_per_unit clock)
        self.cluster = cluster
        a = scheme.assignment
        self.n, self.k, self.m = a.n, a.k, scheme.m
        self.assignment_matrix = a.matrix
        self.d = sum(p.numel() for p in self.model.parameters())
        self.wire_bytes = next(self.model.parameters()).element_size()
        self.code = CodedStep(scheme, decoder, self.d, seed)
        self.length = self.code.length
        self.device = workload.device
        #: trainer.coded_gradient=per_subset: Z as k rows of m zero-padded blocks, float64
        self._z: torch.Tensor | None = None
        #: the (m, L) buffer the weighted path writes ĝ into, reused every iteration
        self._estimate_buffer: torch.Tensor | None = None
        self.engine = (CodedGradient(self.model, self.m)
                       if settings.coded_gradient == "weighted" else None)
        if self.engine is not None:  # the model contract, on a few samples
            self.engine.check(workload.x_few, workload.y_few)
        #: samples each worker processes per iteration (load-proportional delay models)
        self.work = worker_samples(a.matrix, settings.batch_size or workload.subset_size)
        self.alpha: AlphaEstimate | None = None
        self.draw(self.code.encoding(0), 0)  # dry run: s < n, trace columns, …

    def context(self, b: np.ndarray) -> StragglerContext:
        """Adversarial models may evaluate Err_𝓕(B) of this iteration's B (built lazily);
        delay models see the samples each worker processes."""
        return self.code.straggler_context(b, self.assignment_matrix, self.work)

    def draw(self, b: np.ndarray, iteration: int) -> StragglerDraw:
        """The straggler draw (:func:`draw_stragglers`); with a ``cluster=`` model its times
        are the cluster's (:meth:`_cluster_times`)."""
        length = self.length if self.cluster is None else 0  # the cluster times messages
        draw = draw_stragglers(self.straggler, iteration, self.n, length, self.context(b),
                               self.settings)
        return draw if self.cluster is None else self._cluster_times(draw)

    def _cluster_times(self, draw: StragglerDraw) -> StragglerDraw:
        """The clock's communication time from the cluster model
        (:mod:`agc_pipeline.cluster.costmodel`): the PS posts the d parameters to every worker
        at once (the ``concurrent`` broadcast, as ``trainer=distributed``'s send_params does:
        the n copies share its link, every worker holds them at α + n·τ_b), worker j computes
        for the straggler model's time (seconds: the draw made with message length 0), and the
        messages of ⌈d/m⌉ values queue on the PS's link.
        The survivors stay the straggler model's; the PS waits for the last of their
        messages (no survivor: the end of the compute window plus one message)."""
        assert self.cluster is not None
        nbytes = self.wire_bytes
        starts = self.cluster.broadcast_starts(self.n, self.d * nbytes, PS_BROADCAST)
        arrival = self.cluster.ps_deliveries(starts + draw.finish_times, self.length * nbytes)
        survivors = draw.survivors
        if survivors.any():
            wait = float(arrival[survivors].max())
        else:
            wait = float(starts[-1]) + draw.iteration_time + self.cluster.transfer_time(
                self.length * nbytes)
        return StragglerDraw(survivors, np.where(survivors, arrival, np.inf), wait)

    def estimate_alpha(self) -> AlphaEstimate | None:
        """α of Section VII by Monte Carlo (``trainer.alpha_samples`` draws), or None."""
        samples = self.settings.alpha_samples
        if samples == 0:
            return None

        def survivors(b: np.ndarray, index: int) -> np.ndarray:
            return self.draw(b, ALPHA_ITERATION_OFFSET + index).survivors

        self.alpha = self.code.estimate_alpha(survivors, samples)
        check_alpha(self.decoder, self.alpha.value)
        return self.alpha

    def gradient(self, x: torch.Tensor, y: torch.Tensor, b: np.ndarray, weights: np.ndarray,
                 mask: np.ndarray, dec: Decoding | None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``(ĝ, g, loss)`` for the minibatch ``x, y`` (k, b, …): the estimate Z (B R) with
        ``weights`` = B R, the true gradient g (None unless ``trainer.grad_error``) and the
        summed loss. ``trainer.coded_gradient=weighted`` forms them in one pass
        (:class:`CodedGradient`); ``per_subset`` forms the k partial gradients in float64
        first (the reference, and the path of ``materialize_messages``)."""
        m, d, scale = self.m, self.d, 1.0 / self.workload.batch_samples
        want_exact = self.settings.grad_error
        materialize = self.materialize
        if self.engine is not None and not materialize:
            per = x.shape[1]
            subset = torch.arange(self.k, device=self.device).repeat_interleave(per)
            coef = np.asarray(weights).reshape(m, self.k, m) * scale
            res = self.engine(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]), subset,
                              coef, plain_weight=scale if want_exact else None,
                              out=self._estimate_buffer)
            self._estimate_buffer = res.blocks  # ĝ is used up by the commit before the next call
            return res.blocks.reshape(-1)[:d], res.plain, res.loss
        grads, loss = partial_gradients(self.model, x, y)
        if self._z is None:
            self._z = torch.zeros(self.k, m * self.length, dtype=torch.float64,
                                  device=self.device)
        pack_gradients(grads, scale, self._z)
        del grads
        blocks = self._z.view(self.k, m, self.length)  # blocks[i, u] = g_i[u], float64
        both = apply_weights(blocks, np.hstack([weights, self.code.target]))
        estimate, exact = from_blocks(both[:m], d), from_blocks(both[m:], d)
        if materialize and dec is not None:
            msgs = survivor_messages(blocks, b, self.assignment_matrix, mask)
            estimate = combine(msgs, dec.r[mask], d)
        return estimate, exact, float(loss)
