"""Tiny data files in the real formats: IDX sets (MNIST, Fashion-MNIST) and CIFAR-10 batches."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8 or int32) as an IDX file."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def fake_mnist(folder: Path, n_train: int = 60, n_test: int = 30, compress: bool = True,
               seed: int = 0) -> Path:
    """A tiny IDX set with the full-MNIST file names (labels 0..9, 28×28 uint8 images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


def cifar_batch(count: int, rng: np.random.Generator) -> dict[bytes, object]:
    """One batch dict as in ``cifar-10-batches-py`` (keys are bytes, labels a list)."""
    return {b"batch_label": b"fake batch",
            b"labels": [int(v) for v in rng.integers(0, 10, size=count)],
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(count)]}


def fake_cifar10(root: Path, per_batch: int = 8, n_test: int = 6, seed: int = 0,
                 protocol: int = 2) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5 and test_batch; returns ``root``.

    Protocol 2 (as the real files) with the arrays referring to ``numpy.core.multiarray``,
    the module name that the real batches (written with numpy 1) use."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = cifar_batch(n_test if name == "test_batch" else per_batch, rng)
        raw = pickle.dumps(batch, protocol=protocol)
        if protocol == 2:  # GLOBAL opcodes hold "module\nname\n" as text
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / name).write_bytes(raw)
    return root
