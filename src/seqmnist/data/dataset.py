"""The processed-data contract between `preprocess` and the stages after it.

Each split is two .npy files (loaded with allow_pickle=False):
  {split}_x.npy  float32 [N, time_steps, features], pixels scaled to [0, 1]
  {split}_y.npy  uint8   [N], class labels 0..num_classes-1
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from seqmnist.errors import DataError
from seqmnist.paths import PROCESSED_DIR

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def split_paths(split: Split, processed_dir: Path = PROCESSED_DIR) -> tuple[Path, Path]:
    """The (features, labels) files of one split."""
    return Path(processed_dir) / f"{split}_x.npy", Path(processed_dir) / f"{split}_y.npy"


def load_split(split: Split, processed_dir: Path = PROCESSED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Load one split and check it has the documented shapes and dtypes."""
    x_path, y_path = split_paths(split, processed_dir)
    for path in (x_path, y_path):
        if not path.is_file():
            raise DataError(f"{path}: processed data not found; run `dvc repro preprocess` first")
    try:
        x = np.load(x_path, allow_pickle=False, mmap_mode="r")
        y = np.load(y_path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{x_path.parent}: unreadable .npy file ({exc})") from None
    if x.ndim != 3 or x.dtype != np.float32:
        raise DataError(
            f"{x_path}: expected float32 [N, time_steps, features], got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{y_path}: expected {len(x)} integer labels, got {y.dtype} {y.shape}")
    return np.ascontiguousarray(x), y.astype(np.int64)
