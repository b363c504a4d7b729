"""seqmnist.io.atomic_dir: a folder is replaced in one step, so no moment leaves neither the old
nor the new one (a kill between two renames used to leave no checkpoint at all)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seqmnist import io


def fill(folder: Path, text: str) -> None:
    (folder / "file.txt").write_text(text)


def test_an_existing_folder_is_exchanged_in_one_step(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    fill(target, "old")

    def no_rename(*args, **kwargs):
        raise AssertionError("replaced with renames: a moment with no folder in place")

    monkeypatch.setattr(os, "replace", no_rename)
    with io.atomic_dir(target) as staging:
        fill(staging, "new")
    assert (target / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone too


@pytest.mark.parametrize("exchange_exists", [True, False], ids=["exchange", "two renames"])
def test_first_run_and_fallback_give_the_same_result(
    tmp_path: Path, monkeypatch, exchange_exists: bool
) -> None:
    if not exchange_exists:
        monkeypatch.setattr(io, "_exchange", lambda first, second: False)
    target = tmp_path / "out"
    for text in ("first", "second"):
        with io.atomic_dir(target) as staging:
            fill(staging, text)
        assert (target / "file.txt").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
