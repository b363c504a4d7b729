"""Failures injected in the middle of a stage's atomic write (seqmnist.io), to prove that a crash
there leaves the previous output exactly as it was and nothing beside it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest


class Crash(Exception):
    """Stands for the stage dying mid-write: killed, out of memory, out of disk."""


def crash_on_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, after: int) -> None:
    """Make `owner.name` raise Crash on call number `after + 1`; the calls before it run."""
    real = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > after:
            raise Crash(f"injected crash in {name}, call {calls}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def failing_swap(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make the rename that moves a finished staging copy onto `target` fail (EIO), after the
    previous `target` was set aside: the last step of seqmnist.io.atomic_dir."""
    real_replace = os.replace

    def replace(source, destination, *args, **kwargs):
        if Path(destination) == Path(target) and Path(source).name == Path(target).name:
            raise OSError(errno.EIO, "injected failure of the final rename", str(source))
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
