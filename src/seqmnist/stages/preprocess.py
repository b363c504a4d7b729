"""`preprocess` stage: validated IDX images become [N, time_steps, features] sequences.

Each image row is one time step and each pixel of the row one feature, so the shape comes from
the data. The transformations are pure functions on arrays; `run` only adds the file I/O, which
is all-or-nothing: data/processed is replaced as a whole once every split is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seqmnist.config import PreprocessParams
from seqmnist.constants import NUM_CLASSES, PIXEL_LEVELS, PIXEL_MAX
from seqmnist.data import idx
from seqmnist.data.dataset import Split, split_paths
from seqmnist.errors import ConfigError, DataError
from seqmnist.io import atomic_dir, file_sha256, write_json
from seqmnist.paths import (
    DATA_STATS,
    PROCESSED_DIR,
    RAW_DIR,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)

RAW_FILES: Mapping[str, tuple[str, str]] = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS),
    "test": (TEST_IMAGES, TEST_LABELS),
}

Pair = tuple[np.ndarray, np.ndarray]


def images_to_sequences(images: np.ndarray) -> np.ndarray:
    """uint8 [N, rows, columns] -> float32 [N, time_steps=rows, features=columns] in [0, 1]."""
    if images.ndim != 3:
        raise ValueError(f"expected images [N, rows, columns], got shape {images.shape}")
    sequences = images.astype(np.float32)
    sequences /= np.float32(PIXEL_MAX)
    return sequences


def check_pair(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    """Images and labels must pair up one to one, with every label a known class."""
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; expected equal counts"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"{labels_path}: {bad.size} label(s) out of range, first {int(labels[first])} at "
            f"index {first}; expected 0..{NUM_CLASSES - 1}"
        )


def validation_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Validation images per class: proportional to `counts`, summing to `size`, none left out.

    Largest-remainder rounding keeps the class mix as close as integers allow.
    """
    present = int(np.count_nonzero(counts))
    total = int(counts.sum())
    if size >= total:
        raise ConfigError(
            f"preprocess.validation_size={size} must be smaller than the {total} training images"
        )
    if size < present:
        raise ConfigError(
            f"preprocess.validation_size={size} is too small to hold one image of each of the "
            f"{present} classes"
        )
    exact = counts * (size / total)
    quotas = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: size - int(quotas.sum())]] += 1
    for missing in np.flatnonzero((quotas == 0) & (counts > 0)):
        quotas[np.argmax(quotas)] -= 1
        quotas[missing] += 1
    starved = np.flatnonzero((counts > 0) & (quotas >= counts))
    if starved.size:
        raise ConfigError(
            f"preprocess.validation_size={size} would leave class {int(starved[0])} "
            f"({int(counts[starved[0]])} images) with none for training"
        )
    return quotas


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices; the same labels, size and seed give the same split."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    quotas = validation_quotas(counts, size)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=quota, replace=False)
        for label, quota in enumerate(quotas)
        if quota
    ]
    val_idx = np.sort(np.concatenate(chosen))
    in_val = np.zeros(len(labels), dtype=bool)
    in_val[val_idx] = True
    return np.flatnonzero(~in_val), val_idx


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Images per class, keyed by class as text (JSON keys; `dvc metrics show` lists each)."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return {str(label): int(count) for label, count in enumerate(counts)}


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of uint8 pixels scaled to [0, 1], exact from a histogram (no float copy)."""
    histogram = np.bincount(images.reshape(-1), minlength=PIXEL_LEVELS).astype(np.float64)
    values = np.arange(PIXEL_LEVELS) / PIXEL_MAX
    count = histogram.sum()
    mean = histogram @ values / count
    variance = histogram @ (values - mean) ** 2 / count
    return float(mean), float(np.sqrt(variance))


def dataset_stats(splits: Mapping[str, Pair], source_sha256: Mapping[str, str]) -> dict[str, Any]:
    """The metrics/data.json summary: shape, counts per split and class, train pixel stats."""
    _, time_steps, features = splits["train"][0].shape
    mean, std = pixel_stats(splits["train"][0])
    return {
        "shape": {"time_steps": int(time_steps), "features": int(features)},
        "num_classes": NUM_CLASSES,
        "counts": {split: len(labels) for split, (_, labels) in splits.items()},
        "class_counts": {split: class_counts(labels) for split, (_, labels) in splits.items()},
        "train_pixel_mean": mean,
        "train_pixel_std": std,
        "source_sha256": dict(source_sha256),
    }


def load_raw(raw_dir: Path = RAW_DIR) -> dict[str, Pair]:
    """Read and cross-check the four IDX files: {'train': (images, labels), 'test': ...}."""
    raw_dir = Path(raw_dir)
    pairs: dict[str, Pair] = {}
    for split, (images_name, labels_name) in RAW_FILES.items():
        images_path, labels_path = raw_dir / images_name, raw_dir / labels_name
        for path in (images_path, labels_path):
            if not path.is_file():
                raise DataError(f"{path}: raw IDX file not found; run `dvc repro download` first")
        images, labels = idx.read_images(images_path), idx.read_labels(labels_path)
        check_pair(images, labels, images_path, labels_path)
        pairs[split] = images, labels
    train_shape, test_shape = pairs["train"][0].shape[1:], pairs["test"][0].shape[1:]
    if train_shape != test_shape:
        raise DataError(
            f"{raw_dir / TEST_IMAGES}: images are {test_shape}; expected {train_shape} like "
            f"{raw_dir / TRAIN_IMAGES}"
        )
    return pairs


def write_splits(splits: Mapping[Split, Pair], out_dir: Path = PROCESSED_DIR) -> None:
    """Write every split as .npy sequences and labels, replacing `out_dir` only on success."""
    with atomic_dir(out_dir) as staging:
        for split, (images, labels) in splits.items():
            x_path, y_path = split_paths(split, staging)
            np.save(x_path, images_to_sequences(images), allow_pickle=False)
            np.save(y_path, labels.astype(np.uint8), allow_pickle=False)


def run(
    params: PreprocessParams,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = PROCESSED_DIR,
    stats_path: Path = DATA_STATS,
) -> dict[str, Any]:
    """Validate data/raw, write the train/val/test sequences and metrics/data.json."""
    raw_dir = Path(raw_dir)
    raw = load_raw(raw_dir)
    train_images, train_labels = raw["train"]
    train_idx, val_idx = stratified_split(train_labels, params.validation_size, params.seed)
    splits: dict[Split, Pair] = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": raw["test"],
    }
    write_splits(splits, out_dir)
    sources = {name: file_sha256(raw_dir / name) for pair in RAW_FILES.values() for name in pair}
    stats = dataset_stats(splits, sources)
    write_json(stats_path, stats)
    return stats
