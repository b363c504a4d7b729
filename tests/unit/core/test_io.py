"""seqmnist.io: a folder is replaced in one step, so no moment leaves neither the old nor the new
one (a kill between two renames used to leave no checkpoint at all); killed writes' temps are
swept; a write the system refuses is one error naming the output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqmnist import io
from seqmnist.errors import OutputWriteError


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


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    return int(done.stdout)


@pytest.mark.parametrize("writer", ["atomic_path", "atomic_dir"])
def test_temps_of_killed_writes_are_swept_by_the_next_write(tmp_path: Path, writer: str) -> None:
    """A write killed mid-way leaves its temp (B1 of the fault suite); the next write of that
    target removes it, but never the temp of a writer still running, nor another target's."""
    target = tmp_path / "out.npy"
    dead, alive = dead_pid(), os.getppid()
    orphan_file = tmp_path / f".out.npy.{dead}.abcd1234.tmp.npy"
    orphan_dir = tmp_path / f".out.npy.{dead}.efgh5678.tmp"
    in_progress = tmp_path / f".out.npy.{alive}.ijkl9012.tmp.npy"
    other_target = tmp_path / f".other.npy.{dead}.mnop3456.tmp.npy"
    for path in (orphan_file, in_progress, other_target):
        path.write_bytes(b"half")
    (orphan_dir / "out.npy").mkdir(parents=True)
    if writer == "atomic_path":
        with io.atomic_path(target) as tmp:
            assert tmp.name.startswith(f".out.npy.{os.getpid()}.")
            tmp.write_bytes(b"whole")
    else:
        with io.atomic_dir(target) as staging:
            fill(staging, "whole")
    assert not orphan_file.exists() and not orphan_dir.exists()
    assert in_progress.exists() and other_target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.npy", in_progress.name, other_target.name]
    )


@pytest.mark.parametrize("writer", ["atomic_path", "atomic_dir"])
def test_a_full_disk_is_one_error_naming_the_output(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "models" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    opened = io.atomic_path(target) if writer == "atomic_path" else io.atomic_dir(target)
    with pytest.raises(OutputWriteError) as caught, opened:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(caught.value)
    assert str(target) in message and "No space left on device" in message
    assert f"free space on the file system holding {target.parent}" in message
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]
    assert target.read_bytes() == b"previous"


def test_a_killed_writer_still_a_zombie_counts_as_gone(tmp_path: Path) -> None:
    """kill -9 leaves the writer a zombie until it is reaped; its temp is swept all the same."""
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        writer.kill()
        while Path(f"/proc/{writer.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            pass  # not reaped: wait() is called only below
        orphan = tmp_path / f".out.npy.{writer.pid}.abcd1234.tmp.npy"
        orphan.write_bytes(b"half")
        assert io.sweep_orphaned_temps(tmp_path / "out.npy") == [orphan]
    finally:
        writer.wait()


def test_an_input_that_cannot_be_read_is_not_called_a_write_error(tmp_path: Path) -> None:
    """Only errors about the output become OutputWriteError: a missing input keeps its own
    error (and its handler's retry or message), as do network errors."""
    with pytest.raises(FileNotFoundError, match="missing-input"), io.atomic_path(tmp_path / "o"):
        open(tmp_path / "missing-input")  # noqa: SIM115
    with pytest.raises(ConnectionResetError), io.atomic_dir(tmp_path / "d"):
        raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_write_into_a_staging_folder_names_the_output(tmp_path: Path) -> None:
    """write_json into atomic_dir's staging folder fails: the message names models/onnx, not
    a temp path, and claims no previous folder on a first write."""
    target = tmp_path / "models" / "onnx"
    with (
        pytest.raises(OutputWriteError) as caught,
        io.atomic_dir(target) as staging,
        io.atomic_open(staging / "report.json"),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: No space left on device")
    assert ".tmp" not in message and "previous" not in message
    assert caught.value.target == target
    assert sorted(p.name for p in target.parent.iterdir()) == []


def test_a_folder_killed_between_two_renames_is_put_back(tmp_path: Path) -> None:
    """Without the exchange, a kill between atomic_dir's renames leaves the old folder only in
    the dead writer's temp: the next write of that folder restores it before sweeping."""
    target = tmp_path / "checkpoint"
    holder = tmp_path / f".checkpoint.{dead_pid()}.abcd1234.tmp"
    (holder / io.PREVIOUS).mkdir(parents=True)
    fill(holder / io.PREVIOUS, "old")
    assert io.sweep_orphaned_temps(target) == [holder]
    assert (target / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
