"""Fault 5: the disk fills up while a stage writes its outputs.

A copy of the project with the clean run's outputs gets a small tmpfs mounted over the folder a
stage writes into (models/ for train and export, plots/ for evaluate), holding the previous
outputs and a filler that leaves a few KiB free. The stage command then runs and must fail with
a clear error (the CLI's one line naming the file, no traceback), leave no temp file behind, and
leave the previous outputs as they were. Needs root and a container that allows `mount`;
elsewhere the fault is recorded as skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults import kit

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TMPFS_SIZE = "2m"
FREE_BYTES = 12 * 1024  # less than any of the outputs below, more than a page or two
FILLER = ".filler"
STAGE_TIMEOUT_S = 600
# The folder mounted over, per stage: where the stage's atomic writes put their temps.
MOUNTED = {"train": "models", "evaluate": "plots", "export": "models"}


def mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs on `where`; None, or why it cannot be done here."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"mount -t tmpfs refused: {(done.stderr or done.stdout).strip()}"
    return None


@contextlib.contextmanager
def small_disk(fault_log, fault: str, folder: Path) -> Iterator[Path]:
    """`folder`, now on a nearly full tmpfs holding what it held before."""
    saved = folder.with_name(folder.name + ".saved")
    shutil.copytree(folder, saved, symlinks=True)
    why = mount_tmpfs(folder, TMPFS_SIZE)
    if why:
        shutil.rmtree(saved)
        fault_log.skip(fault, why)
    try:
        shutil.copytree(saved, folder, symlinks=True, dirs_exist_ok=True)
        stats = os.statvfs(folder)
        filler = stats.f_bavail * stats.f_frsize - FREE_BYTES
        with open(folder / FILLER, "wb") as handle:
            handle.write(b"\0" * max(filler, 0))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(saved, ignore_errors=True)


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != FILLER
    }


@pytest.mark.parametrize("stage", sorted(MOUNTED))
def test_disk_full_during_a_stage(real_reference, fault_log, tmp_path, stage) -> None:
    fault = f"disk full while {stage} writes ({MOUNTED[stage]}/ on a full tmpfs)"
    project = kit.real_project_from(real_reference, tmp_path / "proj")
    folder = project / MOUNTED[stage]
    before = digests(folder)
    with small_disk(fault_log, fault, folder):
        done = subprocess.run(
            [kit.SEQMNIST, stage, "--no-progress"] if stage == "train" else [kit.SEQMNIST, stage],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=STAGE_TIMEOUT_S,
        )
        after = digests(folder)
        left = kit.partial_files(project)
    traceback = "Traceback (most recent call last)" in done.stderr
    last_line = (done.stderr.strip().splitlines() or [""])[-1]
    changed = sorted(path for path in before if after.get(path) != before[path])
    failed_clearly = done.returncode != 0 and not traceback
    fault_log.record(
        fault,
        survived=done.returncode != 0 and not left and not changed and failed_clearly,
        identical=not changed,
        partial_files=len(left),
        data_lost=len(changed),
        note="raw traceback" if traceback else "",
        detail=f"exit {done.returncode}; last line: {last_line[:300]}; left: {left}",
    )
    assert done.returncode != 0, f"{stage} succeeded on a full disk?\n{done.stderr[-2000:]}"
    assert "No space left on device" in done.stderr, done.stderr[-3000:]
    assert not left, f"partial files left: {left}"
    assert not changed, f"previous outputs changed: {changed}"
    assert not traceback, f"a traceback, not one clear line:\n{done.stderr[-3000:]}"
    named = f"cannot write {folder.relative_to(project)}/"
    assert named in last_line and ".tmp" not in last_line, f"names no output: {last_line}"
