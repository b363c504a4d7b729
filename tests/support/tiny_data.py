"""Tiny, learnable sequence datasets written in the processed-data layout (data.dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqmnist.constants import NUM_CLASSES
from seqmnist.data.dataset import split_paths

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


# train params that learn the tiny task (make_split) in a few epochs of about a second each
TINY_TRAIN = {
    "epochs": 3,
    "batch_size": 32,
    # The tiny task encodes the label in a row's position: no shifts, rotations or scalings.
    "augment_max_shift": 0,
    "augment_max_degrees": 0,
    "augment_max_scale": 0,
    "augment_elastic_pixels": 0,
    "warmup_epochs": 1,
    "early_stopping_patience": 5,
    # One way, whatever the default: the tests name its layers.
    "model": {"units": 12, "input_projection": 8, "bidirectional": False},
}


def train_on_tiny_data(folder: Path, processed: Path, **overrides) -> dict:
    """train.run with TINY_TRAIN (top-level keys replaced by `overrides`), writing into `folder`;
    returns model_info."""
    from seqmnist.config import TrainParams
    from seqmnist.stages import train

    return train.run(
        TrainParams.model_validate({**TINY_TRAIN, **overrides}),
        processed_dir=processed,
        model_path=folder / "model.keras",
        info_path=folder / "model_info.json",
        live_dir=folder / "live",
        checkpoint_dir=folder / "checkpoints",
        stats_path=folder / "missing-stats.json",
        progress=False,
    )


BAR_SIZE = 28  # bar images are MNIST-sized: TIME_STEPS = FEATURES = 28
BAR_WIDTH = 2
BAR_OFFSET = 4
BAR_NOISE = 0.1


def bar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images: class k is a bright vertical bar at column 4 + 2k over a random run of rows,
    plus noise. Learnable in two epochs and drawable as a PNG, for export and predict tests."""
    x = rng.uniform(0, BAR_NOISE, size=(len(labels), BAR_SIZE, BAR_SIZE)).astype(np.float32)
    for image, label in zip(x, labels, strict=True):
        top = rng.integers(0, BAR_SIZE // 3)
        bottom = rng.integers(2 * BAR_SIZE // 3, BAR_SIZE + 1)
        column = BAR_OFFSET + BAR_WIDTH * int(label)
        image[top:bottom, column : column + BAR_WIDTH] = rng.uniform(0.8, 1.0)
    return x


def write_bar_splits(folder: Path, sizes: dict[str, int], seed: int) -> Path:
    """Write train/val/test splits of bar images to `folder` and return it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint8)
        x_path, y_path = split_paths(split, folder)
        np.save(x_path, bar_images(labels, rng))
        np.save(y_path, labels)
    return folder
