"""The :class:`Dataset` container, the data subsets D_1..D_k (Section II) and shared checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from agc_pipeline.errors import require
from agc_pipeline.validation import require_choice, require_int

__all__ = ["KINDS", "PARTITIONS", "Dataset", "check_partition", "labels_per_subset",
           "split_subsets"]

#: what one sample is: a flat feature vector, an image (C, H, W) or a token sequence (T,)
KINDS = ("features", "image", "tokens")
#: how the training samples are placed in the k data subsets (:func:`split_subsets`)
PARTITIONS = ("iid", "label_skew")


@dataclass
class Dataset:
    """A train/test pair of tensors in their natural shape; dim 0 indexes samples.

    ``kind="features"``: ``x`` float32 (N, D). ``kind="image"``: ``x`` float32 (N, C, H, W)
    in [0, 1]. ``kind="tokens"``: ``x`` int64 (N, T) token ids in ``[0, vocab_size)``, ``y``
    int64 (N, T) (the next token at every position). Otherwise ``y`` is int64 (N,) class
    labels (classification) or float32 (N,) targets (regression, ``num_classes is None``).
    ``vocab``: the characters of the token ids (character-level text), else None.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None
    name: str
    kind: str = "features"
    vocab: str | None = None
    #: ``dataset.partition``: how the trainer places the samples in the k data subsets
    #: (:func:`split_subsets`)
    partition: str = "iid"

    def __post_init__(self) -> None:
        require(self.kind in KINDS, f"dataset {self.name}: kind must be one of "
                                    f"{', '.join(KINDS)} (got {self.kind!r})")
        require(self.x_train.shape[1:] == self.x_test.shape[1:],
                f"dataset {self.name}: training samples have shape "
                f"{tuple(self.x_train.shape[1:])} but test samples "
                f"{tuple(self.x_test.shape[1:])}")
        if self.num_classes is not None:  # class labels (or next tokens) in [0, classes)
            for split, y in (("training", self.y_train), ("test", self.y_test)):
                _check_labels(y, self.num_classes, f"dataset {self.name}: {split} labels")
        self.partition = check_partition(self.partition, self.kind, self.num_classes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (D,), (C, H, W) or (T,)."""
        return tuple(int(v) for v in self.x_train.shape[1:])

    @property
    def input_dim(self) -> int:
        """Number of input values per sample, prod(sample_shape) (D for features)."""
        return math.prod(self.sample_shape)

    @property
    def in_channels(self) -> int | None:
        """Image channels C (None unless ``kind="image"``)."""
        return self.sample_shape[0] if self.kind == "image" else None

    @property
    def image_size(self) -> int | None:
        """Side H = W of square images (None otherwise)."""
        if self.kind != "image" or self.sample_shape[1] != self.sample_shape[2]:
            return None
        return self.sample_shape[1]

    @property
    def context(self) -> int | None:
        """Sequence length T of token data (None otherwise)."""
        return self.sample_shape[0] if self.kind == "tokens" else None

    @property
    def vocab_size(self) -> int | None:
        """Number of distinct tokens (None unless ``kind="tokens"``)."""
        return self.num_classes if self.kind == "tokens" else None

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "regression" if self.num_classes is None else "classification"


def check_size(value: int | None, name: str, minimum: int) -> int | None:
    """``dataset.<name>``: null or an integer ≥ ``minimum``."""
    return None if value is None else require_int(value, f"dataset.{name}", minimum)


def _check_labels(y: torch.Tensor, classes: int, what: str) -> None:
    """Class labels are integers in [0, ``classes``): a label out of range would train a
    model on a class it does not have (issue 20: negative IDX labels "converged")."""
    require(not torch.is_floating_point(y) and not torch.is_complex(y),
            f"{what} must be integers (got dtype {y.dtype})")
    if y.numel():
        low, high = int(y.min()), int(y.max())
        require(low >= 0 and high < classes,
                f"{what} must be in [0, {classes}) (found {low if low < 0 else high})")


def check_partition(partition: object, kind: str = "features",
                    num_classes: int | None = 2) -> str:
    """``dataset.partition`` as one of :data:`PARTITIONS`; ``label_skew`` needs class labels
    (a classification data set of features or images, not tokens or regression targets)."""
    partition = require_choice(partition, "dataset.partition", PARTITIONS)
    require(partition == "iid" or (num_classes is not None and kind != "tokens"),
            "dataset.partition=label_skew needs one class label per sample (a classification "
            "data set); this one has " + ("token sequences" if kind == "tokens"
                                          else "regression targets") + ": use iid")
    return partition


def split_subsets(num_samples: int, k: int, seed: int, partition: str = "iid",
                  labels: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Indices of k disjoint, equal-size data subsets D_1..D_k (Section II), shape (k, N // k).

    ``partition="iid"``: a seeded random permutation of ``range(num_samples)`` cut into k
    rows; the ``num_samples mod k`` left-over samples (the permutation's last) are dropped
    (equal sizes make the partial gradients comparable, as the paper assumes).

    ``partition="label_skew"``: the same permutation with the same samples dropped, then
    sorted by label (stable, so ties stay in the seeded order) before the cut: subset i holds
    the ranks ``[i·N/k, (i+1)·N/k)`` of the label order, i.e. few classes — about
    ``max(1, C/k)`` (+1 where a class boundary falls inside a subset) for C balanced classes
    (:func:`labels_per_subset` counts them). ``labels``: the training labels, shape (N,).
    """
    k = require_int(k, "k (number of data subsets)", 1)
    partition = require_choice(partition, "dataset.partition", PARTITIONS)
    require(num_samples >= k,
            f"k = {k} data subsets need at least {k} training samples (got {num_samples})")
    perm = np.random.default_rng(seed).permutation(num_samples)
    size = num_samples // k
    kept = perm[: k * size]
    if partition == "label_skew":
        y = _labels(labels, num_samples)
        kept = kept[np.argsort(y[kept], kind="stable")]
    return torch.from_numpy(kept.reshape(k, size).astype(np.int64))


def _labels(labels: torch.Tensor | np.ndarray | None, num_samples: int) -> np.ndarray:
    require(labels is not None, "dataset.partition=label_skew needs the training labels")
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    require(y.shape == (num_samples,),
            f"dataset.partition=label_skew needs one label per training sample, shape "
            f"({num_samples},) (got {y.shape})")
    return y


def labels_per_subset(subsets: torch.Tensor, labels: torch.Tensor | np.ndarray) -> list[int]:
    """The number of distinct labels in each data subset (the skew of a partition)."""
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return [int(np.unique(y[row]).size) for row in subsets.numpy()]
