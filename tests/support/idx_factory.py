"""Tiny IDX files for tests, written byte by byte so that every field can also be corrupted."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from seqmnist.paths import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS

UBYTE = 0x08
NUM_CLASSES = 10


def idx_header(dims: tuple[int, ...], dtype_code: int = UBYTE, ndim: int | None = None) -> bytes:
    """Magic number (0, 0, dtype code, ndim) and one big-endian uint32 per dimension."""
    ndim = len(dims) if ndim is None else ndim
    return struct.pack(">HBB", 0, dtype_code, ndim) + struct.pack(f">{len(dims)}I", *dims)


def idx_bytes(array: np.ndarray) -> bytes:
    """A valid IDX file holding `array` as unsigned bytes."""
    return idx_header(array.shape) + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip_bytes(data) if gz else data)
    return path


def tiny_mnist(
    n_train: int = 60, n_test: int = 20, rows: int = 5, columns: int = 7, seed: int = 0
) -> dict[str, bytes]:
    """IDX payloads named like MNIST's four files; labels cycle so every class is present."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, rows, columns), dtype=np.uint8)

    def labels(n: int) -> np.ndarray:
        return (np.arange(n) % NUM_CLASSES).astype(np.uint8)

    return {
        TRAIN_IMAGES: idx_bytes(images(n_train)),
        TRAIN_LABELS: idx_bytes(labels(n_train)),
        TEST_IMAGES: idx_bytes(images(n_test)),
        TEST_LABELS: idx_bytes(labels(n_test)),
    }


def write_raw_dir(folder: Path, payloads: dict[str, bytes]) -> Path:
    """Lay out decompressed IDX files as the download stage leaves them in data/raw."""
    for name, data in payloads.items():
        write_bytes(folder / name, data)
    return folder


def write_gz_mirror(folder: Path, payloads: dict[str, bytes]) -> dict[str, str]:
    """Lay out gzipped files as a mirror serves them; return the payload checksums to expect."""
    for name, data in payloads.items():
        write_bytes(folder / f"{name}.gz", data, gz=True)
    return {name: sha256(data) for name, data in payloads.items()}
