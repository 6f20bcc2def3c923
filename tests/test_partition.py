"""``dataset.partition``: the i.i.d. split is today's bit for bit, the label-skewed split holds
few classes per subset, and bad values are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agc_pipeline.build import build_dataset
from agc_pipeline.data import (
    Dataset,
    labels_per_subset,
    split_subsets,
    synthetic_linear,
    synthetic_logistic,
    text,
)
from agc_pipeline.errors import ConfigError
from tests.conftest import compose_config


def _previous_split(num_samples: int, k: int, seed: int) -> torch.Tensor:
    """The split before dataset.partition existed (commit 20c6d52), for the bit-for-bit check."""
    perm = np.random.default_rng(seed).permutation(num_samples)
    size = num_samples // k
    return torch.from_numpy(perm[: k * size].reshape(k, size).astype(np.int64))


@pytest.mark.parametrize(("n", "k", "seed"), [(103, 10, 5), (60, 4, 0), (12, 12, 3)])
def test_iid_is_unchanged(n: int, k: int, seed: int) -> None:
    expected = _previous_split(n, k, seed)
    assert torch.equal(split_subsets(n, k, seed), expected)
    assert torch.equal(split_subsets(n, k, seed, partition="iid",
                                     labels=np.zeros(n, dtype=np.int64)), expected)


def test_label_skew_holds_few_classes_per_subset() -> None:
    labels = np.repeat(np.arange(10), 100)  # 10 balanced classes of 100
    np.random.default_rng(0).shuffle(labels)
    for k in (5, 10, 20, 40):
        subsets = split_subsets(1000, k, seed=1, partition="label_skew", labels=labels)
        iid = split_subsets(1000, k, seed=1)
        assert subsets.shape == iid.shape == (k, 1000 // k)
        # the same samples as iid (the same ones dropped), each once
        assert torch.equal(torch.sort(subsets.flatten()).values,
                           torch.sort(iid.flatten()).values)
        counts = labels_per_subset(subsets, labels)
        # C/k classes per subset (+1 where a class boundary falls inside it), at least 1
        assert max(counts) <= max(1, 10 // k) + 1, (k, counts)
        assert min(labels_per_subset(iid, labels)) > max(counts) or k == 40
        # labels are non-decreasing along the cut
        flat = labels[subsets.flatten().numpy()]
        assert np.all(np.diff(flat) >= 0)
    # k = 10, balanced: exactly one class each
    one = split_subsets(1000, 10, seed=1, partition="label_skew", labels=labels)
    assert labels_per_subset(one, labels) == [1] * 10


def test_label_skew_ties_follow_the_seeded_order() -> None:
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    a = split_subsets(8, 2, seed=3, partition="label_skew", labels=labels)
    assert torch.equal(a, split_subsets(8, 2, seed=3, partition="label_skew", labels=labels))
    assert set(labels[a[0]].tolist()) == {0} and set(labels[a[1]].tolist()) == {1}
    b = split_subsets(8, 2, seed=4, partition="label_skew", labels=labels)
    assert not torch.equal(a, b)  # the seed orders the samples within a class
    assert torch.equal(torch.sort(a[0]).values, torch.sort(b[0]).values)


def test_datasets_carry_their_partition() -> None:
    data = synthetic_logistic(n_samples=200, num_classes=4, partition="label_skew")
    assert data.partition == "label_skew"
    assert synthetic_logistic(n_samples=200).partition == "iid"
    cfg = compose_config("train", ["dataset=synthetic_logistic",
                                   "dataset.partition=label_skew"])
    assert build_dataset(cfg).partition == "label_skew"
    assert build_dataset(compose_config("train", ["dataset=mnist"])).partition == "iid"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: split_subsets(10, 2, 0, partition="skewed"),
     r"dataset.partition must be one of iid \| label_skew \(got 'skewed'\)"),
    (lambda: split_subsets(10, 2, 0, partition="label_skew"), "needs the training labels"),
    (lambda: split_subsets(10, 2, 0, partition="label_skew", labels=np.zeros(9)),
     r"one label per training sample, shape \(10,\)"),
    (lambda: synthetic_logistic(n_samples=50, partition=True), "dataset.partition must be one"),
    (lambda: synthetic_linear(n_samples=50, partition="label_skew"),
     "label_skew needs one class label per sample .* regression targets: use iid"),
    (lambda: text(train_size=10, test_size=2, partition="label_skew"),
     "label_skew needs one class label .* token sequences"),
])
def test_bad_partitions_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_partition_from_the_config() -> None:
    cfg = compose_config("train", ["dataset=synthetic_logistic", "dataset.partition=random"])
    with pytest.raises(ConfigError, match="dataset.partition must be one of"):
        build_dataset(cfg)
    assert isinstance(build_dataset(compose_config("train", ["dataset=synthetic_logistic"])),
                      Dataset)
