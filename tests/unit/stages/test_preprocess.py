"""preprocess: pure transformations on tiny arrays, then the stage on tiny IDX files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from seqmnist.config import PreprocessParams
from seqmnist.data import idx
from seqmnist.data.dataset import SPLITS, load_split
from seqmnist.errors import ConfigError, DataError, OutputWriteError
from seqmnist.paths import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from seqmnist.stages import preprocess
from support.faults import Crash, contents, crash_on_call, failing_swap
from support.idx_factory import idx_bytes, sha256, tiny_mnist, write_bytes, write_raw_dir

ROWS, COLUMNS = 5, 7  # deliberately not 28 x 28: the shape must come from the data


def test_sequences_take_their_shape_from_the_images() -> None:
    images = np.array([[[0, 255, 51]] * 2], dtype=np.uint8)  # one 2 x 3 image
    sequences = preprocess.images_to_sequences(images)
    assert sequences.dtype == np.float32
    assert sequences.shape == (1, 2, 3)
    np.testing.assert_array_equal(sequences[0, 0], np.float32([0.0, 1.0, 0.2]))


def test_sequences_reject_anything_but_a_stack_of_images() -> None:
    with pytest.raises(ValueError, match=r"expected images \[N, rows, columns\]"):
        preprocess.images_to_sequences(np.zeros((4, 4), dtype=np.uint8))


def _imbalanced_labels() -> np.ndarray:
    counts = [50, 30, 20, 10, 5, 5, 40, 60, 25, 15]
    labels = np.repeat(np.arange(10, dtype=np.uint8), counts)
    return np.random.default_rng(1).permutation(labels)


def test_stratified_split_is_a_partition_that_keeps_the_class_mix() -> None:
    labels = _imbalanced_labels()
    train_idx, val_idx = preprocess.stratified_split(labels, size=26, seed=3)
    assert len(val_idx) == 26
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(260))
    val_counts = np.bincount(labels[val_idx], minlength=10)
    exact = np.bincount(labels, minlength=10) * 26 / 260
    assert np.all(np.abs(val_counts - exact) < 1)
    assert np.all(val_counts >= 1)
    assert np.all(np.bincount(labels[train_idx], minlength=10) >= 1)


def test_stratified_split_is_seeded() -> None:
    labels = _imbalanced_labels()
    first = preprocess.stratified_split(labels, size=40, seed=7)[1]
    again = preprocess.stratified_split(labels, size=40, seed=7)[1]
    other = preprocess.stratified_split(labels, size=40, seed=8)[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_every_class_gets_a_validation_image_even_when_rounding_says_zero() -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), [1000] + [2] * 9)
    quotas = preprocess.validation_quotas(np.bincount(labels), size=10)
    np.testing.assert_array_equal(quotas, [1] * 10)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (260, "must be smaller than the 260 training images"),
        (9, "too small to hold one image of each of the 10 classes"),
    ],
)
def test_impossible_validation_sizes(size: int, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        preprocess.stratified_split(_imbalanced_labels(), size=size, seed=0)
    assert "preprocess.validation_size" in str(caught.value)


def test_validation_size_that_would_empty_a_class_from_training() -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), [1] + [100] * 9)
    with pytest.raises(ConfigError, match=r"would leave class 0 \(1 images\) with none"):
        preprocess.stratified_split(labels, size=10, seed=0)


def test_pixel_stats_match_the_scaled_float_images() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(6, 5, 7), dtype=np.uint8)
    mean, std = preprocess.pixel_stats(images)
    scaled = images.astype(np.float64) / 255
    assert mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert std == pytest.approx(scaled.std(), rel=1e-12)


def test_class_counts_list_every_class() -> None:
    counts = preprocess.class_counts(np.array([1, 1, 9], dtype=np.uint8))
    assert counts == {**{str(c): 0 for c in range(10)}, "1": 2, "9": 1}


def test_labels_out_of_range_name_the_file() -> None:
    labels = np.array([3, 12, 4, 10], dtype=np.uint8)
    images = np.zeros((4, 2, 2), dtype=np.uint8)
    with pytest.raises(DataError) as caught:
        preprocess.check_pair(images, labels, Path("img"), Path("data/raw/lbl"))
    assert str(caught.value) == (
        "data/raw/lbl: 2 label(s) out of range, first 12 at index 1; expected 0..9"
    )


# ---- the stage, on tiny IDX files ----------------------------------------------------------


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    return write_raw_dir(tmp_path / "raw", tiny_mnist(n_train=60, n_test=20, rows=5, columns=7))


def _run(tmp_path: Path, raw_dir: Path, validation_size: int = 10, seed: int = 0) -> dict:
    params = PreprocessParams(validation_size=validation_size, seed=seed)
    return preprocess.run(params, raw_dir, tmp_path / "processed", tmp_path / "metrics/data.json")


def test_stage_writes_every_split_and_the_stats(tmp_path: Path, raw_dir: Path) -> None:
    stats = _run(tmp_path, raw_dir)
    loaded = {split: load_split(split, tmp_path / "processed") for split in SPLITS}
    assert {split: x.shape for split, (x, _) in loaded.items()} == {
        "train": (50, ROWS, COLUMNS),
        "val": (10, ROWS, COLUMNS),
        "test": (20, ROWS, COLUMNS),
    }
    for split in SPLITS:
        assert np.load(tmp_path / "processed" / f"{split}_y.npy").dtype == np.uint8
        x = loaded[split][0]
        assert x.min() >= 0.0 and x.max() <= 1.0
    restored = np.rint(loaded["test"][0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(restored, idx.read_images(raw_dir / TEST_IMAGES))
    np.testing.assert_array_equal(loaded["test"][1], np.arange(20) % 10)
    assert np.all(np.bincount(loaded["val"][1], minlength=10) == 1)

    written = json.loads((tmp_path / "metrics/data.json").read_text())
    assert written == json.loads(json.dumps(stats))
    assert written["shape"] == {"time_steps": ROWS, "features": COLUMNS}
    assert written["counts"] == {"train": 50, "val": 10, "test": 20}
    assert written["class_counts"]["val"] == {str(c): 1 for c in range(10)}
    assert written["class_counts"]["test"] == {str(c): 2 for c in range(10)}
    assert 0.3 < written["train_pixel_mean"] < 0.7
    assert written["source_sha256"] == {
        name: sha256((raw_dir / name).read_bytes())
        for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "processed", "raw"]


def test_stage_replaces_old_output_and_uses_normal_permissions(
    tmp_path: Path, raw_dir: Path
) -> None:
    stale = write_bytes(tmp_path / "processed" / "stale.npy", b"old")
    _run(tmp_path, raw_dir)
    assert not stale.exists()
    reference = tmp_path / "reference"
    reference.mkdir()
    assert os.stat(tmp_path / "processed").st_mode == os.stat(reference).st_mode


def test_stage_is_deterministic(tmp_path: Path, raw_dir: Path) -> None:
    _run(tmp_path / "a", raw_dir, seed=5)
    _run(tmp_path / "b", raw_dir, seed=5)
    for name in ("train_y.npy", "val_x.npy"):
        a = (tmp_path / "a" / "processed" / name).read_bytes()
        assert a == (tmp_path / "b" / "processed" / name).read_bytes()


@pytest.mark.parametrize("failure", ["second split", "final rename"])
def test_failure_while_writing_keeps_the_previous_output(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The staging folder already holds the train split when the write fails: data/processed and
    metrics/data.json must stay the previous run's, with nothing left beside them."""
    _run(tmp_path, raw_dir, seed=0)
    before = contents(tmp_path / "processed")
    stats_before = (tmp_path / "metrics/data.json").read_bytes()
    if failure == "second split":
        crash_on_call(monkeypatch, preprocess, "images_to_sequences", after=1)
    else:
        failing_swap(monkeypatch, tmp_path / "processed")
    with pytest.raises((Crash, OutputWriteError)):
        _run(tmp_path, raw_dir, seed=1)  # another split: different files, had they been written
    assert contents(tmp_path / "processed") == before
    assert (tmp_path / "metrics/data.json").read_bytes() == stats_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "processed", "raw"]


