"""The workload of a run (paper Section II): the training set split into the assignment's k
data subsets D_i, the minibatches of each iteration, the train loss and the test metrics.

Every runtime holds one; a process that needs only some subsets (a DDP rank > 0) keeps only
those (``held``) and no test set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from agc_pipeline.data import Dataset, split_subsets
from agc_pipeline.models import CodedModel
from agc_pipeline.rules import check_trainable
from agc_pipeline.training.batches import batch_indices, take

__all__ = ["EVAL_CHUNK", "Workload"]

#: samples per forward pass of the test metrics and the final training loss: a set larger
#: than this is run through the model in chunks of it and the outputs concatenated (the
#: metric and the loss are then taken over the whole set, as before). A whole set at once
#: costs more than it saves: a CNN's activations of 8,000 images are ~100 MB per layer,
#: and one 8,000-image forward took 2.7–4.5 s against 0.7 s in chunks of 512 (2026-12-07,
#: the 2-core machine, one thread). Sets of at most this many samples: one forward, as before.
EVAL_CHUNK = 512
#: second entry of the RNG seed of the final training loss's sample (trainer.train_loss_samples)
TRAIN_LOSS_TAG = 0x7105


class Workload:
    """The model's data: subsets (k, |D_i|, …) on ``device``, minibatches, metrics."""

    def __init__(self, model: CodedModel, dataset: Dataset, k: int, seed: int,
                 batch_size: int | None, device: torch.device,
                 held: Sequence[int] | None = None) -> None:
        self.model = model
        self.dataset = dataset
        self.k, self.seed, self.batch_size = k, int(seed), batch_size
        self.device = device
        subsets = split_subsets(int(dataset.y_train.shape[0]), k, self.seed,
                                partition=dataset.partition, labels=dataset.y_train)
        #: the subsets this process holds (all k unless ``held``); row i of x is subset held[i]
        self.held = list(range(k)) if held is None else [int(i) for i in held]
        rows = subsets if held is None else subsets[torch.as_tensor(self.held)]
        self.x = dataset.x_train[rows].to(device)  # (h, |D_i|, …)
        self.y = dataset.y_train[rows].to(device)
        self.num_samples = int(subsets.numel())  #: N = k·⌊N/k⌋ samples used
        self.subset_size = int(subsets.shape[1])
        #: samples per iteration: k·b (minibatches) or all N
        self.batch_samples = k * (batch_size or self.subset_size)
        test = held is None  # a process holding only some subsets does not evaluate
        self.x_test = (dataset.x_test if test else dataset.x_test[:0]).to(device)
        self.y_test = (dataset.y_test if test else dataset.y_test[:0]).to(device)
        self.x_few, self.y_few = self.few()
        check_trainable(model, dataset, self.x_few, self.y_few)

    def few(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two samples of each of the first four subsets: what start-up checks run on."""
        few = (slice(0, min(len(self.held), 4)), slice(0, min(self.subset_size, 2)))
        return (self.x[few].reshape(-1, *self.x.shape[2:]),
                self.y[few].reshape(-1, *self.y.shape[2:]))

    def minibatch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Iteration ``iteration``'s samples of the held subsets: (h, b, …) inputs and
        targets (b = the batch size, or the whole subset)."""
        index = batch_indices(self.seed, iteration, self.held, self.subset_size,
                              self.batch_size)
        return take(self.x, index), take(self.y, index)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """Test metrics at the current parameters: ``test_loss`` (mean) and ``test_accuracy``
        (classification) or ``test_mse`` (regression); None without test data."""
        key = "test_accuracy" if self.model.task == "classification" else "test_mse"
        if self.y_test.shape[0] == 0:
            return {key: None, "test_loss": None}
        out = self._outputs(self.x_test)
        return {key: self.model.metric(out, self.y_test),
                "test_loss": float(self.model.loss_sum(out, self.y_test)) / len(self.y_test)}

    @torch.no_grad()
    def train_loss(self, samples: int | None = None) -> float:
        """Mean training loss at the current parameters over the N = k·⌊N/k⌋ samples used,
        or over :meth:`train_loss_sample`'s ``samples`` of them."""
        x = self.x.reshape(-1, *self.x.shape[2:])
        y = self.y.reshape(-1, *self.y.shape[2:])
        pick = self.train_loss_sample(samples)
        if pick is not None:
            x, y = x[pick.to(x.device)], y[pick.to(y.device)]
        return float(self.model.loss_sum(self._outputs(x), y)) / int(y.shape[0])

    def train_loss_count(self, samples: int | None) -> int | None:
        """How many samples :meth:`train_loss` averages when ``samples`` is fewer than all
        the held rows (None: all of them)."""
        rows = len(self.held) * self.subset_size
        return None if samples is None or samples >= rows else int(samples)

    def train_loss_sample(self, samples: int | None) -> torch.Tensor | None:
        """The rows (of the held samples, subset by subset) whose loss :meth:`train_loss`
        averages: ``samples`` of them drawn without replacement from the seed, in order (the
        same for every run with this seed, whatever the parameters); None (all rows) when
        ``samples`` is None or not below their number."""
        count = self.train_loss_count(samples)
        if count is None:
            return None
        rng = np.random.default_rng([self.seed, TRAIN_LOSS_TAG])
        rows = len(self.held) * self.subset_size
        return torch.as_tensor(np.sort(rng.choice(rows, size=count, replace=False)))

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs on ``x``, in chunks of :data:`EVAL_CHUNK` samples."""
        if x.shape[0] <= EVAL_CHUNK:
            return self.model(x)
        return torch.cat([self.model(part) for part in torch.split(x, EVAL_CHUNK)])
