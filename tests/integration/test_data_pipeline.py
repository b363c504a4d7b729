"""End to end: `dvc repro preprocess` in a fresh git+DVC repo against the real MNIST mirror."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from seqmnist.data.dataset import load_split
from seqmnist.paths import DATA_STATS, PROCESSED_DIR, RAW_DIR
from seqmnist.stages.download import MNIST_SHA256
from support.project import make_project, run

SHAPE = (28, 28)
COUNTS = {"train": 55_000, "val": 5_000, "test": 10_000}


def readme_label_counts(mirror: Path) -> dict[str, list[int]]:
    """The per-class counts the mirror's README documents, e.g. 'Label counts, train: 5923 ...'."""
    text = (mirror / "README.md").read_text()
    counts = {}
    for split in ("train", "test"):
        found = re.search(rf"{split}: ((?:\d+ ){{9}}\d+)", text)
        assert found, f"{mirror / 'README.md'} lists no {split} label counts"
        counts[split] = [int(n) for n in found.group(1).split()]
    return counts


@pytest.mark.slow
def test_dvc_repro_download_and_preprocess(tmp_path: Path, mnist_mirror: Path) -> None:
    """Wall times are printed; see them with `pytest -rP` (or -s)."""
    project = make_project(tmp_path / "proj")
    mirror = {"SEQMNIST_MIRROR": str(mnist_mirror.resolve())}

    started = time.perf_counter()
    first = run(["dvc", "repro", "preprocess"], project, **mirror)
    print(f"dvc repro preprocess (download + preprocess): {time.perf_counter() - started:.1f} s")
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'preprocess'" in first.stdout

    assert sorted(p.name for p in (project / RAW_DIR).iterdir()) == sorted(MNIST_SHA256)
    expected = readme_label_counts(mnist_mirror)
    per_class = {}
    for split, count in COUNTS.items():
        x, y = load_split(split, project / PROCESSED_DIR)
        assert x.shape == (count, *SHAPE)
        assert x.dtype == np.float32
        assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
        per_class[split] = np.bincount(y, minlength=10)
    np.testing.assert_array_equal(per_class["train"] + per_class["val"], expected["train"])
    np.testing.assert_array_equal(per_class["test"], expected["test"])

    stats = (project / DATA_STATS).read_text()
    assert all(digest in stats for digest in MNIST_SHA256.values())
    assert (project / "dvc.lock").is_file()

    started = time.perf_counter()
    second = run(["dvc", "repro", "preprocess"], project, **mirror)
    print(f"dvc repro preprocess (nothing changed): {time.perf_counter() - started:.1f} s")
    assert "Stage 'download' didn't change" in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert "Running stage" not in second.stdout
