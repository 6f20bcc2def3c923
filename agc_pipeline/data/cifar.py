"""CIFAR-10 (Krizhevsky 2009): 32×32 colour images of 10 classes, from its python batches.

The standard "CIFAR-10 python version" archive unpacks to ``cifar-10-batches-py/`` holding
``data_batch_1`` .. ``data_batch_5`` (10,000 training images each) and ``test_batch``: pickled
dicts with ``b"data"`` (uint8, 10000×3072, channel-major rows: 1024 red, 1024 green, 1024
blue values) and ``b"labels"`` (10,000 ints in 0..9). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agc_pipeline.data.base import Dataset, check_size
from agc_pipeline.data.readers import load_pickle
from agc_pipeline.errors import ConfigError, require

__all__ = ["CIFAR10_FOLDER", "cifar10"]

CIFAR10_FOLDER = "cifar-10-batches-py"
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]
_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _batch_dir(root: str | None) -> Path:
    require(root is not None,
            f"dataset.root must be set for dataset=cifar10 (the folder holding "
            f"{CIFAR10_FOLDER}/, unpacked from {_URL})")
    base = Path(root).expanduser()  # type: ignore[arg-type]
    for folder in (base / CIFAR10_FOLDER, base):
        if all((folder / name).is_file() for name in _TRAIN + _TEST):
            return folder
    folder = base / CIFAR10_FOLDER if (base / CIFAR10_FOLDER).is_dir() else base
    missing = [name for name in _TRAIN + _TEST if not (folder / name).is_file()]
    raise ConfigError(f"dataset.root={root}: CIFAR-10 not found (missing {', '.join(missing)} "
                      f"in {folder}); download {_URL} and unpack it into dataset.root "
                      "(no download is attempted)")


def _read(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) of the named batches, in order."""
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = load_pickle(path)
        require(isinstance(batch, dict) and b"data" in batch and b"labels" in batch,
                f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels')")
        data = np.asarray(batch[b"data"])
        label = np.asarray(batch[b"labels"])
        require(label.dtype.kind in "iu" or label.size == 0,
                f"{path}: b'labels' must be integers in 0..9 (got {label.dtype} values, e.g. "
                f"{label.reshape(-1)[:1].tolist()})")
        label = label.astype(np.int64)
        require(data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
                f"{path}: b'data' must be uint8 of shape (N, 3072) (got {data.dtype} "
                f"{data.shape})")
        require(label.shape == (data.shape[0],) and label.min(initial=0) >= 0
                and label.max(initial=0) <= 9,
                f"{path}: b'labels' must hold {data.shape[0]} labels in 0..9")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def cifar10(root: str | None = None, train_size: int | None = None,
            test_size: int | None = None, seed: int = 0, partition: str = "iid") -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself): images float32
    (N, 3, 32, 32) in [0, 1], labels int64. ``train_size`` / ``test_size`` (default: all
    50,000 / 10,000) pick a seeded random subset of each split."""
    train_size = check_size(train_size, "train_size", 1)
    test_size = check_size(test_size, "test_size", 0)
    folder = _batch_dir(root)
    rng = np.random.default_rng(seed)
    tensors = []
    for names, size, key in ((_TRAIN, train_size, "train_size"),
                             (_TEST, test_size, "test_size")):
        images, labels = _read(folder, names)
        count = len(labels) if size is None else size
        require(count <= len(labels),
                f"dataset.{key} must be at most {len(labels)} for {folder} (got {count})")
        idx = rng.permutation(len(labels))[:count]
        tensors += [torch.from_numpy(images[idx].astype(np.float32) / np.float32(255.0)),
                    torch.from_numpy(labels[idx])]
    return Dataset(*tensors, num_classes=10, name="cifar10", kind="image",
                   partition=partition)
