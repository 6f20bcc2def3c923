"""What every runtime shares: the model, the data split, the code, the optimizer and the
state of a coded-SGD run (paper Sections II and VII).

:class:`CodedTraining` is built and validated once, before any training (a dry-run
straggler draw included); a runtime (:mod:`~agc_pipeline.training.simulated`,
:mod:`~agc_pipeline.training.ps`, …) composes it and adds only its iteration. Its pieces:

* the data split: the assignment's k subsets D_i of the training set, and minibatches of
  ``trainer.batch_size`` samples per subset (:mod:`~agc_pipeline.training.batches`);
* the coded step (:class:`~agc_pipeline.training.coded_step.CodedStep`: B of iteration t,
  decoding R) and the coded gradient ĝ = Z (B R) (:meth:`CodedTraining.coded_gradient`:
  one weighted backward pass, or the k partial gradients as a reference);
* the straggler draw of iteration t (common random numbers across schemes), α (Section VII),
  test metrics and the training loss;
* the optimizer (:class:`~agc_pipeline.training.optim.Optimizer`), the virtual clock, the
  running totals and the iteration counter, committed together at the end of an iteration
  (:meth:`CodedTraining.commit`), and their checkpointable state.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agc_pipeline.cluster.costmodel import ClusterModel
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.decoding import Decoder, Decoding
from agc_pipeline.coding.stragglers import (
    StragglerContext,
    StragglerDraw,
    StragglerModel,
    VirtualClock,
    worker_samples,
)
from agc_pipeline.data import Dataset, split_subsets
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.models import CodedModel
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.coded_gradient import CodedGradient
from agc_pipeline.training.coded_step import (
    ALPHA_ITERATION_OFFSET,
    AlphaEstimate,
    CodedStep,
    TrainingDiverged,
    apply_weights,
    check_finite,
    combine,
    from_blocks,
    survivor_messages,
)
from agc_pipeline.training.gradients import pack_gradients, partial_gradients
from agc_pipeline.training.optim import Optimizer, OptimizerFactory, SchedulerFactory
from agc_pipeline.training.settings import TrainerSettings

__all__ = ["CodedTraining", "Pending", "Totals"]


@dataclass
class Totals:
    """Running totals over the completed iterations (checkpointed)."""

    iterations: int = 0
    survivors: int = 0
    bytes_to_ps: int = 0
    skipped: int = 0
    grad_error: float = 0.0  #: sum over iterations
    seconds: float = 0.0  #: wall-clock seconds spent training (all sessions)


@dataclass
class Pending:
    """What one iteration changes, committed together at its very end."""

    virtual_time: float
    totals: Totals
    gradient: torch.Tensor  #: the decoded gradient ĝ (flat, float64) to step with


class CodedTraining:
    """The model, its data split into the assignment's k subsets, the code, the optimizer and
    the run's state (see the module docstring). Everything is validated in ``__init__``."""

    def __init__(self, model: CodedModel, dataset: Dataset, scheme: Scheme, decoder: Decoder,
                 straggler: StragglerModel, settings: TrainerSettings, seed: int,
                 make_optimizer: OptimizerFactory | None = None,
                 make_scheduler: SchedulerFactory | None = None,
                 cluster: ClusterModel | None = None) -> None:
        self.settings = settings
        #: ``cluster=``: link and compute figures for the virtual clock (None: the straggler
        #: model's comm_per_unit clock)
        self.cluster = cluster
        self.device = settings.torch_device
        self.model = model.to(self.device)
        self.dataset = dataset
        self.scheme = scheme
        self.decoder = decoder
        self.straggler = straggler
        self.seed = int(seed)
        a = scheme.assignment
        self.n, self.k, self.m = a.n, a.k, scheme.m
        n_train = int(dataset.y_train.shape[0])
        require(self.k <= n_train,
                f"assignment has k = {self.k} data subsets but the data set has only "
                f"{n_train} training samples (each subset needs at least one); use a smaller "
                "design or a larger dataset.train_size")
        require(model.task == dataset.task,
                f"model {type(model).__name__} is a {model.task} model but dataset "
                f"{dataset.name} is a {dataset.task} data set")
        subsets = split_subsets(n_train, self.k, self.seed)
        self.x = dataset.x_train[subsets].to(self.device)  # (k, |D_i|, …)
        self.y = dataset.y_train[subsets].to(self.device)  # (k, |D_i|, …)
        self.num_samples = int(subsets.numel())
        self.subset_size = int(subsets.shape[1])
        batch = settings.batch_size
        require(batch is None or batch <= self.subset_size,
                f"trainer.batch_size={batch} exceeds the {self.subset_size} samples of each "
                f"data subset (N = {n_train} split into k = {self.k}); use at most "
                f"{self.subset_size} or null (the whole subset)")
        #: samples per iteration: k·b (minibatches) or all N
        self.batch_samples = self.k * (batch or self.subset_size)
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)
        self.d = sum(p.numel() for p in model.parameters())
        self.wire_bytes = next(model.parameters()).element_size()
        self.coded = CodedStep(scheme, decoder, self.d, self.seed)
        self.length = self.coded.length
        #: trainer.coded_gradient=per_subset: Z as k rows of m zero-padded blocks, float64
        self._z: torch.Tensor | None = None
        #: the (m, L) buffer the weighted path writes ĝ into, reused every iteration
        self._estimate_buffer: torch.Tensor | None = None
        self.engine = (CodedGradient(self.model, self.m)
                       if settings.coded_gradient == "weighted" else None)
        few = (slice(0, min(self.k, 4)), slice(0, min(self.subset_size, 2)))
        x_few = self.x[few].reshape(-1, *self.x.shape[2:])
        y_few = self.y[few].reshape(-1, *self.y.shape[2:])
        try:  # a model that cannot take these samples fails here, in one line
            loss = model.loss_sum(model(x_few), y_few)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"model {type(model).__name__} cannot train on dataset {dataset.name} "
                f"(samples of shape {tuple(self.x.shape[2:])}): {first}") from None
        require(loss.dim() == 0, f"model {type(model).__name__}: loss_sum must return a scalar "
                                 f"(got shape {tuple(loss.shape)})")
        if self.engine is not None:  # the model contract, on a few samples
            self.engine.check(x_few, y_few)
        self.assignment_matrix = a.matrix
        #: samples each worker processes per iteration (load-proportional delay models)
        self.work = worker_samples(a.matrix, batch or self.subset_size)
        if make_optimizer is None:  # optimizer=sgd's defaults
            make_optimizer = functools.partial(torch.optim.SGD, lr=settings.lr)
        self.optimizer = Optimizer(list(model.parameters()), make_optimizer, make_scheduler,
                                   settings.clip_grad_norm)
        self.clock = VirtualClock(decode_cost=settings.decode_cost)
        self.totals = Totals()
        self.iteration = 0
        self.alpha: AlphaEstimate | None = None
        require(not decoder.rescale or settings.alpha_samples >= 2,
                "decoder.rescale=true needs trainer.alpha_samples ≥ 2 (α is estimated by "
                "Monte Carlo at start-up)")
        self.draw(self.coded.encoding(0), 0)  # dry run: s < n, trace columns, …

    # ---------------------------------------------------------------------------- pieces

    def context(self, b: np.ndarray) -> StragglerContext:
        """Adversarial models may evaluate Err_𝓕(B) of this iteration's B (built lazily);
        delay models see the samples each worker processes."""
        return self.coded.straggler_context(b, self.assignment_matrix, self.work)

    def draw(self, b: np.ndarray, iteration: int) -> StragglerDraw:
        """The straggler draw, replaced by "everyone, wait for the slowest" under
        ``wait_for_all``; with a ``cluster=`` model its times are the cluster's
        (:meth:`_cluster_times`)."""
        length = self.length if self.cluster is None else 0  # the cluster times messages
        draw = self.straggler.draw(iteration, self.n, length, self.context(b))
        if self.settings.wait_for_all:
            late = (self.settings.straggler_slowdown * self.straggler.compute_time
                    + self.straggler.comm_time(length))
            finish = np.where(np.isfinite(draw.finish_times), draw.finish_times, late)
            draw = StragglerDraw(np.ones(self.n, dtype=bool), finish, float(finish.max()))
        return draw if self.cluster is None else self._cluster_times(draw)

    def _cluster_times(self, draw: StragglerDraw) -> StragglerDraw:
        """The clock's communication time from the cluster model
        (:mod:`agc_pipeline.cluster.costmodel`): the PS sends the d parameters to each worker in
        turn (unicast), worker j computes for the straggler model's time (seconds: the draw made
        with message length 0), and the messages of ⌈d/m⌉ values queue on the PS's link.
        The survivors stay the straggler model's; the PS waits for the last of their
        messages (no survivor: the end of the compute window plus one message)."""
        assert self.cluster is not None
        nbytes = self.wire_bytes
        starts = self.cluster.broadcast_starts(self.n, self.d * nbytes)
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

        self.alpha = self.coded.estimate_alpha(survivors, samples)
        require(not self.decoder.rescale or abs(self.alpha.value) > 1e-8,
                f"decoder.rescale=true but α ≈ {self.alpha.value:.3g}: the decoded gradient "
                "is zero on average and cannot be rescaled")
        return self.alpha

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """Test metrics at the current parameters: ``test_loss`` (mean) and ``test_accuracy``
        (classification) or ``test_mse`` (regression); None without test data."""
        key = "test_accuracy" if self.model.task == "classification" else "test_mse"
        if self.y_test.shape[0] == 0:
            return {key: None, "test_loss": None}
        out = self.model(self.x_test)
        return {key: self.model.metric(out, self.y_test),
                "test_loss": float(self.model.loss_sum(out, self.y_test)) / len(self.y_test)}

    @torch.no_grad()
    def train_loss(self) -> float:
        """Mean training loss over the N = k·⌊N/k⌋ samples used, at the current parameters."""
        x = self.x.reshape(-1, *self.x.shape[2:])
        y = self.y.reshape(-1, *self.y.shape[2:])
        return float(self.model.loss_sum(self.model(x), y)) / self.num_samples

    def minibatch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Iteration ``iteration``'s samples: (k, b, …) inputs and targets (b = the batch
        size, or the whole subset)."""
        index = batch_indices(self.seed, iteration, range(self.k), self.subset_size,
                              self.settings.batch_size)
        return take(self.x, index), take(self.y, index)

    def coded_gradient(self, x: torch.Tensor, y: torch.Tensor, b: np.ndarray,
                        weights: np.ndarray, mask: np.ndarray, dec: Decoding | None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``(ĝ, g, loss)`` for the minibatch ``x, y`` (k, b, …): the estimate Z (B R) with
        ``weights`` = B R, the true gradient g (None unless ``trainer.grad_error``) and the
        summed loss. ``trainer.coded_gradient=weighted`` forms them in one pass
        (:class:`CodedGradient`); ``per_subset`` forms the k partial gradients in float64
        first (the reference, and the path of ``materialize_messages``)."""
        m, d, scale = self.m, self.d, 1.0 / self.batch_samples
        want_exact = self.settings.grad_error
        if self.engine is not None and not self.settings.materialize_messages:
            per = x.shape[1]
            subset = torch.arange(self.k, device=self.device).repeat_interleave(per)
            coef = np.asarray(weights).reshape(m, self.k, m) * scale
            res = self.engine(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]), subset,
                              coef, plain_weight=scale if want_exact else None,
                              out=self._estimate_buffer)
            self._estimate_buffer = res.blocks  # ĝ is used up by commit() before the next call
            return res.blocks.reshape(-1)[:d], res.plain, res.loss
        grads, loss = partial_gradients(self.model, x, y)
        if self._z is None:
            self._z = torch.zeros(self.k, m * self.length, dtype=torch.float64,
                                  device=self.device)
        pack_gradients(grads, scale, self._z)
        del grads
        blocks = self._z.view(self.k, m, self.length)  # blocks[i, u] = g_i[u], float64
        both = apply_weights(blocks, np.hstack([weights, self.coded.target]))
        estimate, exact = from_blocks(both[:m], d), from_blocks(both[m:], d)
        if self.settings.materialize_messages and dec is not None:
            msgs = survivor_messages(blocks, b, self.assignment_matrix, mask)
            estimate = combine(msgs, dec.r[mask], d)
        return estimate, exact, float(loss)

    def commit(self, pending: Pending, update: bool) -> None:
        """Apply one iteration's changes together (nothing before this mutates state).

        A step that would overflow the parameters to NaN/Inf is not taken and raises
        :class:`TrainingDiverged`, so a checkpoint never holds them.
        """
        if update and not self.optimizer.step(pending.gradient):
            check_finite(pending.gradient, self.iteration)  # names NaN/Inf gradient entries
            raise TrainingDiverged(
                f"iteration {self.iteration}: the SGD step would overflow the parameters to "
                "NaN/Inf (diverged: lower trainer.lr)")
        self.clock.virtual_time = pending.virtual_time
        self.totals = pending.totals
        self.iteration += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (model, optimizer, clock, totals)."""
        return {"iteration": self.iteration,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "virtual_time": self.clock.virtual_time,
                "totals": asdict(self.totals),
                "alpha": None if self.alpha is None else self.alpha.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock.virtual_time = float(state["virtual_time"])
        self.totals = Totals(**state["totals"])
        self.iteration = int(state["iteration"])
        self.alpha = None if state["alpha"] is None else AlphaEstimate(**state["alpha"])
