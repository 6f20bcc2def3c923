"""MNIST and Fashion-MNIST: 28×28 grey images of 10 classes in IDX files.

* :func:`mnist` — the bundled 10k test split (offline, default) or the full set from
  ``dataset.root`` (downloaded when missing). The paper's Fig. 6 trains on MNIST.
* :func:`fashion_mnist` — Zalando's Fashion-MNIST (same file names and format) from
  ``dataset.root``; nothing is downloaded.

Images come as float32 (N, 1, 28, 28) in [0, 1], labels as int64 (N,).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from agc_pipeline.data.base import Dataset, check_size
from agc_pipeline.data.readers import find_file, load_idx
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.validation import require_bool

__all__ = ["MNIST_FILES", "MNIST_MIRRORS", "fashion_mnist", "mnist"]

_BUNDLED = Path(__file__).resolve().parent / "mnist_t10k"

#: file stem → MD5 of the standard gzip file
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: download mirrors tried in order (each + "<stem>.gz")
MNIST_MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

_DOWNLOAD_TIMEOUT_S = 30.0


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    require(images.ndim == 3 and images.dtype == np.uint8,
            f"{where}: images must be a uint8 array N×rows×cols (got {images.shape})")
    require(labels.ndim == 1 and labels.shape[0] == images.shape[0],
            f"{where}: {labels.shape[0]} labels for {images.shape[0]} images (the labels "
            "file must hold one label per image)")
    require(int(labels.max(initial=0)) <= 9, f"{where}: labels must lie in 0..9")


@lru_cache(maxsize=1)
def _bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 10k images and labels, MD5-checked once per process."""
    arrays = []
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = _BUNDLED / f"{stem}.gz"
        require(path.is_file(), f"bundled MNIST file missing: {path}; reinstall agc_pipeline")
        digest = _md5(path)
        require(digest == MNIST_FILES[stem],
                f"bundled MNIST file {path} is corrupt (MD5 {digest}, expected "
                f"{MNIST_FILES[stem]}); reinstall agc_pipeline")
        arrays.append(load_idx(path))
    _check_pair(arrays[0], arrays[1], str(_BUNDLED))
    return arrays[0], arrays[1]


def _download(stem: str, root: Path) -> Path:
    """Fetch ``stem.gz`` from the first mirror that serves it with the right MD5."""
    target = root / f"{stem}.gz"
    failures = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{stem}.gz"
        fd, tmp_name = tempfile.mkstemp(dir=root, suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                tmp.write_bytes(resp.read())
            digest = _md5(tmp)
            if digest != MNIST_FILES[stem]:
                failures.append(f"{url}: MD5 {digest} != {MNIST_FILES[stem]}")
                continue
            tmp.replace(target)
            return target
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(failures))


def _idx_dir(root: Path, layout: str) -> dict[str, Path | None]:
    """The four IDX files in ``root`` (or torchvision's ``root/<layout>/raw``), None if absent."""
    return {stem: find_file([root, root / layout / "raw"], stem) for stem in MNIST_FILES}


