"""File readers shared by the data sets: IDX (MNIST, Fashion-MNIST) and CIFAR's pickles.

Both raise :class:`~agc_pipeline.errors.ConfigError` naming the file for a missing, truncated
or corrupt file, so a bad ``dataset.root`` is reported as one line at start-up.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from agc_pipeline.errors import ConfigError, require

__all__ = ["find_file", "load_idx", "load_pickle"]

# IDX format (http://yann.lecun.com/exdb/mnist/): 0x00 0x00, a type byte, the number of
# dimensions, then one big-endian int32 per dimension, then the data, big-endian, row-major.

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its native shape and type.

    Raises :class:`ConfigError` for a missing, truncated or corrupt file.
    """
    path = Path(path)
    require(path.exists(), f"IDX file not found: {path}")
    require(path.is_file(), f"{path}: not a regular file (an IDX file is read whole)")
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: cannot read IDX file ({exc})") from exc
    require(len(raw) >= 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in _IDX_TYPES,
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    require(ndim >= 1 and len(raw) >= header, f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    require(len(raw) - header == expected,
            f"{path}: corrupt IDX file: header says shape {shape} ({expected} data bytes), "
            f"file holds {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def find_file(folders: list[Path], stem: str) -> Path | None:
    """The first of ``folder/stem`` or ``folder/stem.gz`` that exists, or None."""
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a pickle can run arbitrary code, and
    a data file never needs more."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """A pickled data file (e.g. a CIFAR-10 batch) holding only containers and numpy arrays.

    Python 2 strings stay ``bytes`` (the CIFAR batches were written by Python 2, so their keys
    are ``b"data"``, ``b"labels"``); :class:`ConfigError` for an unreadable, corrupt or unsafe
    file.
    """
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
            AttributeError, IndexError) as exc:
        raise ConfigError(f"{path}: cannot read pickled data ({exc})") from exc
