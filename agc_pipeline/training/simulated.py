"""Coded SGD on a simulated cluster: n workers and the parameter server in one process.

Each iteration t (PAPER.md §1, §6):

1. the k partial gradients g_i = ∇loss_sum(D_i)/N, each computed once (one forward and one
   backward pass, :mod:`~agc_pipeline.training.gradients`), packed as Z in float64;
2. the encoding matrix B of iteration t (:func:`~agc_pipeline.training.coded_step.encoder_rng`
   for randomised schemes such as construction (7));
3. the straggler model's draw for iteration t (seeded by (seed, t): common random numbers
   across schemes) — the survivor set 𝓕 and the PS's waiting time;
4. decoding R at the PS, the estimate ĝ = Z (B R) (float64; identical to combining the
   survivors' messages Z B(:, j), which ``materialize_messages`` does explicitly; divided by
   α when ``decoder.rescale``), un-padded into the parameters' shapes, and the SGD step.
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
import functools
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agc_pipeline.codes.base import Scheme
from agc_pipeline.data import Dataset, split_subsets
from agc_pipeline.decoding import Decoder, Decoding
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.models import CodedModel
from agc_pipeline.sinks import Sink
from agc_pipeline.stragglers import StragglerContext, StragglerDraw, StragglerModel, VirtualClock
from agc_pipeline.training.batches import batch_indices, take
from agc_pipeline.training.checkpoint import save_checkpoint
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
from agc_pipeline.validation import is_number, require_bool, require_finite, require_int

__all__ = ["SimulatedSettings", "SimulatedTrainer", "TrainingInterrupted"]


class TrainingInterrupted(RuntimeError):
    """The run was stopped (SIGINT/SIGTERM) at an iteration boundary; a checkpoint is saved."""


@dataclass
class SimulatedSettings:
    """``trainer=simulated`` options (``conf/trainer/simulated.yaml``), validated at start."""

    iterations: int = 300  #: SGD iterations
    lr: float = 0.1  #: learning rate η
    log_every: int = 1  #: one metrics row every this many iterations (and the last)
    eval_every: int = 50  #: test metrics every this many iterations (0: only at the end)
    checkpoint_every: int = 100  #: checkpoint every this many iterations (0: start/end/error)
    resume: bool = False  #: continue from ``checkpoint.pt`` in the run dir
    overwrite: bool = False  #: replace a run already in the run dir (else refuse)
    wait_for_all: bool = False  #: the PS uses every message (uncoded wait-for-all baseline)
    straggler_slowdown: float = 4.0  #: wait_for_all: a straggler's compute time multiplier
    decode_cost: float = 0.0  #: virtual time the PS spends decoding, per iteration
    alpha_samples: int = 1000  #: Monte Carlo draws for α (0: skip; rescale needs ≥ 2)
    materialize_messages: bool = False  #: build every worker's message (slower; a check)
    progress: bool = True  #: tqdm progress bar on stderr
    device: str = "cpu"  #: cpu | cuda | cuda:N | auto
    batch_size: int | None = None  #: samples per data subset per iteration (None: all)
    coded_gradient: str = "weighted"  #: weighted (one pass) | per_subset (k gradients)
    grad_error: bool = True  #: also compute the true gradient to log grad_error
    clip_grad_norm: float | None = None  #: rescale ĝ to at most this global 2-norm
    threads: int | None = None  #: torch intra-op threads; None: cores // n_jobs under joblib
    skip_finished: bool = True  #: multirun: skip jobs whose complete run is in their dir

    def __post_init__(self) -> None:
        for name in ("iterations", "log_every"):
            require_int(getattr(self, name), f"trainer.{name}", minimum=1)
        for name in ("eval_every", "checkpoint_every", "alpha_samples"):
            require_int(getattr(self, name), f"trainer.{name}", minimum=0)
        for name in ("threads", "batch_size"):
            if getattr(self, name) is not None:
                require_int(getattr(self, name), f"trainer.{name}", minimum=1)
        require_finite(self.lr, "trainer.lr", minimum=0.0, strict_minimum=True)
        require_finite(self.straggler_slowdown, "trainer.straggler_slowdown", minimum=1.0)
        require_finite(self.decode_cost, "trainer.decode_cost", minimum=0.0)
        clip = self.clip_grad_norm
        require(clip is None or (is_number(clip) and math.isfinite(clip) and clip > 0),
                f"trainer.clip_grad_norm must be a finite number > 0 or null (got {clip!r})")
        require(self.coded_gradient in ("weighted", "per_subset"),
                f"trainer.coded_gradient must be weighted or per_subset (got "
                f"{self.coded_gradient!r})")
        for name in ("resume", "overwrite", "wait_for_all", "materialize_messages", "progress",
                     "grad_error", "skip_finished"):
            require_bool(getattr(self, name), f"trainer.{name}")
        require(not (self.resume and self.overwrite),
                "trainer.resume=true and trainer.overwrite=true exclude each other: continue "
                "the run in the run dir, or replace it")
        self.torch_device = _device(self.device)


def _device(name: Any) -> torch.device:
    require(isinstance(name, str), f"trainer.device must be a string (got {name!r})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device must be cpu, cuda, cuda:N or auto (got {name!r})") \
            from None
    require(device.type in ("cpu", "cuda"),
            f"trainer.device must be cpu, cuda, cuda:N or auto (got {name!r})")
    require(device.type != "cuda" or torch.cuda.is_available(),
            f"trainer.device={name} but CUDA is not available; use trainer.device=cpu")
    return device


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
class _Pending:
    """What one iteration changes, committed together at its very end."""

    virtual_time: float
    totals: Totals
    gradient: torch.Tensor  #: the decoded gradient ĝ (flat, float64) to step with


class SimulatedTrainer:
    """The model, its data split into the assignment's k subsets, the code and the PS.

    Everything is validated in ``__init__`` (a dry-run straggler draw included), before any
    training. ``step()`` runs one iteration and returns its metrics row; ``fit()`` runs them
    all with logging, checkpoints and graceful interruption.
    """

    def __init__(self, model: CodedModel, dataset: Dataset, scheme: Scheme, decoder: Decoder,
                 straggler: StragglerModel, settings: SimulatedSettings, seed: int,
                 make_optimizer: OptimizerFactory | None = None,
                 make_scheduler: SchedulerFactory | None = None) -> None:
        self.settings = settings
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
        self.engine = (CodedGradient(self.model, self.m)
                       if settings.coded_gradient == "weighted" else None)
        if self.engine is not None:  # the model contract, on a few samples
            few = (slice(0, min(self.k, 4)), slice(0, min(self.subset_size, 2)))
            self.engine.check(self.x[few].reshape(-1, *self.x.shape[2:]),
                              self.y[few].reshape(-1, *self.y.shape[2:]))
        self.assignment_matrix = a.matrix
        if make_optimizer is None:  # optimizer=sgd's defaults
            make_optimizer = functools.partial(torch.optim.SGD, lr=settings.lr)
        self.optimizer = Optimizer(list(model.parameters()), make_optimizer, make_scheduler,
                                   settings.clip_grad_norm)
        self.clock = VirtualClock(decode_cost=settings.decode_cost)
        self.totals = Totals()
        self.iteration = 0
        self.alpha: AlphaEstimate | None = None
        self._stop_requested = False
        self._lap = time.perf_counter()
        require(not decoder.rescale or settings.alpha_samples >= 2,
                "decoder.rescale=true needs trainer.alpha_samples ≥ 2 (α is estimated by "
                "Monte Carlo at start-up)")
        self._draw(self.coded.encoding(0), 0)  # dry run: s < n, trace columns, …

    # ---------------------------------------------------------------------------- pieces

    def _context(self, b: np.ndarray) -> StragglerContext:
        """Adversarial models may evaluate Err_𝓕(B) of this iteration's B (built lazily)."""
        return self.coded.straggler_context(b, self.assignment_matrix)

    def _draw(self, b: np.ndarray, iteration: int) -> StragglerDraw:
        """The straggler draw, replaced by "everyone, wait for the slowest" under
        ``wait_for_all``."""
        draw = self.straggler.draw(iteration, self.n, self.length, self._context(b))
        if not self.settings.wait_for_all:
            return draw
        late = (self.settings.straggler_slowdown * self.straggler.compute_time
                + self.straggler.comm_time(self.length))
        finish = np.where(np.isfinite(draw.finish_times), draw.finish_times, late)
        return StragglerDraw(np.ones(self.n, dtype=bool), finish, float(finish.max()))

    def estimate_alpha(self) -> AlphaEstimate | None:
        """α of Section VII by Monte Carlo (``trainer.alpha_samples`` draws), or None."""
        samples = self.settings.alpha_samples
        if samples == 0:
            return None

        def survivors(b: np.ndarray, index: int) -> np.ndarray:
            return self._draw(b, ALPHA_ITERATION_OFFSET + index).survivors

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

    # ---------------------------------------------------------------------------- iteration

    def step(self, evaluate: bool = False) -> dict[str, Any]:
        """Run iteration ``self.iteration``; return its metrics row (at the parameters before
        the update: ``train_loss``, test metrics when ``evaluate``)."""
        t, m = self.iteration, self.m
        row: dict[str, Any] = {"iteration": t}
        if evaluate:
            row.update(self.evaluate())
        index = batch_indices(self.seed, t, range(self.k), self.subset_size,
                              self.settings.batch_size)
        x, y = take(self.x, index), take(self.y, index)
        b = self.coded.encoding(t)
        draw = self._draw(b, t)
        mask = draw.survivors
        if mask.any():
            dec = self.coded.decode(b, mask)
            weights = self.coded.weights(b, dec.r)  # B R, (mk × m)
            condition, approx = dec.condition_number, dec.error
        else:
            dec, weights = None, np.zeros((self.k * m, m))
            condition, approx = math.inf, self.coded.target_norm2
        estimate, exact, loss = self._coded_gradient(x, y, b, weights, mask, dec)
        row["train_loss"] = loss / self.batch_samples
        if self.decoder.rescale and dec is not None:
            assert self.alpha is not None, "call estimate_alpha() before training"
            estimate = estimate / self.alpha.value
        if exact is None:
            norm = float(estimate.square().sum())
            if not math.isfinite(norm):
                check_finite(estimate, t)
            error = None
        else:
            diff2 = float((estimate.to(exact.dtype) - exact).square().sum())
            if not math.isfinite(diff2):  # the only full NaN/Inf scan, when something is off
                check_finite(estimate, t)
            norm2 = float(exact.square().sum())
            error = diff2 / norm2 if norm2 > 0 else math.nan
        survivors = int(mask.sum())
        sent = survivors * self.length * self.wire_bytes
        pending = _Pending(self.clock.virtual_time, Totals(**asdict(self.totals)), estimate)
        pending.virtual_time = self.clock.after(draw)
        tot = pending.totals
        tot.iterations, tot.survivors = t + 1, tot.survivors + survivors
        tot.bytes_to_ps += sent
        tot.skipped += int(survivors == 0)
        tot.grad_error += error if error is not None and math.isfinite(error) else 0.0
        row.update(grad_error=error, survivors=survivors, bytes_to_ps=sent,
                   total_bytes_to_ps=tot.bytes_to_ps, virtual_time=pending.virtual_time,
                   iteration_time=float(draw.iteration_time), decode_condition=condition,
                   approx_error=float(approx), skipped=survivors == 0)
        self._commit(pending, update=survivors > 0)
        return row

    def _coded_gradient(self, x: torch.Tensor, y: torch.Tensor, b: np.ndarray,
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
                              coef, plain_weight=scale if want_exact else None)
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

    def _commit(self, pending: _Pending, update: bool) -> None:
        """Apply one iteration's changes together (nothing before this mutates state).

        A step that would overflow the parameters to NaN/Inf is not taken and raises
        :class:`TrainingDiverged`, so a checkpoint never holds them.
        """
        if update and not self.optimizer.step(pending.gradient):
            raise TrainingDiverged(
                f"iteration {self.iteration}: the SGD step would overflow the parameters to "
                "NaN/Inf (diverged: lower trainer.lr)")
        self.clock.virtual_time = pending.virtual_time
        self.totals = pending.totals
        self.iteration += 1

    # ---------------------------------------------------------------------------- state

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

    def request_stop(self) -> None:
        """Stop at the end of the current iteration (``fit`` raises TrainingInterrupted)."""
        self._stop_requested = True

    # ---------------------------------------------------------------------------- loop

    def fit(self, sink: Sink, checkpoint: Path, extra_state: dict[str, Any],
            logged_rows: int = 0) -> None:
        """Run the remaining iterations, logging rows to ``sink`` and checkpointing to
        ``checkpoint``: before the first iteration (a run killed at any point can be resumed),
        every ``checkpoint_every`` iterations, at the end and on any error or interruption.
        A checkpoint always holds the state after the last completed iteration and the number
        of metrics rows logged up to it (``logged_rows`` of them before this call)."""
        s = self.settings
        rows = logged_rows
        bar = tqdm(total=s.iterations, initial=self.iteration, disable=not s.progress,
                   desc="train", unit="it", dynamic_ncols=True)
        self._lap = time.perf_counter()
        try:
            self._save(checkpoint, extra_state, rows)
            with _graceful_stop(self):
                while self.iteration < s.iterations:
                    t = self.iteration
                    evaluate = s.eval_every > 0 and t % s.eval_every == 0
                    row = self.step(evaluate=evaluate)
                    if t % s.log_every == 0 or t == s.iterations - 1 or row["skipped"]:
                        sink.log(row, step=t)
                        rows += 1
                    if row.get("train_loss") is not None:  # the distributed PS: logged rows
                        bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
                    bar.update(1)
                    if s.checkpoint_every and self.iteration % s.checkpoint_every == 0:
                        self._save(checkpoint, extra_state, rows)
                    if self._stop_requested:
                        raise TrainingInterrupted(
                            f"stopped after iteration {t} (checkpoint {checkpoint}); continue "
                            "with trainer.resume=true and the same hydra.run.dir")
        finally:
            bar.close()
            self._save(checkpoint, extra_state, rows)

    def _save(self, path: Path, extra_state: dict[str, Any], rows: int) -> None:
        now = time.perf_counter()
        self.totals.seconds += now - self._lap
        self._lap = now
        save_checkpoint(path, {**self.state_dict(), "metrics_rows": rows, **extra_state})


@contextlib.contextmanager
def _graceful_stop(trainer: SimulatedTrainer) -> Iterator[None]:
    """SIGTERM, or a first SIGINT, asks the trainer to stop at the end of the iteration
    (a second SIGINT interrupts at once). Only in the main thread; handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and trainer._stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