def _mnist_dir(root: Path, download: bool) -> dict[str, Path]:
    """Locate the four full-MNIST files in ``root``, downloading missing ones if allowed."""
    require(root.is_dir() or not root.exists(), f"dataset.root={root} is not a folder")
    paths = _idx_dir(root, "MNIST")
    missing = [stem for stem, p in paths.items() if p is None]
    if not missing:
        return paths  # type: ignore[return-value]
    listed = ", ".join(f"{s}[.gz]" for s in missing)
    if not download:
        raise ConfigError(f"dataset.root={root}: missing MNIST files {listed}, and "
                          "dataset.download is false; put the IDX files there or allow the "
                          "download (or set dataset.root=null for the bundled 10k images)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stem in missing:
            paths[stem] = _download(stem, root)
    except OSError as exc:
        raise ConfigError(f"dataset.root={root}: missing MNIST files {listed}, and the download "
                          f"failed ({exc}); copy the IDX files there by hand (or set "
                          "dataset.root=null for the bundled 10k images)") from exc
    return paths  # type: ignore[return-value]


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1] (any N, also 0)."""
    return torch.from_numpy(images[:, None].astype(np.float32) / np.float32(255.0))


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _read_splits(paths: dict[str, Path], root: str, train_size: int | None,
                 test_size: int | None, rng: np.random.Generator) -> list[torch.Tensor]:
    """Seeded random subsets (all when None) of the train and t10k splits."""
    splits = []
    for prefix, size, key in (("train", train_size, "train_size"),
                              ("t10k", test_size, "test_size")):
        images = load_idx(paths[f"{prefix}-images-idx3-ubyte"])
        labels = load_idx(paths[f"{prefix}-labels-idx1-ubyte"])
        _check_pair(images, labels, f"{paths[f'{prefix}-labels-idx1-ubyte']} and "
                                    f"{paths[f'{prefix}-images-idx3-ubyte'].name}")
        count = len(labels) if size is None else size
        require(count <= len(labels),
                f"dataset.{key} must be at most {len(labels)} for {root} (got {count})")
        idx = rng.permutation(len(labels))[:count]
        splits += [_pixels(images[idx]), _labels(labels[idx])]
    return splits


def mnist(root: str | None = None, train_size: int | None = None,
          test_size: int | None = None, seed: int = 0, download: bool = True,
          partition: str = "iid") -> Dataset:
    """MNIST digits, pixels scaled to [0, 1], images of shape (1, 28, 28).

    ``root=None``: the bundled 10,000-image test split (see ``data/mnist_t10k/LICENSE.md``),
    permuted by ``seed`` and cut into ``train_size`` (default 8000) training and
    ``test_size`` (default 2000, 0 allowed) test images. ``root`` given: the full set read
    from IDX files in ``root`` (downloaded when missing and ``download`` is true);
    ``train_size`` / ``test_size`` (default: all 60,000 / 10,000) pick a seeded random subset
    of each split.
    """
    train_size = check_size(train_size, "train_size", 1)
    test_size = check_size(test_size, "test_size", 0)
    download = require_bool(download, "dataset.download")
    rng = np.random.default_rng(seed)
    if root is None:
        images, labels = _bundled_mnist()
        n_train = 8000 if train_size is None else train_size
        n_test = max(0, min(2000, len(labels) - n_train)) if test_size is None else test_size
        require(n_train + n_test <= len(labels),
                f"dataset.train_size + dataset.test_size must be at most {len(labels)}, the "
                f"bundled MNIST images (got {n_train} + {n_test}); set dataset.root to a "
                "folder with the full MNIST set for more")
        perm = rng.permutation(len(labels))
        tr, te = perm[:n_train], perm[n_train:n_train + n_test]
        return Dataset(_pixels(images[tr]), _labels(labels[tr]), _pixels(images[te]),
                       _labels(labels[te]), num_classes=10, name="mnist10k", kind="image",
                       partition=partition)
    paths = _mnist_dir(Path(root).expanduser(), download)
    splits = _read_splits(paths, root, train_size, test_size, rng)
    return Dataset(*splits, num_classes=10, name="mnist", kind="image", partition=partition)


def fashion_mnist(root: str | None = None, train_size: int | None = None,
                  test_size: int | None = None, seed: int = 0,
                  partition: str = "iid") -> Dataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28×28 grey images of 10 clothing classes.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``) from ``root`` or torchvision's
    ``root/FashionMNIST/raw``. ``train_size`` / ``test_size`` (default: all 60,000 / 10,000)
    pick a seeded random subset of each split. Images (N, 1, 28, 28) in [0, 1].
    """
    train_size = check_size(train_size, "train_size", 1)
    test_size = check_size(test_size, "test_size", 0)
    require(root is not None,
            "dataset.root must be set for dataset=fashion_mnist (a folder with its four IDX "
            "files, e.g. from https://github.com/zalandoresearch/fashion-mnist)")
    folder = Path(root).expanduser()
    paths = _idx_dir(folder, "FashionMNIST")
    missing = [f"{stem}[.gz]" for stem, p in paths.items() if p is None]
    require(not missing,
            f"dataset.root={root}: missing Fashion-MNIST files {', '.join(missing)}; download "
            "them from https://github.com/zalandoresearch/fashion-mnist into that folder")
    splits = _read_splits(paths, root, train_size, test_size,  # type: ignore[arg-type]
                          np.random.default_rng(seed))
    return Dataset(*splits, num_classes=10, name="fashion_mnist", kind="image",
                   partition=partition)