def test_first_run_whose_final_rename_fails_reports_that_failure(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no previous output to put back, the rename's own error used to be masked by a
    FileNotFoundError from restoring it."""
    failing_swap(monkeypatch, tmp_path / "processed")
    with pytest.raises(OutputWriteError, match="injected failure of the final rename"):
        _run(tmp_path, raw_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def _expect_failure_writes_nothing(tmp_path: Path, raw_dir: Path, **kwargs: int) -> str:
    """Bad input is refused before the write starts: the previous output is not touched."""
    previous = write_bytes(tmp_path / "processed" / "train_x.npy", b"previous run")
    with pytest.raises((DataError, ConfigError)) as caught:
        _run(tmp_path, raw_dir, **kwargs)
    assert previous.read_bytes() == b"previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw"]
    return str(caught.value)


def test_count_mismatch_names_both_files(tmp_path: Path, raw_dir: Path) -> None:
    write_bytes(raw_dir / TRAIN_LABELS, idx_bytes(np.arange(59, dtype=np.uint8) % 10))
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert message == (
        f"{raw_dir / TRAIN_IMAGES} holds 60 images but {raw_dir / TRAIN_LABELS} holds 59 labels; "
        "expected equal counts"
    )


def test_label_out_of_range_names_the_file(tmp_path: Path, raw_dir: Path) -> None:
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[7] = 200
    write_bytes(raw_dir / TEST_LABELS, idx_bytes(labels))
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert message.startswith(f"{raw_dir / TEST_LABELS}: 1 label(s) out of range, first 200")


def test_corrupt_raw_file_names_it(tmp_path: Path, raw_dir: Path) -> None:
    path = raw_dir / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-1])
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert message.startswith(f"{path}: file is")


def test_labels_swapped_for_images_are_caught(tmp_path: Path, raw_dir: Path) -> None:
    (raw_dir / TEST_IMAGES).write_bytes((raw_dir / TEST_LABELS).read_bytes())
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert "has 1 dimension(s) (magic 2049)" in message


def test_train_and_test_image_shapes_must_agree(tmp_path: Path, raw_dir: Path) -> None:
    write_bytes(raw_dir / TEST_IMAGES, idx_bytes(np.zeros((20, 7, 5), dtype=np.uint8)))
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert message == (
        f"{raw_dir / TEST_IMAGES}: images are (7, 5); expected (5, 7) like {raw_dir / TRAIN_IMAGES}"
    )


def test_missing_raw_file_says_what_to_run(tmp_path: Path, raw_dir: Path) -> None:
    (raw_dir / TRAIN_LABELS).unlink()
    message = _expect_failure_writes_nothing(tmp_path, raw_dir)
    assert message == (
        f"{raw_dir / TRAIN_LABELS}: raw IDX file not found; run `dvc repro download` first"
    )


def test_validation_size_too_large_for_the_data(tmp_path: Path, raw_dir: Path) -> None:
    message = _expect_failure_writes_nothing(tmp_path, raw_dir, validation_size=60)
    assert "preprocess.validation_size=60 must be smaller than the 60 training images" in message
