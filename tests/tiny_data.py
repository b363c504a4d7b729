"""A tiny, learnable sequence dataset written in the processed-data layout (seqmnist.dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqmnist.dataset import NUM_CLASSES, split_paths

TIME_STEPS = 12
FEATURES = 10


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a bright row whose position encodes the label: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    x = rng.uniform(0, 0.3, size=(n, TIME_STEPS, FEATURES)).astype(np.float32)
    x[np.arange(n), labels, :] = 1.0
    return x, labels.astype(np.uint8)


def write_processed(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """Write train/val/test splits to `folder` and return it."""
    sizes = sizes or {"train": 400, "val": 100, "test": 100}
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes.items()):
        x, y = make_split(n, seed)
        x_path, y_path = split_paths(split, folder)
        np.save(x_path, x)
        np.save(y_path, y)
    return folder
