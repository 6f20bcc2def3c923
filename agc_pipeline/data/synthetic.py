"""Small generated problems for fast tests and convergence checks; features (N, D)."""

from __future__ import annotations

import numpy as np
import torch

from agc_pipeline.data.base import Dataset
from agc_pipeline.errors import require
from agc_pipeline.validation import require_finite, require_int

__all__ = ["synthetic_linear", "synthetic_logistic"]


def _check_synthetic(n_samples: int, dim: int, test_fraction: float) -> tuple[int, int]:
    n_samples = require_int(n_samples, "dataset.n_samples", 2)
    require_int(dim, "dataset.dim", 1)
    test_fraction = require_finite(test_fraction, "dataset.test_fraction", 0.0)
    require(test_fraction < 1.0,
            f"dataset.test_fraction must lie in [0, 1) (got {test_fraction})")
    n_test = int(round(n_samples * test_fraction))
    require(n_samples - n_test >= 1, "dataset.test_fraction leaves no training samples")
    return n_samples - n_test, n_test


def synthetic_linear(n_samples: int = 1024, dim: int = 20, noise: float = 0.1, seed: int = 0,
                     test_fraction: float = 0.2, partition: str = "iid") -> Dataset:
    """Linear regression data ``y = X w* + noise·ε``, X and ε standard normal, w* ~ N(0, I/dim).

    The first ``(1 − test_fraction)·n_samples`` rows form the training set.
    """
    n_train, _ = _check_synthetic(n_samples, dim, test_fraction)
    require_finite(noise, "dataset.noise", 0.0)
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(dim) / np.sqrt(dim)
    x = rng.standard_normal((n_samples, dim))
    y = x @ w_star + noise * rng.standard_normal(n_samples)
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:],
                   num_classes=None, name="synthetic_linear", partition=partition)


def synthetic_logistic(n_samples: int = 1024, dim: int = 20, num_classes: int = 2,
                       seed: int = 0, test_fraction: float = 0.2,
                       partition: str = "iid") -> Dataset:
    """Multinomial-logistic data: X standard normal, W* ~ N(0, I) (dim×C), labels drawn from
    ``softmax(X W*)`` (so the Bayes classifier is linear but not perfect)."""
    n_train, _ = _check_synthetic(n_samples, dim, test_fraction)
    require_int(num_classes, "dataset.num_classes", 2)
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal((dim, num_classes))
    x = rng.standard_normal((n_samples, dim))
    logits = x @ w_star
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cdf = probs.cumsum(axis=1)
    u = rng.random((n_samples, 1))
    y = np.minimum((u > cdf).sum(axis=1), num_classes - 1)  # inverse-CDF sampling
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:],
                   num_classes=int(num_classes), name="synthetic_logistic",
                   partition=partition)

